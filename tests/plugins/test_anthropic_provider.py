"""AnthropicProvider against FakeAnthropicServer: the request it sends, the answer, every error."""

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
from gateway.testing.fake_anthropic import FakeAnthropicServer, open_fake_anthropic
from plugins.anthropic import AnthropicProvider
from plugins.anthropic.provider import anthropic_turns

KEY = "sk-ant-test-KEY-0123456789"
USER_TEXT = "my card number is 4111-private"
SYSTEM = "You are a helpful assistant."
REQUEST = CompletionRequest(
    system=SYSTEM,
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
async def open_provider(
    server: FakeAnthropicServer, **config: Any
) -> AsyncIterator[AnthropicProvider]:
    table = {
        "plugin": "anthropic",
        "base_url": server.base_url,
        "model": "claude-fake",
        "api_key": Secret(KEY),
        **config,
    }
    context = make_context()
    provider = AnthropicProvider("main", AnthropicProvider.Config.model_validate(table), context)
    try:
        yield provider
    finally:
        await provider.aclose()
        await context.http.aclose()


async def expect_error(
    provider: AnthropicProvider, request: CompletionRequest = REQUEST
) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await provider.complete(request)
    assert USER_TEXT not in str(info.value) and KEY not in str(info.value)
    return info.value


def turns(*pairs: tuple[str, str]) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(role, text) for role, text in pairs)  # type: ignore[arg-type]


# -- the request ------------------------------------------------------------------------------


async def test_system_goes_top_level_and_the_turns_in_order():
    async with (
        open_fake_anthropic(api_key=KEY) as server,
        open_provider(server, temperature=0.2) as provider,
    ):
        completion = await provider.complete(REQUEST)
    assert completion.text == f"echo: {USER_TEXT}"
    assert completion.model == "claude-fake"
    assert (completion.input_tokens, completion.output_tokens) == (16, 6)
    body = server.requests[0]
    assert body == {
        "model": "claude-fake",
        "max_tokens": 1024,
        "system": SYSTEM,
        "temperature": 0.2,
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi, how can I help?"},
            {"role": "user", "content": USER_TEXT},
        ],
    }
    headers = server.received[0].headers
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["anthropic-version"]


async def test_request_max_tokens_may_lower_the_configured_bound_but_not_raise_it():
    async with open_fake_anthropic() as server, open_provider(server, max_tokens=100) as provider:
        await provider.complete(CompletionRequest("s", REQUEST.messages, max_tokens=50))
        await provider.complete(CompletionRequest("s", REQUEST.messages, max_tokens=5000))
        await provider.complete(CompletionRequest("s", REQUEST.messages))
    assert [r["max_tokens"] for r in server.requests] == [50, 100, 100]


async def test_empty_system_prompt_is_left_out():
    async with open_fake_anthropic() as server, open_provider(server) as provider:
        await provider.complete(CompletionRequest("", (ChatMessage("user", "hi"),)))
    assert "system" not in server.requests[0]
    assert server.requests[0]["messages"] == [{"role": "user", "content": "hi"}]


async def test_a_history_the_api_would_refuse_is_made_to_alternate():
    # The fake refuses a leading assistant turn and repeated roles with a 400, as the API did.
    request = CompletionRequest(
        SYSTEM,
        turns(
            ("assistant", "Welcome! Ask me anything."),
            ("user", "hello"),
            ("user", "are you there?"),
            ("assistant", "yes,"),
            ("assistant", "how can I help?"),
            ("user", USER_TEXT),
        ),
    )
    async with open_fake_anthropic() as server, open_provider(server) as provider:
        completion = await provider.complete(request)
    assert server.requests[0]["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello"},
                {"type": "text", "text": "are you there?"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "yes,"},
                {"type": "text", "text": "how can I help?"},
            ],
        },
        {"role": "user", "content": USER_TEXT},
    ]
    assert completion.text == f"echo: {USER_TEXT}"


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([("user", "a")], [("user", "a")]),
        ([("assistant", "greeting"), ("user", "a")], [("user", "a")]),
        (
            [("assistant", "g1"), ("assistant", "g2"), ("user", "a"), ("assistant", "b")],
            [("user", "a")],
        ),
        ([("user", "a"), ("user", "b")], [("user", ["a", "b"])]),
        (
            [("user", "a"), ("assistant", "b"), ("assistant", "c"), ("user", "d")],
            [("user", "a"), ("assistant", ["b", "c"]), ("user", "d")],
        ),
        ([("user", "a"), ("assistant", "  "), ("user", "b")], [("user", ["a", "b"])]),
        ([("user", "")], []),
        ([("assistant", "only the bot spoke")], []),
        ([], []),
    ],
)
def test_anthropic_turns_start_with_the_user_and_alternate(history, expected):
    got = anthropic_turns(turns(*history))
    want = [
        {
            "role": role,
            "content": text
            if isinstance(text, str)
            else [{"type": "text", "text": t} for t in text],
        }
        for role, text in expected
    ]
    assert got == want


async def test_a_conversation_without_a_user_turn_fails_before_any_request():
    request = CompletionRequest(SYSTEM, turns(("assistant", "Welcome! Ask me anything.")))
    async with open_fake_anthropic() as server, open_provider(server) as provider:
        error = await expect_error(provider, request)
    assert not error.retryable and "no user message" in str(error)
    assert "Welcome" not in str(error)
    assert server.received == []


async def test_the_sdk_environment_variables_are_not_used(monkeypatch):
    # An explicit key and base_url must win; telemetry must stay off whatever the env says.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-the-environment")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY_TRACES_CONTENT_MODE", "content")
    async with open_fake_anthropic(api_key=KEY) as server, open_provider(server) as provider:
        await provider.complete(REQUEST)
        client = provider._client
        assert client is not None
        assert client.open_telemetry["traces"]["enabled"] is False
    assert server.received[0].headers["authorization"] == f"Bearer {KEY}"


# -- errors -----------------------------------------------------------------------------------


async def test_wrong_key_is_not_retryable_and_names_the_fix():
    async with (
        open_fake_anthropic(api_key="sk-ant-the-right-one") as server,
        open_provider(server) as provider,
    ):
        error = await expect_error(provider)
    assert not error.retryable
    assert "HTTP 401" in str(error) and "type=authentication_error" in str(error)
    assert "check api_key" in str(error)


@pytest.mark.parametrize(
    ("status", "fix"),
    [
        (400, "check model 'claude-fake', temperature (0 to 1) and max_tokens"),
        (402, "check billing"),
        (403, "check api_key and the workspace's model access"),
        (404, "check model and base_url (the API root, without /v1)"),
        (413, "send fewer history turns"),
    ],
)
async def test_client_errors_are_not_retryable(status, fix):
    async with open_fake_anthropic() as server, open_provider(server) as provider:
        server.fail_next(1, status=status)
        error = await expect_error(provider)
    assert not error.retryable and error.retry_after is None
    assert f"HTTP {status}" in str(error) and fix in str(error)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529, 408, 409])
async def test_server_errors_and_overload_are_retryable(status):
    async with open_fake_anthropic() as server, open_provider(server) as provider:
        server.fail_next(1, status=status, retry_after=3)
        error = await expect_error(provider)
        assert error.retryable and error.retry_after == 3
        assert (await provider.complete(REQUEST)).text, "the provider must answer after a failure"
    if status == 529:
        assert "overloaded" in str(error) and "type=overloaded_error" in str(error)


async def test_rate_limit_carries_retry_after():
    async with open_fake_anthropic() as server, open_provider(server) as provider:
        server.fail_next(1, status=429, retry_after=12)
        server.fail_next(1, status=429, retry_after=0.25)
        server.fail_next(1, status=429)
        errors = [await expect_error(provider) for _ in range(3)]
    assert [e.retry_after for e in errors] == [12, 0.25, None]
    assert all(e.retryable and "type=rate_limit_error" in str(e) for e in errors)
    assert len(server.requests) == 3, "the SDK must not retry on its own (max_retries=0)"


async def test_error_text_from_the_server_never_reaches_the_message():
    # Error messages may quote the request; the provider keeps the type and the request id.
    async with open_fake_anthropic() as server, open_provider(server) as provider:
        server.fail_next(1, status=400, message=f"cannot process: {USER_TEXT}")
        error = await expect_error(provider)
    assert "type=invalid_request_error" in str(error)
    assert "request_id=req_fake" in str(error)


async def test_slow_server_times_out_within_the_configured_timeout(clock):
    async with (
        open_fake_anthropic(latency=60) as server,
        open_provider(server, timeout=2) as provider,
    ):
        started = trio.current_time()
        error = await expect_error(provider)
    assert error.retryable
    assert "within 2 s" in str(error)
    assert trio.current_time() - started == pytest.approx(2, abs=0.1)


async def test_unreachable_server_is_retryable():
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    table = {
        "plugin": "anthropic",
        "base_url": f"http://127.0.0.1:{port}",
        "model": "m",
        "api_key": Secret(KEY),
    }
    context = make_context()
    provider = AnthropicProvider("main", AnthropicProvider.Config.model_validate(table), context)
    try:
        error = await expect_error(provider)
    finally:
        await provider.aclose()
        await context.http.aclose()
    assert error.retryable
    assert f"cannot reach 127.0.0.1:{port}" in str(error) and "check base_url" in str(error)


def message(content: Any, stop_reason: str | None = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_x",
        "type": "message",
        "role": "assistant",
        "model": "claude-fake-2",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 0},
    }


@pytest.mark.parametrize(
    ("reply", "retryable", "words"),
    [
        ("", True, "empty answer"),
        ("   \n", True, "empty answer"),
        (message([], "max_tokens"), False, "raise max_tokens"),
        (message([], "refusal"), False, "declined to answer"),
        (message([], "model_context_window_exceeded"), False, "send fewer history turns"),
        (message(None), True, "empty answer"),
        (
            message([{"type": "tool_use", "id": "t", "name": "x", "input": {}}], "tool_use"),
            True,
            "stop_reason='tool_use'",
        ),
    ],
)
async def test_empty_answers(reply, retryable, words):
    async with open_fake_anthropic() as server, open_provider(server) as provider:
        server.reply_with(lambda body: reply)
        error = await expect_error(provider)
    assert error.retryable is retryable
    assert words in str(error)


async def test_text_blocks_are_joined_and_the_served_model_reported():
    reply = message(
        [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Hello, "},
            {"type": "text", "text": "world."},
        ]
    )
    async with open_fake_anthropic() as server, open_provider(server) as provider:
        server.reply_with(lambda body: reply)
        completion = await provider.complete(REQUEST)
    assert completion.text == "Hello, world."
    assert completion.model == "claude-fake-2"
    assert (completion.input_tokens, completion.output_tokens) == (5, 0)


async def test_concurrent_calls_share_one_client():
    async with open_fake_anthropic() as server, open_provider(server) as provider:
        answers: dict[int, str] = {}

        async def ask(i: int) -> None:
            request = CompletionRequest("s", (ChatMessage("user", f"question {i}"),))
            answers[i] = (await provider.complete(request)).text

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(ask, i)
    assert answers == {i: f"echo: question {i}" for i in range(20)}
    assert server.connections <= 20


async def test_logs_carry_neither_conversation_nor_key(caplog):
    caplog.set_level(logging.DEBUG)
    async with open_fake_anthropic() as server, open_provider(server) as provider:
        await provider.complete(REQUEST)
        server.fail_next(1, status=400, message=USER_TEXT)
        await expect_error(provider)
    assert caplog.records, "expected debug logs from the provider and the SDK"
    for record in caplog.records:
        assert USER_TEXT not in record.getMessage() and KEY not in record.getMessage(), record.name


async def test_closed_cleanly_under_trio_and_unusable_afterwards():
    async with open_fake_anthropic() as server:
        async with open_provider(server) as provider:
            await provider.complete(REQUEST)
        await provider.aclose()  # a second aclose is harmless
        with pytest.raises(ProviderError, match="closed") as info:
            await provider.complete(REQUEST)
        assert not info.value.retryable
        del provider
    # filterwarnings=error: an unclosed SDK client (its asyncio-only __del__) would fail here.
    gc.collect()


async def test_never_used_provider_opens_nothing():
    config = AnthropicProvider.Config(plugin="anthropic", model="m", api_key=Secret(KEY))
    provider = AnthropicProvider("main", config, make_context())
    assert provider._client is None
    await provider.aclose()
    await provider.context.http.aclose()


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"base_url": "ftp://api.anthropic.com"}, "base_url"),
        ({"base_url": "api.anthropic.com"}, "base_url"),
        ({"base_url": "https://api.anthropic.com/v1/"}, "base_url"),
        ({"model": ""}, "model"),
        ({"temperature": 1.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"api_key": "sk-ant-written-in-the-file"}, "api_key"),
        ({"top_p": 0.5}, "top_p"),
    ],
)
def test_config_rejects_bad_values(table, key, monkeypatch):
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", KEY)
    base = {"plugin": "anthropic", "model": "m", "api_key": "env:TEST_ANTHROPIC_KEY"}
    with pytest.raises(pydantic.ValidationError) as info:
        AnthropicProvider.Config.model_validate({**base, **table})
    assert key in str(info.value)


def test_config_requires_model_and_key_and_defaults_to_anthropic(monkeypatch):
    with pytest.raises(pydantic.ValidationError) as info:
        AnthropicProvider.Config.model_validate({"plugin": "anthropic"})
    assert "model" in str(info.value) and "api_key" in str(info.value)
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", KEY)
    config = AnthropicProvider.Config.model_validate(
        {"plugin": "anthropic", "model": "claude-x", "api_key": "env:TEST_ANTHROPIC_KEY"}
    )
    assert config.base_url == "https://api.anthropic.com"
    assert config.max_tokens == 1024 and config.temperature is None and config.timeout == 30
    assert config.api_key.reveal() == KEY and KEY not in repr(config)
