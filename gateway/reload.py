"""The parts of a running gateway that follow its config, and the reload that changes them live.

At start-up gateway.agents.AgentSet builds every provider and agent and :class:`Reloader` starts
every channel, each under :func:`supervise` in its own cancel scope inside the root nursery. On
SIGHUP :func:`reload_from_disk` reads the config file again; if it is valid,
:meth:`Reloader.apply` changes only what differs (:func:`diff_configs`), in this order:

1. prepare, touching nothing that runs: new providers, agents and channel plugins are built;
   any failure rejects the reload and the old config keeps running unchanged;
2. agents and providers: the new set replaces ``Pipeline.agents`` at once. An answer in flight
   finishes with the agent (and providers) it started with; a replaced provider is closed once
   no answer uses it (at shutdown at the latest);
3. channels: a removed or changed one is stopped (its supervisor's cancel scope); an added or
   changed one is built, registered with the pipeline and started. An unchanged channel is not
   touched: a long poll continues, a web chat socket stays open. What waits for a stopped
   channel (journal entries, outbox rows, platform retries) waits; nothing is lost, and an
   outbox row of a removed channel is sent if the channel comes back;
4. the HTTP apps are rebuilt and swapped (gateway.http.swap), log levels applied, and the
   pipeline looks at pending work again.

Keys in :data:`RESTART_ONLY` cannot change in a running process; a reload applies the rest and
names them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Literal, TypeVar

import trio
from quart_trio import QuartTrio

from gateway import notify
from gateway.agents import AgentSet, sync_knowledge
from gateway.config import EMBEDDED, AgentConfig, GatewayConfig, load_config
from gateway.errors import GatewayError, StoreError
from gateway.http.admin import make_admin_app
from gateway.http.mounts import admin_blueprints, public_blueprints
from gateway.http.public import PublicApp, make_public_app
from gateway.http.swap import SwappableApp
from gateway.logs import RedactSecrets, collect_secrets
from gateway.outbound import AllowlistResolver
from gateway.pipeline.core import Pipeline
from gateway.plugin import Channel, ChannelContext, Registry
from gateway.services import Services
from gateway.store import Store
from gateway.store.journal import pending_conversations_txn
from gateway.store.outbox import open_conversations_txn

if TYPE_CHECKING:
    from gateway.managed import Overlay

log = logging.getLogger("gateway")

RESTART_ONLY = (
    ("gateway", "data_dir"),
    ("gateway", "master_key"),
    ("gateway", "log_format"),
    ("gateway", "workers"),
    ("http", "public_bind"),
    ("http", "admin_bind"),
)
"""Keys read once at start-up (the open database, the key that opened it, the log handler, the
answer limiter, the listening sockets): a reload names them and they apply at the next start."""

_QUIET_LOGGERS = ("httpx", "httpcore", "telegram", "hpack", "hypercorn.access")
"""gateway.logs.setup_logging keeps these at WARNING unless [gateway] log_levels says otherwise."""


class ReloadRefused(GatewayError):
    """The new config is valid but could not be put to work; the old one keeps running."""


async def supervise(
    label: str,
    run: Callable[..., Awaitable[None]],
    restarts: dict[str, int],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a plugin's ``run``; if it crashes or returns, log, count and restart it with backoff.

    Reports started after the first start (or the first failure: a plugin that cannot start must
    not keep the rest of the daemon from starting). Cancellation passes straight through.
    """
    delay = 1.0
    reported = False
    while True:
        began = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(run)
                if not reported:
                    task_status.started()
                    reported = True
                log.info("%s started", label)
        except Exception as exc:
            log.error("%s crashed: %s", label, _describe(exc), exc_info=exc)
        else:
            log.warning("%s stopped by itself", label)
        if not reported:
            task_status.started()
            reported = True
        restarts[label] = restarts.get(label, 0) + 1
        if trio.current_time() - began > 60:
            delay = 1.0
        log.info("restarting %s in %.0fs", label, delay)
        await trio.sleep(delay)
        delay = min(delay * 2, 60.0)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _describe(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}"


# -- what changed --------------------------------------------------------------------------

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Delta:
    """Names added, removed and changed between two tables of a config."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> str:
        parts = [f"+{n}" for n in self.added] + [f"-{n}" for n in self.removed]
        return " ".join(parts + [f"~{n}" for n in self.changed])


def _delta(old: Mapping[str, T], new: Mapping[str, T], same: Callable[[T, T], bool]) -> Delta:
    return Delta(
        tuple(n for n in new if n not in old),
        tuple(n for n in old if n not in new),
        tuple(n for n in new if n in old and not same(old[n], new[n])),
    )


@dataclasses.dataclass(frozen=True)
class Changes:
    """What a reload changes (:func:`diff_configs`). ``channels`` counts enabled ones only:
    enabling one adds it, disabling one removes it."""

    channels: Delta
    agents: Delta
    providers: Delta
    restart_needed: tuple[str, ...] = ()
    """``[section] key`` of the :data:`RESTART_ONLY` keys that differ from the running ones."""

    def describe(self) -> str:
        parts = [
            f"{kind} {delta.describe()}"
            for kind, delta in (
                ("channels", self.channels),
                ("agents", self.agents),
                ("providers", self.providers),
            )
            if delta
        ]
        return "; ".join(parts) or "no channel, agent or provider changed"


def diff_configs(old: GatewayConfig, new: GatewayConfig, *, boot: GatewayConfig) -> Changes:
    """What applying ``new`` over ``old`` changes. A channel whose table differs in any key
    counts as changed (it is restarted), as does every channel when ``[http] public_url`` changes
    (plugins register webhooks with it); an agent counts as changed when its table,
    ``local_only`` or one of its providers changed. ``boot`` is the config the process started
    with, for the keys only a restart applies."""
    url_moved = old.http.public_url != new.http.public_url
    channels = _delta(
        {n: e for n, e in old.channels.items() if e.config.enabled},
        {n: e for n, e in new.channels.items() if e.config.enabled},
        lambda a, b: not url_moved and a.plugin == b.plugin and a.config == b.config,
    )
    providers = _delta(
        old.providers, new.providers, lambda a, b: a.plugin == b.plugin and a.config == b.config
    )
    moved = set(providers.changed)

    def same_agent(a: AgentConfig, b: AgentConfig) -> bool:
        return a == b and old.local_only == new.local_only and not moved & {b.provider, *b.failover}

    restart = tuple(
        f"[{section}] {key}"
        for section, key in RESTART_ONLY
        if getattr(getattr(boot, section), key) != getattr(getattr(new, section), key)
    )
    return Changes(channels, _delta(old.agents, new.agents, same_agent), providers, restart)


# -- channels and the reload ---------------------------------------------------------------


@dataclasses.dataclass
class _ChannelRun:
    plugin: Channel
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    stopped: trio.Event = dataclasses.field(default_factory=trio.Event)


class Reloader:
    """Runs the channels of the current config and applies a new config (see the module doc).

    Channels run in ``nursery`` (the root nursery), each in its own cancel scope. Reloads are
    serialised; :meth:`close` (shutdown) waits for one in progress and refuses later ones.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        nursery: trio.Nursery,
        pipeline: Pipeline,
        agents: AgentSet,
        store: Store,
        resolver: AllowlistResolver,
        restarts: dict[str, int],
        channel_context: Callable[[str, str | None], ChannelContext],
        services: Services | None = None,
    ) -> None:
        self.services = services
        self.config = config
        self.boot = config
        self.nursery = nursery
        self.pipeline = pipeline
        self.agents = agents
        self.store = store
        self.resolver = resolver
        self.restarts = restarts
        self._channel_context = channel_context
        self._runs: dict[str, _ChannelRun] = {}
        self._lock = trio.Lock()
        self.closing = False
        self.public_app = SwappableApp(make_public_app({}))
        self.admin_app = SwappableApp(self._admin_app(config))

    def _public_app(self) -> PublicApp:
        extra = public_blueprints(self.services) if self.services is not None else []
        return make_public_app(self.plugins, extra)

    def _admin_app(self, config: GatewayConfig) -> QuartTrio:
        extra = admin_blueprints(self.services) if self.services is not None else []
        return make_admin_app(config, self.pipeline, self.store, self.restarts, extra)

    @property
    def plugins(self) -> dict[str, Channel]:
        """The running channel plugins, in config order."""
        return {n: self._runs[n].plugin for n in self.config.channels if n in self._runs}

    def create_channels(self) -> dict[str, Channel]:
        """Build every enabled channel of the config and register it with the pipeline (before
        the pipeline starts: recovered outbox rows find their channel)."""
        created = {}
        for name, entry in self.config.channels.items():
            if entry.config.enabled:
                created[name] = self._create(name)
                self._register(name, created[name])
        return created

    async def run_channels(self, created: Mapping[str, Channel]) -> None:
        """Start ``created`` channels, each supervised; then serve their routes."""
        for name, plugin in created.items():
            await self._run(name, plugin)
        await self.public_app.swap(self._public_app())

    async def close(self) -> None:
        """Refuse reloads from now on; return once a reload in progress has finished."""
        async with self._lock:
            self.closing = True

    async def apply(self, new: GatewayConfig) -> Changes:
        """Run ``new`` instead of the current config, changing only what differs. Raises
        ReloadRefused, with everything still as it was, if it cannot be put to work."""
        async with self._lock:
            if self.closing:
                raise ReloadRefused("the gateway is shutting down")
            old = self.config
            changes = diff_configs(old, new, boot=self.boot)
            # 1. prepare: nothing running is touched until everything new exists.
            nxt = await self.agents.build(
                new,
                keep_providers=old.providers.keys() - {*changes.providers.changed},
                keep_agents=old.agents.keys() - {*changes.agents.changed},
            )
            created: dict[str, Channel] = {}
            try:
                for name in (*changes.channels.added, *changes.channels.changed):
                    try:
                        created[name] = self._create(name, new)
                    except Exception as exc:
                        raise ReloadRefused(
                            f"[channels.{name}] could not be created: {exc}"
                        ) from exc
                # Also picks up documents added to an unchanged agent's knowledge folder.
                await sync_knowledge(new, self.store)
            except BaseException as exc:
                await self.agents.discard(nxt)
                if isinstance(exc, Exception) and not isinstance(exc, GatewayError):
                    raise ReloadRefused(f"knowledge could not be indexed: {exc}") from exc
                raise
            # The previous config's hosts stay allowed until the next reload: a replaced
            # provider may still finish an answer, a stopped channel its last send.
            self.resolver.allowed = AllowlistResolver(
                old.outbound_hosts() | new.outbound_hosts()
            ).allowed
            # 2. agents and providers
            retired, users = self.agents.install(nxt)
            self.pipeline.agents = self.agents.agents
            if retired:
                self.nursery.start_soon(self.agents.retire, retired, users)
            # 3. channels
            for name in (*changes.channels.removed, *changes.channels.changed):
                await self._stop(name)
            for name in changes.channels.removed:
                del self.pipeline.channels[name]
            self.config = new
            if self.services is not None:
                self.services.config = new
            for name, plugin in created.items():
                self._register(name, plugin)
                await self._run(name, plugin)
            # 4. HTTP, logging, pending work
            if changes.channels or old.sections != new.sections:
                await self.public_app.swap(self._public_app())
            await self.admin_app.swap(self._admin_app(new))
            _apply_logging(old, new)
            await self._wake_pipeline()
            return changes

    async def _wake_pipeline(self) -> None:
        """Look at pending work again: messages left for a missing agent, replies left for a
        missing channel."""
        try:
            pending = await self.store.read("pending journal", pending_conversations_txn)
            unsent = await self.store.read("open outbox", open_conversations_txn)
        except StoreError as exc:  # the reload is applied; this work waits for its next event
            log.warning("config reload: could not look for pending work (%s)", exc)
            return
        for conversation in pending:
            self.pipeline.answers.notify(conversation)
        for conversation in unsent:
            self.pipeline.deliveries.notify(conversation)

    def _create(self, name: str, config: GatewayConfig | None = None) -> Channel:
        config = config or self.config
        entry = config.channels[name]
        context = self._channel_context(name, config.http.public_url)
        plugin: Channel = entry.plugin.cls(name, entry.config, context)
        return plugin

    def _register(self, name: str, plugin: Channel) -> None:
        self.pipeline.add_channel(name, self.config.channels[name].config, plugin)
        self.pipeline.metrics.declare_channel(name)

    async def _run(self, name: str, plugin: Channel) -> None:
        run = _ChannelRun(plugin)
        self._runs[name] = run
        await self.nursery.start(self._supervised, name, run)

    async def _supervised(
        self, name: str, run: _ChannelRun, *, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            with run.scope:
                await supervise(
                    f"channel {name}", run.plugin.run, self.restarts, task_status=task_status
                )
        finally:
            run.stopped.set()

    async def _stop(self, name: str) -> None:
        run = self._runs.pop(name)
        run.scope.cancel()
        await run.stopped.wait()
        log.info("channel %s stopped (config reload)", name)


def _apply_logging(old: GatewayConfig, new: GatewayConfig) -> None:
    """[gateway] log_level and log_levels, as gateway.logs.setup_logging set them at start-up;
    secrets the new config names are redacted from then on too."""
    if new.gateway.log_level != old.gateway.log_level:
        logging.getLogger().setLevel(new.gateway.log_level)
    before, after = old.gateway.log_levels, new.gateway.log_levels
    for name in before.keys() - after.keys():
        logging.getLogger(name).setLevel(
            logging.WARNING if name in _QUIET_LOGGERS else logging.NOTSET
        )
    for name, level in after.items():
        if before.get(name) != level:
            logging.getLogger(name).setLevel(level)
    secrets = collect_secrets(new)
    for handler in logging.getLogger().handlers:
        for found in handler.filters:
            if isinstance(found, RedactSecrets):
                found.secrets.update(RedactSecrets(secrets).secrets)


async def load_again(
    config: GatewayConfig,
    registry: Registry,
    *,
    environ: Mapping[str, str] | None = None,
    managed: Overlay | Literal["auto"] = "auto",
) -> GatewayConfig:
    """``config``'s file (or the embedded default) loaded again, in a thread."""
    source = None if config.source == EMBEDDED else config.source
    return await trio.to_thread.run_sync(
        functools.partial(load_config, source, registry, environ=environ, managed=managed)
    )


async def reload_checked(
    reloader: Reloader, registry: Registry, *, environ: Mapping[str, str] | None = None
) -> Changes:
    """Load the config file and the admin UI's tables again and apply them; raises
    GatewayError (the old config keeps running) if they are refused. Logs nothing."""
    return await reloader.apply(await load_again(reloader.config, registry, environ=environ))


async def reload_from_disk(
    reloader: Reloader, registry: Registry, *, environ: Mapping[str, str] | None = None
) -> Changes | None:
    """Read the running config's file again and apply it (what SIGHUP does). Logs the outcome;
    returns the changes, or None when the file was rejected and the old config keeps running."""
    source = reloader.config.source
    notify.notify("RELOADING=1")
    try:
        changes = await reload_checked(reloader, registry, environ=environ)
    except GatewayError as exc:
        log.error("config reload rejected; still running the previous config: %s", exc)
        notify.notify_ready("config reload rejected (see the log); running the previous config")
        return None
    except Exception:
        # A bug, not a config problem: keep serving rather than take the daemon down.
        log.exception(
            "config reload failed part-way (a bug); the gateway keeps running, but restart it "
            "to be sure it runs the config on disk"
        )
        notify.notify_ready("config reload failed (see the log)")
        return None
    log.info("config reloaded from %s: %s", source, changes.describe())
    if changes.restart_needed:
        log.warning(
            "config reload: %s changed; only a restart applies that (systemctl restart "
            "sovereign-gateway; SIGTERM drains first)",
            ", ".join(changes.restart_needed),
        )
    notify.notify_ready(f"config reloaded: {changes.describe()}")
    return changes
