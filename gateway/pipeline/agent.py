"""An agent turns a conversation into a reply: prompt, residency decision, model calls with
bounded retries along a failover chain, and the fallback text when nothing answers.

Every model call (and every call the policy refused) is handed to ``record`` as a
:class:`Transfer`: the transfer log is the raw material of the processing record.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio

from gateway.analysis import Analysis, Analyzer
from gateway.config import AgentConfig, analysis_config
from gateway.errors import ProviderError
from gateway.messages import ChatMessage, CompletionRequest
from gateway.plugin import LLMProvider, ProviderConfig
from gateway.privacy.residency import Decision, ResidencyPolicy, decide
from gateway.store.journal import PendingWork

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.agent")

# The redactor's categories, as the residency policy names them.
_POLICY_CATEGORY = {"name": "contact_names"}


class Redacting(Protocol):
    """What the agent needs of gateway.privacy.redaction.Redactor."""

    def redact(self, text: str, mapping: Any) -> str: ...
    def restore(self, text: str, mapping: Any) -> str: ...


@dataclasses.dataclass
class ProviderSlot:
    """A configured provider and its health, shared by every agent that uses it."""

    name: str
    plugin: str
    provider: LLMProvider
    config: ProviderConfig
    cooling_until: float = -math.inf

    def cooling(self) -> bool:
        return trio.current_time() < self.cooling_until


@dataclasses.dataclass(frozen=True)
class Transfer:
    """One model call, or one call the residency policy refused. Never holds content."""

    provider: str
    plugin: str
    region: str
    purpose: str
    categories: tuple[str, ...]
    redacted: bool
    legal_basis: str | None
    bytes_out: int
    bytes_in: int
    outcome: str
    """ok, error, timeout, empty, refused."""
    detail: str
    duration_ms: float


Recorder = Callable[[PendingWork, Transfer], Awaitable[None]]


async def _no_record(work: PendingWork, transfer: Transfer) -> None:
    await trio.lowlevel.checkpoint()


class Agent:
    metrics: Metrics | None = None
    """Counts model calls when set (gateway.app sets it); None for agents built alone."""

    def __init__(
        self,
        name: str,
        config: AgentConfig,
        chain: Sequence[ProviderSlot],
        *,
        local_only: bool = False,
        redactor: Redacting | None = None,
        new_mapping: Callable[[], Any] | None = None,
        record: Recorder = _no_record,
        knowledge: Callable[[str], Awaitable[str]] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.chain = list(chain)
        self.local_only = local_only
        self.redactor = redactor
        self.new_mapping = new_mapping
        self.record = record
        self.knowledge = knowledge
        self.analyzer = Analyzer(analysis_config(config))
        """Finds the agent's document snippets for a message (the block to add to the prompt)."""
        self.calls = {"ok": 0, "retry": 0, "fallback": 0, "refused": 0}

    @property
    def provider(self) -> LLMProvider:
        """The first provider of the chain."""
        return self.chain[0].provider

    def request_for(self, work: PendingWork) -> CompletionRequest:
        cfg = self.config
        history = [t for t in work.history[-(cfg.history_turns + 1) :] if t.text]
        if cfg.history_tokens is not None:
            # ~4 characters a token is the usual rule of thumb; exact counts need the model's
            # own tokenizer, which a gateway serving many providers does not have.
            budget = cfg.history_tokens * 4
            while len(history) > 1 and sum(len(t.text) for t in history) > budget:
                history.pop(0)
        turns = tuple(
            ChatMessage("user" if t.direction == "in" else "assistant", t.text) for t in history
        )
        system = self.config.system_prompt
        language = self.config.language
        if language == "auto":
            system += "\nAnswer in the language of the user's last message."
        elif language:
            system += f"\nAlways answer in this language: {language}."
        return CompletionRequest(system=system, messages=turns, language=language)

    def analyze(self, work: PendingWork) -> Analysis:
        """The local analysis of the newest message, with the contact's earlier messages."""
        earlier = [t.text for t in work.history[:-1] if t.direction == "in"]
        return self.analyzer.analyze(work.history[-1].text if work.history else "", history=earlier)

    def handoff_reason(self, analysis: Analysis) -> str | None:
        """Why this message should go to a person, or None: the user asked for one (the
        analyzer's built-in lexicon in en/ru/es/pt, or the agent's own phrases), its category
        is routed to people, or (opt-in) it is angry and urgent or hard to read."""
        if analysis.wants_human:
            return "asked for a person"
        if analysis.category is not None and analysis.category in self.config.handoff_categories:
            return f"category {analysis.category} goes to people"
        if (
            self.config.handoff_when_angry
            and analysis.sentiment == "negative"
            and analysis.urgency == "high"
        ):
            return "angry and urgent"
        if analysis.confidence < self.config.handoff_below_confidence:
            return f"unsure what the user wants (confidence {analysis.confidence:.2f})"
        return None

    def suggestions(self, analysis: Analysis, text: str) -> list[str]:
        """Suggested replies for the person who has the conversation."""
        return self.analyzer.suggest_replies(analysis, text)

    def handoff_text(self, moment: dt.datetime) -> str:
        hours = self.config.business_hours
        if hours is None or hours.is_open(moment):
            return self.config.handoff_text
        return self.config.after_hours_text.replace("{hours}", hours.describe())

    async def answer(
        self, work: PendingWork, channel_policy: ResidencyPolicy | None = None
    ) -> tuple[str, str]:
        """Return (reply text, author): "ai", "notice" (nothing to read) or "fallback".

        Never raises for a model failure: the user always gets an answer.
        """
        cfg = self.config
        if not work.history or not work.history[-1].text.strip():
            # Nothing a text model can read (a sticker, a photo without caption).
            return cfg.non_text_reply, "notice"
        request = self.request_for(work)
        if self.knowledge is not None:
            snippets = await self.knowledge(work.history[-1].text)
            if snippets:
                request = dataclasses.replace(request, system=f"{request.system}\n\n{snippets}")
        redacted, mapping, found = self._redact(request)
        slots = [s for s in self.chain if not s.cooling()] or self.chain
        for slot in slots:
            decision = decide(
                region=slot.config.region,
                personal_data=slot.config.personal_data,
                found=found,
                policies=(cfg.residency, channel_policy),
                local_only=self.local_only,
            )
            if decision.action == "refuse" or (decision.action == "redact" and redacted is None):
                reason = decision.reason if decision.action == "refuse" else "no redactor"
                self.calls["refused"] += 1
                log.info(
                    "agent=%s provider=%s journal=%d refused: %s",
                    self.name,
                    slot.name,
                    work.journal_id,
                    reason,
                )
                await self.record(
                    work, self._transfer(slot, decision, request, "", "refused", reason, 0.0)
                )
                continue
            sent = redacted if decision.action == "redact" and redacted is not None else request
            text = await self._ask(slot, sent, work, decision)
            if text is not None:
                if sent is redacted and self.redactor is not None:
                    text = self.redactor.restore(text, mapping)
                self.calls["ok"] += 1
                text = text[: cfg.max_reply_chars]
                if cfg.disclosure:
                    text = f"{text}\n\n{cfg.disclosure}"
                return text, "ai"
            slot.cooling_until = trio.current_time() + cfg.cooldown
        self.calls["fallback"] += 1
        return cfg.fallback_text, "fallback"

    def _redact(self, request: CompletionRequest) -> tuple[CompletionRequest | None, Any, set[str]]:
        """The request with personal data replaced by placeholders, its mapping, and the policy
        categories found. The mapping is built afresh for each request from its whole history, so
        the same value gets the same placeholder within what one model sees."""
        if self.redactor is None or self.new_mapping is None:
            return None, None, set()
        mapping = self.new_mapping()
        turns = tuple(
            ChatMessage(m.role, self.redactor.redact(m.content, mapping)) for m in request.messages
        )
        found = {_POLICY_CATEGORY.get(c, "contact_details") for c in mapping.categories_found}
        return dataclasses.replace(request, messages=turns), mapping, found

    async def _ask(
        self, slot: ProviderSlot, request: CompletionRequest, work: PendingWork, decision: Decision
    ) -> str | None:
        """Up to max_attempts calls to one provider; the reply text, or None if all failed."""
        cfg = self.config
        for attempt in range(1, cfg.max_attempts + 1):
            started = time.perf_counter()
            delay: float | None = None
            text = ""
            try:
                # The provider enforces its own timeout; this guard (a little longer) catches a
                # provider that does not.
                with trio.fail_after(slot.config.timeout * 1.5 + 1):
                    completion = await slot.provider.complete(request)
            except ProviderError as exc:
                outcome, detail = "error", str(exc)
                delay = exc.retry_after
                retry = exc.retryable
            except trio.TooSlowError:
                outcome, detail, retry = "timeout", "provider ignored its own timeout", True
            except Exception as exc:  # a provider bug must not silence the conversation
                log.exception("provider %s raised unexpectedly", slot.name)
                outcome, detail, retry = "error", f"bug: {type(exc).__name__}", False
            else:
                text = completion.text.strip()
                outcome, detail, retry = (
                    ("ok", "", False) if text else ("empty", "empty answer", True)
                )
            elapsed = (time.perf_counter() - started) * 1000
            log.info(
                "agent=%s provider=%s conversation=%d journal=%d attempt=%d outcome=%s ms=%.0f%s",
                self.name,
                slot.name,
                work.conversation_id,
                work.journal_id,
                attempt,
                outcome,
                elapsed,
                f" ({detail})" if detail else "",
                extra={"provider": slot.name, "attempt": attempt, "outcome": outcome},
            )
            if self.metrics is not None:
                self.metrics.provider_call(slot.name, outcome, elapsed / 1000)
            await self.record(
                work, self._transfer(slot, decision, request, text, outcome, detail, elapsed)
            )
            if outcome == "ok":
                return text
            if not retry or attempt == cfg.max_attempts:
                return None
            self.calls["retry"] += 1
            backoff = min(cfg.retry_backoff * 2 ** (attempt - 1), cfg.retry_backoff_max)
            await trio.sleep(min(delay, cfg.retry_backoff_max) if delay is not None else backoff)
        return None

    def _transfer(
        self,
        slot: ProviderSlot,
        decision: Decision,
        request: CompletionRequest,
        reply: str,
        outcome: str,
        detail: str,
        elapsed_ms: float,
    ) -> Transfer:
        bytes_out = 0
        if outcome != "refused":
            bytes_out = len(request.system.encode()) + sum(
                len(m.content.encode()) for m in request.messages
            )
        return Transfer(
            provider=slot.name,
            plugin=slot.plugin,
            region=slot.config.region,
            purpose="reply",
            categories=decision.categories,
            redacted=decision.action == "redact",
            legal_basis=slot.config.legal_basis,
            bytes_out=bytes_out,
            bytes_in=len(reply.encode()),
            outcome=outcome,
            detail=detail[:500],
            duration_ms=round(elapsed_ms, 1),
        )
