"""Keyed lanes: at most one task per key, running that key's work in order.

Conversation workers and outbox deliveries are both lanes keyed by conversation id: messages of
one conversation are handled one at a time and in order, different conversations concurrently.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import trio

log = logging.getLogger("gateway.pipeline")

LAST: Final = "last"
"""What a step returns when it did a unit of work and saw, in the same transaction, that it
was the key's last: the lane ends without one more step that would find nothing (unless the key
was notified meanwhile). Under load that empty step was a writer transaction per message in
each lane, two of the nine a message took (bench/README "Where the time goes")."""

Progress = bool | Literal["last"]


class Lanes:
    def __init__(self, name: str, step: Callable[[int], Awaitable[Progress]]) -> None:
        """``step(key)`` does one unit of the key's work; it returns False when there is none,
        True when it did some, :data:`LAST` when it did the last there is."""
        self.name = name
        self._step = step
        self._active: set[int] = set()
        self._again: set[int] = set()
        self._nursery: trio.Nursery | None = None
        self._idle = trio.Event()
        self._idle.set()
        self.errors = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def notify(self, key: int) -> None:
        """Make sure ``key``'s work runs: start its lane, or have the running one look again."""
        if key in self._active:
            self._again.add(key)
            return
        if self._nursery is None:
            raise RuntimeError(f"{self.name} lanes are not running")
        self._active.add(key)
        if self._idle.is_set():
            self._idle = trio.Event()
        self._nursery.start_soon(self._lane, key)

    @property
    def active(self) -> int:
        return len(self._active)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def _lane(self, key: int) -> None:
        delay = 0.5
        try:
            while True:
                self._again.discard(key)
                try:
                    progressed = await self._step(key)
                except Exception:
                    # A bug or a store failure: keep the daemon up, retry this lane later.
                    self.errors += 1
                    log.exception("%s lane %s failed; retrying in %.1fs", self.name, key, delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                delay = 0.5
                if (not progressed or progressed == LAST) and key not in self._again:
                    return
        finally:
            self._active.discard(key)
            self._again.discard(key)
            if not self._active:
                self._idle.set()
