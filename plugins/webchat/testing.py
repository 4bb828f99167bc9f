"""Web chat clients for tests: speak the widget's protocol as a browser tab would, over a real
websocket (:func:`open_chat_client`) or over the fallback, a server-sent event stream plus POSTs
(:func:`open_event_stream`).

Usable against a channel served alone (``gateway.testing.conformance.serve_channels``) or against
the whole daemon. Needs ``trio-websocket`` (a test dependency).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, urlsplit

from gateway.plugin import ChannelContext

from . import convert
from .channel import WebchatChannel


class _FrameReader:
    """Frames not waited for are kept: ``replies`` collects every ``reply`` frame in arrival
    order, ``frames`` every frame."""

    def __init__(self, visitor: str) -> None:
        self.visitor = visitor
        self.frames: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        """The messages of the history frame that began the connection."""
        self._unread: list[dict[str, Any]] = []

    async def _next_frame(self) -> dict[str, Any]:  # each transport reads its own
        raise NotImplementedError

    async def wait_for(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first frame (unread or new) for which ``wanted(frame)`` is true."""
        for i, kept in enumerate(self._unread):
            if wanted(kept):
                return self._unread.pop(i)
        while True:
            frame = await self._next_frame()
            self.frames.append(frame)
            if frame["type"] == "reply":
                self.replies.append(frame)
            if wanted(frame):
                return frame
            self._unread.append(frame)


class ChatClient(_FrameReader):
    """One browser tab on the websocket."""

    def __init__(self, ws: Any, visitor: str) -> None:
        super().__init__(visitor)
        self.ws = ws

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

    async def _next_frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await self.ws.get_message())
        return frame


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

    from gateway.testing.conformance import serve_channels

    channel = WebchatChannel(
        context.name, WebchatChannel.Config(plugin="webchat", **config), context
    )
    async with serve_channels(channel) as url:
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            yield channel, url
            nursery.cancel_scope.cancel()


class StreamClient(_FrameReader):
    """One browser tab on the fallback: an event stream for frames (``wait_for`` raises
    EOFError once it ends), a POST per message."""

    def __init__(
        self,
        http: Any,
        events: AsyncIterator[str],
        base: str,
        visitor: str,
        headers: dict[str, str],
    ) -> None:
        super().__init__(visitor)
        self.http = http
        self.base = base
        self.headers = headers
        self._events = events

    async def post_message(
        self, text: str, client_id: str | None = None, **extra: Any
    ) -> tuple[int, dict[str, Any]]:
        """POST a message; return the status and the frame that answered it."""
        body = {"visitor": self.visitor, "client_id": client_id or convert.new_client_id()}
        body |= {"text": text, **extra}
        response = await self.http.post(f"{self.base}/send", json=body, headers=self.headers)
        return response.status_code, response.json()

    async def send_message(self, text: str, client_id: str | None = None) -> dict[str, Any]:
        """POST a message; return the server's answer for it (an ``ack`` or an ``error``)."""
        return (await self.post_message(text, client_id))[1]

    async def _next_frame(self) -> dict[str, Any]:
        async for event in self._events:
            data = [line[5:].strip() for line in event.split("\n") if line.startswith("data:")]
            if data:  # else a keep-alive comment
                frame: dict[str, Any] = json.loads("\n".join(data))
                return frame
        raise EOFError("the event stream ended")


async def _read_events(stream: Any, connection: Any) -> AsyncGenerator[str, None]:
    """The events (text between blank lines) of an HTTP response body read with h11."""
    import h11

    buffer = ""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(65536))
            continue
        if isinstance(event, h11.Data):
            buffer += bytes(event.data).decode()
            *events, buffer = buffer.split("\n\n")
            for text in events:
                yield text
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return


@contextlib.asynccontextmanager
async def open_event_stream(
    base_url: str,
    channel: str,
    *,
    visitor: str | None = None,
    origin: str | None = "",
    gpc: bool = False,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[StreamClient]:
    """Open ``POST /chat/CHANNEL/events`` of ``base_url`` and read the history (in
    ``client.history``). ``origin`` as for :func:`open_chat_client`; ``gpc`` sets the body's
    flag, ``headers`` adds request headers (``{"Sec-GPC": "1"}``). A refused stream raises
    AssertionError with the status. The stream is read with h11 on our own TCP stream (closed
    here whatever happens): httpx leaves inner generators of a half-read stream unclosed."""
    import h11
    import httpx
    import trio

    parts = urlsplit(base_url)
    assert parts.hostname and parts.port, base_url
    if origin == "":
        origin = f"{parts.scheme}://{parts.netloc}"
    sent = dict(headers or {})
    if origin is not None:
        sent["Origin"] = origin
    path = f"/chat/{quote(channel, safe='')}"
    visitor = visitor or new_visitor()
    body = json.dumps({"visitor": visitor, "gpc": gpc}).encode()
    request_headers = [
        ("Host", parts.netloc),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        *sent.items(),
    ]
    connection = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream, httpx.AsyncClient(timeout=None) as http:
        request = h11.Request(method="POST", target=f"{path}/events", headers=request_headers)
        await stream.send_all(connection.send(request) + connection.send(h11.Data(data=body)))
        await stream.send_all(connection.send(h11.EndOfMessage()))
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(65536))
                continue
            assert isinstance(event, h11.Response), event
            break
        assert event.status_code == 200, f"event stream refused: {event.status_code}"
        async with contextlib.aclosing(_read_events(stream, connection)) as events:
            client = StreamClient(http, events, f"{base_url}{path}", visitor, sent)
            first = await client.wait_for(lambda f: f["type"] in ("history", "error"))
            assert first["type"] == "history", f"the stream began with {first}"
            client.history = first["messages"]
            yield client
