"""Pure parts of the web chat: the JSON frame protocol, the Origin rule, the rate limit.

No I/O here, so each rule is tested without a server.

Protocol (JSON text frames over the websocket at ``/chat/NAME/ws``)
-------------------------------------------------------------------
Browser to server:

- ``{"type": "hello", "visitor": ID, "gpc": true?}`` first, once. ID is the page's opaque visitor
  id: 32-128 lowercase hex digits (the widget makes 128 random bits with
  ``crypto.getRandomValues``). It is the visitor's only credential (whoever knows it reads the
  conversation), hence the length rule, and it is never stored: the thread key is a keyed hash
  of it (:func:`thread_key`), so neither the database nor a log line gives it away. ``gpc``
  carries ``navigator.globalPrivacyControl``.
- ``{"type": "message", "client_id": UUID, "text": TEXT}``; the page keeps resending an unacked
  message with the same UUID, which makes the resend a duplicate in the journal.
- ``{"type": "ping"}``: answered with ``pong`` through the same ordered queue as replies, so the
  pong also proves every earlier frame was delivered.

Server to browser:

- ``{"type": "history", "messages": [{"direction": "in"|"out", "text", "id", "client_id"?}]}``
  answers hello, oldest first.
- ``{"type": "ack", "client_id", "duplicate"}`` once the message is committed.
- ``{"type": "reply", "id", "text"}`` pushed as the daemon sends a reply. ``id`` is
  ``"m:<message id>"``, the stored message's id (``Outbound.message_id``), which is also its
  ``id`` in history frames: a reply both in history and pushed live is shown once.
- ``{"type": "error", "code", "reason", "retry", "client_id"?, "retry_after"?}``: ``retry`` says
  whether sending the same message again (same client_id) can succeed.
- ``{"type": "pong"}``.

The fallback when websockets are blocked (same frames, other carriers)
-----------------------------------------------------------------------
- ``POST /chat/NAME/events`` with ``{"visitor": ID, "gpc": true?}`` answers a
  ``text/event-stream``: one ``data: FRAME`` event per frame above, the history first.
- ``POST /chat/NAME/send`` with ``{"visitor": ID, "client_id": UUID, "text": TEXT, "gpc": ...}``
  answers the ``ack`` frame (200) or the ``error`` frame with a 4xx/5xx status
  (:func:`http_status`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from gateway.plugin import HistoryItem

VISITOR_RE = re.compile(r"[0-9a-f]{32,128}")
VISITOR_RULE = "visitor id must be 32-128 lowercase hex digits"
THREAD_RE = re.compile(r"v[0-9a-f]{32}")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class FrameError(Exception):
    """A frame the server refuses; becomes an ``error`` frame, never a crash."""

    def __init__(
        self, code: str, reason: str, *, client_id: str | None = None, retry: bool = False
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.client_id = client_id
        self.retry = retry

    def frame(self) -> dict[str, Any]:
        return error_frame(self.code, self.reason, client_id=self.client_id, retry=self.retry)


@dataclasses.dataclass(frozen=True)
class Hello:
    visitor: str
    gpc: bool = False


@dataclasses.dataclass(frozen=True)
class Message:
    client_id: str
    text: str


@dataclasses.dataclass(frozen=True)
class Ping:
    pass


Frame = Hello | Message | Ping


def max_frame_chars(max_message_chars: int) -> int:
    """The longest raw frame worth parsing: JSON may spell one character as a 12-character
    surrogate pair escape, plus room for the envelope."""
    return max_message_chars * 12 + 1024


def valid_visitor(visitor: str) -> bool:
    """Whether ``visitor`` has the shape of an id the page makes."""
    return VISITOR_RE.fullmatch(visitor) is not None


def parse_frame(
    raw: str | bytes,
    *,
    max_message_chars: int,
    valid_visitor: Callable[[str], bool] = valid_visitor,
) -> Frame:
    """Turn one websocket frame from the page into a Frame, or raise FrameError saying why not."""
    if isinstance(raw, bytes):
        raise FrameError("bad_frame", "send JSON as text frames, not binary")
    if len(raw) > max_frame_chars(max_message_chars):
        raise FrameError("too_large", "frame too large")
    try:
        data = json.loads(raw)
    except ValueError:
        raise FrameError("bad_json", "frame is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise FrameError("bad_frame", 'frame must be a JSON object with a "type"')
    kind = data["type"]
    if kind == "hello":
        visitor = data.get("visitor")
        if not isinstance(visitor, str) or not valid_visitor(visitor):
            raise FrameError("bad_visitor", VISITOR_RULE)
        return Hello(visitor, data.get("gpc") is True)
    if kind == "message":
        return _message(data, max_message_chars)
    if kind == "ping":
        return Ping()
    raise FrameError("unknown_type", f"unknown frame type {kind[:40]!r}")


def _message(data: dict[str, Any], max_message_chars: int) -> Message:
    client_id = data.get("client_id")
    if not isinstance(client_id, str) or not _UUID_RE.fullmatch(client_id):
        raise FrameError("bad_frame", "client_id must be a lowercase UUID")
    text = data.get("text")
    if not isinstance(text, str):
        raise FrameError("bad_frame", "text must be a string", client_id=client_id)
    if not text.strip():
        raise FrameError("empty", "the message is empty", client_id=client_id)
    if len(text) > max_message_chars:
        raise FrameError(
            "too_long",
            f"the message is longer than {max_message_chars} characters; shorten it or split it",
            client_id=client_id,
        )
    return Message(client_id, text)


@dataclasses.dataclass(frozen=True)
class Posted:
    """A request body of the fallback: who asks (and their GPC signal), and for ``/send`` the
    message."""

    visitor: str
    gpc: bool
    message: Message | None = None


def parse_posted(
    data: dict[str, Any],
    *,
    max_message_chars: int,
    with_message: bool,
    valid_visitor: Callable[[str], bool] = valid_visitor,
) -> Posted:
    """Read the JSON object POSTed to ``/events`` (``with_message`` False) or ``/send``."""
    visitor = data.get("visitor")
    if not isinstance(visitor, str) or not valid_visitor(visitor):
        raise FrameError("bad_visitor", VISITOR_RULE)
    gpc = data.get("gpc") is True
    if not with_message:
        return Posted(visitor, gpc)
    return Posted(visitor, gpc, _message(data, max_message_chars))


_STATUS = {"too_long": 413, "too_large": 413, "rate_limited": 429, "store_failed": 503}
_STATUS |= {"history_failed": 503, "too_many_connections": 429, "not_running": 503}


def http_status(frame: dict[str, Any]) -> int:
    """The status a fallback request answers with ``frame``: 200 for an ack, else the error's."""
    if frame["type"] != "error":
        return 200
    return _STATUS.get(frame["code"], 400)


def sse_event(frame: dict[str, Any]) -> str:
    """One server-sent event carrying ``frame`` (JSON has no raw newline, so one data line)."""
    return f"data: {json.dumps(frame, ensure_ascii=False)}\n\n"


SSE_KEEPALIVE = ": keepalive\n\n"
"""A comment line: keeps proxies from closing an idle stream; the browser ignores it."""


def new_client_id() -> str:
    """A client_id as the page makes them (for tests and tools speaking the protocol)."""
    return str(uuid.uuid4())


def thread_key(secret: bytes, visitor: str) -> str:
    """The thread (and sender) a visitor id maps to: ``v`` + 128 bits of HMAC-SHA256 under the
    channel's secret. One way: the stored key cannot be turned back into the id that reads the
    conversation, and ids cannot be enumerated from the database."""
    return "v" + hmac.new(secret, visitor.encode(), hashlib.sha256).hexdigest()[:32]


def valid_thread(thread: str) -> bool:
    """Whether ``thread`` has the shape :func:`thread_key` gives."""
    return THREAD_RE.fullmatch(thread) is not None


def external_id(thread: str, client_id: str) -> str:
    """The journal key of a message: stable across resends of the same client_id."""
    return f"{thread}:{client_id}"


def reply_id(outbox_id: int) -> str:
    """The id of a reply in frames; also the SendResult external id the core stores."""
    return f"web:{outbox_id}"


def history_frame(items: Sequence[HistoryItem], thread: str) -> dict[str, Any]:
    messages = []
    for item in items:
        entry: dict[str, Any] = {"direction": item.direction, "text": item.text}
        prefix = f"{thread}:"
        if item.direction == "in" and item.external_id and item.external_id.startswith(prefix):
            entry["client_id"] = item.external_id[len(prefix) :]
        entry["id"] = message_ref(item.message_id)
        messages.append(entry)
    return {"type": "history", "messages": messages}


def message_ref(message_id: int) -> str:
    """The id of a stored message in frames: the same in history and in a live reply."""
    return f"m:{message_id}"


def reply_frame(outbound_id: str, text: str) -> dict[str, Any]:
    return {"type": "reply", "id": outbound_id, "text": text}


def ack_frame(client_id: str, *, duplicate: bool) -> dict[str, Any]:
    return {"type": "ack", "client_id": client_id, "duplicate": duplicate}


def error_frame(
    code: str,
    reason: str,
    *,
    client_id: str | None = None,
    retry: bool = False,
    retry_after: float | None = None,
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "reason": reason, "retry": retry}
    if client_id is not None:
        frame["client_id"] = client_id
    if retry_after is not None:
        frame["retry_after"] = round(retry_after, 3)
    return frame


def rate_limited_frame(client_id: str, wait: float) -> dict[str, Any]:
    return error_frame(
        "rate_limited",
        "too many messages at once; it will be sent in a moment",
        client_id=client_id,
        retry=True,
        retry_after=wait,
    )


# -- origins ------------------------------------------------------------------------------------


def normalize_origin(value: str) -> str:
    """``scheme://host[:port]`` in lower case, or ValueError saying what is wrong."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an origin such as https://www.example.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{value!r} is not an origin: give scheme://host[:port] without a path")
    return f"{parts.scheme}://{parts.netloc}".lower()


def origin_allowed(
    origin: str | None, host: str | None, allowed: Iterable[str], public_url: str | None
) -> bool:
    """Whether a websocket handshake with this ``Origin`` header may proceed (fail closed).

    Allowed: the page's own origin (the Origin's host:port is the request's Host, as when the
    page was served by this gateway, also behind a TLS-terminating proxy that keeps Host), the
    origin of ``public_url``, and the configured ``allowed``. A missing or ``null`` Origin is
    refused: every browser sends one, and cross-site websocket hijacking comes from browsers.
    """
    if not origin or origin == "null":
        return False
    try:
        given = normalize_origin(origin)
    except ValueError:
        return False
    if host and urlsplit(given).netloc == host.strip().lower():
        return True
    if public_url:
        try:
            if given == normalize_origin(_origin_of(public_url)):
                return True
        except ValueError:
            pass
    return given in allowed


def origin_refusal(
    origin: str | None,
    host: str | None,
    allowed: Iterable[str],
    public_url: str | None,
    *,
    channel: str,
    required: bool = True,
) -> str | None:
    """None when a request with this ``Origin`` may proceed, else the reason to answer with a
    403. ``required`` False lets a request without Origin through (a same-origin GET: browsers
    send none; whoever can send one can also read the public widget.js)."""
    if origin is None and not required:
        return None
    if origin_allowed(origin, host, allowed, public_url):
        return None
    if not origin or origin == "null":
        return "a request from a browser page must carry its Origin; this one has none"
    shown = origin[:100]
    return (
        f"this chat may not be used from {shown}: the operator must add it to "
        f"allowed_origins of [channels.{channel}]"
    )


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# -- rate limit ---------------------------------------------------------------------------------


class TokenBucket:
    """``burst`` messages at once, then ``rate`` per second. Time is passed in, so the rule is
    tested without a clock."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """Spend one token and return 0.0, or return the seconds until one is available."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate
