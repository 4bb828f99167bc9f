"""PUBLIC: a fake Anthropic Messages API server on 127.0.0.1 for tests and benchmarks.

It speaks the real wire format of ``POST /v1/messages`` (plain JSON, and server-sent events when
the body says ``"stream": true``) and ``GET /v1/models``, and checks the API key (``x-api-key``
or a bearer token) and the ``anthropic-version`` header, so the official ``anthropic`` SDK and any provider plugin built on
it can be tested against it unchanged::

    async with open_fake_anthropic(api_key="sk-ant-test") as server:
        config = {"plugin": "anthropic", "base_url": server.base_url, "model": "claude-fake"}
        ...
        server.fail_next(1, status=529)    # overloaded_error
        server.fail_next(1, status=429, retry_after=7)
        server.hang_next(1)                # the next request is never answered
        await server.wait_requests(3)
        assert server.requests[-1]["system"] == "You are ..."

The scripting API is :class:`~gateway.testing.fake_openai.FakeOpenAIServer`'s: ``requests``,
``received``, ``wait_requests``, ``latency``, ``fail_next``, ``hang_next``, ``reply_with``,
``on_request``, ``connections``. The default reply is ``"echo: "`` followed by the text of the
last user message.

The fake is stricter than today's API about turns: the API now combines consecutive turns of one
role, but older API versions (and other Messages API servers) reject them, and a leading
assistant turn, with a 400. The fake rejects them as those did, so a client that passes here
sends what every version accepts.

Standalone: ``python -m gateway.testing.fake_anthropic --port 0`` prints its base URL and serves
until interrupted.
"""

from __future__ import annotations

import json
import logging
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

__all__ = ["FakeAnthropicServer", "Failure", "RecordedRequest", "open_fake_anthropic"]

# https://docs.anthropic.com/en/api/errors: the error type each HTTP status carries.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class FakeAnthropicServer(ScriptedModelServer):
    """A real HTTP/1.1 server speaking the Anthropic Messages API.

    Attributes a test may read or set at any time:

    - ``requests``: the JSON bodies of every ``POST /v1/messages`` that passed the header checks,
      in arrival order, including the ones answered with a scripted failure or left hanging.
    - ``received``: every request (any route) as :class:`RecordedRequest`, with headers.
    - ``latency``: seconds to wait before answering (``trio.sleep``, so an autojump clock skips it).
    - ``on_request``: called (sync or async) with each messages request before it is answered;
      an exception it raises is logged and answered with a 500.
    - ``api_key``: when set, a request whose key differs gets a 401 (``authentication_error``);
      without it any non-empty key is accepted. The key is read from ``x-api-key`` or from
      ``Authorization: Bearer`` (see :func:`request_key`).
    - ``connections``: how many TCP connections were accepted.

    A request without a key gets a 401 and one without ``anthropic-version`` a 400, as
    from the real API. Scripted failures and hangs apply to messages requests in arrival order:
    a hang first, then ``latency``, then a failure; ``fail_next``'s ``message`` goes into the
    error body (``{"type": "error", "error": {"type": ..., "message": ...}}``) and its ``status``
    picks the error type (529: ``overloaded_error``).
    """

    base_path = ""
    default_models = ("claude-fake",)
    log = logging.getLogger("gateway.testing.fake_anthropic")

    def error_body(self, message: str, status: int) -> dict[str, Any]:
        kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": f"req_fake{self.next_id()}",
        }

    def error_headers(self, body: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        # The API names each request in a request-id header as well as in error bodies.
        return [(b"request-id", body["request_id"].encode())]

    async def route(
        self, stream: trio.SocketStream, conn: h11.Connection, request: RecordedRequest
    ) -> None:
        key = request_key(request.headers)
        if not key:
            await self.send_error(stream, conn, 401, "x-api-key header is required")
            return
        if self.api_key is not None and key != self.api_key:
            await self.send_error(stream, conn, 401, "invalid x-api-key")
            return
        if not request.headers.get("anthropic-version"):
            await self.send_error(stream, conn, 400, "anthropic-version: header is required")
            return
        if request.method == "GET" and request.path == "/v1/models":
            data = [
                {
                    "type": "model",
                    "id": m,
                    "display_name": m,
                    "created_at": "2025-01-01T00:00:00Z",
                }
                for m in self.models
            ]
            first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
            page = {"data": data, "has_more": False, "first_id": first, "last_id": last}
            await send_json(stream, conn, 200, page)
            return
        if request.path != "/v1/messages":
            await self.send_error(stream, conn, 404, "Not found")
            return
        if request.method != "POST":
            await self.send_error(stream, conn, 405, "Method not allowed")
            return
        if await self.run_script(stream, conn, request, validate_messages):
            await self._answer(stream, conn, request.body)

    async def _answer(
        self, stream: trio.SocketStream, conn: h11.Connection, body: dict[str, Any]
    ) -> None:
        reply = self.reply_for(body)
        if isinstance(reply, dict):
            await send_json(stream, conn, 200, reply)
            return
        message = {
            "id": f"msg_fake{self.next_id()}",
            "type": "message",
            "role": "assistant",
            "model": str(body["model"]),
            "content": [{"type": "text", "text": reply}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": _input_tokens(body),
                "output_tokens": count_tokens(reply),
            },
        }
        if body.get("stream"):
            await send_events(stream, conn, _stream_events(message, reply))
            return
        await send_json(stream, conn, 200, message)


def request_key(headers: dict[str, str]) -> str | None:
    """The API key a request carries: ``x-api-key``, or ``Authorization: Bearer KEY``.

    The API accepts both; the docs' examples send ``x-api-key``, and the anthropic SDK 2.x sends
    its ``api_key`` as a bearer token (with ``anthropic-version: 2026-10-21``).
    """
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def validate_messages(body: Any) -> str | None:
    """What the Messages API answers with a 400 (``invalid_request_error``), or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        return "max_tokens: Field required"
    if max_tokens < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        return "temperature: Input should be less than or equal to 1"
    system = body.get("system")
    if system is not None and not isinstance(system, str) and not _is_text_blocks(system):
        return "system: Input should be a valid string or a list of text blocks"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages.{i}: Input should be a valid dictionary"
        role = m.get("role")
        if role == "system":
            return (
                'messages: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role not in {"user", "assistant"}:
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = m.get("content")
        if not (isinstance(content, str) and content) and not (
            _is_text_blocks(content) and content
        ):
            return f"messages.{i}.content: must be a non-empty string or list of content blocks"
        if i == 0 and role != "user":
            return 'messages: first message must use the "user" role'
        if role == previous:
            return (
                'messages: roles must alternate between "user" and "assistant", but found '
                f'multiple "{role}" roles in a row'
            )
        previous = role
    return None


def _is_text_blocks(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        for b in value
    )


def _input_tokens(body: dict[str, Any]) -> int:
    total = count_tokens(text_of(body.get("system")))
    return total + sum(count_tokens(text_of(m.get("content"))) for m in body["messages"])


def _stream_events(message: dict[str, Any], reply: str) -> list[bytes]:
    """``message`` as the Messages API streams it: start, one text block word by word, stop."""

    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": message["usage"]["input_tokens"], "output_tokens": 1},
    }
    events = [
        event("message_start", {"type": "message_start", "message": start}),
        event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        event("ping", {"type": "ping"}),
    ]
    for i, word in enumerate(reply.split(" ")):
        delta = {"type": "text_delta", "text": word if i == 0 else " " + word}
        events.append(
            event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        )
    events += [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]
    return events


def open_fake_anthropic(**kwargs: Any) -> AbstractAsyncContextManager[FakeAnthropicServer]:
    """Run a :class:`FakeAnthropicServer` for the duration of the block (keyword args go to it)."""
    return serving(FakeAnthropicServer(**kwargs))


def main(argv: list[str] | None = None) -> None:
    """``python -m gateway.testing.fake_anthropic [--port N] [--latency S] [--api-key KEY]``."""
    run_standalone(FakeAnthropicServer, argv)


if __name__ == "__main__":
    main()
