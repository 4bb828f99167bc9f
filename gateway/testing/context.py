"""An in-memory ChannelContext / ProviderContext for testing one plugin without the daemon.

``MemoryChannelContext`` behaves like the real journal: ``accept`` dedupes on
``(account, external_id)`` and numbers messages in arrival order; ``fail_accepts`` makes the next
accepts raise ``StoreError`` so a test can check that the plugin then does not acknowledge.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Literal

import httpx
import trio

from gateway.errors import StoreError
from gateway.messages import Event, Inbound
from gateway.plugin import Accepted, HistoryItem


class MemoryChannelContext:
    def __init__(
        self,
        name: str = "test",
        *,
        http: httpx.AsyncClient | None = None,
        public_url: str | None = None,
    ) -> None:
        self.name = name
        self._http = http
        self.public_url = public_url
        self.log = logging.getLogger(f"gateway.channel.{name}")
        self.inbound: list[Inbound] = []
        """Every distinct message accepted, in order."""
        self.duplicates: list[Inbound] = []
        self.outbound_history: dict[str, list[HistoryItem]] = {}
        self.state: dict[str, str] = {}
        self.fail_accepts = 0
        self.statuses: list[tuple[str, str, str | None]] = []
        """``update_delivery`` calls: (external id, status, detail)."""
        self.consents: list[tuple[str, str, str, str]] = []
        """``record_consent`` entries as the ledger keeps them: (sender_id, purpose, state,
        source); a sender is known once a message of theirs was accepted."""
        self.events: list[Event] = []
        """``record_event`` calls, repeats included (the daemon merges them by event_key)."""
        self._keys: dict[tuple[str, str], Accepted] = {}
        self._accepted_at: list[str] = []
        self._threads: dict[str, int] = {}
        self._changed = trio.Condition()

    @property
    def http(self) -> httpx.AsyncClient:
        """Made on first use: building a client's TLS context costs ~30 ms, and most plugin
        tests never touch it."""
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http

    async def accept(self, inbound: Inbound) -> Accepted:
        return (await self.accept_many([inbound]))[0]

    async def accept_many(self, inbounds: Sequence[Inbound]) -> list[Accepted]:
        await trio.lowlevel.checkpoint()
        if self.fail_accepts:
            self.fail_accepts -= 1
            raise StoreError("MemoryChannelContext: simulated store failure")
        result = []
        for inbound in inbounds:
            key = (inbound.account, inbound.external_id)
            if key in self._keys:
                self.duplicates.append(inbound)
                result.append(dataclasses.replace(self._keys[key], duplicate=True))
                continue
            conversation = self._threads.setdefault(inbound.thread_key, len(self._threads) + 1)
            self.inbound.append(inbound)
            self._accepted_at.append(dt.datetime.now(dt.UTC).isoformat())
            accepted = Accepted(len(self.inbound), conversation, duplicate=False)
            self._keys[key] = accepted
            result.append(accepted)
        async with self._changed:
            self._changed.notify_all()
        return result

    async def wait_inbound(self, count: int) -> list[Inbound]:
        """Wait until at least ``count`` distinct messages were accepted."""
        async with self._changed:
            while len(self.inbound) < count:
                await self._changed.wait()
        return list(self.inbound)

    async def get_state(self, key: str) -> str | None:
        await trio.lowlevel.checkpoint()
        return self.state.get(key)

    async def set_state(self, key: str, value: str) -> None:
        self.state[key] = value
        async with self._changed:  # wait_for(lambda: ctx.state...) wakes up
            self._changed.notify_all()

    async def history(self, thread_key: str, *, limit: int = 50) -> list[HistoryItem]:
        await trio.lowlevel.checkpoint()
        items = [
            HistoryItem(
                i + 1,
                "in",
                m.text,
                (m.sent_at or dt.datetime.now(dt.UTC)).isoformat(),
                m.external_id,
            )
            for i, m in enumerate(self.inbound)
            if m.thread_key == thread_key
        ]
        items += self.outbound_history.get(thread_key, [])
        items.sort(key=lambda h: h.created_at)
        return items[-limit:]

    async def update_delivery(
        self,
        external_id: str,
        status: Literal["sent", "delivered", "read", "failed"],
        *,
        at: dt.datetime | None = None,
        detail: str | None = None,
    ) -> bool:
        await trio.lowlevel.checkpoint()
        self.statuses.append((external_id, status, detail))
        async with self._changed:
            self._changed.notify_all()
        return True

    async def record_event(self, event: Event) -> int:
        await trio.lowlevel.checkpoint()
        if self.fail_accepts:
            self.fail_accepts -= 1
            raise StoreError("MemoryChannelContext: simulated store failure")
        self.events.append(event)
        async with self._changed:
            self._changed.notify_all()
        return len(self.events)

    async def record_consent(
        self,
        sender_id: str,
        *,
        purpose: str,
        state: Literal["granted", "withdrawn"],
        source: str,
        detail: str | None = None,
    ) -> bool:
        await trio.lowlevel.checkpoint()
        if not any(m.sender_id == sender_id for m in self.inbound):
            return False
        latest = [c for c in self.consents if c[0] == sender_id and c[1] == purpose]
        if not latest or latest[-1][2] != state:
            self.consents.append((sender_id, purpose, state, source))
        return True

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds after some accept, status, event or state change."""
        async with self._changed:
            while not predicate():
                await self._changed.wait()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


@dataclasses.dataclass
class MemoryProviderContext:
    name: str = "test"
    http: httpx.AsyncClient = dataclasses.field(default_factory=httpx.AsyncClient)
    config_dir: str = "."
    log: logging.Logger = dataclasses.field(
        default_factory=lambda: logging.getLogger("gateway.llm.test")
    )
