"""PUBLIC: a fake OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

It speaks the real wire format of ``POST /v1/chat/completions`` (plain JSON, and SSE when the
body says ``"stream": true``) and ``GET /v1/models``, so the official ``openai`` SDK and any
provider plugin built for an OpenAI-compatible server can be tested against it unchanged::

    async with open_fake_openai() as server:
        config = {"plugin": "openai", "base_url": server.base_url, "model": "fake-model"}
        ...
        server.fail_next(1, status=429, retry_after=7)
        server.hang_next(1)               # the next request is never answered
        await server.wait_requests(3)
        assert server.requests[-1]["messages"][0]["role"] == "system"

The default reply is deterministic: ``"echo: "`` followed by the text of the last user message,
so a test can tell which message was answered. ``reply_with(fn)`` replaces it.

Why trio + h11 rather than hypercorn + quart-trio: the benchmark pushes thousands of model calls
through this server, and hypercorn's stack measured ~1,100 requests/s per core here against
~7,600 for a bare trio + h11 loop; a fake must never be the bottleneck of what it measures. The
protocol surface needed (two routes, keep-alive, chunked SSE) is small enough to write directly;
the plumbing and the scripting it shares with the fake Anthropic server live in
``gateway.testing._http``.

Standalone: ``python -m gateway.testing.fake_openai --port 0`` prints its base URL and serves until
interrupted (for manual runs and for daemon tests that need the fake in another process).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import h11
import trio

from gateway.testing._http import (
    Failure,
    RecordedRequest,
    ScriptedModelServer,
    count_tokens,
    run_standalone,
    send_events,
    send_json,
    serving,
    text_of,
)
from gateway.testing._http import ReplyFunction as ReplyFunction
from gateway.testing._http import default_reply as default_reply

__all__ = ["FakeOpenAIServer", "Failure", "RecordedRequest", "open_fake_openai"]

_REASONS = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    429: "rate_limit_exceeded",
}


class FakeOpenAIServer(ScriptedModelServer):
    """A real HTTP/1.1 server speaking the OpenAI chat completions API.

    Attributes a test may read or set at any time:

    - ``requests``: the JSON bodies of every ``POST /v1/chat/completions``, in arrival order,
      including the ones answered with a scripted failure or left hanging.
    - ``received``: every request (any route) as :class:`RecordedRequest`, with headers.
    - ``latency``: seconds to wait before answering (``trio.sleep``, so an autojump clock skips it).
    - ``on_request``: called (sync or async) with each chat request before it is answered; it may
      raise or cancel things (crash tests kill the daemon from here). An exception it raises is
      logged and answered with a 500.
    - ``api_key``: when set, requests without ``Authorization: Bearer <api_key>`` get a 401.
    - ``connections``: how many TCP connections were accepted.

    Scripted failures and hangs apply to chat requests in arrival order: a hang first, then
    ``latency``, then a failure. Every chat request is recorded before any of them.
    ``fail_next``'s ``message`` goes into the OpenAI-style error body
    (``{"error": {"message": ...}}``).
    """

    base_path = "/v1"
    default_models = ("fake-model",)
    log = logging.getLogger("gateway.testing.fake_openai")

    def error_body(self, message: str, status: int) -> dict[str, Any]:
        kind = "server_error" if status >= 500 else _REASONS.get(status, "invalid_request_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": kind}}

    async def route(
        self, stream: trio.SocketStream, conn: h11.Connection, request: RecordedRequest
    ) -> None:
        if (
            self.api_key is not None
            and request.headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            await self.send_error(stream, conn, 401, "Incorrect API key provided.")
            return
        if request.method == "GET" and request.path == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
                for m in self.models
            ]
            await send_json(stream, conn, 200, {"object": "list", "data": data})
            return
        if request.path != "/v1/chat/completions":
            await self.send_error(stream, conn, 404, f"Unknown path {request.path}")
            return
        if request.method != "POST":
            await self.send_error(stream, conn, 405, "Use POST")
            return
        if await self.run_script(stream, conn, request, _validate_chat):
            await self._chat(stream, conn, request.body)

    async def _chat(
        self, stream: trio.SocketStream, conn: h11.Connection, body: dict[str, Any]
    ) -> None:
        reply = self.reply_for(body)
        if isinstance(reply, dict):
            await send_json(stream, conn, 200, reply)
            return
        completion_id = f"chatcmpl-fake{self.next_id()}"
        model = str(body["model"])
        usage = {
            "prompt_tokens": sum(count_tokens(text_of(m.get("content"))) for m in body["messages"]),
            "completion_tokens": count_tokens(reply),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _stream_events(completion_id, model, reply, usage if include_usage else None)
            await send_events(stream, conn, events)
            return
        await send_json(
            stream,
            conn,
            200,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
                "system_fingerprint": "fp_fake",
            },
        )


def _validate_chat(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty array"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in {
            "system",
            "developer",
            "user",
            "assistant",
            "tool",
        }:
            return f"messages[{i}] has no valid role"
    return None


def _stream_events(
    completion_id: str, model: str, reply: str, usage: dict[str, int] | None
) -> list[bytes]:
    """``reply`` as server-sent events, word by word, the way OpenAI streams chunks."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        event = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    pieces = [chunk({"role": "assistant", "content": ""}, None)]
    words = reply.split(" ")
    pieces += [chunk({"content": w if i == 0 else " " + w}, None) for i, w in enumerate(words)]
    pieces.append(chunk({}, "stop"))
    if usage is not None:
        tail = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        pieces.append(b"data: " + json.dumps(tail).encode() + b"\n\n")
    pieces.append(b"data: [DONE]\n\n")
    return pieces


def open_fake_openai(**kwargs: Any) -> AbstractAsyncContextManager[FakeOpenAIServer]:
    """Run a :class:`FakeOpenAIServer` for the duration of the block (keyword args go to it)."""
    return serving(FakeOpenAIServer(**kwargs))


def main(argv: list[str] | None = None) -> None:
    """``python -m gateway.testing.fake_openai [--port N] [--latency S] [--api-key KEY]``."""
    run_standalone(FakeOpenAIServer, argv)


if __name__ == "__main__":
    main()
