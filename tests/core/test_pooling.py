"""gateway/pooling.py: the pools' walks probe an idle socket at most once per PROBE_INTERVAL, and a
kept-alive connection the server has closed is never written to: the request goes out on another
connection. Real sockets on 127.0.0.1 (plain and TLS), real httpx and httpx2 clients."""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx
import httpx2
import pytest
import trio
import trustme

from gateway import pooling
from gateway.app import shared_http_client
from gateway.outbound import AllowlistResolver
from gateway.secretref import Secret
from gateway.testing.context import MemoryChannelContext, MemoryProviderContext

# -- the stream wrapper, against a fake socket stream ----------------------------------------


class FakeSocketStream:
    """httpcore's network-stream interface; ``readable`` is what a poll of the socket says."""

    def __init__(self) -> None:
        self.readable = False
        self.probes = 0
        self.written: list[bytes] = []

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return b"HTTP/1.1 200 OK\r\n"

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self.written.append(buffer)

    async def aclose(self) -> None:
        pass

    async def start_tls(self, *args: Any, **kwargs: Any) -> FakeSocketStream:
        return FakeSocketStream()

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            self.probes += 1
            return self.readable
        return f"inner {info}"


def wrapped() -> tuple[pooling._Stream, FakeSocketStream]:
    inner = FakeSocketStream()
    return pooling._Stream(inner, httpcore.ConnectionNotAvailable), inner


def test_the_walks_probe_an_idle_socket_once_per_interval():
    stream, inner = wrapped()
    assert [stream.get_extra_info("is_readable") for _ in range(50)] == [False] * 50
    assert inner.probes == 1


def test_a_zero_interval_probes_every_time(monkeypatch):
    """The counterpart of the test above: what the pool does without the cache."""
    monkeypatch.setattr(pooling, "PROBE_INTERVAL", 0.0)
    stream, inner = wrapped()
    for _ in range(5):
        stream.get_extra_info("is_readable")
    assert inner.probes == 5


def test_a_readable_socket_is_never_cached():
    stream, inner = wrapped()
    inner.readable = True
    assert [stream.get_extra_info("is_readable") for _ in range(3)] == [True] * 3
    assert inner.probes == 3


async def test_a_read_forgets_the_cached_answer():
    stream, inner = wrapped()
    stream.get_extra_info("is_readable")
    await stream.read(100)
    stream.get_extra_info("is_readable")
    assert inner.probes == 2


async def test_a_new_connection_is_written_to_without_a_probe():
    stream, inner = wrapped()
    inner.readable = True  # a TLS 1.3 session ticket, say: nothing to do with reuse
    await stream.write(b"GET / HTTP/1.1\r\n\r\n")
    assert inner.probes == 0 and inner.written == [b"GET / HTTP/1.1\r\n\r\n"]


async def test_the_first_write_after_a_response_probes_once():
    stream, inner = wrapped()
    await stream.read(100)
    await stream.write(b"headers")
    await stream.write(b"body")
    assert inner.probes == 1 and inner.written == [b"headers", b"body"]


async def test_a_kept_alive_connection_the_server_closed_is_not_written_to():
    stream, inner = wrapped()
    stream.get_extra_info("is_readable")  # the walk's probe, cached: "open"
    await stream.read(100)
    inner.readable = True  # the server closes it
    with pytest.raises(httpcore.ConnectionNotAvailable):
        await stream.write(b"GET / HTTP/1.1\r\n\r\n")
    assert inner.written == []


async def test_other_information_and_tls_streams_pass_through():
    stream, _ = wrapped()
    assert stream.get_extra_info("ssl_object") == "inner ssl_object"
    assert isinstance(await stream.start_tls(ssl.create_default_context()), pooling._Stream)


# -- real sockets ----------------------------------------------------------------------------


@dataclass
class ClosingServer:
    """HTTP/1.1 on 127.0.0.1 that keeps connections alive, except that it closes the first
    connection after its first answer when ``close_first`` is set."""

    port: int = 0
    tls: ssl.SSLContext | None = None
    close_first: trio.Event = field(default_factory=trio.Event)
    first_closed: trio.Event = field(default_factory=trio.Event)
    requests: list[int] = field(default_factory=list)
    """The connection (1, 2...) each request came on."""
    connections: int = 0

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        number = self.connections
        if self.tls is not None:
            stream = trio.SSLStream(stream, self.tls, server_side=True)
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                _, _, buffer = buffer.partition(b"\r\n\r\n")
                self.requests.append(number)
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                if number == 1:
                    await self.close_first.wait()
                    await stream.aclose()
                    self.first_closed.set()
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def closing_server(ca: trustme.CA, use_tls: bool) -> AsyncIterator[ClosingServer]:
    server = ClosingServer()
    if use_tls:
        server.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server.tls)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
        )
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


CLIENTS: dict[str, Callable[[ssl.SSLContext], Any]] = {
    "httpx": lambda trust: httpx.AsyncClient(transport=pooling.httpx_transport(verify=trust)),
    "httpx2": lambda trust: httpx2.AsyncClient(transport=pooling.httpx2_transport(verify=trust)),
}


@pytest.mark.parametrize("use_tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("library", list(CLIENTS))
async def test_request_after_the_server_closed_the_kept_alive_connection_takes_a_new_one(
    monkeypatch, ca, library, use_tls
):
    # The walks trust their first "open" for the whole test: only the probe before the write
    # stands between the second request and the dead connection. Without it, that request fails
    # with RemoteProtocolError, which for a Telegram send means "maybe delivered, never resent".
    monkeypatch.setattr(pooling, "PROBE_INTERVAL", 3600.0)
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    async with closing_server(ca, use_tls) as server, CLIENTS[library](trust) as client:
        url = f"{'https' if use_tls else 'http'}://127.0.0.1:{server.port}/"
        first = await client.get(url)
        assert first.text == "ok"
        stream = first.extensions["network_stream"]
        assert isinstance(stream, pooling._Stream)  # fails if an upgrade renamed the pool's backend
        server.close_first.set()
        await server.first_closed.wait()
        await trio.lowlevel.wait_readable(stream.get_extra_info("socket"))  # the FIN is here
        second = await client.get(url)
        assert second.text == "ok"
        third = await client.get(url)  # and the new connection is kept alive
        assert third.text == "ok"
    assert server.requests == [1, 2, 2]


@pytest.mark.parametrize("library", list(CLIENTS))
async def test_http2_transports_are_left_as_the_library_made_them(library):
    make = {"httpx": pooling.httpx_transport, "httpx2": pooling.httpx2_transport}[library]
    transport = make(http2=True, http1=True)
    try:
        assert not isinstance(transport._pool._network_backend, pooling._Backend)
    finally:
        await transport.aclose()


# -- every client the daemon makes -----------------------------------------------------------


def uses_pooling(client: httpx.AsyncClient | httpx2.AsyncClient) -> bool:
    # Private attributes: neither httpx nor httpx2 exposes a transport's pool.
    return isinstance(client._transport._pool._network_backend, pooling._Backend)  # type: ignore[attr-defined]


async def test_the_daemons_shared_client_uses_the_pooling_transport():
    async with shared_http_client(AllowlistResolver([])) as client:
        assert uses_pooling(client)


async def test_both_bot_api_clients_use_the_pooling_transport():
    from plugins.telegram import TelegramChannel, TelegramConfig

    config = TelegramConfig.model_validate(
        {"plugin": "telegram", "token": Secret("123456:" + "A" * 35, "env:TG_TOKEN")}
    )
    channel = TelegramChannel("tg", config, MemoryChannelContext("tg"))
    try:
        for request in (channel._request, channel._poll_request):
            assert uses_pooling(request._client)
            assert request._client._transport._pool._max_connections in (1, 32)
    finally:
        await channel.aclose()


@pytest.mark.parametrize("plugin", ["openai", "anthropic"])
async def test_the_model_sdks_clients_use_the_pooling_transport(plugin):
    if plugin == "openai":
        from plugins.openai import OpenAIProvider as Provider
    else:
        from plugins.anthropic import AnthropicProvider as Provider  # type: ignore[assignment]
    table = {
        "plugin": plugin,
        "base_url": "http://127.0.0.1:9" + ("/v1" if plugin == "openai" else ""),
        "model": "m",
        "api_key": Secret("k", "env:K"),
    }
    async with httpx.AsyncClient() as http:
        provider = Provider(
            "main",
            Provider.Config.model_validate(table),
            MemoryProviderContext(name="main", http=http),
        )
        try:
            client = provider._get_client()._client
            assert uses_pooling(client)
            # The SDK's own connection limits, as its default client has them.
            assert client._transport._pool._max_connections == 1000
        finally:
            await provider.aclose()
