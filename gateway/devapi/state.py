"""What the developer API keeps in memory between requests: token buckets (per key, per form
client and origin), which conversations are in a chat dialogue, when each key was last marked
used. Nothing here must survive a restart: limits start full again, and the dialogues are
reloaded from the database by the housekeeping job.

One :class:`ApiState` per :class:`~gateway.services.Services` (so per daemon), found with
:func:`state_of`: the HTTP blueprint is rebuilt at every config reload and must keep no state
of its own (gateway.http.mounts), yet a reload must not refill every rate limit.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable

import trio

from gateway.devapi.config import Rate
from gateway.services import Services

MAX_BUCKETS = 50_000
"""Forget the idlest buckets past this many (form limits are per client address)."""


@dataclasses.dataclass
class _Bucket:
    tokens: float
    at: float


class Buckets:
    """Token buckets by key: ``take(key, rate)`` returns 0 if allowed, else the seconds until
    one request would be."""

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._buckets: dict[object, _Bucket] = {}

    def take(self, key: object, rate: Rate) -> float:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full(now, rate)
            bucket = self._buckets[key] = _Bucket(rate.burst, now)
        else:
            bucket.tokens = min(rate.burst, bucket.tokens + (now - bucket.at) * rate.per_second)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate.per_second

    def _forget_full(self, now: float, rate: Rate) -> None:
        # A bucket that would be full again carries no information: drop those first.
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.at) * rate.per_second >= rate.burst:
                del self._buckets[key]
        if len(self._buckets) >= MAX_BUCKETS:
            self._buckets.clear()


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


@dataclasses.dataclass
class ApiState:
    keys: Buckets = dataclasses.field(default_factory=Buckets)
    form_clients: Buckets = dataclasses.field(default_factory=Buckets)
    form_origins: Buckets = dataclasses.field(default_factory=Buckets)
    menus: set[int] = dataclasses.field(default_factory=set)
    """Conversations with an open /unsubscribe dialogue (the database has the dialogue)."""
    touched: dict[int, float] = dataclasses.field(default_factory=dict)
    """Key id -> when its last_used_at was last written (written at most once a minute)."""
    secret: bytes = b""
    """The API-key hashing key (``store_keys``), read once."""


_STATES: dict[int, tuple[weakref.ref[Services], ApiState]] = {}


def state_of(services: Services) -> ApiState:
    # By id() with a weak reference to check it: Services is a mutable dataclass (unhashable).
    entry = _STATES.get(id(services))
    if entry is not None and entry[0]() is services:
        return entry[1]
    state = ApiState()
    key = id(services)
    _STATES[key] = (weakref.ref(services, lambda _ref: _STATES.pop(key, None)), state)
    return state
