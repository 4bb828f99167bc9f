"""PUBLIC: keep-alive connection pools that do not probe every idle socket on every request.

httpcore (under httpx) and httpcore2 (under httpx2, which the openai and anthropic SDKs use) walk
their whole pool each time a request starts and each time a response closes. For every idle
keep-alive connection, that walk polls the socket ("is it readable?"). A readable idle socket means
the server has closed it, so the pool drops it rather than sending a request into a dead
connection. With 32-64 connections kept to the model server and the Bot API, that is tens of
thousands of ``poll()`` system calls a second at full load. py-spy showed 15 % of the event
loop's time under the pools' walks, about half of it in those probes.

The transports made here wrap the pool's network backend. Each stream it hands out changes two
things:

- **The walks' probe is cached.** A "not readable" answer stands for :data:`PROBE_INTERVAL`
  seconds, unless the connection has read anything since. At full load the walks come every
  ~2 ms, so most of their probes are skipped.
- **A kept-alive connection is probed again just before a request is written to it.** If the
  server has closed the connection, the stream raises the library's ``ConnectionNotAvailable``
  before writing a byte. The pool then closes that connection and sends the request on another
  one, as it does when it loses a race for a connection.

Upstream, a connection that died after the pool's last walk gets the request anyway. The
request then fails with ``RemoteProtocolError`` ("server disconnected without sending a
response"). For a Telegram send that outcome is *uncertain*: the reply may have been delivered,
so it is never resent. The probe before the write closes that window down to the write itself.
So the cache saves the probes without widening the window in which a request can go out on a
dead connection.

``bench/load.py --webhook --model-latency 0`` (bench/README, session 11, 3 interleaved pairs)
measured 4.25-4.37 ms of daemon CPU per reply before and 3.79-3.83 ms after: +10 % replies/s.
Upstream, the pools' walks are being rewritten (encode/httpcore#1035, pydantic/httpx2#1169).
Once the walks are incremental, this module has little left to save.

HTTP/1.1 only. On an HTTP/2 connection, frames of other streams make the socket readable, so
``http2=True`` transports are returned unwrapped. Neither library takes a network backend as a
transport parameter, so the wrapper is set on the pool's ``_network_backend`` attribute
(httpcore 1.0, httpcore2 2.16). If an upgrade renames it, the transport is returned unchanged:
the probes cost time again, and nothing breaks. ``tests/core/test_pooling.py`` fails in that
case, so the upgrade is noticed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx
    import httpx2

__all__ = ["PROBE_INTERVAL", "httpx2_transport", "httpx_transport", "sdk_http_client"]

PROBE_INTERVAL = 0.02
"""Seconds for which an idle socket's "not readable" answer stands in the pool's walks, unless
the connection has read since. At full load the pools are walked every ~2 ms."""

_READABLE = "is_readable"


class _Stream:
    """An httpcore/httpcore2 ``AsyncNetworkStream``: cached probes, and a fresh one before a
    request goes out on a kept-alive connection."""

    __slots__ = ("_inner", "_quiet_until", "_kept_alive", "_unavailable")

    def __init__(self, inner: Any, unavailable: type[Exception]) -> None:
        self._inner = inner
        self._unavailable = unavailable
        self._quiet_until = 0.0
        """Until when (time.monotonic) the walks' last probe's "not readable" stands."""
        self._kept_alive = False
        """True from a read (a response) to the next write (the next request on it)."""

    # The signatures are httpcore's network-stream interface, timeouts included (ASYNC109).
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        data: bytes = await self._inner.read(max_bytes, timeout)
        self._quiet_until = 0.0
        self._kept_alive = True
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if self._kept_alive:
            self._kept_alive = False
            if self._inner.get_extra_info(_READABLE):
                # Closed by the server since the pool's walk, or data nobody asked for: the pool
                # closes this connection and sends the request on another one.
                raise self._unavailable()
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> _Stream:
        inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _Stream(inner, self._unavailable)

    def get_extra_info(self, info: str) -> Any:
        if info != _READABLE:
            return self._inner.get_extra_info(info)
        now = time.monotonic()
        if now < self._quiet_until:
            return False
        readable = self._inner.get_extra_info(info)
        if not readable:
            self._quiet_until = now + PROBE_INTERVAL
        return readable


class _Backend:
    """An httpcore/httpcore2 ``AsyncNetworkBackend`` that hands out :class:`_Stream` objects."""

    __slots__ = ("inner", "unavailable")

    def __init__(self, inner: Any, unavailable: type[Exception]) -> None:
        self.inner = inner
        self.unavailable = unavailable

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> _Stream:
        return _Stream(await self.inner.connect_tcp(*args, **kwargs), self.unavailable)

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> _Stream:
        return _Stream(await self.inner.connect_unix_socket(*args, **kwargs), self.unavailable)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def _wrap(transport: Any, unavailable: type[Exception]) -> None:
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is not None and not isinstance(backend, _Backend):
        pool._network_backend = _Backend(backend, unavailable)  # type: ignore[union-attr]


def httpx_transport(**kwargs: Any) -> httpx.AsyncHTTPTransport:
    """``httpx.AsyncHTTPTransport(**kwargs)`` with the probes of the module docstring, for an
    httpx client's ``transport=``. A client given a transport ignores its own ``verify``,
    ``limits``, ``http1``/``http2`` and ``trust_env``: pass those here."""
    import httpcore
    import httpx

    transport = httpx.AsyncHTTPTransport(**kwargs)
    if not kwargs.get("http2"):
        _wrap(transport, httpcore.ConnectionNotAvailable)
    return transport


def httpx2_transport(**kwargs: Any) -> httpx2.AsyncHTTPTransport:
    """The same for httpx2, whose clients the model SDKs take as
    ``http_client=openai.DefaultAsyncHttpxClient(transport=...)``."""
    import httpcore2
    import httpx2

    transport = httpx2.AsyncHTTPTransport(**kwargs)
    if not kwargs.get("http2"):
        _wrap(transport, httpcore2.ConnectionNotAvailable)
    return transport


def sdk_http_client(sdk: Any) -> httpx2.AsyncClient:
    """For a model SDK module (``openai``, ``anthropic``): its default httpx2 client, with the
    SDK's connection limits and TLS trust, on :func:`httpx2_transport`. Give it to the SDK's
    client as ``http_client=``."""
    client: httpx2.AsyncClient = sdk.DefaultAsyncHttpxClient(
        transport=httpx2_transport(limits=sdk.DEFAULT_CONNECTION_LIMITS)
    )
    return client
