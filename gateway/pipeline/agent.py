"""An agent turns a conversation into a reply: prompt, model call, bounded retries, fallback."""

from __future__ import annotations

import logging
import time

import trio

from gateway.config import AgentConfig
from gateway.errors import ProviderError
from gateway.messages import ChatMessage, CompletionRequest
from gateway.plugin import LLMProvider
from gateway.store.journal import PendingWork

log = logging.getLogger("gateway.agent")


class Agent:
    def __init__(
        self,
        name: str,
        config: AgentConfig,
        provider_name: str,
        provider: LLMProvider,
        timeout: float,
    ) -> None:
        self.name = name
        self.config = config
        self.provider_name = provider_name
        self.provider = provider
        self.timeout = timeout
        self.calls = {"ok": 0, "retry": 0, "fallback": 0}

    def request_for(self, work: PendingWork) -> CompletionRequest:
        turns = tuple(
            ChatMessage("user" if t.direction == "in" else "assistant", t.text)
            for t in work.history
            if t.text
        )
        return CompletionRequest(system=self.config.system_prompt, messages=turns)

    async def answer(self, work: PendingWork) -> tuple[str, str]:
        """Return (reply text, author): author is "ai", or "fallback" when every attempt failed.

        Never raises for a model failure: the user always gets an answer. Logs carry the
        provider, attempt and outcome, never the conversation.
        """
        cfg = self.config
        if not work.history or not work.history[-1].text.strip():
            # Nothing a text model can read (a sticker, a photo without caption).
            return cfg.non_text_reply, "notice"
        request = self.request_for(work)
        for attempt in range(1, cfg.max_attempts + 1):
            started = time.perf_counter()
            delay: float | None = None
            try:
                # The provider enforces its own timeout; this guard (a little longer) catches a
                # provider that does not.
                with trio.fail_after(self.timeout * 1.5 + 1):
                    completion = await self.provider.complete(request)
            except ProviderError as exc:
                outcome = f"error: {exc}"
                if exc.retryable:
                    delay = exc.retry_after
                else:
                    self._log(work, attempt, outcome, started)
                    break
            except trio.TooSlowError:
                outcome = "timeout (provider ignored its own timeout)"
            except Exception as exc:  # a provider bug must not silence the conversation
                log.exception("provider %s raised unexpectedly", self.provider_name)
                outcome = f"bug: {type(exc).__name__}"
                self._log(work, attempt, outcome, started)
                break
            else:
                text = completion.text.strip()
                if text:
                    self.calls["ok"] += 1
                    self._log(work, attempt, "ok", started)
                    return text[: cfg.max_reply_chars], "ai"
                outcome = "empty answer"
            self._log(work, attempt, outcome, started)
            if attempt < cfg.max_attempts:
                self.calls["retry"] += 1
                backoff = min(cfg.retry_backoff * 2 ** (attempt - 1), cfg.retry_backoff_max)
                await trio.sleep(
                    min(delay, cfg.retry_backoff_max) if delay is not None else backoff
                )
        self.calls["fallback"] += 1
        return cfg.fallback_text, "fallback"

    def _log(self, work: PendingWork, attempt: int, outcome: str, started: float) -> None:
        log.info(
            "agent=%s provider=%s conversation=%d journal=%d attempt=%d outcome=%s ms=%.0f",
            self.name,
            self.provider_name,
            work.conversation_id,
            work.journal_id,
            attempt,
            outcome,
            (time.perf_counter() - started) * 1000,
        )
