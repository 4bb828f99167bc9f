"""The Bot API half of :class:`~gateway.testing.fake_max.FakeMaxServer`: the routes a bot calls,
Max's error documents and the h11 plumbing. Private: use the public module. A bare trio + h11
loop like the other fakes, so it never bottlenecks a benchmark."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import trio

from gateway.testing._http import Answer, json_answer, serve_requests

FIRST_SEQ = 25_493_970
"""Update numbers start here, not at 0 or 1: a plugin must not treat either specially."""
_SECRET_RE = re.compile(r"^[\w-]{5,256}$")
_TYPES = {"image", "video", "audio", "file", "sticker", "contact", "inline_keyboard", "location",
          "share", "reply_keyboard"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SentMessage:
    """One message the bot sent (a recorded ``POST /messages``)."""

    chat_id: int
    text: str
    mid: str
    body: Mapping[str, Any]
    """The NewMessageBody as received."""

    @property
    def reply_to(self) -> str | None:
        link = self.body.get("link")
        return (
            link.get("mid") if isinstance(link, Mapping) and link.get("type") == "reply" else None
        )


@dataclasses.dataclass(frozen=True)
class CallbackAnswer:
    """One ``POST /answers`` the bot made."""

    callback_id: str
    notification: str | None
    body: Mapping[str, Any]


@dataclasses.dataclass
class _Fault:
    status: int
    code: str
    message: str
    retry_after: str | None
    disconnect: bool


class ApiError(Exception):
    """Answer with Max's error document ``{"code": ..., "message": ...}``."""

    def __init__(self, status: int, code: str, message: str, retry_after: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class Disconnect(Exception):
    """Drop the connection without answering."""


_DEFAULT_ERRORS = {
    400: ("proto.payload", "Invalid request payload"),
    401: ("verify.token", "Invalid access_token"),
    403: ("chat.denied", "You are not allowed to write to this chat"),
    404: ("not.found", "Chat not found"),
    405: ("method.not.allowed", "Method not allowed"),
    429: ("too.many.requests", "Too many requests"),
    500: ("internal", "Internal error"),
    503: ("service.unavailable", "Service unavailable"),
}


class BotApi:
    """Serves the Bot API routes from the state tests inspect and script."""

    def __init__(self, *, token: str, bot_id: int, bot_username: str, port: int) -> None:
        self.token = token
        self.bot_id = bot_id
        self.bot_username = bot_username
        self.port = port
        self.scheme = "http"
        self.sent: list[SentMessage] = []
        self.answers: list[CallbackAnswer] = []
        self.updates: list[tuple[int, dict[str, Any]]] = []
        """(number, update) not yet committed by a marker."""
        self.deliveries: Counter[int] = Counter()
        """How many times each update number went out in a GET /updates answer."""
        self.polls: list[dict[str, Any]] = []
        """The parameters of every GET /updates, in arrival order (marker None when absent)."""
        self.subscriptions: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.files: dict[str, tuple[bytes, str]] = {}
        """File id -> (bytes, MIME type), served at /_files/ID without the token (the CDN)."""
        self.callbacks: set[str] = set()
        self.mids: set[str] = set()
        self.on_poll: Callable[[dict[str, Any]], Any] | None = None
        """Called (awaited if it returns an awaitable) with each poll's parameters before the
        marker commits anything: a crash test can stop the bot right there."""
        self.on_send: Callable[[SentMessage], Any] | None = None
        """Called once a POST /messages is recorded, before the bot gets the answer."""
        self._next_seq = FIRST_SEQ
        self._ids = itertools.count(1)
        self._faults: dict[str, list[_Fault]] = {}
        self._changed = trio.Event()
        self._poll_generation = 0

    @property
    def api_base(self) -> str:
        """Give this as ``api_base`` in place of ``https://platform-api.max.ru``."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def next_id(self) -> int:
        return next(self._ids)

    def next_mid(self) -> str:
        mid = f"mid.{0xFA4E000000000000 + next(self._ids):032x}"
        self.mids.add(mid)
        return mid

    def enqueue(self, update: dict[str, Any]) -> int:
        """Queue an update for GET /updates; returns its number."""
        number = self._next_seq
        self._next_seq += 1
        self.updates.append((number, update))
        self.notify()
        return number

    def fail_next(
        self,
        endpoint: str,
        *,
        status: int = 500,
        code: str | None = None,
        message: str | None = None,
        retry_after: float | None = None,
        disconnect: bool = False,
        times: int = 1,
    ) -> None:
        """Fail the next ``times`` calls of ``endpoint``: "me", "updates", "messages",
        "answers", "subscriptions", "videos" or "files". ``disconnect`` drops the connection
        instead of answering; for "messages" the message is recorded first (it reached Max,
        the answer was lost)."""
        default_code, default_message = _DEFAULT_ERRORS.get(status, ("error", "Error"))
        wait = None if retry_after is None else f"{retry_after:g}"
        fault = _Fault(status, code or default_code, message or default_message, wait, disconnect)
        self._faults.setdefault(endpoint, []).extend([fault] * times)

    async def wait_sent(self, count: int) -> list[SentMessage]:
        """Wait until the bot has sent at least ``count`` messages; return them all."""
        while len(self.sent) < count:
            await self._changed.wait()
        return list(self.sent)

    async def wait_answers(self, count: int) -> list[CallbackAnswer]:
        while len(self.answers) < count:
            await self._changed.wait()
        return list(self.answers)

    async def wait_polls(self, count: int) -> list[dict[str, Any]]:
        """Wait until at least ``count`` GET /updates have arrived; return their parameters."""
        while len(self.polls) < count:
            await self._changed.wait()
        return list(self.polls)

    def sent_to(self, chat_id: int | str) -> list[SentMessage]:
        return [m for m in self.sent if m.chat_id == int(chat_id)]

    # -- serving ---------------------------------------------------------------------------

    async def handle_connection(self, stream: Any) -> None:
        await serve_requests(stream, self._http_answer)

    async def _http_answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Answer | None:
        try:
            status, out, extra = await self._route(method, target, headers, body)
        except Disconnect:
            return None
        except ApiError as exc:
            status, out = exc.status, {"code": exc.code, "message": exc.message}
            extra = {"retry-after": exc.retry_after} if exc.retry_after else {}
        return json_answer(status, out, extra)

    async def _route(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        url = urlsplit(target)
        query = dict(parse_qsl(url.query))
        self.requests.append((method, url.path))
        file = re.fullmatch(r"/_files/(\w+)", url.path)
        if file and method == "GET":  # the CDN: no token
            self._fault("files")
            if file.group(1) not in self.files:
                raise ApiError(404, "not.found", "File not found")
            data, mime = self.files[file.group(1)]
            return 200, data, {"content-type": mime}
        if "access_token" in query:
            raise ApiError(401, "verify.token", "Token in query parameters is not supported")
        if headers.get("authorization") != self.token:
            raise ApiError(401, "verify.token", "Invalid access_token")
        route = (method, url.path)
        if route == ("GET", "/me"):
            self._fault("me")
            return 200, self.me(), {}
        if route == ("GET", "/updates"):
            return 200, await self._updates(query), {}
        if route == ("POST", "/messages"):
            fault = self._fault("messages", record=True)
            result = await self._send(query, _json(body))
            if fault is not None:
                raise Disconnect
            return 200, result, {}
        if route == ("POST", "/answers"):
            self._fault("answers")
            return 200, self._answer(query, _json(body)), {}
        if url.path == "/subscriptions":
            self._fault("subscriptions")
            return 200, self._subscriptions(method, query, body), {}
        video = re.fullmatch(r"/videos/([\w-]+)", url.path)
        if video and method == "GET":
            self._fault("videos")
            return 200, self._video(video.group(1)), {}
        raise ApiError(404, "not.found", f"Unknown method {method} {url.path}")

    def _fault(self, endpoint: str, *, record: bool = False) -> _Fault | None:
        faults = self._faults.get(endpoint)
        if not faults:
            return None
        fault = faults.pop(0)
        if fault.disconnect:
            if record:
                return fault
            raise Disconnect
        raise ApiError(fault.status, fault.code, fault.message, fault.retry_after)

    # -- methods ---------------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        return {
            "user_id": self.bot_id,
            "first_name": "Fake Gateway Bot",
            "username": self.bot_username,
            "is_bot": True,
            "last_activity_time": int(time.time() * 1000),
            "name": "Fake Gateway Bot",
            "description": "A fake Max bot for tests",
        }

    async def _updates(self, query: dict[str, str]) -> dict[str, Any]:
        marker = _int(query, "marker", None)
        wait = _int(query, "timeout", 30)
        limit = _int(query, "limit", 100)
        if not (0 <= (wait or 0) <= 90 and 1 <= (limit or 0) <= 1000):
            raise ApiError(400, "proto.payload", "timeout must be 0-90, limit 1-1000")
        types = {t for t in query.get("types", "").split(",") if t}
        params = {"marker": marker, "timeout": wait, "limit": limit, "types": sorted(types)}
        self.polls.append(params)
        self.notify()
        if self.on_poll is not None:
            result = self.on_poll(params)
            if inspect.isawaitable(result):
                await result
        self._fault("updates")
        if self.subscriptions:
            raise ApiError(
                405, "method.not.allowed", "Long polling is not available: the bot has a webhook"
            )
        if marker is not None:  # every earlier update is committed now
            self.updates = [(n, u) for n, u in self.updates if n >= marker]
        self._poll_generation += 1
        generation = self._poll_generation
        self.notify()  # a newer poll ends an older one (with nothing)
        deadline = trio.current_time() + (wait or 0)
        while True:
            superseded = generation != self._poll_generation
            found = [(n, u) for n, u in self.updates if not types or u["update_type"] in types]
            if superseded or found or trio.current_time() >= deadline:
                break
            with trio.move_on_at(deadline):
                await self._changed.wait()
        batch = [] if superseded else found[: limit or 100]
        for number, _ in batch:
            self.deliveries[number] += 1
        if batch:
            next_marker = batch[-1][0] + 1
        elif marker is not None:
            next_marker = marker
        else:
            next_marker = self.updates[0][0] if self.updates else self._next_seq
        return {"updates": [u for _, u in batch], "marker": next_marker}

    async def _send(self, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        if ("chat_id" in query) == ("user_id" in query):
            raise ApiError(400, "proto.payload", "Give exactly one of chat_id and user_id")
        chat_id = _int(query, "chat_id", None) or _int(query, "user_id", None)
        if chat_id is None:
            raise ApiError(400, "proto.payload", "chat_id must be a number")
        text = body.get("text")
        attachments = body.get("attachments") or []
        if text is not None and not isinstance(text, str):
            raise ApiError(400, "proto.payload", "text must be a string")
        if text is not None and len(text) > 4000:
            raise ApiError(400, "proto.payload", "text: size must be between 0 and 4000")
        if not (text and text.strip()) and not attachments:
            raise ApiError(400, "proto.payload", "Message text or attachments are required")
        for attachment in attachments if isinstance(attachments, list) else [None]:
            if not isinstance(attachment, dict) or attachment.get("type") not in _TYPES:
                raise ApiError(400, "proto.payload", "Unknown attachment type")
        if "format" in body and body["format"] not in (None, "markdown", "html"):
            raise ApiError(400, "proto.payload", "format must be markdown or html")
        link = body.get("link")
        if link is not None:
            if not isinstance(link, dict) or link.get("type") not in ("reply", "forward"):
                raise ApiError(400, "proto.payload", "link.type must be reply or forward")
            if link.get("mid") not in self.mids:
                raise ApiError(404, "not.found", "Linked message not found")
        mid = self.next_mid()
        sent = SentMessage(chat_id, text or "", mid, body)
        self.sent.append(sent)
        self.notify()
        if self.on_send is not None:
            result = self.on_send(sent)
            if inspect.isawaitable(result):
                await result
        message_body: dict[str, Any] = {"mid": mid, "seq": next(self._ids), "text": text or ""}
        if attachments:
            message_body["attachments"] = attachments
        return {
            "message": {
                "recipient": {"chat_id": chat_id, "chat_type": chat_type(chat_id)},
                "timestamp": int(time.time() * 1000),
                "body": message_body,
                "sender": {**self.me(), "is_bot": True},
            }
        }

    def _answer(self, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        callback_id = query.get("callback_id", "")
        if not callback_id.strip():
            raise ApiError(400, "proto.payload", "callback_id is required")
        if callback_id not in self.callbacks:
            raise ApiError(404, "not.found", "Callback not found")
        notification = body.get("notification")
        if notification is None and body.get("message") is None:
            raise ApiError(400, "proto.payload", "Give message or notification")
        self.answers.append(CallbackAnswer(callback_id, notification, body))
        self.notify()
        return {"success": True}

    def _subscriptions(self, method: str, query: dict[str, str], raw: bytes) -> dict[str, Any]:
        if method == "GET":
            return {"subscriptions": [dict(s) for s in self.subscriptions]}
        if method == "DELETE":
            url = query.get("url")
            if not url:
                raise ApiError(400, "proto.payload", "url is required")
            self.subscriptions = [s for s in self.subscriptions if s["url"] != url]
            return {"success": True}
        if method != "POST":
            raise ApiError(405, "method.not.allowed", f"{method} /subscriptions")
        body = _json(raw)
        url, secret = body.get("url"), body.get("secret")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ApiError(400, "proto.payload", "url must start with http(s)://")
        if secret is not None and not (isinstance(secret, str) and _SECRET_RE.fullmatch(secret)):
            raise ApiError(400, "proto.payload", "secret: 5-256 characters A-Z a-z 0-9 _ -")
        types = body.get("update_types")
        self.subscriptions = [s for s in self.subscriptions if s["url"] != url]
        self.subscriptions.append(
            {
                "url": url,
                "secret": secret,
                "time": int(time.time() * 1000),
                "update_types": types if isinstance(types, list) else None,
                "version": body.get("version"),
            }
        )
        self.notify()
        return {"success": True}

    def _video(self, token: str) -> dict[str, Any]:
        file_id = token.removeprefix("video-")
        if file_id not in self.files:
            raise ApiError(404, "not.found", "Video not found")
        return {
            "token": token,
            "urls": {"mp4_480": f"{self.api_base}/_files/{file_id}"},
            "width": 854,
            "height": 480,
            "duration": 3,
        }


def chat_type(chat_id: int) -> str:
    return "dialog" if chat_id > 0 else "chat"


def _int(query: Mapping[str, str], key: str, default: int | None) -> int | None:
    value = query.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, "proto.payload", f"{key} must be a number") from None


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        raise ApiError(400, "proto.payload", "Request body is not JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "proto.payload", "Request body must be a JSON object")
    return value
