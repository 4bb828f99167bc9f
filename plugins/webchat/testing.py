"""A web chat client for tests: speaks the page's protocol over a real websocket, as a tab would.

Usable against a channel served alone (``gateway.testing.conformance.serve_blueprint``) or against
the whole daemon. Needs ``trio-websocket`` (a test dependency).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, urlsplit

from gateway.plugin import ChannelContext

from . import convert
from .channel import WebchatChannel


class ChatClient:
    """One browser tab. Frames not waited for are kept: ``replies`` collects every ``reply``
    frame in arrival order, ``frames`` every frame."""

    def __init__(self, ws: Any, visitor: str) -> None:
        self.ws = ws
        self.visitor = visitor
        self.frames: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        """The messages of the history frame that answered hello."""
        self._unread: list[dict[str, Any]] = []

    async def hello(self) -> list[dict[str, Any]]:
        """Say hello; return the history's messages."""
        await self.send_frame({"type": "hello", "visitor": self.visitor})
        frame = await self.wait_for(lambda f: f["type"] in ("history", "error"))
        assert frame["type"] == "history", f"hello was answered with {frame}"
        messages: list[dict[str, Any]] = frame["messages"]
        return messages

    async def send_message(self, text: str, client_id: str | None = None) -> dict[str, Any]:
        """Send a message; return the server's answer for it (an ``ack`` or an ``error``)."""
        client_id = client_id or convert.new_client_id()
        await self.send_frame({"type": "message", "client_id": client_id, "text": text})
        return await self.wait_for(
            lambda f: f.get("client_id") == client_id and f["type"] in ("ack", "error")
        )

    async def send_frame(self, frame: Any) -> None:
        await self.ws.send_message(frame if isinstance(frame, str) else json.dumps(frame))

    async def sync(self) -> None:
        """Ping and wait for the pong: every frame the server queued before it has arrived."""
        await self.send_frame({"type": "ping"})
        await self.wait_for(lambda f: f["type"] == "pong")

    async def wait_for(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first frame (unread or new) for which ``wanted(frame)`` is true."""
        for i, kept in enumerate(self._unread):
            if wanted(kept):
                return self._unread.pop(i)
        while True:
            frame: dict[str, Any] = json.loads(await self.ws.get_message())
            self.frames.append(frame)
            if frame["type"] == "reply":
                self.replies.append(frame)
            if wanted(frame):
                return frame
            self._unread.append(frame)


def new_visitor() -> str:
    """A visitor id as the page makes it: 128 random bits in hex."""
    return secrets.token_hex(16)


@contextlib.asynccontextmanager
async def open_chat_client(
    base_url: str,
    channel: str,
    *,
    visitor: str | None = None,
    origin: str | None = "",
    hello: bool = True,
) -> AsyncIterator[ChatClient]:
    """Connect to ``/chat/CHANNEL/ws`` of ``base_url`` ("http://127.0.0.1:PORT").

    ``origin`` defaults to ``base_url``'s, as the gateway's own page would send; None sends no
    Origin header. With ``hello`` the client greets first (``client.history`` then holds the
    history).
    """
    import trio
    from trio_websocket import wrap_client_stream

    url, headers = _handshake(base_url, channel, origin)
    parts = urlsplit(url)
    assert parts.hostname and parts.port, url
    # Our own stream, closed here whoever closes the websocket: trio-websocket 0.12 leaves its
    # socket open when the server closes first or refuses the handshake, and
    # filterwarnings=error turns the ResourceWarning into a test failure.
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, parts.netloc, parts.path, extra_headers=headers
            )
            try:
                client = ChatClient(ws, visitor or new_visitor())
                client.history = await client.hello() if hello else []
                yield client
            finally:
                # Not shielded: when cancelled, the reader task is cancelled too and a close
                # handshake could never finish; the stream is then just closed.
                await ws.aclose()
    finally:
        await stream.aclose()


async def handshake_refusal(base_url: str, channel: str, *, origin: str | None = "") -> int | None:
    """The HTTP status with which the server refuses a websocket handshake, or None if it
    accepts (the socket is then closed at once). Arguments as for :func:`open_chat_client`."""
    from trio_websocket import ConnectionRejected

    status: int | None = None
    try:
        async with open_chat_client(base_url, channel, origin=origin, hello=False):
            pass
    except* ConnectionRejected as group:
        rejected = group.exceptions[0]
        assert isinstance(rejected, ConnectionRejected)
        status = rejected.status_code
    return status


def _handshake(
    base_url: str, channel: str, origin: str | None
) -> tuple[str, list[tuple[bytes, bytes]]]:
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    url = f"{scheme}://{parts.netloc}/chat/{quote(channel, safe='')}/ws"
    if origin == "":
        origin = f"{parts.scheme}://{parts.netloc}"
    return url, [(b"Origin", origin.encode())] if origin is not None else []


@contextlib.asynccontextmanager
async def open_webchat(
    context: ChannelContext, **config: Any
) -> AsyncIterator[tuple[WebchatChannel, str]]:
    """Run a WebchatChannel named ``context.name`` with ``config`` (keys of its Config), its
    blueprint served by hypercorn on 127.0.0.1; yield the channel and the base URL. On exit the
    channel stops (closing its sockets) before the server does."""
    import trio

    from gateway.testing.conformance import serve_blueprint

    channel = WebchatChannel(
        context.name, WebchatChannel.Config(plugin="webchat", **config), context
    )
    async with serve_blueprint(channel.blueprint()) as url:
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            yield channel, url
            nursery.cancel_scope.cancel()
