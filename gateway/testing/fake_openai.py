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
protocol surface needed (two routes, keep-alive, chunked SSE) is small enough to write directly.

Standalone: ``python -m gateway.testing.fake_openai --port 0`` prints its base URL and serves until
interrupted (for manual runs and for daemon tests that need the fake in another process).
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

__all__ = ["FakeOpenAIServer", "Failure", "RecordedRequest", "open_fake_openai"]

log = logging.getLogger("gateway.testing.fake_openai")

ReplyFunction = Callable[[dict[str, Any]], "str | dict[str, Any]"]
"""Given a request body, return the reply text, or a complete response body (a dict)."""

OnRequest = Callable[["RecordedRequest"], "Awaitable[None] | None"]

_MAX_BODY = 16 * 1024 * 1024
_REASONS = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    429: "rate_limit_exceeded",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the server received, in arrival order."""

    method: str
    path: str
    headers: dict[str, str]
    """Lower-cased header names; the last value wins for repeated headers."""
    body: Any
    """The parsed JSON body, or None for a request without one."""


@dataclass
class Failure:
    """A scripted error answer: the HTTP status, an optional ``retry-after`` and the error body."""

    status: int
    retry_after: float | None = None
    message: str = "simulated failure"


@dataclass
class _Script:
    failures: list[Failure] = field(default_factory=list)
    hangs: int = 0


class FakeOpenAIServer:
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
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        models: tuple[str, ...] = ("fake-model",),
        api_key: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.latency = latency
        self.models = models
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.received: list[RecordedRequest] = []
        self.on_request: OnRequest | None = None
        self.connections = 0
        self._reply: ReplyFunction = default_reply
        self._script = _Script()
        self._changed = trio.Condition()
        self._ids = itertools.count(1)
        self._started = False

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what an OpenAI client takes as ``base_url``."""
        if not self._started:
            raise RuntimeError("FakeOpenAIServer is not serving yet; start it with serve()")
        return f"http://{self.host}:{self.port}/v1"

    # -- scripting -------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        retry_after: float | None = None,
        message: str = "simulated failure",
    ) -> None:
        """Answer the next ``count`` chat requests with ``status`` (and ``retry-after`` if given).

        ``message`` goes into the OpenAI-style error body (``{"error": {"message": ...}}``).
        """
        if not 400 <= status <= 599:
            raise ValueError(f"fail_next status must be an HTTP error (4xx/5xx), not {status}")
        self._script.failures.extend(Failure(status, retry_after, message) for _ in range(count))

    def hang_next(self, count: int = 1) -> None:
        """Never answer the next ``count`` chat requests (until the server stops)."""
        self._script.hangs += count

    def reply_with(self, fn: ReplyFunction | None) -> None:
        """Replace the reply function; None restores the default ``echo: <last user text>``."""
        self._reply = default_reply if fn is None else fn

    async def wait_requests(self, count: int) -> list[dict[str, Any]]:
        """Wait until at least ``count`` chat requests have arrived; return all of them."""
        async with self._changed:
            while len(self.requests) < count:
                await self._changed.wait()
        return list(self.requests)

    # -- serving ---------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host:port`` (0: a free port), report the base URL, serve until cancelled."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        self._started = True
        async with trio.open_nursery() as nursery:
            # serve_listeners would crash the whole server on one handler error (its documented
            # default); _handle_connection therefore catches per-connection errors itself.
            await nursery.start(trio.serve_listeners, self._handle_connection, listeners)
            task_status.started(self.base_url)

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_BODY)
        try:
            async with stream:
                while await self._handle_one(stream, conn):
                    conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            # A client that went away mid-request (a timeout, a cancelled call) is normal here.
            log.debug("fake openai: connection ended: %r", exc)

    async def _handle_one(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        """Serve one request on a keep-alive connection; False when the connection is done."""
        event = await _next_event(stream, conn)
        if isinstance(event, h11.ConnectionClosed):
            return False
        assert isinstance(event, h11.Request)
        chunks = []
        while True:
            part = await _next_event(stream, conn)
            if isinstance(part, h11.EndOfMessage):
                break
            if isinstance(part, h11.ConnectionClosed):
                return False
            assert isinstance(part, h11.Data)
            chunks.append(bytes(part.data))
        raw = b"".join(chunks)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        path = event.target.decode("latin-1").split("?", 1)[0]
        method = event.method.decode("ascii")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
            await _send_json(stream, conn, 400, _error_body("request body is not valid JSON", 400))
            return conn.our_state is h11.DONE
        recorded = RecordedRequest(method, path, headers, body)
        self.received.append(recorded)
        await self._route(stream, conn, recorded)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _route(
        self, stream: trio.SocketStream, conn: h11.Connection, request: RecordedRequest
    ) -> None:
        if (
            self.api_key is not None
            and request.headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            await _send_json(stream, conn, 401, _error_body("Incorrect API key provided.", 401))
            return
        if request.method == "GET" and request.path == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
                for m in self.models
            ]
            await _send_json(stream, conn, 200, {"object": "list", "data": data})
            return
        if request.path != "/v1/chat/completions":
            await _send_json(stream, conn, 404, _error_body(f"Unknown path {request.path}", 404))
            return
        if request.method != "POST":
            await _send_json(stream, conn, 405, _error_body("Use POST", 405))
            return
        await self._chat(stream, conn, request)

    async def _chat(
        self, stream: trio.SocketStream, conn: h11.Connection, request: RecordedRequest
    ) -> None:
        body = request.body
        # Recorded before anything can fail, so a test sees every attempt a client made.
        if isinstance(body, dict):
            self.requests.append(body)
        async with self._changed:
            self._changed.notify_all()
        if self.on_request is not None:
            try:
                result = self.on_request(request)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("fake openai: on_request hook failed")
                await _send_json(stream, conn, 500, _error_body("on_request hook failed", 500))
                return
        problem = _validate_chat(body)
        if problem:
            await _send_json(stream, conn, 400, _error_body(problem, 400))
            return
        if self._script.hangs:
            self._script.hangs -= 1
            await trio.sleep_forever()
        if self.latency:
            await trio.sleep(self.latency)
        if self._script.failures:
            failure = self._script.failures.pop(0)
            extra = []
            if failure.retry_after is not None:
                extra.append((b"retry-after", _format_seconds(failure.retry_after)))
            body_out = _error_body(failure.message, failure.status)
            await _send_json(stream, conn, failure.status, body_out, extra)
            return
        assert isinstance(body, dict)
        reply = self._reply(body)
        if isinstance(reply, dict):
            await _send_json(stream, conn, 200, reply)
            return
        completion_id = f"chatcmpl-fake{next(self._ids)}"
        model = str(body["model"])
        usage = {
            "prompt_tokens": sum(
                _count_tokens(_text_of(m.get("content"))) for m in body["messages"]
            ),
            "completion_tokens": _count_tokens(reply),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            await _send_stream(
                stream, conn, completion_id, model, reply, usage if include_usage else None
            )
            return
        await _send_json(
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


def default_reply(body: dict[str, Any]) -> str:
    """``"echo: "`` + the text of the last user message of a chat request body."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return "echo: " + _text_of(message.get("content"))
    return "echo: "


def _text_of(content: Any) -> str:
    """Message content is a string or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _count_tokens(text: str) -> int:
    # Deterministic stand-in for a tokenizer: tests check that usage is passed through.
    return len(text.split())


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


def _error_body(message: str, status: int) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else _REASONS.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


def _format_seconds(seconds: float) -> bytes:
    if seconds == math.floor(seconds):
        return str(int(seconds)).encode()
    return repr(seconds).encode()


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            # An empty read means the peer closed; h11 turns that into ConnectionClosed.
            conn.receive_data(await stream.receive_some(65536))
            continue
        return event


async def _send_json(
    stream: trio.SocketStream,
    conn: h11.Connection,
    status: int,
    body: dict[str, Any],
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *(extra_headers or []),
    ]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    data += conn.send(h11.Data(data=payload))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)


async def _send_stream(
    stream: trio.SocketStream,
    conn: h11.Connection,
    completion_id: str,
    model: str,
    reply: str,
    usage: dict[str, int] | None,
) -> None:
    """Send ``reply`` as server-sent events, word by word, the way OpenAI streams chunks."""
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

    # No content-length: h11 then uses chunked transfer encoding, as real SSE endpoints do.
    out = conn.send(
        h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream")])
    )
    await stream.send_all(out)
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
    for piece in pieces:
        await stream.send_all(conn.send(h11.Data(data=piece)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


@asynccontextmanager
async def open_fake_openai(**kwargs: Any) -> AsyncIterator[FakeOpenAIServer]:
    """Run a :class:`FakeOpenAIServer` for the duration of the block (keyword args go to it)."""
    server = FakeOpenAIServer(**kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    """``python -m gateway.testing.fake_openai [--port N] [--latency S] [--api-key KEY]``."""
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible server for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    args = parser.parse_args(argv)

    async def run() -> None:
        server = FakeOpenAIServer(
            host=args.host, port=args.port, latency=args.latency, api_key=args.api_key
        )
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            # flush: a parent process reads this line to learn the port.
            print(url, flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
