"""PUBLIC: exponential waits between retries of a loop that talks to a platform (a poll, a
reconnect): 0.25 s doubling to 30 s by default; ``reset`` after a success. Channel plugins use
it so every channel backs off the same way."""

from __future__ import annotations

import trio


class Backoff:
    def __init__(self, first: float = 0.25, limit: float = 30.0) -> None:
        if not 0 < first <= limit:
            raise ValueError(f"backoff needs 0 < first <= limit, got {first!r}, {limit!r}")
        self.first = first
        self.limit = limit
        self.next = first

    async def wait(self) -> None:
        await trio.sleep(self.next)
        self.next = min(self.next * 2, self.limit)

    def reset(self) -> None:
        self.next = self.first
