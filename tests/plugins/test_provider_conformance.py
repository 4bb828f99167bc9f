"""The LLM provider conformance suite over every built-in provider, and proof that it can fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
import trio
import trio.testing

from gateway.errors import ProviderError
from gateway.messages import ChatMessage, Completion, CompletionRequest
from gateway.plugin import ProviderConfig
from gateway.secretref import Secret
from gateway.testing.conformance_llm import (
    CHECKS,
    FakeOpenAIHarness,
    FakeProviderHarness,
    ProviderHarness,
    check_provider,
)
from gateway.testing.context import MemoryProviderContext
from gateway.testing.fake_llm import FakeProvider
from plugins.faq import FaqProvider
from plugins.openai import OpenAIProvider


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Not 0: the openai SDK hops to a worker thread on a client's first request (platform
    # headers); a zero threshold would jump the clock to the call's deadline meanwhile.
    return trio.testing.MockClock(autojump_threshold=0.05)


KNOWLEDGE = """\
## What are your opening hours?
keywords: hours, open

We are open 9 to 5.

## How much does it cost?
keywords: price, cost

It costs 10 euros.
"""


class FaqHarness(ProviderHarness):
    """The offline provider: no server, so only the checks that need none apply."""

    provider_class = FaqProvider
    offline = True

    def __init__(self, config_dir: Path) -> None:
        (config_dir / "knowledge.md").write_text(KNOWLEDGE, encoding="utf-8")
        self.config_dir = config_dir

    def config(self, **overrides: Any) -> dict[str, Any]:
        return {"plugin": "faq", "knowledge": "knowledge.md", **overrides}

    def context(self) -> MemoryProviderContext:
        context = super().context()
        context.config_dir = str(self.config_dir)
        return context

    def conversation(self) -> CompletionRequest:
        return CompletionRequest(
            system="You answer from the FAQ.",
            messages=(
                ChatMessage("user", "What are your opening hours?"),
                ChatMessage("assistant", "We are open 9 to 5."),
                ChatMessage("user", "and how much does it cost?"),
            ),
        )

    def check_answer(self, request: CompletionRequest, completion: Completion) -> None:
        assert completion.text == "It costs 10 euros.", completion.text


def openai_harness() -> FakeOpenAIHarness:
    return FakeOpenAIHarness(
        OpenAIProvider,
        {"plugin": "openai", "model": "fake-model", "api_key": Secret("sk-conformance-secret")},
    )


async def test_openai_provider_conforms(clock):
    assert await check_provider(openai_harness()) == list(CHECKS)


async def test_fake_provider_conforms(clock):
    assert await check_provider(FakeProviderHarness()) == list(CHECKS)


async def test_faq_provider_conforms_offline(clock, tmp_path):
    ran = await check_provider(FaqHarness(tmp_path))
    assert ran == ["config", "answers_last_message", "aclose_twice", "cancellation"]


async def test_only_runs_the_named_checks(clock):
    assert await check_provider(FakeProviderHarness(), only=["config", "hang"]) == [
        "config",
        "hang",
    ]
    with pytest.raises(ValueError, match="unknown checks"):
        await check_provider(FakeProviderHarness(), only=["nope"])


# -- the suite fails providers that break the contract ---------------------------------------


class LaxConfigProvider(FakeProvider):
    class Config(ProviderConfig):
        model_config = pydantic.ConfigDict(extra="allow", frozen=True)


class NeverTimesOutProvider(FakeProvider):
    async def complete(self, request: CompletionRequest) -> Completion:
        if self.model._hangs:
            await trio.sleep_forever()
        return await super().complete(request)


class SwallowsCancellationProvider(FakeProvider):
    async def complete(self, request: CompletionRequest) -> Completion:
        try:
            return await super().complete(request)
        except trio.Cancelled:
            raise ProviderError("cancelled", retryable=True) from None


class EverythingIsFatalProvider(FakeProvider):
    async def complete(self, request: CompletionRequest) -> Completion:
        try:
            return await super().complete(request)
        except ProviderError as exc:
            raise ProviderError(str(exc), retryable=False) from None


class LeakyErrorsProvider(FakeProvider):
    async def complete(self, request: CompletionRequest) -> Completion:
        try:
            return await super().complete(request)
        except ProviderError as exc:
            raise ProviderError(
                f"failed on {request.messages[-1].content}", retryable=exc.retryable
            ) from None


class AnswersFirstMessageProvider(FakeProvider):
    async def complete(self, request: CompletionRequest) -> Completion:
        completion = await super().complete(request)
        return Completion("echo: " + request.messages[0].content, completion.model)


@pytest.mark.parametrize(
    ("provider_class", "failing_check"),
    [
        (LaxConfigProvider, "config"),
        (NeverTimesOutProvider, "hang"),
        (SwallowsCancellationProvider, "cancellation"),
        (EverythingIsFatalProvider, "error_500"),
        (LeakyErrorsProvider, "error_500"),
        (AnswersFirstMessageProvider, "answers_last_message"),
    ],
)
async def test_suite_catches_broken_providers(clock, provider_class, failing_check):
    harness = FakeProviderHarness()
    harness.provider_class = type(
        provider_class.__name__, (provider_class,), {"_shared_model": harness.model}
    )
    with pytest.raises(AssertionError, match=f"^check {failing_check}: "):
        await check_provider(harness)
