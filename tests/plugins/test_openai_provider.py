"""OpenAIProvider against FakeOpenAIServer: the request it sends, the answer, every error path."""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pydantic
import pytest
import trio
import trio.testing

from gateway.errors import ProviderError
from gateway.messages import ChatMessage, CompletionRequest
from gateway.secretref import Secret
from gateway.testing.context import MemoryProviderContext
from gateway.testing.fake_openai import FakeOpenAIServer, open_fake_openai
from plugins.openai import OpenAIProvider

KEY = "sk-test-KEY-0123456789"
USER_TEXT = "my card number is 4111-private"
REQUEST = CompletionRequest(
    system="You are a helpful assistant.",
    messages=(
        ChatMessage("user", "hello"),
        ChatMessage("assistant", "hi, how can I help?"),
        ChatMessage("user", USER_TEXT),
    ),
)


# One CA bundle for all contexts: a fresh one costs ~30 ms per httpx client.
SSL = ssl.create_default_context()


def make_context() -> MemoryProviderContext:
    return MemoryProviderContext(name="main", http=httpx.AsyncClient(verify=SSL))


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Not 0: the SDK computes platform headers in a worker thread on a client's first request,
    # and a zero threshold would jump the clock to the call's deadline during that hop.
    return trio.testing.MockClock(autojump_threshold=0.05)


@contextlib.asynccontextmanager
async def open_provider(server: FakeOpenAIServer, **config: Any) -> AsyncIterator[OpenAIProvider]:
    table = {"plugin": "openai", "base_url": server.base_url, "model": "fake-model", **config}
    context = make_context()
    provider = OpenAIProvider("main", OpenAIProvider.Config.model_validate(table), context)
    try:
        yield provider
    finally:
        await provider.aclose()
        await context.http.aclose()


async def expect_error(
    provider: OpenAIProvider, request: CompletionRequest = REQUEST
) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await provider.complete(request)
    assert USER_TEXT not in str(info.value) and KEY not in str(info.value)
    return info.value


async def test_sends_the_conversation_and_maps_the_answer():
    async with (
        open_fake_openai() as server,
        open_provider(server, api_key=Secret(KEY), temperature=0.2, max_tokens=300) as provider,
    ):
        completion = await provider.complete(REQUEST)
    assert completion.text == f"echo: {USER_TEXT}"
    assert completion.model == "fake-model"
    assert (completion.input_tokens, completion.output_tokens) == (16, 6)
    body = server.requests[0]
    assert body["model"] == "fake-model"
    assert body["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi, how can I help?"},
        {"role": "user", "content": USER_TEXT},
    ]
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 300, "a non-OpenAI server gets max_tokens"
    assert "stream" not in body or body["stream"] is False
    assert server.received[0].headers["authorization"] == f"Bearer {KEY}"


async def test_request_max_tokens_may_lower_the_configured_bound_but_not_raise_it():
    async with open_fake_openai() as server, open_provider(server, max_tokens=100) as provider:
        await provider.complete(CompletionRequest("s", REQUEST.messages, max_tokens=50))
        await provider.complete(CompletionRequest("s", REQUEST.messages, max_tokens=5000))
    assert [r["max_tokens"] for r in server.requests] == [50, 100]


async def test_empty_system_prompt_is_left_out():
    async with open_fake_openai() as server, open_provider(server) as provider:
        await provider.complete(CompletionRequest("", (ChatMessage("user", "hi"),)))
    assert server.requests[0]["messages"] == [{"role": "user", "content": "hi"}]


async def test_without_api_key_a_placeholder_is_sent_not_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    async with open_fake_openai() as server, open_provider(server) as provider:
        await provider.complete(REQUEST)
    assert server.received[0].headers["authorization"] == "Bearer no-key-configured"


async def test_wrong_key_is_not_retryable_and_names_the_fix():
    async with (
        open_fake_openai(api_key="sk-the-right-one") as server,
        open_provider(server, api_key=Secret(KEY)) as provider,
    ):
        error = await expect_error(provider)
    assert not error.retryable
    assert "401" in str(error) and "check api_key" in str(error)


@pytest.mark.parametrize(
    ("status", "fix"),
    [
        (400, "check model 'fake-model'"),
        (403, "check api_key and the project's model access"),
        (404, "check model and base_url"),
        (422, "check model 'fake-model'"),
    ],
)
async def test_client_errors_are_not_retryable(status, fix):
    async with open_fake_openai() as server, open_provider(server) as provider:
        server.fail_next(1, status=status)
        error = await expect_error(provider)
    assert not error.retryable and error.retry_after is None
    assert f"HTTP {status}" in str(error) and fix in str(error)


@pytest.mark.parametrize("status", [500, 502, 503, 408, 409])
async def test_server_errors_are_retryable(status):
    async with open_fake_openai() as server, open_provider(server) as provider:
        server.fail_next(1, status=status)
        error = await expect_error(provider)
        assert error.retryable
        assert (await provider.complete(REQUEST)).text, "the provider must answer after a failure"


async def test_rate_limit_carries_retry_after():
    async with open_fake_openai() as server, open_provider(server) as provider:
        server.fail_next(1, status=429, retry_after=12)
        server.fail_next(1, status=429, retry_after=0.25)
        server.fail_next(1, status=429)
        seconds = [(await expect_error(provider)).retry_after for _ in range(3)]
    assert seconds == [12, 0.25, None]
    assert len(server.requests) == 3, "the SDK must not retry on its own (max_retries=0)"


async def test_error_text_from_the_server_never_reaches_the_message():
    # Some servers quote the request in their error text; the provider keeps only identifiers.
    async with open_fake_openai() as server, open_provider(server) as provider:
        server.fail_next(1, status=400, message=f"cannot process: {USER_TEXT}")
        error = await expect_error(provider)
    assert "code=invalid_request_error" in str(error)


async def test_slow_server_times_out_within_the_configured_timeout(clock):
    async with open_fake_openai(latency=60) as server, open_provider(server, timeout=2) as provider:
        started = trio.current_time()
        error = await expect_error(provider)
    assert error.retryable
    assert "within 2 s" in str(error)
    assert trio.current_time() - started == pytest.approx(2, abs=0.1)


async def test_unreachable_server_is_retryable():
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    table = {"plugin": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m"}
    context = make_context()
    provider = OpenAIProvider("main", OpenAIProvider.Config.model_validate(table), context)
    try:
        error = await expect_error(provider)
    finally:
        await provider.aclose()
        await context.http.aclose()
    assert error.retryable
    assert f"cannot reach 127.0.0.1:{port}" in str(error) and "check base_url" in str(error)


@pytest.mark.parametrize(
    ("reply", "retryable", "words"),
    [
        ("", True, "empty answer"),
        ("   \n", True, "empty answer"),
        ({"finish_reason": "length"}, False, "raise max_tokens"),
        ({"finish_reason": "content_filter"}, False, "content filter"),
        ({"no_choices": True}, True, "no choices"),
    ],
)
async def test_empty_answers(reply, retryable, words):
    def answer(body: dict[str, Any]) -> Any:
        if isinstance(reply, str):
            return reply
        if reply.get("no_choices"):
            return {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [],
            }
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": None},
            "finish_reason": reply["finish_reason"],
        }
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [choice],
        }

    async with open_fake_openai() as server, open_provider(server) as provider:
        server.reply_with(answer)
        error = await expect_error(provider)
    assert error.retryable is retryable
    assert words in str(error)


async def test_concurrent_calls_share_one_client():
    async with open_fake_openai() as server, open_provider(server) as provider:
        answers: dict[int, str] = {}

        async def ask(i: int) -> None:
            request = CompletionRequest("s", (ChatMessage("user", f"question {i}"),))
            answers[i] = (await provider.complete(request)).text

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(ask, i)
    assert answers == {i: f"echo: question {i}" for i in range(20)}


async def test_logs_carry_neither_conversation_nor_key(caplog):
    caplog.set_level(logging.DEBUG)
    async with open_fake_openai() as server, open_provider(server, api_key=Secret(KEY)) as provider:
        await provider.complete(REQUEST)
        server.fail_next(1, status=400, message=USER_TEXT)
        await expect_error(provider)
    assert caplog.records, "expected debug logs from the provider and the SDK"
    for record in caplog.records:
        assert USER_TEXT not in record.getMessage() and KEY not in record.getMessage(), record.name


async def test_closed_cleanly_under_trio_and_unusable_afterwards():
    async with open_fake_openai() as server:
        async with open_provider(server) as provider:
            await provider.complete(REQUEST)
        # open_provider closed it; a second aclose is harmless.
        await provider.aclose()
        with pytest.raises(ProviderError, match="closed") as info:
            await provider.complete(REQUEST)
        assert not info.value.retryable
        del provider
    # filterwarnings=error: an unclosed SDK client (its asyncio-only __del__) would fail here.
    gc.collect()


async def test_never_used_provider_opens_nothing():
    provider = OpenAIProvider(
        "main", OpenAIProvider.Config(plugin="openai", model="m"), make_context()
    )
    assert provider._client is None
    await provider.aclose()
    await provider.context.http.aclose()


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"base_url": "ftp://example.com/v1"}, "base_url"),
        ({"base_url": "localhost:11434"}, "base_url"),
        ({"model": ""}, "model"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"api_key": "sk-written-in-the-file"}, "api_key"),
        ({"top_p": 0.5}, "top_p"),
    ],
)
def test_config_rejects_bad_values(table, key):
    with pytest.raises(pydantic.ValidationError) as info:
        OpenAIProvider.Config.model_validate({"plugin": "openai", "model": "m", **table})
    assert key in str(info.value)


def test_config_requires_model_and_defaults_to_openai():
    with pytest.raises(pydantic.ValidationError, match="model"):
        OpenAIProvider.Config.model_validate({"plugin": "openai"})
    config = OpenAIProvider.Config.model_validate({"plugin": "openai", "model": "gpt-4o-mini"})
    assert config.base_url == "https://api.openai.com/v1"
    assert config.api_key is None and config.timeout == 30


def test_api_key_comes_from_a_secret_reference(monkeypatch):
    monkeypatch.setenv("TEST_OPENAI_KEY", KEY)
    config = OpenAIProvider.Config.model_validate(
        {"plugin": "openai", "model": "m", "api_key": "env:TEST_OPENAI_KEY"}
    )
    assert config.api_key is not None and config.api_key.reveal() == KEY
    assert KEY not in repr(config)
