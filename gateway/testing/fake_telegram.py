"""PUBLIC: a fake Telegram Bot API server on 127.0.0.1, for tests and benchmarks.

It speaks real HTTP at ``/bot<TOKEN>/<method>`` (GET or POST; query string, JSON or form body,
like the real API) and answers ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code":
N, "description": ..., "parameters": {...}}``. Methods: getMe, getUpdates, sendMessage,
setWebhook, deleteWebhook, getWebhookInfo. Behaviour follows https://core.telegram.org/bots/api:

- ``getUpdates`` long-polls up to ``timeout`` seconds; updates with ``update_id < offset`` are
  confirmed and dropped forever, unconfirmed ones are delivered again on the next call; ``limit``
  caps the batch (1-100, default 100); a newer getUpdates ends a pending one with 409, and while a
  webhook is set getUpdates answers 409 Conflict.
- Message ids count up per chat, shared by both directions as in a real private chat; ``date`` is
  unix seconds; a private chat has ``chat.type == "private"`` and ``chat.id == from.id``.

Departures, on purpose: any ``chat_id`` that is an integer is a known chat (the real API says
"chat not found" for chats that never wrote to the bot); ``setWebhook`` accepts ``http://`` URLs
on any port; multipart bodies (file uploads) are not understood.

Use it from a trio test::

    async with open_fake_telegram(token="123:ABC") as server:
        server.push_message(42, "hello")
        ...
        await server.wait_sent(1)
        assert server.sent[0].text == "hi"

or standalone: ``python -m gateway.testing.fake_telegram --port 0 --token 123:ABC`` prints the
base URL; ``POST /_fake/push`` {chat_id, text, ...}, ``GET /_fake/sent`` and ``POST /_fake/fail``
{method, status, retry_after} drive it from another process.

The server is trio + h11 rather than hypercorn: the benchmark pushes thousands of requests through
it and hypercorn is the slowest layer measured here (ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import itertools
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import httpx
import trio

from gateway.testing._http import serve_standalone, serving
from gateway.testing._posting import post

__all__ = ["FakeTelegramServer", "SentMessage", "open_fake_telegram"]

log = logging.getLogger(__name__)

DEFAULT_TOKEN = "123456789:FAKE-telegram-token_0123456789abcdef"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_SECRET_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_MAX_BODY = 1 << 20

# Real update ids are large and do not start at 0 or 1; starting elsewhere catches plugins that
# treat "offset 0" or "first id" specially.
_FIRST_UPDATE_ID = 700_000_001

_DEFAULT_DESCRIPTIONS = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request",
    429: "Too Many Requests: retry after {retry_after}",
    500: "Internal Server Error",
    502: "Bad Gateway",
}


class _ApiError(Exception):
    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None):
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


@dataclasses.dataclass(frozen=True)
class SentMessage:
    """One message the bot sent (a recorded ``sendMessage`` call)."""

    chat_id: int
    text: str
    message_id: int
    date: int
    params: Mapping[str, Any]
    """Every parameter of the call as received (values as strings when form-encoded)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "chat_id": self.chat_id,
            "text": self.text,
            "message_id": self.message_id,
            "date": self.date,
            "params": dict(self.params),
        }


@dataclasses.dataclass
class _Fault:
    status: int | None
    description: str
    retry_after: int | None
    disconnect: bool


class FakeTelegramServer:
    """An in-process Telegram Bot API. Start it with ``await nursery.start(server.serve)``.

    Every test-facing method is a plain method of this object, safe to call from any task of the
    same trio run. Attributes tests may read: ``sent``, ``updates`` (queued, unconfirmed),
    ``webhook_url``, ``webhook_secret``, ``requests`` (method names in arrival order).
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        port: int = 0,
        bot_username: str = "fake_gateway_bot",
    ) -> None:
        self.token = token
        self.port = port
        head = token.split(":", 1)[0]
        self.bot_id = int(head) if head.isdigit() else 1
        self.bot_username = bot_username
        self.sent: list[SentMessage] = []
        self.updates: list[dict[str, Any]] = []
        """Updates not yet confirmed by a getUpdates offset (nor acknowledged by a webhook)."""
        self.requests: list[str] = []
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.on_send: Callable[[SentMessage], Any] | None = None
        """Called (and awaited if it returns an awaitable) once a sendMessage is recorded,
        before the bot gets the answer: a crash test can kill the daemon right there."""
        self.on_get_updates: Callable[[dict[str, Any]], Any] | None = None
        """Called with the parsed parameters (offset, timeout, limit) of every getUpdates as it
        arrives, before anything is confirmed or answered."""
        self._update_ids = itertools.count(_FIRST_UPDATE_ID)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._poll_generation = 0
        self._changed = trio.Event()
        self._http: httpx.AsyncClient | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        """Base URL to give a client in place of ``https://api.telegram.org``."""
        return f"http://127.0.0.1:{self.port}"

    async def serve(
        self, *, task_status: trio.TaskStatus[FakeTelegramServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on 127.0.0.1 until cancelled; ``task_status.started(self)`` once bound."""
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with httpx.AsyncClient() as http:
            self._http = http
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(
                        functools.partial(trio.serve_listeners, self._handle_connection, listeners)
                    )
                    task_status.started(self)
            finally:
                self._http = None

    # -- test-facing API -------------------------------------------------------------------

    def push_message(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        first_name: str = "Ada",
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = "en",
        update_id: int | None = None,
    ) -> dict[str, Any]:
        """A user writes ``text`` to the bot in ``chat_id``; returns the queued Update.

        ``user_id`` defaults to ``chat_id`` (a private chat). Waiting getUpdates calls wake up.
        """
        user_id = chat_id if user_id is None else user_id
        sender: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        chat: dict[str, Any] = {"id": chat_id}
        if user_id == chat_id:
            chat.update(first_name=first_name, type="private")
        else:
            chat.update(
                title=f"Group {chat_id}",
                type="supergroup" if str(chat_id).startswith("-100") else "group",
            )
        for key, value in (("last_name", last_name), ("username", username)):
            if value is not None:
                sender[key] = value
                if chat["type"] == "private":
                    chat[key] = value
        if language_code is not None:
            sender["language_code"] = language_code
        message = {
            "message_id": self._next_message_id(chat_id),
            "from": sender,
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        update: dict[str, Any] = {"message": message}
        if update_id is not None:
            update["update_id"] = update_id
        return self.push_update(update)

    def push_update(self, update: Mapping[str, Any]) -> dict[str, Any]:
        """Queue any Update (an edited message, a callback query...); numbers it if it has no
        ``update_id``. Returns the queued copy."""
        queued: dict[str, Any] = json.loads(json.dumps(update))  # a deep copy, surely JSON
        if "update_id" not in queued:
            queued["update_id"] = next(self._update_ids)
        self.updates.append(queued)
        self._notify()
        return queued

    def redeliver(self, update: Mapping[str, Any]) -> dict[str, Any]:
        """Queue the same message again under a new update id.

        Telegram never re-sends a confirmed update to getUpdates; this models the same message
        reaching a bot twice by other paths (delivered to a webhook and then fetched by polling,
        or a poll offset lost in a crash), which a channel plugin must dedupe by message, not by
        update id.
        """
        copy = {k: v for k, v in update.items() if k != "update_id"}
        return self.push_update(copy)

    def fail_next(
        self,
        method: str,
        *,
        status: int | None = 500,
        retry_after: int | None = None,
        description: str | None = None,
        disconnect: bool = False,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail like the real API does.

        ``status`` 429 with ``retry_after`` is flood control; 403 "Forbidden: bot was blocked by
        the user"; 400 "Bad Request: chat not found"; 500 an internal error. ``disconnect=True``
        closes the connection without an answer instead; for sendMessage the message is recorded
        first (it reached Telegram, the answer was lost).
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        if description is None:
            template = _DEFAULT_DESCRIPTIONS.get(status or 0, "Error")
            description = template.format(retry_after=retry_after)
        fault = _Fault(status, description, retry_after, disconnect)
        self._faults.setdefault(method.lower(), []).extend([fault] * times)

    async def wait_sent(self, count: int) -> list[SentMessage]:
        """Wait until the bot has sent at least ``count`` messages; return them all."""
        while len(self.sent) < count:
            await self._changed.wait()
        return list(self.sent)

    def sent_to(self, chat_id: int | str) -> list[SentMessage]:
        """Messages sent to one chat, in order."""
        return [m for m in self.sent if m.chat_id == int(chat_id)]

    async def post_webhook(
        self, url: str, update: Mapping[str, Any], secret_token: str | None = None
    ) -> int:
        """POST ``update`` to ``url`` as Telegram does (JSON body, secret header when given);
        return the HTTP status the bot answered."""
        if self._http is None:
            raise RuntimeError("FakeTelegramServer.post_webhook needs the server running (serve)")
        headers = {SECRET_HEADER: secret_token} if secret_token is not None else {}
        response = await post(self._http, url, json=dict(update), headers=headers)
        return response.status_code

    async def deliver_to_webhook(self, update: Mapping[str, Any]) -> int:
        """POST ``update`` to the registered webhook with the registered secret; a 2xx answer
        confirms it (removes it from ``updates``), like Telegram. Returns the status."""
        if self.webhook_url is None:
            raise RuntimeError("no webhook is set (setWebhook was not called)")
        status = await self.post_webhook(self.webhook_url, update, self.webhook_secret)
        if 200 <= status < 300:
            self.updates = [
                u for u in self.updates if u.get("update_id") != update.get("update_id")
            ]
        return status

    # -- internals -------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _next_message_id(self, chat_id: int) -> int:
        return next(self._message_ids.setdefault(chat_id, itertools.count(1)))

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await _read_request(conn, stream)
                if request is None:
                    return
                target = request.target.decode("ascii", "replace")
                try:
                    status, payload = await self._route(
                        request.method.decode(), target, request.headers, body
                    )
                except _Disconnect:
                    return
                except Exception as exc:  # a bug in the fake must show as a 500, not a hang
                    log.exception("fake telegram: error handling %s", target)
                    status, payload = (
                        500,
                        {"ok": False, "error_code": 500, "description": repr(exc)},
                    )
                await _send_json(conn, stream, status, payload)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return  # the client went away (a cancelled long poll): nothing to answer
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _route(
        self, method: str, target: str, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        url = urlsplit(target)
        params: dict[str, Any] = dict(parse_qsl(url.query))
        content_type = next((v.decode() for k, v in headers if k.lower() == b"content-type"), "")
        if body:
            if content_type.startswith("application/json"):
                try:
                    data = json.loads(body)
                except ValueError:
                    return _error(400, "Bad Request: can't parse JSON")
                if not isinstance(data, dict):
                    return _error(400, "Bad Request: JSON body must be an object")
                params.update(data)
            elif content_type.startswith("application/x-www-form-urlencoded"):
                params.update(parse_qsl(body.decode()))
            else:
                return _error(400, f"Bad Request: unsupported content type {content_type!r}")

        if url.path.startswith("/_fake/"):
            return self._control(method, url.path, params)
        match = re.fullmatch(r"/bot([^/]+)/([A-Za-z]+)", url.path)
        if match is None:
            return _error(404, "Not Found")
        if match.group(1) != self.token:
            return _error(401, "Unauthorized")
        api_method = match.group(2).lower()  # the real API ignores the case of method names
        self.requests.append(api_method)
        handler = getattr(self, f"_api_{api_method.lower()}", None)
        if handler is None:
            return _error(404, "Not Found")
        faults = self._faults.get(api_method)
        if faults:
            fault = faults.pop(0)
            if fault.disconnect:
                if api_method == "sendmessage":
                    await handler(params)  # it reached Telegram; only the answer is lost
                raise _Disconnect
            params_out = {"retry_after": fault.retry_after} if fault.retry_after else None
            return _error(fault.status or 500, fault.description, params_out)
        try:
            result = await handler(params)
        except _ApiError as exc:
            return _error(exc.status, exc.description, exc.parameters)
        return 200, {"ok": True, "result": result}

    # -- Bot API methods -------------------------------------------------------------------

    async def _api_getme(self, params: dict[str, Any]) -> Any:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Fake Gateway Bot",
            "username": self.bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _api_getupdates(self, params: dict[str, Any]) -> Any:
        offset = _int_param(params, "offset", 0)
        timeout = _int_param(params, "timeout", 0)
        limit = min(max(_int_param(params, "limit", 100), 1), 100)
        if self.on_get_updates is not None:
            await _maybe_await(
                self.on_get_updates({"offset": offset, "timeout": timeout, "limit": limit})
            )
        if self.webhook_url is not None:
            raise _ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        if offset > 0:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        elif offset < 0:  # "-N": the last N updates; all earlier ones are forgotten
            self.updates = self.updates[offset:]
        self._poll_generation += 1
        generation = self._poll_generation
        self._notify()  # ends an older pending poll with 409, as the real API does
        deadline = trio.current_time() + timeout
        while True:
            if generation != self._poll_generation:
                raise _ApiError(
                    409,
                    _DEFAULT_DESCRIPTIONS[409]
                    + "; make sure that only one bot instance is running",
                )
            if self.webhook_url is not None:
                raise _ApiError(409, "Conflict: webhook was set while getUpdates was waiting")
            if self.updates or trio.current_time() >= deadline:
                return self.updates[:limit]
            with trio.move_on_at(deadline):
                await self._changed.wait()

    async def _api_sendmessage(self, params: dict[str, Any]) -> Any:
        chat_id = params.get("chat_id")
        try:
            chat = int(chat_id)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise _ApiError(400, "Bad Request: chat not found") from None
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            raise _ApiError(400, "Bad Request: message is too long")
        sent = SentMessage(chat, text, self._next_message_id(chat), int(time.time()), dict(params))
        self.sent.append(sent)
        self._notify()
        if self.on_send is not None:
            await _maybe_await(self.on_send(sent))
        chat_obj: dict[str, Any] = {"id": chat, "type": "private" if chat > 0 else "group"}
        if chat > 0:
            chat_obj["first_name"] = "Ada"
        else:
            chat_obj["title"] = f"Group {chat}"
        return {
            "message_id": sent.message_id,
            "from": {
                "id": self.bot_id,
                "is_bot": True,
                "first_name": "Fake Gateway Bot",
                "username": self.bot_username,
            },
            "chat": chat_obj,
            "date": sent.date,
            "text": text,
        }

    async def _api_setwebhook(self, params: dict[str, Any]) -> Any:
        url = str(params.get("url", ""))
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_TOKEN_RE.fullmatch(str(secret)):
            raise _ApiError(400, "Bad Request: secret token contains unallowed characters")
        if _bool_param(params, "drop_pending_updates"):
            self.updates.clear()
        if not url:
            self.webhook_url = self.webhook_secret = None
            self._notify()
            return True
        if not url.startswith(("http://", "https://")):
            raise _ApiError(
                400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        self.webhook_url = url
        self.webhook_secret = None if secret is None else str(secret)
        self._notify()
        return True

    async def _api_deletewebhook(self, params: dict[str, Any]) -> Any:
        if _bool_param(params, "drop_pending_updates"):
            self.updates.clear()
        self.webhook_url = self.webhook_secret = None
        self._notify()
        return True

    async def _api_getwebhookinfo(self, params: dict[str, Any]) -> Any:
        info: dict[str, Any] = {
            "url": self.webhook_url or "",
            "has_custom_certificate": False,
            "pending_update_count": len(self.updates),
        }
        if self.webhook_url:
            info["max_connections"] = 40
        return info

    # -- control endpoints for another process ----------------------------------------------

    def _control(
        self, method: str, path: str, params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        if path == "/_fake/push" and method == "POST":
            fields = {
                k: params[k]
                for k in (
                    "user_id",
                    "first_name",
                    "last_name",
                    "username",
                    "language_code",
                    "update_id",
                )
                if k in params
            }
            for key in ("user_id", "update_id"):
                if key in fields:
                    fields[key] = int(fields[key])
            update = self.push_message(int(params["chat_id"]), str(params["text"]), **fields)
            return 200, {"ok": True, "result": update}
        if path == "/_fake/sent" and method == "GET":
            return 200, {"ok": True, "result": [m.as_dict() for m in self.sent]}
        if path == "/_fake/fail" and method == "POST":
            self.fail_next(
                str(params["method"]),
                status=int(params.get("status", 500)),
                retry_after=int(params["retry_after"]) if "retry_after" in params else None,
            )
            return 200, {"ok": True, "result": True}
        return _error(404, "Not Found")


class _Disconnect(Exception):
    """Drop the connection without answering."""


def open_fake_telegram(
    token: str = DEFAULT_TOKEN, *, port: int = 0
) -> AbstractAsyncContextManager[FakeTelegramServer]:
    """Run a :class:`FakeTelegramServer` for the duration of the block."""
    return serving(FakeTelegramServer(token, port=port))


def _error(
    status: int, description: str, parameters: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    payload: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        payload["parameters"] = parameters
    return status, payload


def _int_param(params: Mapping[str, Any], key: str, default: int) -> int:
    value = params.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _ApiError(400, f'Bad Request: field "{key}" must be an integer') from None


def _bool_param(params: Mapping[str, Any], key: str) -> bool:
    value = params.get(key)
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1"))


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream
) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)  # b"" means the peer closed
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY:
                raise h11.RemoteProtocolError("body too large")
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None, b""


async def _send_json(
    conn: h11.Connection, stream: trio.SocketStream, status: int, payload: Any
) -> None:
    body = json.dumps(payload).encode()
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("server", "fake-telegram"),
    ]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)


def main(argv: list[str] | None = None) -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--token", default=DEFAULT_TOKEN, help="the bot token it accepts")

    serve_standalone(
        "Run a fake Telegram Bot API server on 127.0.0.1.",
        lambda args: FakeTelegramServer(args.token, port=args.port),
        lambda server: server.api_base,
        argv,
        options=options,
    )


if __name__ == "__main__":
    main()
