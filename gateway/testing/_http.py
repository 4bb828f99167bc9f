"""What the fake model API servers share: HTTP/1.1 over trio + h11, and the scripting of answers.

Private: :class:`~gateway.testing.fake_openai.FakeOpenAIServer` and
:class:`~gateway.testing.fake_anthropic.FakeAnthropicServer` are the public faces. Both follow the
same life of a model request, which :class:`ScriptedModelServer` implements once: record it, wake
``wait_requests``, run the ``on_request`` hook, validate the body, then a scripted hang, the
``latency``, a scripted failure, and only then the API-specific answer.

Why trio + h11 rather than hypercorn + quart-trio: the benchmark pushes thousands of model calls
through these servers, and hypercorn's stack measured ~1,100 requests/s per core here against
~7,600 for a bare trio + h11 loop; a fake must never be the bottleneck of what it measures.
"""

from __future__ import annotations

import abc
import argparse
import email.message
import email.parser
import email.policy
import inspect
import itertools
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import h11
import trio

MAX_BODY = 16 * 1024 * 1024

ReplyFunction = Callable[[dict[str, Any]], "str | dict[str, Any]"]
"""Given a request body, return the reply text, or a complete response body (a dict)."""

OnRequest = Callable[["RecordedRequest"], "Awaitable[None] | None"]


class Servable(Protocol):
    """A fake server: ``serve(task_status=...)`` listens, reports readiness, runs until cancelled."""

    @property
    def serve(self) -> Callable[..., Awaitable[None]]: ...


ServerT = TypeVar("ServerT", bound=Servable)


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


class ScriptedModelServer(abc.ABC):
    """Base of the fake model API servers: serving, recording and scripting. Subclass and override.

    A subclass sets ``base_path`` and ``log``, and implements :meth:`route` (answer one request)
    and :meth:`error_body` (the API's error JSON); its model route calls :meth:`run_script` and
    answers only if that returns True.
    """

    base_path = ""
    """What :attr:`base_url` adds to ``http://host:port``."""
    default_models: tuple[str, ...] = ("fake-model",)
    """What the models route lists when the constructor is given no ``models``."""
    log = logging.getLogger("gateway.testing")

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        models: tuple[str, ...] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.latency = latency
        self.models = self.default_models if models is None else models
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.received: list[RecordedRequest] = []
        self.on_request: OnRequest | None = None
        self.connections = 0
        self._reply: ReplyFunction = default_reply
        self._failures: list[Failure] = []
        self._hangs = 0
        self._changed = trio.Condition()
        self._ids = itertools.count(1)
        self._started = False

    @property
    def base_url(self) -> str:
        """Where a client of this API points: ``http://127.0.0.1:PORT`` + ``base_path``."""
        if not self._started:
            raise RuntimeError(f"{type(self).__name__} is not serving yet; start it with serve()")
        return f"http://{self.host}:{self.port}{self.base_path}"

    # -- scripting -------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        retry_after: float | None = None,
        message: str = "simulated failure",
    ) -> None:
        """Answer the next ``count`` model requests with ``status`` (and ``retry-after`` if given).

        ``message`` goes into the API's error body (``error.message``).
        """
        if not 400 <= status <= 599:
            raise ValueError(f"fail_next status must be an HTTP error (4xx/5xx), not {status}")
        self._failures.extend(Failure(status, retry_after, message) for _ in range(count))

    def hang_next(self, count: int = 1) -> None:
        """Never answer the next ``count`` model requests (until the server stops)."""
        self._hangs += count

    def reply_with(self, fn: ReplyFunction | None) -> None:
        """Replace the reply function; None restores the default ``echo: <last user text>``."""
        self._reply = default_reply if fn is None else fn

    async def wait_requests(self, count: int) -> list[dict[str, Any]]:
        """Wait until at least ``count`` model requests have arrived; return all of them."""
        async with self._changed:
            while len(self.requests) < count:
                await self._changed.wait()
        return list(self.requests)

    # -- for subclasses --------------------------------------------------------------------

    @abc.abstractmethod
    async def route(
        self, stream: trio.SocketStream, conn: h11.Connection, request: RecordedRequest
    ) -> None:
        """Answer one recorded request (the API's routes)."""

    @abc.abstractmethod
    def error_body(self, message: str, status: int) -> dict[str, Any]:
        """The API's error document for a scripted failure."""

    async def send_error(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        status: int,
        message: str,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        body = self.error_body(message, status)
        headers = [*self.error_headers(body), *(extra_headers or [])]
        await send_json(stream, conn, status, body, headers)

    def error_headers(self, body: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        """Headers an error answer with ``body`` carries besides the content headers (none)."""
        return []

    async def run_script(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        request: RecordedRequest,
        validate: Callable[[Any], str | None],
    ) -> bool:
        """Record a model request and play the script; True if the caller should answer it.

        When False, an answer was sent (the hook failed, ``validate`` named a problem, a failure
        was scripted). A scripted hang never returns.
        """
        # Recorded before anything can fail, so a test sees every attempt a client made.
        if isinstance(request.body, dict):
            self.requests.append(request.body)
        async with self._changed:
            self._changed.notify_all()
        if self.on_request is not None:
            try:
                result = self.on_request(request)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.log.exception("%s: on_request hook failed", type(self).__name__)
                await self.send_error(stream, conn, 500, "on_request hook failed")
                return False
        problem = validate(request.body)
        if problem:
            await self.send_error(stream, conn, 400, problem)
            return False
        if self._hangs:
            self._hangs -= 1
            await trio.sleep_forever()
        if self.latency:
            await trio.sleep(self.latency)
        if self._failures:
            failure = self._failures.pop(0)
            extra = []
            if failure.retry_after is not None:
                extra.append((b"retry-after", format_seconds(failure.retry_after)))
            await self.send_error(stream, conn, failure.status, failure.message, extra)
            return False
        return True

    def reply_for(self, body: dict[str, Any]) -> str | dict[str, Any]:
        return self._reply(body)

    def next_id(self) -> int:
        return next(self._ids)

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
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        try:
            async with stream:
                while await self._handle_one(stream, conn):
                    conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            # A client that went away mid-request (a timeout, a cancelled call) is normal here.
            self.log.debug("%s: connection ended: %r", type(self).__name__, exc)

    async def _handle_one(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        """Serve one request on a keep-alive connection; False when the connection is done."""
        event = await next_event(stream, conn)
        if isinstance(event, h11.ConnectionClosed):
            return False
        assert isinstance(event, h11.Request)
        chunks = []
        while True:
            part = await next_event(stream, conn)
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
            await self.send_error(stream, conn, 400, "request body is not valid JSON")
            return conn.our_state is h11.DONE
        recorded = RecordedRequest(method, path, headers, body)
        self.received.append(recorded)
        await self.route(stream, conn, recorded)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE


def default_reply(body: dict[str, Any]) -> str:
    """``"echo: "`` + the text of the last user message of a request body."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return "echo: " + text_of(message.get("content"))
    return "echo: "


def text_of(content: Any) -> str:
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


def count_tokens(text: str) -> int:
    # Deterministic stand-in for a tokenizer: tests check that usage is passed through.
    return len(text.split())


def format_seconds(seconds: float) -> bytes:
    if seconds == math.floor(seconds):
        return str(int(seconds)).encode()
    return repr(seconds).encode()


async def next_event(stream: trio.SocketStream, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            # An empty read means the peer closed; h11 turns that into ConnectionClosed.
            conn.receive_data(await stream.receive_some(65536))
            continue
        return event


async def read_request(
    stream: trio.SocketStream, conn: h11.Connection
) -> tuple[h11.Request, dict[str, str], bytes] | None:
    """The next request on a keep-alive connection: the request line, its headers (names
    lower-cased, the last value wins) and its whole body. None when the client closed the
    connection, before a request or in the middle of one."""
    event = await next_event(stream, conn)
    if not isinstance(event, h11.Request):
        return None
    body = bytearray()
    while not isinstance(part := await next_event(stream, conn), h11.EndOfMessage):
        if not isinstance(part, h11.Data):
            return None
        body += part.data
    headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
    return event, headers, bytes(body)


Answer = tuple[int, list[tuple[str, str]], bytes]
"""An HTTP answer: status, headers (without content-length) and body."""

Answerer = Callable[[str, str, dict[str, str], bytes], Awaitable["Answer | None"]]
"""(method, target, headers, body) -> the answer, or None to drop the connection unanswered
(a fake's way to simulate a lost response)."""


def json_answer(status: int, out: Any, extra: dict[str, str] | None = None) -> Answer:
    """A JSON answer (``out`` already bytes is sent as is; ``extra`` may replace its
    content-type, e.g. for a file)."""
    data = out if isinstance(out, bytes) else json.dumps(out).encode()
    return status, list({"content-type": "application/json", **(extra or {})}.items()), data


async def serve_requests(
    stream: trio.SocketStream, answer: Answerer, *, max_event_size: int = 1 << 16
) -> None:
    """Serve one keep-alive HTTP/1.1 connection of a fake platform: each request goes to
    ``answer``; the connection ends when the client closes it, ``answer`` returns None, or the
    client breaks the protocol. The stream is closed in every case."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_event_size)
    try:
        while (received := await read_request(stream, conn)) is not None:
            request, headers, body = received
            result = await answer(
                request.method.decode(), request.target.decode("latin-1"), headers, body
            )
            if result is None:
                return
            status, extra, data = result
            out = [*extra, ("content-length", str(len(data)))]
            wire = conn.send(h11.Response(status_code=status, headers=out))
            wire += conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage())
            await stream.send_all(wire)
            if h11.MUST_CLOSE in (conn.our_state, conn.their_state):
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


def parse_multipart(content_type: str, body: bytes) -> email.message.EmailMessage:
    """A request body of ``content_type`` as a MIME message; iterate its parts for the fields
    of ``multipart/form-data`` (``part.get_param("name", header="content-disposition")``)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    assert isinstance(parsed, email.message.EmailMessage)  # what policy.HTTP makes
    return parsed


async def send_json(
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


async def send_events(stream: trio.SocketStream, conn: h11.Connection, events: list[bytes]) -> None:
    """A ``text/event-stream`` response: each of ``events`` (already framed) as one chunk."""
    # No content-length: h11 then uses chunked transfer encoding, as real SSE endpoints do.
    out = conn.send(
        h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream")])
    )
    await stream.send_all(out)
    for event in events:
        await stream.send_all(conn.send(h11.Data(data=event)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


@asynccontextmanager
async def serving(server: ServerT) -> AsyncIterator[ServerT]:
    """Run ``server`` for the duration of the block; it is serving when the block starts."""
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def serve_standalone(
    description: str,
    make_server: Callable[[argparse.Namespace], ServerT],
    url: Callable[[ServerT], str],
    argv: list[str] | None = None,
    *,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """``python -m MODULE --port N [options]``: build the server from the parsed arguments,
    serve it, print ``url(server)`` once it listens, run until interrupted.

    Every fake takes ``--port`` (0 picks a free port); ``options`` adds the fake's own.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)

    async def run() -> None:
        server = make_server(args)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            # flush: a parent process reads this line to learn the port.
            print(url(server), flush=True)

    try:
        trio.run(run)
    except* KeyboardInterrupt:  # Ctrl-C: trio may hand it over inside an exception group
        pass


def run_standalone(cls: type[ScriptedModelServer], argv: list[str] | None = None) -> None:
    """``python -m MODULE [--port N] [--latency S] [--api-key KEY]``: print the URL, serve."""

    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
        parser.add_argument("--api-key", default=None, help="require this API key")

    serve_standalone(
        f"{cls.__name__}: a fake API server for tests.",
        lambda args: cls(
            host=args.host, port=args.port, latency=args.latency, api_key=args.api_key
        ),
        lambda server: server.base_url,
        argv,
        options=options,
    )
