"""An ASGI app whose inner app can be replaced while hypercorn serves it (config reload).

Why a swappable wrapper and not one app with a dispatch layer: Quart cannot unregister a
blueprint, and a plugin's blueprint brings its own URL rules (prefixes, converters, websockets).
Building a whole new QuartTrio app from the new config's channels and swapping it in keeps
Quart's routing, error pages and ``after_request`` hooks exactly as at start-up, with no second
router to keep in step. A request, or a websocket for as long as it stays open, finishes on the
app that took it: nothing in flight is cut by a swap.

Lifespan: hypercorn runs one lifespan for the wrapper; the wrapper runs one for each inner app,
inside it. An app's startup completes before it takes a request; its shutdown runs once it has
been replaced and its last request has finished, or when the server stops, whichever is first.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    LifespanScope,
    Scope,
)

from gateway.errors import GatewayError

log = logging.getLogger("gateway.http")


class LifespanFailed(GatewayError):
    """An inner app refused to start (``lifespan.startup.failed``)."""


class _Served:
    """One inner app and the requests it is serving."""

    def __init__(self, app: ASGIFramework) -> None:
        self.app = app
        self.requests = 0
        self.retired = False
        self.done = trio.Event()
        """Set when the app may shut down: replaced and idle, or the server is stopping."""

    def finished_one(self) -> None:
        self.requests -= 1
        if self.retired and not self.requests:
            self.done.set()

    def retire(self) -> None:
        self.retired = True
        if not self.requests:
            self.done.set()


class SwappableApp:
    """Serves ``app`` until :meth:`swap` hands it another one."""

    def __init__(self, app: ASGIFramework) -> None:
        self._current = _Served(app)
        self._scope: LifespanScope | None = None
        self._lifespans: trio.Nursery | None = None
        """Where inner lifespans run: open between the server's startup and shutdown."""
        self._living: set[_Served] = set()

    @property
    def current(self) -> ASGIFramework:
        return self._current.app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        served = self._current
        served.requests += 1
        try:
            await served.app(scope, receive, send)
        finally:
            served.finished_one()

    async def swap(self, app: ASGIFramework) -> None:
        """Send new requests to ``app`` once its lifespan has started (LifespanFailed if it
        refused: the old app keeps serving). The old app finishes what it serves, then shuts
        down."""
        served = _Served(app)
        if self._lifespans is not None:
            await self._lifespans.start(self._run_lifespan, served)
        previous, self._current = self._current, served
        previous.retire()

    async def _lifespan(
        self, scope: LifespanScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        event = await receive()
        assert event["type"] == "lifespan.startup", event
        self._scope = scope
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(self._run_lifespan, self._current)
            except LifespanFailed as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            self._lifespans = nursery
            await send({"type": "lifespan.startup.complete"})
            event = await receive()
            assert event["type"] == "lifespan.shutdown", event
            # The server has stopped taking requests: every app shuts down now.
            self._lifespans = None
            for served in self._living:
                served.done.set()
        await send({"type": "lifespan.shutdown.complete"})

    async def _run_lifespan(
        self, served: _Served, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert self._scope is not None
        to_app, app_inbox = trio.open_memory_channel[ASGIReceiveEvent](1)
        app_outbox, from_app = trio.open_memory_channel[ASGISendEvent](1)

        async def call_app() -> None:
            async with app_outbox:
                try:
                    await served.app(self._scope, app_inbox.receive, app_outbox.send)  # type: ignore[arg-type]
                except Exception as exc:  # ASGI: an app without lifespan support raises
                    log.debug("%r has no lifespan (%s)", served.app, exc)

        self._living.add(served)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call_app)
                if not await self._exchange(to_app, from_app, "startup"):
                    nursery.cancel_scope.cancel()
                    raise LifespanFailed(f"{served.app!r} did not start")
                task_status.started()
                await served.done.wait()
                await self._exchange(to_app, from_app, "shutdown")
        finally:
            self._living.discard(served)

    @staticmethod
    async def _exchange(
        to_app: trio.MemorySendChannel[ASGIReceiveEvent],
        from_app: trio.MemoryReceiveChannel[ASGISendEvent],
        phase: str,
    ) -> bool:
        """Send ``lifespan.PHASE``; whether the app completed it (True too if it has no
        lifespan at all)."""
        await to_app.send(cast(Any, {"type": f"lifespan.{phase}"}))
        try:
            reply = await from_app.receive()
        except trio.EndOfChannel:
            return True
        if reply["type"] == f"lifespan.{phase}.complete":
            return True
        log.error("HTTP app %s failed: %s", phase, cast(dict[str, Any], reply).get("message", ""))
        return False
