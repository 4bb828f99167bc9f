"""What the benchmarks share: the webhook load generator, percentiles, process CPU and memory.

Imported as ``_harness`` by the scripts next to it (``python bench/X.py`` puts ``bench/`` first
on ``sys.path``), so load.py and ceilings.py drive the gateway and the bare server with the
same code: a gateway figure and its ceiling differ only in what answers.

Why trio + h11 rather than httpx for the webhook POSTs: httpx's client costs ~1.5 ms of CPU a
request here, so 40 concurrent httpx requests saturated the driver's core at ~500 requests/s
while the bare server it measured sat at a third of its core. A ceiling measured that way is
the driver's. Keep-alive connections, one per delivery in flight, as Telegram and Meta keep.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import psutil
import trio

WEBHOOK_CONCURRENCY = 40
"""Deliveries in flight at once: Telegram's ``max_connections`` default for webhooks."""
RETRY_DELAY = 0.1
"""Seconds before a refused delivery is re-sent, as the platforms retry."""
REQUEST_TIMEOUT = 30.0
"""Seconds a webhook POST may take before it counts as timed out and is re-sent."""


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 by nearest rank; empty input gives an empty dict."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)
    return {f"p{q}": ordered[min(n - 1, max(0, math.ceil(q / 100 * n) - 1))] for q in (50, 95, 99)}


def latency_line(label: str, figures: dict[str, float] | None) -> str:
    if not figures:
        return f"{label:<22} (none)"
    parts = "   ".join(f"{k} {v:8.1f} ms" for k, v in figures.items())
    return f"{label:<22} {parts}"


def figure_line(label: str, value: float, unit: str, note: str = "") -> str:
    text = f"{value:12.1f}" if isinstance(value, float) else f"{value:12d}"
    return f"{label:<22} {text} {unit}" + (f"   ({note})" if note else "")


async def answer_lifespan(receive: Any, send: Any) -> None:
    """An ASGI lifespan scope for a bench server with nothing to start or stop: acknowledge
    start-up and shutdown (hypercorn waits for both)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def print_json(result: dict[str, Any]) -> None:
    print(json.dumps(result, sort_keys=True))


class _Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            # An empty read means the server closed; h11 turns that into ConnectionClosed.
            self.h11.receive_data(await self.stream.receive_some(65536))

    async def post(self, target: str, headers: list[tuple[str, str]], body: bytes) -> int:
        wire = self.h11.send(h11.Request(method="POST", target=target, headers=headers))
        wire += self.h11.send(h11.Data(data=body)) + self.h11.send(h11.EndOfMessage())
        await self.stream.send_all(wire)
        response = await self.next_event()
        if not isinstance(response, h11.Response):
            raise h11.RemoteProtocolError(f"no response: {response!r}")
        while not isinstance(await self.next_event(), h11.EndOfMessage):
            pass
        return int(response.status_code)

    @property
    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE


class WebhookClient:
    """POSTs to one URL over keep-alive HTTP/1.1 connections (trio + h11), opening one more
    whenever all are busy; a connection the server closed while idle is replaced."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.target = parts.path + (f"?{parts.query}" if parts.query else "")
        self._idle: list[_Connection] = []
        self.connections = 0
        """Connections opened so far."""

    async def post(self, body: bytes, headers: Mapping[str, str]) -> int:
        """POST ``body``; return the status. trio.TooSlowError after :data:`REQUEST_TIMEOUT`."""
        fields = [
            ("Host", f"{self.host}:{self.port}"),
            ("Content-Length", str(len(body))),
            *headers.items(),
        ]
        with trio.fail_after(REQUEST_TIMEOUT):
            while True:
                reused = bool(self._idle)
                conn = self._idle.pop() if reused else await self._connect()
                try:
                    status = await conn.post(self.target, fields, body)
                except (trio.BrokenResourceError, h11.ProtocolError):
                    await conn.stream.aclose()
                    if reused:
                        continue  # closed by the server while idle: try a fresh one
                    raise
                except BaseException:
                    await trio.aclose_forcefully(conn.stream)
                    raise
                if conn.reusable:
                    conn.h11.start_next_cycle()
                    self._idle.append(conn)
                else:
                    await conn.stream.aclose()
                return status

    async def _connect(self) -> _Connection:
        self.connections += 1
        return _Connection(await trio.open_tcp_stream(self.host, self.port))

    async def aclose(self) -> None:
        for conn in self._idle:
            await conn.stream.aclose()
        self._idle.clear()


class Delivery:
    """Acknowledgement figures of a webhook load run."""

    def __init__(self) -> None:
        self.acks_ms: list[float] = []
        self.refused = 0
        """Answers other than 2xx (each re-sent after :data:`RETRY_DELAY`)."""
        self.timeouts = 0
        """Requests that got no answer within the client's timeout (re-sent, as platforms do)."""
        self.first_post: float | None = None
        self.last_ack: float | None = None

    async def post_until_accepted(self, post: Callable[[], Awaitable[int]]) -> None:
        """Send until a 2xx, as Telegram and Meta do; record the time from the first attempt."""
        started = time.perf_counter()
        if self.first_post is None:
            self.first_post = started
        while True:
            try:
                status = await post()
            except trio.TooSlowError:
                self.timeouts += 1
                continue
            if 200 <= status < 300:
                break
            self.refused += 1
            # A real retry delay, not a wait for something to happen.
            await trio.sleep(RETRY_DELAY)
        self.last_ack = time.perf_counter()
        self.acks_ms.append((self.last_ack - started) * 1000)

    def figures(self) -> dict[str, Any]:
        span = (
            self.last_ack - self.first_post
            if self.first_post is not None and self.last_ack is not None
            else 0.0
        )
        return {
            "ack_ms": percentiles(self.acks_ms),
            # Acknowledged (journal committed) webhooks per second, first POST to last 2xx:
            # in a burst, how fast the gateway takes messages in while it also answers them.
            "acks_per_s": len(self.acks_ms) / span if span > 0 else 0.0,
            "refused": self.refused,
            "timeouts": self.timeouts,
        }


async def drive(
    count: int,
    deliver: Callable[[int, float], Awaitable[None]],
    *,
    concurrency: int = WEBHOOK_CONCURRENCY,
    rate: float | None = None,
) -> float:
    """Call ``deliver(i, scheduled)`` for every ``i < count`` with at most ``concurrency`` in
    flight; returns the ``time.perf_counter()`` the run started at.

    Burst (``rate`` None): all are due at the start and ``concurrency`` workers take them in
    order; ``scheduled`` is the moment a worker takes one. Paced: ``i`` is due at
    ``start + i / rate`` whether or not earlier ones were answered (an open loop), and
    ``scheduled`` is that due time, so a backlog shows up as latency instead of hiding in the
    driver (coordinated omission)."""
    limit = trio.CapacityLimiter(concurrency)
    next_index = iter(range(count))

    async def worker() -> None:
        for i in next_index:
            await deliver(i, time.perf_counter())

    async def paced(i: int, due: float) -> None:
        async with limit:
            await deliver(i, due)

    start_trio, start = trio.current_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        if rate is None:
            for _ in range(min(concurrency, count)):
                nursery.start_soon(worker)
        else:
            for i in range(count):
                # Pacing the sends of a timed load generator, not waiting for an event.
                await trio.sleep_until(start_trio + i / rate)
                nursery.start_soon(paced, i, start + i / rate)
    return start


class ProcessMeter:
    """CPU seconds (user + system) and peak RSS of another process, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.pid = pid
        self._cpu_start = self.cpu_seconds()

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def restart(self) -> None:
        """Count CPU from now on (e.g. after start-up)."""
        self._cpu_start = self.cpu_seconds()

    def cpu_used(self) -> float:
        return self.cpu_seconds() - self._cpu_start

    def peak_rss_mib(self) -> float | None:
        """VmHWM: the peak resident set size so far (Linux)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None
