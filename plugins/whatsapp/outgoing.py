"""Pure conversions for sending (no I/O): Cloud API message bodies, the 24-hour window, and
Graph API errors -> :class:`~gateway.errors.SendError`.

Error codes (Meta's Cloud API error reference; match on ``error.code``, not the HTTP status,
which is 400 for most of them):

- throttling -> ``retry_after``: 4 (app call limit), 80007 (WhatsApp Business Account limit),
  130429 (number throughput, 80 messages/s by default), 131056 (pair rate limit: about one
  message every 6 s to the same user), and HTTP 429 whatever the code;
- 131047 (re-engagement: more than 24 hours since the user last wrote) -> permanent, naming the
  ``window_template`` fix;
- 0/190 (token expired or invalid), 10/200-299 (permission), 131026 (undeliverable),
  131051 (unsupported type), 131030 (not in the test number's allowed list), 131048/131049/368
  (quality and policy blocks), 132xxx (template), 100/131008/131009 (bad request) and any other
  4xx -> permanent: the same request can never succeed;
- 1, 2, 131000, 131016 (temporary server trouble), 131057 (number in maintenance) and 5xx ->
  transient;
- connect errors -> transient (nothing left this machine); a read timeout or a lost answer
  after the request was written -> ``uncertain`` (Meta may have delivered it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import httpx

from gateway.errors import SendError

__all__ = [
    "MAX_TEXT",
    "WINDOW",
    "graph_error",
    "media_message",
    "message_id",
    "send_error",
    "template_message",
    "text_message",
    "transport_error",
    "within_window",
]

WINDOW = dt.timedelta(hours=24)
"""The customer-service window: free-form messages only this long after the user's last one."""
MAX_TEXT = 4096
"""Longest text body the Cloud API accepts."""
MAX_CAPTION = 1024

RATE_LIMITS: dict[int, float] = {4: 60.0, 80007: 60.0, 130429: 1.0, 131056: 6.0}
"""Throttling codes and how long to wait when Meta sends no Retry-After."""
TRANSIENT = frozenset({1, 2, 131000, 131016, 131057})
AUTH = frozenset({0, 190})
REENGAGEMENT = 131047


def within_window(last_inbound_at: dt.datetime | None, now: dt.datetime) -> bool:
    """Whether free-form messages are allowed: the user wrote less than 24 hours ago."""
    if last_inbound_at is None:
        return False
    if last_inbound_at.tzinfo is None:
        last_inbound_at = last_inbound_at.replace(tzinfo=dt.UTC)
    return now - last_inbound_at < WINDOW


def _base(to: str, kind: str, reply_to: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind,
    }
    if reply_to:
        body["context"] = {"message_id": reply_to}
    return body


def text_message(to: str, text: str, *, reply_to: str | None = None) -> dict[str, Any]:
    body = _base(to, "text", reply_to)
    body["text"] = {"body": text, "preview_url": False}
    return body


def media_message(
    to: str,
    kind: str,
    *,
    link: str | None = None,
    media_id: str | None = None,
    caption: str | None = None,
    filename: str | None = None,
    reply_to: str | None = None,
) -> dict[str, Any]:
    """An image/audio/video/document/sticker message by ``link`` (a public URL) or ``media_id``
    (uploaded first). Captions exist for image, video and document only."""
    if (link is None) == (media_id is None):
        raise ValueError("give exactly one of link and media_id")
    content: dict[str, Any] = {"link": link} if link is not None else {"id": media_id}
    if caption and kind in ("image", "video", "document"):
        content["caption"] = caption
    if filename and kind == "document":
        content["filename"] = filename
    body = _base(to, kind, reply_to)
    body[kind] = content
    return body


def template_parameter(text: str) -> str:
    """Template text parameters may not contain newlines, tabs or more than four spaces in a
    row (Meta refuses them): fold all whitespace runs to one space."""
    return " ".join(text.split())


def template_message(
    to: str, name: str, language: str, *, body_text: str | None = None
) -> dict[str, Any]:
    """An approved template; ``body_text`` fills its single body variable ``{{1}}``."""
    template: dict[str, Any] = {"name": name, "language": {"code": language}}
    if body_text is not None:
        template["components"] = [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": template_parameter(body_text)}],
            }
        ]
    body = _base(to, "template", None)
    body["template"] = template
    return body


def message_id(response: Any) -> str | None:
    """The ``wamid`` of a successful send: ``{"messages": [{"id": "wamid..."}]}``."""
    if isinstance(response, Mapping):
        messages = response.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[0], Mapping):
            found = messages[0].get("id")
            if isinstance(found, str) and found:
                return found
    return None


def graph_error(body: Any) -> tuple[int | None, str]:
    """(code, "message: details") of a Graph API error body, or (None, "") if it is not one."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return None, ""
    code = error.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    given = error.get("message")
    message = given if isinstance(given, str) else ""
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, Mapping) else None
    if isinstance(details, str) and details and details not in message:
        message = f"{message}: {details}" if message else details
    return (code if isinstance(code, int) and not isinstance(code, bool) else None), message


def _seconds(header: str | None) -> float | None:
    try:
        value = float(header) if header else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value < 86400 else None


def send_error(
    status: int, body: Any, *, retry_after: str | None = None, where: str = "the channel"
) -> SendError:
    """Map a failed Cloud API call (HTTP ``status``, the parsed ``body``, the ``Retry-After``
    header) to a SendError; ``where`` ("[channels.NAME]") goes into fixes."""
    code, message = graph_error(body)
    said = f"(#{code}) {message}" if code is not None else (message or f"HTTP {status}")
    if code in RATE_LIMITS or status == 429:
        wait = _seconds(retry_after)
        if wait is None:
            wait = RATE_LIMITS.get(code or 0, 1.0)
        kind = (
            "pair rate limit (one message every ~6 s per user)" if code == 131056 else "rate limit"
        )
        return SendError(f"WhatsApp {kind}: {said}; retry after {wait:g} s", retry_after=wait)
    if code == REENGAGEMENT:
        return SendError(
            "WhatsApp refused a free-form message: more than 24 hours have passed since the "
            f"contact last wrote (24-hour customer-service window, {said}). Only an approved "
            f'template can reach them now: set window_template = {{ name = "...", language = '
            f'"en_US" }} in {where}',
            permanent=True,
        )
    if code in AUTH or status == 401:
        return SendError(
            f"WhatsApp rejected the access token ({said}): put a valid system user token with "
            f"the whatsapp_business_messaging permission in {where} access_token",
            permanent=True,
        )
    if code in TRANSIENT or status >= 500:
        return SendError(f"WhatsApp server trouble, will retry: {said}")
    if 400 <= status < 500:
        return SendError(f"WhatsApp refused the message: {said}", permanent=True)
    return SendError(f"unexpected answer from WhatsApp: {said}")


# httpx errors once the request may have reached Meta: the answer was lost, maybe not the message.
_MAYBE_SENT = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)


def transport_error(exc: httpx.HTTPError, *, sent: bool = True) -> SendError:
    """A network failure of a send request. ``sent=False`` for calls that deliver nothing to
    the user (a media upload): those are always safe to repeat."""
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, _MAYBE_SENT) and sent:
        return SendError(
            f"no answer from WhatsApp ({what}); the message may have been delivered",
            uncertain=True,
        )
    return SendError(f"WhatsApp unreachable, message not sent ({what})")
