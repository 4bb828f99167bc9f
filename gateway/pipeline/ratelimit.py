"""Send-rate limits: token buckets on trio's clock (so tests run them on an autojump clock)."""

from __future__ import annotations

import trio


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up.

    ``reserve()`` takes a token now and returns how long to wait before using it; tokens may go
    negative, which queues callers fairly without a lock.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = trio.current_time()

    def reserve(self) -> float:
        now = trio.current_time()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    @property
    def full(self) -> bool:
        now = trio.current_time()
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


DEFAULT_SEND_CONCURRENCY = 32
"""Sends of one channel in flight at once, unless its plugin sets ``send_concurrency``."""


class SendLimiter:
    """A channel's global rate, its per-chat rate, and how many sends may be in flight.

    The concurrency cap is for the HTTP client under the plugin: httpcore's pool rescans every
    queued request against every connection whenever one frees, so 1,000 sends queued on a
    32-connection pool cost quadratic time (profiled in issue #9: 15-25 % of the daemon's CPU
    under a burst). Waiting here instead keeps the pool's queue empty."""

    def __init__(
        self,
        rate: float | None,
        rate_per_chat: float | None,
        burst_per_chat: int,
        concurrency: int = DEFAULT_SEND_CONCURRENCY,
    ) -> None:
        self.in_flight = trio.CapacityLimiter(concurrency)
        self._global = TokenBucket(rate, max(1, int(rate))) if rate else None
        self._rate_per_chat = rate_per_chat
        self._burst_per_chat = burst_per_chat
        self._chats: dict[str, TokenBucket] = {}

    async def wait(self, thread_key: str) -> None:
        if self._rate_per_chat:
            bucket = self._chats.get(thread_key)
            if bucket is None:
                if len(self._chats) > 10_000:
                    self._chats = {k: b for k, b in self._chats.items() if not b.full}
                bucket = self._chats[thread_key] = TokenBucket(
                    self._rate_per_chat, self._burst_per_chat
                )
            delay = bucket.reserve()
            if delay:
                await trio.sleep(delay)
        if self._global is not None:
            delay = self._global.reserve()
            if delay:
                await trio.sleep(delay)
