"""FakeAnthropicServer speaks the real Messages API wire format, checks headers, scripts failures."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from typing import Any

import anthropic
import httpx
import pytest
import trio
import trio.testing

from gateway.testing.fake_anthropic import FakeAnthropicServer, open_fake_anthropic

KEY = "sk-ant-test-key"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
CONVERSATION = [
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "second question"},
]


@pytest.fixture
def autojump() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def post_messages(
    client: httpx.AsyncClient,
    server: FakeAnthropicServer,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> httpx.Response:
    payload = {"model": "claude-fake", "max_tokens": 100, "messages": CONVERSATION, **body}
    return await client.post(
        f"{server.base_url}/v1/messages",
        json=payload,
        headers=HEADERS if headers is None else headers,
    )


async def test_message_has_the_real_response_shape():
    async with open_fake_anthropic() as server, httpx.AsyncClient() as client:
        response = await post_messages(client, server, system="be brief", model="claude-x")
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("msg_")
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["model"] == "claude-x"
    assert body["content"] == [{"type": "text", "text": "echo: second question"}]
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    assert body["usage"] == {"input_tokens": 8, "output_tokens": 3}
    assert server.requests == [
        {"model": "claude-x", "max_tokens": 100, "messages": CONVERSATION, "system": "be brief"}
    ]


async def test_content_blocks_and_system_blocks_are_accepted():
    async with open_fake_anthropic() as server, httpx.AsyncClient() as client:
        messages = [
            {
                "role": "user",
                "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}],
            }
        ]
        system = [{"type": "text", "text": "be brief"}]
        response = await post_messages(client, server, messages=messages, system=system)
    assert response.json()["content"][0]["text"] == "echo: part one two"


@pytest.mark.parametrize(
    ("headers", "status", "kind", "words"),
    [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error", "x-api-key"),
        ({**HEADERS, "x-api-key": "sk-ant-wrong"}, 401, "authentication_error", "invalid"),
        ({"x-api-key": KEY}, 400, "invalid_request_error", "anthropic-version"),
    ],
)
async def test_headers_are_checked(headers, status, kind, words):
    async with open_fake_anthropic(api_key=KEY) as server, httpx.AsyncClient() as client:
        response = await post_messages(client, server, headers=headers)
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert words in body["error"]["message"]
    assert server.requests == [], "a request refused at the door is not a model request"


async def test_the_key_may_come_as_a_bearer_token():
    # anthropic 2.x sends its api_key that way.
    headers = {"authorization": f"Bearer {KEY}", "anthropic-version": "2026-10-21"}
    async with open_fake_anthropic(api_key=KEY) as server, httpx.AsyncClient() as client:
        response = await post_messages(client, server, headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"model": ""}, "model"),
        ({"temperature": 1.5}, "temperature"),
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "system", "content": "x"}]}, "top-level `system`"),
        ({"messages": [{"role": "user", "content": ""}]}, "content"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "hi"},
                    {"role": "user", "content": "x"},
                ]
            },
            'first message must use the "user" role',
        ),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            'multiple "user" roles in a row',
        ),
        ({"system": {"text": "x"}}, "system"),
    ],
)
async def test_invalid_requests_get_a_messages_api_400(change, problem):
    async with open_fake_anthropic() as server, httpx.AsyncClient() as client:
        body = {"model": "claude-fake", "max_tokens": 100, "messages": CONVERSATION, **change}
        body = {k: v for k, v in body.items() if v is not None}
        response = await client.post(f"{server.base_url}/v1/messages", json=body, headers=HEADERS)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert problem in response.json()["error"]["message"]


async def test_models_route_unknown_path_and_bad_json():
    async with open_fake_anthropic(models=("a", "b")) as server, httpx.AsyncClient() as client:
        models = await client.get(f"{server.base_url}/v1/models", headers=HEADERS)
        missing = await client.post(f"{server.base_url}/v1/complete", json={}, headers=HEADERS)
        broken = await client.post(
            f"{server.base_url}/v1/messages", content=b"{not json", headers=HEADERS
        )
        after = await post_messages(client, server)  # the connection survives all three
    assert [m["id"] for m in models.json()["data"]] == ["a", "b"]
    assert models.json()["has_more"] is False
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert broken.status_code == 400
    assert after.status_code == 200


async def test_fail_next_scripts_statuses_with_anthropic_error_types():
    async with open_fake_anthropic() as server, httpx.AsyncClient() as client:
        server.fail_next(1, status=529)
        server.fail_next(1, status=429, retry_after=7)
        server.fail_next(1, status=500, retry_after=0.5, message="boom")
        responses = [await post_messages(client, server) for _ in range(4)]
    overloaded, limited, failed, fine = responses
    assert overloaded.status_code == 529
    assert overloaded.json()["error"]["type"] == "overloaded_error"
    assert overloaded.headers["request-id"] == overloaded.json()["request_id"]
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "7")
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert (failed.headers["retry-after"], failed.json()["error"]) == (
        "0.5",
        {"type": "api_error", "message": "boom"},
    )
    assert fine.status_code == 200
    assert len(server.requests) == 4, "failed attempts are recorded too"


def test_fail_next_rejects_a_success_status():
    with pytest.raises(ValueError, match="4xx/5xx"):
        FakeAnthropicServer().fail_next(1, status=200)


async def test_hang_next_never_answers_then_serves_again(autojump):
    async with open_fake_anthropic() as server, httpx.AsyncClient(timeout=None) as client:
        server.hang_next(1)
        with trio.move_on_after(3600) as scope:
            await post_messages(client, server)
        assert scope.cancelled_caught, "a hung request was answered"
        assert len(server.requests) == 1
        response = await post_messages(client, server)
    assert response.status_code == 200


async def test_latency_runs_on_the_trio_clock(autojump):
    async with (
        open_fake_anthropic(latency=10) as server,
        httpx.AsyncClient(timeout=None) as client,
    ):
        started = trio.current_time()
        await post_messages(client, server)
    assert trio.current_time() - started >= 10


async def test_reply_with_text_or_a_whole_body_and_hooks():
    seen: list[str] = []
    async with open_fake_anthropic() as server, httpx.AsyncClient() as client:
        server.reply_with(lambda body: f"{len(body['messages'])} messages")
        server.on_request = lambda request: seen.append(request.path)
        text = await post_messages(client, server)
        server.reply_with(lambda body: {"type": "message", "content": [], "stop_reason": "refusal"})
        raw = await post_messages(client, server)
        server.reply_with(None)

        async def async_hook(request):
            await trio.lowlevel.checkpoint()
            seen.append("async")

        server.on_request = async_hook
        default = await post_messages(client, server)

        def broken(request):
            raise RuntimeError("hook failed")

        server.on_request = broken
        failed = await post_messages(client, server)
    assert text.json()["content"][0]["text"] == "3 messages"
    assert raw.json()["stop_reason"] == "refusal"
    assert default.json()["content"][0]["text"] == "echo: second question"
    assert seen == ["/v1/messages", "/v1/messages", "async"]
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "api_error"


async def test_wait_requests_wakes_when_enough_arrived():
    async with open_fake_anthropic() as server, httpx.AsyncClient() as client:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(post_messages, client, server)
            requests = await server.wait_requests(3)
    assert len(requests) == 3


async def test_sse_stream_in_the_messages_api_format():
    async with open_fake_anthropic() as server, httpx.AsyncClient() as client:
        payload = {"model": "m", "max_tokens": 50, "messages": CONVERSATION, "stream": True}
        async with client.stream(
            "POST", f"{server.base_url}/v1/messages", json=payload, headers=HEADERS
        ) as response:
            assert response.headers["content-type"] == "text/event-stream"
            lines = [line async for line in response.aiter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    data = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert [d["type"] for d in data] == names
    text = "".join(d["delta"]["text"] for d in data if d["type"] == "content_block_delta")
    assert text == "echo: second question"
    assert (
        data[-2]["delta"]["stop_reason"] == "end_turn" and data[-2]["usage"]["output_tokens"] == 3
    )


async def test_anthropic_sdk_created_and_closed_under_trio_without_warnings():
    async with open_fake_anthropic(api_key=KEY) as server:
        client = anthropic.AsyncAnthropic(
            base_url=server.base_url, api_key=KEY, max_retries=0, open_telemetry=False
        )
        try:
            message = await client.messages.create(
                model="claude-fake", max_tokens=100, system="be brief", messages=CONVERSATION
            )
            models = await client.models.list()
            server.fail_next(1, status=529)
            with pytest.raises(anthropic.OverloadedError):
                await client.messages.create(
                    model="claude-fake", max_tokens=100, messages=CONVERSATION
                )
        finally:
            await client.close()
        del client
    # filterwarnings=error: a ResourceWarning or an unraisable __del__ error fails the test here.
    gc.collect()
    assert message.content[0].type == "text" and message.content[0].text == "echo: second question"
    assert message.usage.output_tokens == 3
    assert [m.id for m in models.data] == ["claude-fake"]
    assert server.received[0].headers["anthropic-version"], "the SDK sends its API version"


async def test_anthropic_sdk_streaming_under_trio_leaves_no_generator_behind():
    """Unlike openai 3.x (see test_fake_openai), anthropic 2.x streams cleanly under trio.

    Its ``AsyncStream.__stream__`` reads the event generator to the end instead of breaking out
    of it, so nothing is left for trio's async-generator finalizer to warn about. If this starts
    failing with a ResourceWarning, the SDK regressed: keep streaming out of plugins.
    """
    async with open_fake_anthropic() as server:
        client = anthropic.AsyncAnthropic(
            base_url=server.base_url, api_key=KEY, max_retries=0, open_telemetry=False
        )
        try:
            stream = await client.messages.create(
                model="claude-fake", max_tokens=100, messages=CONVERSATION, stream=True
            )
            async with stream:
                events = [event async for event in stream]
            async with client.messages.stream(
                model="claude-fake", max_tokens=100, messages=CONVERSATION
            ) as helper:
                pieces = [text async for text in helper.text_stream]
            del stream, helper
            # The same cascade as the openai canary: anything abandoned would warn in here.
            for _ in range(3):
                gc.collect()
                await trio.testing.wait_all_tasks_blocked()
        finally:
            await client.close()
    assert [e.type for e in events][0] == "message_start"
    assert [e.type for e in events][-1] == "message_stop"
    assert "".join(pieces) == "echo: second question"


async def test_runs_standalone_and_prints_its_base_url():
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway.testing.fake_anthropic", "--port", "0"],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        output = b""
        with trio.fail_after(20):
            while b"\n" not in output:
                chunk = await process.stdout.receive_some(1024)
                assert chunk, "the process exited without printing its URL"
                output += chunk
        base_url = output.decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{base_url}/v1/messages",
                json={"model": "m", "max_tokens": 10, "messages": CONVERSATION},
                headers=HEADERS,
            )
        assert response.json()["content"][0]["text"] == "echo: second question"
    finally:
        process.terminate()
        await process.wait()
        await process.stdout.aclose()
