"""PUBLIC: the plugin contract for channels and LLM providers.

A plugin is a class named by an entry point in group ``gateway.channels`` or ``gateway.llm``.
The built-in plugins in ``plugins/`` are registered the same way in ``pyproject.toml``, so a
third-party package that declares::

    [project.entry-points."gateway.channels"]
    mychat = "mychat_gateway:MyChatChannel"

is found by ``gateway plugins`` and usable as ``plugin = "mychat"`` in a ``[channels.NAME]`` table.

Life of a channel plugin
------------------------
1. The core validates the ``[channels.NAME]`` table against the class's nested ``Config`` (a
   subclass of :class:`ChannelConfig`; unknown keys are rejected, secrets arrive resolved as
   :class:`~gateway.secretref.Secret`).
2. It constructs ``Plugin(name, config, context)``. The constructor must not do I/O.
3. It mounts ``plugin.blueprint()`` (if not None) and the plugin's thin webhook routes
   (``plugin.webhooks()``, if it has the method: see :mod:`gateway.webhooks`) on the public
   HTTP app, then starts
   ``await nursery.start(plugin.run)`` under a supervisor: if ``run`` raises, the plugin is
   restarted with backoff (a fresh call to ``run`` on the same object); ``trio.Cancelled`` must
   propagate. ``run`` calls ``task_status.started()`` once it is ready to receive (polling has
   begun, the webhook is registered) and then runs until cancelled.
4. The dispatcher calls ``send(outbound)`` from several tasks at once, never two for the same
   thread at the same time, and in thread order. ``send`` either returns a :class:`SendResult`
   (the platform accepted the message) or raises :class:`~gateway.errors.SendError`.

The at-least-once / at-most-once contract
-----------------------------------------
A plugin hands each inbound message to ``await context.accept(inbound)`` (or ``accept_many``)
and acknowledges it to the platform (HTTP 2xx, advancing a poll offset) only **after** that call
returns. If ``accept`` raises, the plugin must not acknowledge: the platform will retry, and the
journal's unique key makes the retry harmless.

Providers
---------
An LLM provider class has a nested ``Config`` (subclass of :class:`ProviderConfig`), is
constructed as ``Provider(name, config, context)`` with no I/O, answers ``complete`` and is
closed with ``aclose`` (the core calls it once; a provider must tolerate a second call).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import logging
import os
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import httpx
import trio
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import PluginError
from gateway.messages import (
    Completion,
    CompletionRequest,
    Event,
    Inbound,
    Outbound,
    SendResult,
)
from gateway.pipeline.consent import SUBSCRIPTION_MENU, Keywords
from gateway.privacy.residency import ResidencyPolicy

if TYPE_CHECKING:
    import quart

__all__ = [
    "Accepted",
    "Channel",
    "ChannelConfig",
    "ChannelContext",
    "HistoryItem",
    "LLMProvider",
    "PluginConfig",
    "PluginInfo",
    "ProviderConfig",
    "ProviderContext",
    "Registry",
    "load_registry",
]

CHANNEL_GROUP = "gateway.channels"
LLM_GROUP = "gateway.llm"


class PluginConfig(BaseModel):
    """Base of every plugin's ``Config``: unknown keys are errors, values are immutable.

    Declare fields with types and defaults; use :class:`~gateway.secretref.Secret` for anything
    secret (the config file then holds a reference such as ``env:NAME``, and the value never
    appears in a repr or a log line). Document each field with ``Field(description=...)``: the
    admin UI and ``gateway plugins --verbose`` show it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    plugin: str = Field(description="Which plugin serves this table (an entry point name).")


class ChannelConfig(PluginConfig):
    """Keys every ``[channels.NAME]`` table accepts, whatever its plugin.

    The send-rate fields default to "no limit"; a plugin's ``Config`` overrides the defaults with
    its platform's published limits (Telegram: 30 messages/s per bot, about 1/s per chat).
    """

    agent: str = Field("default", description="The [agents.NAME] table that answers this channel.")
    enabled: bool = Field(True, description="false keeps the table but does not start the channel.")
    send_rate: float | None = Field(
        None, gt=0, description="Messages per second this account may send in all (None: no limit)."
    )
    send_rate_per_chat: float | None = Field(
        None, gt=0, description="Messages per second to one chat/thread (None: no limit)."
    )
    send_burst_per_chat: int = Field(
        1,
        ge=1,
        description="How many messages one chat may receive at once before the rate applies.",
    )

    def consent_keywords(self) -> Keywords:
        """This channel's opt-out/opt-in words as the core matches them (``.match(text)`` gives
        'withdrawn', 'granted' or None), for a plugin that maps buttons or payloads to them."""
        return Keywords(
            self.opt_out_keywords,
            self.opt_in_keywords,
            except_words=SUBSCRIPTION_MENU if self.subscription_menu else (),
        )

    subscription_menu: bool = Field(
        False,
        description="true: /unsubscribe opens the developer API's menu (pick which project to "
        "leave, confirm) instead of opting out of everything; STOP and /stop still do that.",
    )

    residency: ResidencyPolicy | None = Field(
        None,
        description="Which provider regions may receive this channel's data, per category "
        '(e.g. { contact_details = ["local"] }); applies on top of the agent\'s policy.',
    )
    opt_out_keywords: list[str] | dict[str, list[str]] = Field(
        default_factory=list,
        description="More whole-message words that unsubscribe (built in: STOP, UNSUBSCRIBE, "
        "/stop, /unsubscribe, СТОП, ОТПИСАТЬСЯ, BAJA, PARAR...): a list, or per language "
        '{ ru = ["хватит"] }. Recorded in the consent ledger; no notification goes out after.',
    )
    opt_in_keywords: list[str] | dict[str, list[str]] = Field(
        default_factory=list,
        description="More words that subscribe again after an opt-out (built in: START, "
        "UNSTOP, /start, СТАРТ...).",
    )
    opt_out_reply: str = Field(
        "You are unsubscribed and will get no more messages from us. Send START to subscribe "
        "again.",
        description="The confirmation sent for an opt-out word (empty: none, e.g. where the "
        "platform itself confirms, as Twilio does for STOP).",
    )
    opt_in_reply: str = Field(
        "You are subscribed again.",
        description="The confirmation sent when an opted-out contact subscribes again "
        "(empty: none).",
    )


class ProviderConfig(PluginConfig):
    """Keys every ``[providers.NAME]`` table accepts.

    ``region`` and ``personal_data`` feed the residency policy: a provider whose region is not
    "local" is a transfer out of this server, logged in the transfer log; one that may not see
    personal data only ever receives redacted text.
    """

    timeout: float = Field(30.0, gt=0, description="Seconds one model call may take.")
    region: str = Field(
        "unspecified",
        description='Where the model runs: "local" (this server or LAN), or a jurisdiction such '
        'as "RU", "EU", "US". Anything but "local" counts as a transfer.',
    )
    personal_data: bool = Field(
        False,
        description="May this provider receive personal data unredacted (names, phones, "
        "emails...)? When false, text is redacted before it leaves.",
    )
    legal_basis: str | None = Field(
        None,
        description="The legal basis recorded in the transfer log for calls to this provider "
        '(e.g. "contract", "consent", "legitimate interest").',
    )


@dataclasses.dataclass(frozen=True)
class Accepted:
    """The journal's answer to ``accept``: the message is committed (or was already)."""

    message_id: int
    conversation_id: int
    duplicate: bool


@dataclasses.dataclass(frozen=True)
class HistoryItem:
    """One stored message of a thread, oldest first, as ``ChannelContext.history`` returns it."""

    message_id: int
    direction: Literal["in", "out"]
    text: str
    created_at: str
    external_id: str | None


class ChannelContext(Protocol):
    """What the core offers a channel plugin. Safe to call from any task of the daemon."""

    name: str
    """The channel's name: NAME in ``[channels.NAME]``."""
    http: httpx.AsyncClient
    """The daemon's shared HTTP client. Do not close it."""
    public_url: str | None
    """The externally reachable base URL (``[http] public_url``), for registering webhooks."""
    log: logging.Logger

    async def accept(self, inbound: Inbound) -> Accepted:
        """Commit ``inbound`` to the journal; return once it is durable. Raises StoreError if not."""
        ...

    async def accept_many(self, inbounds: Sequence[Inbound]) -> list[Accepted]:
        """Commit several messages in one transaction, in the given order."""
        ...

    async def get_state(self, key: str) -> str | None:
        """Read a small durable value of this channel's (a poll offset, a cursor)."""
        ...

    async def set_state(self, key: str, value: str) -> None:
        """Durably store a small value of this channel's."""
        ...

    async def history(self, thread_key: str, *, limit: int = 50) -> list[HistoryItem]:
        """The last ``limit`` messages of a thread of this channel, oldest first."""
        ...

    async def update_delivery(
        self,
        external_id: str,
        status: Literal["sent", "delivered", "read", "failed"],
        *,
        at: dt.datetime | None = None,
        detail: str | None = None,
    ) -> bool:
        """Record the platform's status callback for a message we sent (``SendResult``'s
        ``external_id``). Repeats and out-of-order statuses are harmless. Returns False if no
        sent message of this channel has that id (the platform may report others' messages)."""
        ...

    async def record_event(self, event: Event) -> int:
        """Store a non-message event (a call, a voicemail) in its thread; commit before
        acknowledging, as with ``accept``. Returns the event's id."""
        ...

    async def record_consent(
        self,
        sender_id: str,
        *,
        purpose: str,
        state: Literal["granted", "withdrawn"],
        source: str,
        detail: str | None = None,
    ) -> bool:
        """Record a consent signal that came outside a message (a browser's Global Privacy
        Control: purpose "marketing", "withdrawn", source "gpc") in the consent ledger of the
        identity ``sender_id`` on this channel. A repeat of the latest state for that purpose is
        not stored again. Returns False when no such identity exists yet (nothing stored: no
        contact is created for someone who never wrote); call again after ``accept``."""
        ...


@runtime_checkable
class Channel(Protocol):
    """A messaging platform. See the module docstring for the life cycle.

    Optional: ``async def register_webhook(self, url: str) -> str`` tells the platform to post
    updates to ``url`` (with the channel's webhook secret) and returns a one-line result; it
    raises PluginError with the platform's reason. The admin UI offers "Register webhook" for a
    running channel in webhook mode whose plugin has it (Telegram, Max).

    Optional: ``def webhooks(self) -> list[gateway.webhooks.WebhookRoute]``: webhook routes the
    public app serves without Quart (a handler takes a ``WebhookRequest`` and returns a
    ``quart.Response``), ~0.3 ms of CPU cheaper per request than a blueprint route. The built-in
    Telegram, WhatsApp, Messenger/Instagram, Max and Twilio channels use it; pages and websockets
    (the web chat) stay on ``blueprint()``."""

    Config: ClassVar[type[ChannelConfig]]

    def __init__(self, name: str, config: Any, context: ChannelContext) -> None: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive messages until cancelled; call ``task_status.started()`` when ready."""
        ...

    def blueprint(self) -> quart.Blueprint | None:
        """HTTP routes to mount on the public bind (webhooks, pages), or None."""
        ...

    async def send(self, outbound: Outbound) -> SendResult:
        """Send one message or raise SendError."""
        ...


class ProviderContext(Protocol):
    """What the core offers an LLM provider plugin."""

    name: str
    http: httpx.AsyncClient
    config_dir: str
    """Directory of the config file, for resolving relative paths (knowledge files)."""
    log: logging.Logger


@runtime_checkable
class LLMProvider(Protocol):
    """A language model endpoint."""

    Config: ClassVar[type[ProviderConfig]]

    def __init__(self, name: str, config: Any, context: ProviderContext) -> None: ...

    async def complete(self, request: CompletionRequest) -> Completion:
        """Answer ``request`` or raise ProviderError. Cancellation must propagate."""
        ...

    async def aclose(self) -> None:
        """Release connections. Called once by the core; a second call must be harmless."""
        ...


class PluginInfo:
    """A plugin found through an entry point (or handed in by a test).

    ``cls`` imports the plugin's module on first access, so a registry lists every installed
    plugin while the process pays only for the ones its config names. Equal when kind, name,
    source and class are (a reload compares the entries of two configs)."""

    __slots__ = ("_cls", "_entry_point", "kind", "name", "source")

    def __init__(
        self,
        kind: Literal["channel", "llm"],
        name: str,
        cls: type[Any] | None = None,
        source: str = "",
        *,
        entry_point: importlib.metadata.EntryPoint | None = None,
    ) -> None:
        if cls is None and entry_point is None:
            raise TypeError("PluginInfo needs a class or an entry point")
        self.kind = kind
        self.name = name
        self.source = source
        """Where it comes from: "sovereign-gateway 0.1.0 (plugins.telegram:TelegramChannel)"."""
        self._cls = cls
        self._entry_point = entry_point

    @property
    def loaded(self) -> bool:
        """Whether the class has been imported."""
        return self._cls is not None

    @property
    def cls(self) -> type[Any]:
        """The plugin class, imported now if it was not yet (the import's error propagates)."""
        if self._cls is None:
            assert self._entry_point is not None
            self._cls = self._entry_point.load()
        return self._cls

    def docstrings(self) -> tuple[str, str] | None:
        """The docstrings of the class and of its ``Config`` ('' where missing). Read from the
        source while the class is not imported (:mod:`gateway.plugin_docs`); None when that
        source cannot be followed."""
        if self._cls is None:
            from gateway import plugin_docs

            assert self._entry_point is not None
            return plugin_docs.docstrings(self._entry_point)
        config = getattr(self._cls, "Config", None)
        return self._cls.__doc__ or "", (config.__doc__ or "") if config else ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PluginInfo):
            return NotImplemented
        return (self.kind, self.name, self.source, self.cls) == (
            other.kind,
            other.name,
            other.source,
            other.cls,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.name, self.source))

    def __repr__(self) -> str:
        return f"PluginInfo({self.kind!r}, {self.name!r}, source={self.source!r})"


class PluginTable(Mapping[str, PluginInfo]):
    """The plugins of one kind, by name. Looking one up (``table[name]``, ``in``, ``get``)
    imports only that plugin; iterating or ``len`` imports them all, so a listing shows exactly
    the plugins that load (those that fail move to :attr:`Registry.failures`)."""

    def __init__(self, registry: Registry, kind: Literal["channel", "llm"]) -> None:
        self._registry = registry
        self._kind = kind
        self._entries: dict[str, PluginInfo] = {}

    def names(self) -> list[str]:
        """The installed names, imported or not (nothing is imported)."""
        return list(self._entries)

    def unloaded(self, name: str) -> PluginInfo:
        """The entry for ``name`` without importing it (KeyError if not installed)."""
        return self._entries[name]

    def __getitem__(self, name: str) -> PluginInfo:
        info = self._entries[name]
        if not info.loaded and not self._registry._load(self, info):
            raise KeyError(name)
        return info

    def __iter__(self) -> Iterator[str]:
        for info in list(self._entries.values()):
            if not info.loaded:
                self._registry._load(self, info)
        return iter(list(self._entries))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"PluginTable({self._kind!r}, {self.names()!r})"


class Registry:
    """The plugins this process may use. Built by :func:`load_registry`, passed around.

    ``channels`` and ``providers`` map names to :class:`PluginInfo`; a plugin's module is
    imported when it is looked up (the config names it), not when the registry is built."""

    def __init__(self) -> None:
        self.channels = PluginTable(self, "channel")
        self.providers = PluginTable(self, "llm")
        self._failures: dict[str, str] = {}
        self._lock = threading.RLock()

    @property
    def failures(self) -> dict[str, str]:
        """Entry points that failed to import: "group:name" -> error text. Reading it imports
        every plugin not imported yet (it is for listings: ``gateway plugins``)."""
        for table in (self.channels, self.providers):
            for _ in table:
                pass
        return self._failures

    def add(
        self, kind: Literal["channel", "llm"], name: str, cls: type[Any], source: str = ""
    ) -> None:
        source = source or f"{cls.__module__}:{cls.__qualname__}"
        self._table(kind)._entries[name] = PluginInfo(kind, name, cls, source)

    def add_entry_point(
        self, kind: Literal["channel", "llm"], entry_point: importlib.metadata.EntryPoint
    ) -> None:
        """List a plugin without importing it (imported on first lookup)."""
        ep = entry_point
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
        info = PluginInfo(kind, ep.name, source=f"{dist} ({ep.value})", entry_point=ep)
        self._table(kind)._entries[ep.name] = info

    def lookup(self, kind: Literal["channel", "llm"], name: str) -> PluginInfo:
        table = self._table(kind)
        info = table.get(name)
        if info is not None:
            return info
        group = _group(kind)
        failed = self._failures.get(f"{group}:{name}")
        if failed:
            raise PluginError(f"{kind} plugin {name!r} is installed but failed to load: {failed}")
        known = ", ".join(sorted(table.names())) or "none"
        raise PluginError(
            f"unknown {kind} plugin {name!r}; installed: {known}. Install the package that "
            f"provides it (entry point group {group!r}) or fix the name"
        )

    def _table(self, kind: Literal["channel", "llm"]) -> PluginTable:
        return self.channels if kind == "channel" else self.providers

    def _load(self, table: PluginTable, info: PluginInfo) -> bool:
        """Import ``info``'s class; on failure record it and drop the entry. True if loaded."""
        with self._lock:
            if table._entries.get(info.name) is not info:
                return False  # dropped (failed) by another thread meanwhile
            try:
                info.cls  # noqa: B018  (imports the module)
            except Exception as exc:  # a broken third-party plugin must not stop the daemon
                self._failures[f"{_group(info.kind)}:{info.name}"] = f"{type(exc).__name__}: {exc}"
                del table._entries[info.name]
                return False
            return True


def _group(kind: str) -> str:
    return CHANNEL_GROUP if kind == "channel" else LLM_GROUP


def load_registry(*, only: Collection[str] | None = None) -> Registry:
    """Find plugins through entry points, without importing them.

    A plugin's module is imported when the config names it (:meth:`Registry.lookup`), or when
    a listing iterates the tables or reads ``failures`` (``gateway plugins``). ``only`` (or the
    ``GATEWAY_PLUGINS`` environment variable, comma-separated) limits which plugin names are
    listed; a plugin that fails to import is recorded in ``failures`` rather than stopping the
    daemon, and naming it in the config gives that error.
    """
    if only is None and os.environ.get("GATEWAY_PLUGINS"):
        only = [p.strip() for p in os.environ["GATEWAY_PLUGINS"].split(",") if p.strip()]
    registry = Registry()
    for kind, group in (("channel", CHANNEL_GROUP), ("llm", LLM_GROUP)):
        for ep in importlib.metadata.entry_points(group=group):
            if only is not None and ep.name not in only:
                continue
            registry.add_entry_point(kind, ep)  # type: ignore[arg-type]
    return registry
