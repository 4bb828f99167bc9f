"""FakeOpenAIServer speaks the real OpenAI wire format, scripts failures, and keeps up with load."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import h11
import httpx
import openai
import pytest
import trio
import trio.testing

from gateway.testing.fake_openai import FakeOpenAIServer, open_fake_openai

CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "second question"},
]


@pytest.fixture
def autojump() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def post_chat(
    client: httpx.AsyncClient, server: FakeOpenAIServer, **body: object
) -> httpx.Response:
    payload = {"model": "fake-model", "messages": CONVERSATION, **body}
    return await client.post(f"{server.base_url}/chat/completions", json=payload)


async def test_chat_completion_has_the_real_response_shape():
    async with open_fake_openai() as server, httpx.AsyncClient() as client:
        response = await post_chat(client, server, model="my-model")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    assert body["model"] == "my-model"
    choice = body["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": "echo: second question",
        "refusal": None,
    }
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}
    assert server.requests == [{"model": "my-model", "messages": CONVERSATION}]


async def test_content_given_as_parts_is_echoed():
    async with open_fake_openai() as server, httpx.AsyncClient() as client:
        messages = [
            {
                "role": "user",
                "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}],
            }
        ]
        response = await post_chat(client, server, messages=messages)
    assert response.json()["choices"][0]["message"]["content"] == "echo: part one two"


async def test_models_route_lists_the_models():
    async with open_fake_openai(models=("a", "b")) as server, httpx.AsyncClient() as client:
        response = await client.get(f"{server.base_url}/models")
    assert response.json()["object"] == "list"
    assert [m["id"] for m in response.json()["data"]] == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"messages": CONVERSATION}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ],
)
async def test_invalid_requests_get_openai_style_400(body, problem):
    async with open_fake_openai() as server, httpx.AsyncClient() as client:
        response = await client.post(f"{server.base_url}/chat/completions", json=body)
    assert response.status_code == 400
    assert problem in response.json()["error"]["message"]
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_unknown_path_and_bad_json():
    async with open_fake_openai() as server, httpx.AsyncClient() as client:
        missing = await client.get(f"{server.base_url}/embeddings")
        broken = await client.post(f"{server.base_url}/chat/completions", content=b"{not json")
        after = await post_chat(client, server)  # the connection survives both
    assert missing.status_code == 404
    assert broken.status_code == 400
    assert after.status_code == 200


async def test_fail_next_scripts_statuses_then_recovers():
    async with open_fake_openai() as server, httpx.AsyncClient() as client:
        server.fail_next(1, status=429, retry_after=7)
        server.fail_next(1, status=503, retry_after=0.5, message="overloaded")
        first = await post_chat(client, server)
        second = await post_chat(client, server)
        third = await post_chat(client, server)
    assert (first.status_code, first.headers["retry-after"]) == (429, "7")
    assert first.json()["error"]["type"] == "rate_limit_exceeded"
    assert (second.status_code, second.headers["retry-after"]) == (503, "0.5")
    assert second.json()["error"]["message"] == "overloaded"
    assert third.status_code == 200
    assert len(server.requests) == 3, "failed attempts are recorded too"


def test_fail_next_rejects_a_success_status():
    with pytest.raises(ValueError, match="4xx/5xx"):
        FakeOpenAIServer().fail_next(1, status=200)


async def test_hang_next_never_answers_then_serves_again(autojump):
    async with open_fake_openai() as server, httpx.AsyncClient(timeout=None) as client:
        server.hang_next(1)
        with trio.move_on_after(3600) as scope:
            await post_chat(client, server)
        assert scope.cancelled_caught, "a hung request was answered"
        assert len(server.requests) == 1
        response = await post_chat(client, server)
    assert response.status_code == 200


async def test_latency_runs_on_the_trio_clock(autojump):
    async with open_fake_openai(latency=10) as server, httpx.AsyncClient(timeout=None) as client:
        started = trio.current_time()
        await post_chat(client, server)
    assert trio.current_time() - started >= 10


async def test_reply_with_text_or_a_whole_body():
    async with open_fake_openai() as server, httpx.AsyncClient() as client:
        server.reply_with(lambda body: f"{len(body['messages'])} messages")
        text = await post_chat(client, server)
        server.reply_with(lambda body: {"id": "x", "object": "chat.completion", "choices": []})
        raw = await post_chat(client, server)
        server.reply_with(None)
        default = await post_chat(client, server)
    assert text.json()["choices"][0]["message"]["content"] == "4 messages"
    assert raw.json()["choices"] == []
    assert default.json()["choices"][0]["message"]["content"] == "echo: second question"


async def test_on_request_hook_sees_each_request_sync_or_async():
    seen: list[str] = []
    async with open_fake_openai() as server, httpx.AsyncClient() as client:
        server.on_request = lambda request: seen.append(request.headers["x-test"])

        async def async_hook(request):
            await trio.lowlevel.checkpoint()
            seen.append("async " + request.path)

        await client.post(
            f"{server.base_url}/chat/completions",
            json={"model": "m", "messages": CONVERSATION},
            headers={"x-test": "sync"},
        )
        server.on_request = async_hook
        await post_chat(client, server)

        def broken(request):
            raise RuntimeError("hook failed")

        server.on_request = broken
        failed = await post_chat(client, server)
    assert seen == ["sync", "async /v1/chat/completions"]
    assert failed.status_code == 500


async def test_wait_requests_wakes_when_enough_arrived():
    async with open_fake_openai() as server, httpx.AsyncClient() as client:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(post_chat, client, server)
            requests = await server.wait_requests(3)
    assert len(requests) == 3


async def test_api_key_is_enforced_when_set():
    async with open_fake_openai(api_key="sk-right") as server, httpx.AsyncClient() as client:
        wrong = await client.post(
            f"{server.base_url}/chat/completions",
            json={"model": "m", "messages": CONVERSATION},
            headers={"authorization": "Bearer sk-wrong"},
        )
        right = await client.post(
            f"{server.base_url}/chat/completions",
            json={"model": "m", "messages": CONVERSATION},
            headers={"authorization": "Bearer sk-right"},
        )
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert server.received[-1].headers["authorization"] == "Bearer sk-right"


async def test_sse_stream_in_the_openai_format():
    async with open_fake_openai() as server, httpx.AsyncClient() as client:
        payload = {
            "model": "m",
            "messages": CONVERSATION,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with client.stream(
            "POST", f"{server.base_url}/chat/completions", json=payload
        ) as response:
            assert response.headers["content-type"] == "text/event-stream"
            lines = [line async for line in response.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "echo: second question"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3


async def test_openai_sdk_created_and_closed_under_trio_without_warnings():
    async with open_fake_openai() as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        try:
            reply = await client.chat.completions.create(model="m", messages=CONVERSATION)
            models = await client.models.list()
        finally:
            await client.close()
        del client
    # filterwarnings=error: a ResourceWarning or an unraisable __del__ error fails the test here.
    gc.collect()
    assert reply.choices[0].message.content == "echo: second question"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert [m.id for m in models.data] == ["fake-model"]


async def test_openai_sdk_streaming_under_trio_leaks_its_generators():
    """A canary for an SDK bug: when it fails, the SDK was fixed and streaming may be used freely.

    openai 3.x ``AsyncStream.__stream__`` stops at ``[DONE]`` with ``break`` and never closes the
    ``_iter_events()`` generator it was looping over; trio's async-generator finalizer then warns
    (ResourceWarning), even though the stream was used in ``async with`` and read to the end.
    Under pytest's filterwarnings=error that is a failure, so plugins must not use SDK streaming
    under trio until this is fixed (asyncio's finalizer closes such generators silently).
    """
    async with open_fake_openai() as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        try:
            with pytest.warns(
                ResourceWarning, match="garbage collected before it had been exhausted"
            ):
                stream = await client.chat.completions.create(
                    model="m", messages=CONVERSATION, stream=True
                )
                async with stream:
                    pieces = [
                        chunk.choices[0].delta.content or ""
                        async for chunk in stream
                        if chunk.choices
                    ]
                del stream
                gc.collect()
                # trio closes the abandoned generator in a system task, which abandons the
                # generators nested in it in turn: let that cascade finish inside the block.
                for _ in range(3):
                    await trio.testing.wait_all_tasks_blocked()
                    gc.collect()
        finally:
            await client.close()
    assert "".join(pieces) == "echo: second question"


async def test_two_thousand_requests_over_keep_alive_connections():
    # A bare h11 client: httpx would spend more time than the server and hide its speed.
    async def connection(n: int, port: int, answers: list[str]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = h11.Connection(h11.CLIENT)
        async with stream:
            for i in range(200):
                body = json.dumps(
                    {"model": "m", "messages": [{"role": "user", "content": f"c{n} m{i}"}]}
                ).encode()
                headers = [
                    ("host", "fake"),
                    ("content-type", "application/json"),
                    ("content-length", str(len(body))),
                ]
                await stream.send_all(
                    client.send(
                        h11.Request(method="POST", target="/v1/chat/completions", headers=headers)
                    )
                    + client.send(h11.Data(data=body))
                    + client.send(h11.EndOfMessage())
                )
                data = b""
                while True:
                    event = client.next_event()
                    if event is h11.NEED_DATA:
                        client.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Data):
                        data += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                answers.append(json.loads(data)["choices"][0]["message"]["content"])
                client.start_next_cycle()

    answers: list[str] = []
    async with open_fake_openai() as server:
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(connection, n, server.port, answers)
        elapsed = trio.current_time() - started
    assert sorted(answers) == sorted(f"echo: c{n} m{i}" for n in range(10) for i in range(200))
    assert server.connections == 10, "connections were not kept alive"
    # ~0.4 s here; the bound only catches a pathological slowdown, not machine noise.
    assert elapsed < 5


async def test_runs_standalone_and_prints_its_base_url():
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway.testing.fake_openai", "--port", "0"],
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
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{base_url}/chat/completions", json={"model": "m", "messages": CONVERSATION}
            )
        assert response.json()["choices"][0]["message"]["content"] == "echo: second question"
    finally:
        process.terminate()
        await process.wait()
        await process.stdout.aclose()
