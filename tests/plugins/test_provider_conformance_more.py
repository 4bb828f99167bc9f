"""The provider conformance suite over the Anthropic and Gemini plugins, and Gemini's own defaults.

Gemini reuses the OpenAI provider's code path, so its suite runs against FakeOpenAIServer;
Anthropic's runs against FakeAnthropicServer (which insists on the key, as the API does).
"""

from __future__ import annotations

import ssl

import httpx
import pydantic
import pytest
import trio.testing

from gateway.messages import ChatMessage, CompletionRequest
from gateway.plugin import load_registry
from gateway.secretref import Secret
from gateway.testing.conformance_llm import (
    CHECKS,
    FakeAnthropicHarness,
    FakeOpenAIHarness,
    check_provider,
)
from gateway.testing.context import MemoryProviderContext
from gateway.testing.fake_openai import open_fake_openai
from plugins.anthropic import AnthropicProvider
from plugins.gemini import GeminiProvider
from plugins.openai import OpenAIProvider

GEMINI_KEY = "gemini-conformance-secret"


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Not 0: both SDKs hop to a worker thread on a client's first request (platform headers);
    # a zero threshold would jump the clock to the call's deadline meanwhile.
    return trio.testing.MockClock(autojump_threshold=0.05)


def anthropic_harness() -> FakeAnthropicHarness:
    return FakeAnthropicHarness(
        AnthropicProvider,
        {"plugin": "anthropic", "model": "claude-fake", "api_key": Secret("sk-ant-conformance")},
    )


def gemini_harness() -> FakeOpenAIHarness:
    return FakeOpenAIHarness(
        GeminiProvider,
        {"plugin": "gemini", "model": "gemini-fake", "api_key": Secret(GEMINI_KEY)},
    )


async def test_anthropic_provider_conforms(clock):
    assert await check_provider(anthropic_harness()) == list(CHECKS)


async def test_gemini_provider_conforms(clock):
    assert await check_provider(gemini_harness()) == list(CHECKS)


def test_both_plugins_are_found_through_their_entry_points():
    registry = load_registry(only=["anthropic", "gemini"])
    assert registry.failures == {}
    assert registry.providers["anthropic"].cls is AnthropicProvider
    assert registry.providers["gemini"].cls is GeminiProvider


# -- Gemini: the OpenAI code path with Gemini's defaults --------------------------------------


def test_gemini_config_defaults_to_googles_endpoint_and_requires_a_key(monkeypatch):
    assert issubclass(GeminiProvider, OpenAIProvider)
    with pytest.raises(pydantic.ValidationError) as info:
        GeminiProvider.Config.model_validate({"plugin": "gemini", "model": "gemini-2.5-flash"})
    assert "api_key" in str(info.value)
    monkeypatch.setenv("TEST_GEMINI_KEY", GEMINI_KEY)
    table = {"plugin": "gemini", "model": "gemini-2.5-flash", "api_key": "env:TEST_GEMINI_KEY"}
    config = GeminiProvider.Config.model_validate(table)
    assert config.base_url == "https://generativelanguage.googleapis.com/v1beta/openai"
    written = GeminiProvider.Config.model_validate(
        {**table, "base_url": "https://generativelanguage.googleapis.com/v1beta/openai/"}
    )
    assert written.base_url == config.base_url, "the default is in the validated form"
    assert config.api_key.reveal() == GEMINI_KEY and GEMINI_KEY not in repr(config)
    with pytest.raises(pydantic.ValidationError, match="top_k"):
        GeminiProvider.Config.model_validate({**table, "top_k": 3})


async def test_gemini_sends_the_key_as_a_bearer_token_and_max_tokens():
    async with open_fake_openai(api_key=GEMINI_KEY) as server:
        table = {
            "plugin": "gemini",
            "base_url": server.base_url,
            "model": "gemini-fake",
            "api_key": Secret(GEMINI_KEY),
            "max_tokens": 200,
        }
        context = MemoryProviderContext(
            name="gemini", http=httpx.AsyncClient(verify=ssl.create_default_context())
        )
        provider = GeminiProvider("gemini", GeminiProvider.Config.model_validate(table), context)
        try:
            completion = await provider.complete(
                CompletionRequest("be brief", (ChatMessage("user", "hello"),))
            )
        finally:
            await provider.aclose()
            await context.http.aclose()
    assert completion.text == "echo: hello"
    assert server.received[0].path == "/v1/chat/completions"
    assert server.received[0].headers["authorization"] == f"Bearer {GEMINI_KEY}"
    assert server.requests[0]["max_tokens"] == 200, "Google's endpoint takes max_tokens"
