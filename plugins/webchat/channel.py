"""The website chat channel: a widget any allowed site embeds with one script tag, and the same
widget as a full page at ``/chat/NAME/``.

Routes under ``/chat/NAME/`` (see :mod:`plugins.webchat.web` for the HTTP ones):
``widget.js`` and ``config`` (what the widget shows), the websocket ``ws``, and its fallback for
networks that block websockets: ``events`` (server-sent events) and ``send`` (POST).

The plugin only carries messages: a visitor's message is committed with ``context.accept`` and
then acknowledged to the browser; the daemon's pipeline answers it through ``send``, which pushes
the reply to every open tab of that visitor, whatever carries it. Replies are stored by the core
before ``send``, so a visitor who is not connected sees them in the history on the next visit.
The frame protocol is described in :mod:`plugins.webchat.convert`.

A visitor is known by an opaque random id kept in the host page's localStorage; the conversation
is stored under a keyed hash of it (:func:`convert.thread_key`, key in the channel's state), so
the database never holds the id that reads a conversation.
"""

from __future__ import annotations

import collections
import json
import secrets
from typing import Any, cast

import quart
import trio

from gateway.errors import SendError
from gateway.messages import Inbound, Outbound, SendResult
from gateway.plugin import ChannelContext

from . import convert, web
from .config import WebchatConfig

OUTGOING_BUFFER = 64
"""Frames queued for one tab; a tab that falls this far behind is closed (it reconnects and
reads the history) rather than making the dispatcher wait for it."""
WRITE_TIMEOUT = 30.0
"""Seconds one frame may take to reach a tab before its connection is dropped."""
MAX_SOCKETS_PER_VISITOR = 32
MAX_BAD_FRAMES = 20
"""Refused frames one connection may send before it is closed: a page never sends any."""
HISTORY_LIMIT = 100
SECRET_STATE = "visitor_key"
"""Channel state key of the HMAC key that maps visitor ids to thread keys (64 hex digits)."""
MAX_REMEMBERED = 10_000
"""Visitors whose POST rate limit and recorded GPC signal are kept in memory, newest last."""
GPC_PURPOSE = "marketing"


class WebchatChannel:
    """A chat on your own website. See :class:`WebchatConfig` for its settings."""

    Config = WebchatConfig

    def __init__(
        self, name: str, config: WebchatConfig | dict[str, Any], context: ChannelContext
    ) -> None:
        self.name = name
        self.config = (
            config if isinstance(config, WebchatConfig) else WebchatConfig.model_validate(config)
        )
        self.context = context
        self.log = context.log
        self.running = False
        self._secret: bytes | None = None
        self._tabs: dict[str, set[Tab]] = {}
        """Live tabs per thread (after hello), for send()."""
        self._all: set[Tab] = set()
        """Every open tab, also before hello, for closing them all when run() ends."""
        self._buckets: collections.OrderedDict[str, convert.TokenBucket] = collections.OrderedDict()
        self.gpc_recorded: collections.OrderedDict[str, None] = collections.OrderedDict()
        """Threads whose GPC signal is in the consent ledger (no second write per message)."""
        self._consent_warned = False

    # -- life cycle --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the visitor key, then accept tabs until cancelled; close the open ones at the end."""
        self._secret = await self._visitor_key()
        self.running = True
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.running = False
            for tab in list(self._all):
                tab.close(1001, "the chat server is restarting")

    async def _visitor_key(self) -> bytes:
        stored = await self.context.get_state(SECRET_STATE)
        if stored:
            return bytes.fromhex(stored)
        key = secrets.token_bytes(32)
        await self.context.set_state(SECRET_STATE, key.hex())
        return key

    # -- sending -----------------------------------------------------------------------------

    async def send(self, outbound: Outbound) -> SendResult:
        """Push the reply to every open tab of the visitor. Nobody connected is not an error:
        the core has stored the reply and the next visit shows it in the history."""
        if not self.valid_thread(outbound.thread_key):
            raise SendError(f"{outbound.thread_key!r} is not a web chat thread", permanent=True)
        await trio.lowlevel.checkpoint()
        ref = (
            convert.message_ref(outbound.message_id)
            if outbound.message_id is not None
            else convert.reply_id(outbound.outbox_id)
        )
        frame = convert.reply_frame(ref, outbound.text)
        for tab in list(self._tabs.get(outbound.thread_key, ())):
            tab.push(frame)
        return SendResult(external_id=convert.reply_id(outbound.outbox_id))

    def valid_visitor(self, visitor: str) -> bool:
        """Whether ``visitor`` has the shape of an id the widget makes (hello and posts check it)."""
        return convert.valid_visitor(visitor)

    def thread_key(self, visitor: str) -> str:
        """The thread a visitor id stands for (only while running: the key is loaded by run)."""
        assert self._secret is not None, "thread_key before run() loaded the visitor key"
        return convert.thread_key(self._secret, visitor)

    def valid_thread(self, thread: str) -> bool:
        return convert.valid_thread(thread)

    # -- what every transport shares ---------------------------------------------------------

    async def attach(self, tab: Tab, visitor: str, *, gpc: bool) -> None:
        """Register ``tab`` for its visitor's replies and queue the history frame, or queue an
        error and close the tab."""
        if tab.thread is not None:
            raise convert.FrameError("bad_frame", "hello was already sent on this connection")
        thread = self.thread_key(visitor)
        tabs = self._tabs.setdefault(thread, set())
        if len(tabs) >= MAX_SOCKETS_PER_VISITOR:
            tab.push(
                convert.error_frame(
                    "too_many_connections", "too many open chat windows", retry=True
                )
            )
            tab.close(1008, "too many open chat windows")
            return
        # Registered before reading the history: a reply sent in between is then pushed live
        # (and may also be in the history; the widget dedupes by id) instead of being missed.
        tab.thread = thread
        tabs.add(tab)
        try:
            items = await self.context.history(thread, limit=HISTORY_LIMIT)
        except Exception as exc:  # the widget reconnects with backoff
            self.log.warning("web chat: could not read a conversation's history (%s)", exc)
            tab.push(
                convert.error_frame("history_failed", "could not load the conversation", retry=True)
            )
            tab.close(1011, "could not load the conversation")
            return
        tab.push(convert.history_frame(items, thread))
        if gpc and items:  # no history: nobody the store knows yet (recorded when they write)
            await self.note_gpc(thread)

    def detach(self, tab: Tab) -> None:
        self._all.discard(tab)
        if tab.thread is not None:
            tabs = self._tabs.get(tab.thread)
            if tabs is not None:
                tabs.discard(tab)
                if not tabs:
                    del self._tabs[tab.thread]

    async def submit(self, thread: str, message: convert.Message, *, gpc: bool) -> dict[str, Any]:
        """Commit a visitor's message; return the ack, or the error frame to answer with."""
        inbound = Inbound(
            account=self.name,
            external_id=convert.external_id(thread, message.client_id),
            thread_key=thread,
            sender_id=thread,
            text=message.text,
        )
        try:
            accepted = await self.context.accept(inbound)
        except Exception as exc:  # not acknowledged: the widget sends it again
            self.log.warning(
                "web chat: could not commit a message (%s); the page will resend it", exc
            )
            return convert.error_frame(
                "store_failed",
                "the message could not be saved yet",
                client_id=message.client_id,
                retry=True,
            )
        if gpc:
            await self.note_gpc(thread)
        return convert.ack_frame(message.client_id, duplicate=accepted.duplicate)

    def post_allowance(self, thread: str) -> float:
        """Take one message from the thread's POST rate limit: 0.0, or the seconds to wait."""
        bucket = self._buckets.pop(thread, None) or convert.TokenBucket(
            self.config.message_rate, self.config.message_burst, trio.current_time()
        )
        self._buckets[thread] = bucket
        while len(self._buckets) > MAX_REMEMBERED:
            self._buckets.popitem(last=False)
        return bucket.take(trio.current_time())

    async def note_gpc(self, thread: str) -> None:
        """Record the visitor's Global Privacy Control signal in the consent ledger: purpose
        "marketing" withdrawn, source "gpc". Only for a visitor the store knows (one who has
        written); one who has not is recorded with their first message. Never fails a message:
        the signal comes again with the next request."""
        if thread in self.gpc_recorded:
            return
        record = getattr(self.context, "record_consent", None)
        if record is None:
            if not self._consent_warned:
                self._consent_warned = True
                self.log.warning(
                    "web chat: this gateway's channel context cannot record consent "
                    "(ChannelContext.record_consent); Global Privacy Control signals are "
                    "not recorded"
                )
            return
        try:
            known = await record(
                thread, purpose=GPC_PURPOSE, state="withdrawn", source="gpc", detail=None
            )
        except Exception as exc:
            self.log.warning("web chat: could not record a GPC signal (%s)", exc)
            return
        if known:
            self.gpc_recorded[thread] = None
            while len(self.gpc_recorded) > MAX_REMEMBERED:
                self.gpc_recorded.popitem(last=False)

    def open_tab(self) -> Tab:
        tab = Tab()
        self._all.add(tab)
        return tab

    # -- HTTP --------------------------------------------------------------------------------

    def blueprint(self) -> quart.Blueprint:
        """The page, the widget's script and settings, the websocket and its fallback."""
        blueprint = web.blueprint(self)
        blueprint.add_websocket("/ws", "socket", self._websocket)
        return blueprint

    # -- the websocket -----------------------------------------------------------------------

    async def _websocket(self) -> quart.Response | None:
        # The object itself, not the context-local proxy: the write loop runs in another task.
        ws = cast(Any, quart.websocket)._get_current_object()
        if not self.running:
            return quart.Response("the chat is not running", status=503)
        origin = ws.headers.get("Origin")
        refused = convert.origin_refusal(
            origin,
            ws.headers.get("Host"),
            self.config.allowed_origins,
            self.context.public_url,
            channel=self.name,
        )
        if refused:
            self.log.warning("web chat: refused a socket from origin %r (%s)", origin, refused)
            return quart.Response(refused, status=403, content_type="text/plain; charset=utf-8")
        header_gpc = ws.headers.get("Sec-GPC", "").strip() == "1"
        await ws.accept()
        tab = self.open_tab()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, ws, tab, nursery.cancel_scope)
                await self._read_loop(ws, tab, header_gpc)
        finally:
            self.detach(tab)
        return None

    async def _write_loop(self, ws: Any, tab: Tab, scope: trio.CancelScope) -> None:
        # The only task that writes to this socket: send() and the read loop queue frames here.
        async for frame in tab.outgoing:
            with trio.move_on_after(WRITE_TIMEOUT) as write:
                await ws.send(json.dumps(frame, ensure_ascii=False))
            if write.cancelled_caught:
                # A tab that stopped reading would hold this task (and its queue) forever.
                self.log.info("web chat: dropped a connection that stopped reading")
                scope.cancel()
                return
        with trio.move_on_after(WRITE_TIMEOUT):
            await ws.close(tab.close_code, tab.close_reason)
        scope.cancel()

    async def _read_loop(self, ws: Any, tab: Tab, header_gpc: bool) -> None:
        bucket = convert.TokenBucket(
            self.config.message_rate, self.config.message_burst, trio.current_time()
        )
        bad_frames = 0
        while not tab.closing:
            raw = await ws.receive()
            try:
                frame = convert.parse_frame(
                    raw,
                    max_message_chars=self.config.max_message_chars,
                    valid_visitor=self.valid_visitor,
                )
                if isinstance(frame, convert.Hello):
                    tab.gpc = header_gpc or frame.gpc
                    await self.attach(tab, frame.visitor, gpc=tab.gpc)
                elif isinstance(frame, convert.Ping):
                    tab.push({"type": "pong"})
                elif tab.thread is None:
                    raise convert.FrameError(
                        "no_hello", 'send {"type": "hello", "visitor": ID} first'
                    )
                else:
                    wait = bucket.take(trio.current_time())
                    if wait:
                        tab.push(convert.rate_limited_frame(frame.client_id, wait))
                        continue
                    tab.push(await self.submit(tab.thread, frame, gpc=tab.gpc))
            except convert.FrameError as exc:
                tab.push(exc.frame())
                bad_frames += 1
                if exc.code == "bad_visitor" or bad_frames > MAX_BAD_FRAMES:
                    tab.close(
                        1008, exc.reason if exc.code == "bad_visitor" else "too many bad frames"
                    )


class Tab:
    """One browser tab's connection (a websocket or an event stream): frames for it wait in a
    memory channel that only the connection's own writer drains, so any task may queue without
    touching the connection."""

    def __init__(self) -> None:
        self._send, self.outgoing = trio.open_memory_channel[dict[str, Any]](OUTGOING_BUFFER)
        self.thread: str | None = None
        self.gpc = False
        self.closing = False
        self.close_code = 1000
        self.close_reason = ""

    def push(self, frame: dict[str, Any]) -> None:
        if self.closing:
            return
        try:
            self._send.send_nowait(frame)
        except trio.WouldBlock:
            # The tab stopped reading; everything it misses is in the history it gets on
            # reconnecting.
            self.close(1013, "too far behind; reconnect")

    def close(self, code: int, reason: str) -> None:
        """Send what is queued, then close the connection with ``code``."""
        if not self.closing:
            self.closing = True
            self.close_code = code
            self.close_reason = reason
            self._send.close()
