"""The providers and agents of the running config, as gateway.reload swaps them.

:class:`AgentSet` builds every provider and agent at start-up; a reload has it build the next
set with new objects only for what changed (:meth:`AgentSet.build`), makes that current
(:meth:`AgentSet.install`) and closes a replaced provider once no answer uses it
(:meth:`AgentSet.retire`): a :class:`LiveAgent` counts the answers it is giving. Whatever is still
open at shutdown is closed by :meth:`AgentSet.aclose`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import trio

from gateway.config import AgentConfig, GatewayConfig, redactor_for
from gateway.errors import GatewayError
from gateway.knowledge import format_snippets, load_chunks, search_knowledge_txn, sync_knowledge_txn
from gateway.metrics import PROVIDER_OUTCOMES, Metrics
from gateway.pipeline.agent import Agent, ProviderSlot, Transfer
from gateway.plugin import LLMProvider
from gateway.privacy.redaction import PlaceholderMap
from gateway.privacy.residency import ResidencyPolicy
from gateway.store import Store
from gateway.store.journal import PendingWork
from gateway.store.transfers import record_transfer_txn

log = logging.getLogger("gateway")


class ProviderNotCreated(GatewayError):
    """A provider plugin refused its config when built (the message names the table)."""


async def sync_knowledge(config: GatewayConfig, store: Store) -> None:
    """Index each agent's knowledge folder (only changed files are rewritten)."""
    for name, agent in config.agents.items():
        chunks = []
        if agent.knowledge_dir is not None:
            chunks = await trio.to_thread.run_sync(load_chunks, agent.knowledge_dir)
        report = await store.write("sync knowledge", sync_knowledge_txn, name, chunks)
        if agent.knowledge_dir is not None:
            log.info("knowledge of agent %s (%s): %s", name, agent.knowledge_dir, report)


class LiveAgent(Agent):
    """An :class:`Agent` that counts the answers it is giving, so a reload closes the providers
    it replaced only once no answer uses them."""

    def __init__(self, *args: Any, current: Callable[[], Agent | None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answering = 0
        self.closed = False
        """Set by :meth:`AgentSet.retire` once some of this agent's providers are closed."""
        self._current = current
        self._idle = trio.Event()
        self._idle.set()

    async def answer(
        self, work: PendingWork, channel_policy: ResidencyPolicy | None = None
    ) -> tuple[str, str]:
        current = self._current() if self.closed else None
        if current is not None:
            # The pipeline took this agent before a reload replaced it and only now asks (it
            # awaited the consent ledger in between): its providers are closed, so the agent
            # that replaced it answers.
            return await current.answer(work, channel_policy)
        self.answering += 1
        if self.answering == 1:
            self._idle = trio.Event()
        try:
            return await super().answer(work, channel_policy)
        finally:
            self.answering -= 1
            if not self.answering:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


@dataclasses.dataclass
class NextAgents:
    slots: dict[str, ProviderSlot]
    agents: dict[str, LiveAgent]
    fresh: list[LLMProvider]


class AgentSet:
    """The providers and agents of the running config. A reload builds the next set, with new
    objects only for what changed, and retires the providers it replaces."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        provider_context: Callable[[str], object],
    ) -> None:
        """``provider_context(name)``: the ProviderContext for the provider called ``name``."""
        self._store = store
        self._metrics = metrics
        self._provider_context = provider_context
        self.slots: dict[str, ProviderSlot] = {}
        self.agents: dict[str, LiveAgent] = {}
        self._open: list[LLMProvider] = []
        """Every provider built and not closed yet: closed at shutdown at the latest."""

    async def build(
        self,
        config: GatewayConfig,
        *,
        keep_providers: Collection[str] = (),
        keep_agents: Collection[str] = (),
    ) -> NextAgents:
        """The providers and agents of ``config``: the running objects for the names in
        ``keep_*`` (a reload passes those that did not change), new ones for the rest. An agent
        kept must use only providers kept."""
        slots = {n: self.slots[n] for n in config.providers if n in keep_providers}
        fresh: list[LLMProvider] = []
        try:
            for name, entry in config.providers.items():
                if name not in slots:
                    provider = entry.plugin.cls(name, entry.config, self._provider_context(name))
                    fresh.append(provider)
                    slots[name] = ProviderSlot(name, entry.plugin.name, provider, entry.config)
        except Exception as exc:
            await self._close_all(fresh)
            raise ProviderNotCreated(f"[providers.{name}] could not be created: {exc}") from exc
        agents = {
            name: self.agents[name]
            if name in keep_agents
            else self._agent(name, cfg, config.local_only, slots)
            for name, cfg in config.agents.items()
        }
        for slot in slots.values():
            for outcome in PROVIDER_OUTCOMES:  # series exist at zero, as for those at start-up
                self._metrics.provider_calls.labels(slot.name, outcome)
        return NextAgents(slots, agents, fresh)

    def _agent(
        self, name: str, cfg: AgentConfig, local_only: bool, slots: Mapping[str, ProviderSlot]
    ) -> LiveAgent:
        store = self._store

        async def record(work: PendingWork, transfer: Transfer) -> None:
            # Not waited for: the reply, or the next attempt's record, is queued after it and
            # so commits in the same transaction or a later one; waiting here put one more
            # writer round trip between the model's answer and the send (bench/README).
            store.write_soon(
                "record transfer",
                record_transfer_txn,
                work.conversation_id,
                work.journal_id,
                name,
                transfer,
            )

        async def knowledge(text: str) -> str:
            found = await store.read(
                "search knowledge", search_knowledge_txn, name, text, cfg.knowledge_snippets
            )
            return format_snippets(found, cfg.knowledge_max_chars)

        agent = LiveAgent(
            name,
            cfg,
            [slots[p] for p in (cfg.provider, *cfg.failover)],
            local_only=local_only,
            redactor=redactor_for(cfg),
            new_mapping=PlaceholderMap,
            record=record,
            knowledge=knowledge if cfg.knowledge_dir else None,
            current=lambda: self.agents.get(name),
        )
        agent.metrics = self._metrics
        return agent

    def install(self, nxt: NextAgents) -> tuple[list[ProviderSlot], list[LiveAgent]]:
        """Make ``nxt`` current; return the providers it replaced and the old agents that use
        them (for :meth:`retire`)."""
        old_slots, old_agents = self.slots, self.agents
        self.slots, self.agents = nxt.slots, nxt.agents
        self._open += nxt.fresh
        kept = {id(s) for s in self.slots.values()}
        retired = [s for s in old_slots.values() if id(s) not in kept]
        users = [a for a in old_agents.values() if any(id(s) not in kept for s in a.chain)]
        return retired, users

    async def discard(self, nxt: NextAgents) -> None:
        """Close what ``build`` made for a reload that was refused."""
        await self._close_all(nxt.fresh)

    async def retire(self, slots: list[ProviderSlot], users: list[LiveAgent]) -> None:
        """Close ``slots``' providers once none of ``users`` is answering (a task of the root
        nursery; cancelled at shutdown, where :meth:`aclose` closes what is left)."""
        while any(agent.answering for agent in users):
            for agent in users:
                await agent.wait_idle()
        # No checkpoint since the loop saw them all idle: none can be inside answer().
        for agent in users:
            agent.closed = True
        await self._close_all([slot.provider for slot in slots])

    async def aclose(self) -> None:
        await self._close_all(list(self._open))

    async def _close_all(self, providers: Iterable[LLMProvider]) -> None:
        with trio.CancelScope(shield=True):
            for provider in providers:
                try:
                    await provider.aclose()
                except Exception:
                    log.exception("closing a provider failed")
                if provider in self._open:
                    self._open.remove(provider)
