"""Pure send-side rules of Meta's Send API (Messenger and Instagram): the messaging window, the
request bodies, and Graph API errors mapped to :class:`~gateway.errors.SendError`.

The messaging window (Meta's policy): a free-form message may go only within 24 hours of the
contact's last message (``messaging_type`` RESPONSE, or UPDATE for a message we initiate).
After that, only a reply written by a person may go, tagged ``HUMAN_AGENT``
(``messaging_type`` MESSAGE_TAG), and only within 7 days of the contact's last message.
Everything else is refused here, before any request, with a permanent SendError naming the rule.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import httpx

from gateway.errors import SendError
from gateway.messages import Attachment, Outbound

__all__ = [
    "HUMAN_AGENT_WINDOW",
    "WINDOW",
    "SendRequest",
    "graph_error",
    "messaging_policy",
    "network_error",
    "send_requests",
    "split_text",
]

WINDOW = dt.timedelta(hours=24)
HUMAN_AGENT_WINDOW = dt.timedelta(days=7)

RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80001, 80006})
"""Application, user, Page and Messenger rate limits: wait, then the same request succeeds."""
TRANSIENT_CODES = frozenset({1, 2, 1200})
"""Unknown error, service temporarily unavailable, temporary send message failure."""
DEFAULT_RETRY_AFTER = 60.0
"""Seconds to wait on a rate limit when Meta gives no estimate (its windows are minutes long)."""

# Where a Send API attachment type comes from: Attachment.kind -> Meta's type.
_ATTACHMENT_TYPES = {
    "image": "image",
    "sticker": "image",
    "audio": "audio",
    "video": "video",
    "document": "file",
    "other": "file",
}


@dataclasses.dataclass(frozen=True)
class SendRequest:
    """One Send API call: a JSON body, or form fields plus a file (``filedata``)."""

    what: str
    """What it carries, for error messages ("text", "image attachment")."""
    json: dict[str, Any] | None = None
    form: dict[str, str] | None = None
    file: tuple[str, bytes, str] | None = None
    """(filename, bytes, MIME type) for a multipart upload."""


def messaging_policy(
    outbound: Outbound, now: dt.datetime, *, platform: str, human_agent: bool = True
) -> dict[str, str]:
    """``messaging_type`` (and ``tag``) for ``outbound`` at ``now``, or a permanent SendError.

    ``last_inbound_at`` None means "not known" rather than "never": the message goes as a
    RESPONSE (UPDATE for a notification) and Meta enforces the window itself."""
    last = outbound.last_inbound_at
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=dt.UTC)
    if last is None or now - last <= WINDOW:
        # None: the caller does not know when the contact wrote (the conformance suite, a core
        # without the column). Meta then decides, and its refusal (10/2018278) is permanent too.
        kind = "UPDATE" if outbound.purpose == "notification" else "RESPONSE"
        return {"messaging_type": kind}
    age = now - last
    if age <= HUMAN_AGENT_WINDOW and outbound.author == "human" and human_agent:
        return {"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}
    since = f"the contact last wrote {_ago(age)}"
    if outbound.author == "human" and not human_agent:
        fix = "enable human_agent_tag once Meta granted the app the Human Agent permission"
    elif outbound.author == "human":
        fix = "the 7 days are over too: wait until the contact writes again"
    else:
        fix = "wait until the contact writes again, or have an operator answer within 7 days"
    raise SendError(
        f"not sent: {platform} allows messages only within 24 hours of the contact's last "
        f"message (the 24-hour rule), and {since}. After 24 hours only a reply written by a "
        f"person may go, tagged HUMAN_AGENT, within 7 days of that message; {fix}",
        permanent=True,
    )


def _ago(age: dt.timedelta) -> str:
    hours = age.total_seconds() / 3600
    return f"{hours:.0f} hours ago" if hours < 48 else f"{hours / 24:.0f} days ago"


def split_text(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at a line break or a space where
    possible (Messenger takes 2,000 characters a message, Instagram 1,000)."""
    pieces = []
    rest = text.strip()
    while len(rest) > limit:
        cut = max(rest.rfind("\n", 0, limit + 1), rest.rfind(" ", 0, limit + 1))
        if cut < limit // 2:
            cut = limit
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def send_requests(
    outbound: Outbound,
    policy: Mapping[str, str],
    *,
    platform: str,
    text_limit: int,
    max_media_bytes: int,
    uploads: bool,
    file_attachments: bool = True,
) -> list[SendRequest]:
    """The Send API calls for ``outbound``: its text (split to ``text_limit``), then each
    attachment, by URL (``payload.url``) or, when ``uploads``, as a multipart upload of its
    bytes (``filedata``). Raises a permanent SendError for what the platform cannot take."""
    recipient = {"id": outbound.thread_key}
    requests = [
        SendRequest("text", {"recipient": recipient, **policy, "message": {"text": piece}})
        for piece in split_text(outbound.text, text_limit)
    ]
    for attachment in outbound.attachments:
        requests.append(
            _attachment_request(
                attachment,
                recipient,
                policy,
                platform=platform,
                max_media_bytes=max_media_bytes,
                uploads=uploads,
                file_attachments=file_attachments,
            )
        )
    if not requests:
        raise SendError("not sent: the message has neither text nor attachments", permanent=True)
    return requests


def _attachment_request(
    attachment: Attachment,
    recipient: dict[str, str],
    policy: Mapping[str, str],
    *,
    platform: str,
    max_media_bytes: int,
    uploads: bool,
    file_attachments: bool,
) -> SendRequest:
    kind = _ATTACHMENT_TYPES[attachment.kind]
    what = f"{kind} attachment"
    if kind == "file" and not file_attachments:
        raise SendError(
            f"not sent: {platform} takes images, audio and video only, not a {attachment.kind}",
            permanent=True,
        )
    if attachment.url:
        payload = {"url": attachment.url, "is_reusable": False}
        return SendRequest(
            what,
            {
                "recipient": recipient,
                **policy,
                "message": {"attachment": {"type": kind, "payload": payload}},
            },
        )
    if attachment.data is None:
        raise SendError(f"not sent: the {what} has neither a URL nor bytes", permanent=True)
    if not uploads:
        raise SendError(
            f"not sent: {platform} takes attachments by URL only; give the {what} a public URL",
            permanent=True,
        )
    if len(attachment.data) > max_media_bytes:
        raise SendError(
            f"not sent: the {what} has {len(attachment.data)} bytes, more than max_media_bytes "
            f"({max_media_bytes})",
            permanent=True,
        )
    message = {"attachment": {"type": kind, "payload": {"is_reusable": False}}}
    form = {"recipient": json.dumps(recipient), "message": json.dumps(message), **policy}
    filename = attachment.filename or f"attachment.{kind}"
    mime = attachment.mime_type or "application/octet-stream"
    return SendRequest(what, form=form, file=(filename, attachment.data, mime))


def graph_error(status: int, body: Any, headers: Mapping[str, str], *, platform: str) -> SendError:
    """Map a Graph API error answer (``{"error": {"code", "error_subcode", "message"}}``) to the
    SendError the dispatcher understands:

    - rate limits (codes 4, 17, 32, 613, 80001, 80006, or HTTP 429) -> ``retry_after`` from
      ``Retry-After`` or the usage headers' ``estimated_time_to_regain_access`` (minutes);
    - codes 1, 2, 1200 (temporary failures) and HTTP 5xx -> transient;
    - everything else -> permanent: 551 (the person is not available), 10 and its subcodes
      2018278/2018065/2018108 (outside the messaging window, no permission), 200 (permissions),
      190 (invalid token), 100 (invalid parameter, no matching user), 368 (blocked for policy).
    """
    error = body.get("error") if isinstance(body, Mapping) else None
    error = error if isinstance(error, Mapping) else {}
    code = error.get("code") if isinstance(error.get("code"), int) else None
    subcode = error.get("error_subcode") if isinstance(error.get("error_subcode"), int) else None
    meta_text = str(error.get("message") or f"HTTP {status}")[:300]
    label = (
        f"code {code}" + (f"/{subcode}" if subcode else "")
        if code is not None
        else f"HTTP {status}"
    )
    where = f"{platform} Send API ({label})"
    if code in RATE_LIMIT_CODES or status == 429:
        wait = _retry_after(headers)
        return SendError(
            f"{where} rate limit: {meta_text}; retry after {wait:g} s", retry_after=wait
        )
    if code in TRANSIENT_CODES or (code is None and status >= 500):
        return SendError(f"{where} temporary failure, will retry: {meta_text}")
    hint = _HINTS.get(code or 0, "")
    if code == 10 and subcode in (2018278, 2018065):
        hint = _HINTS[2018278]
    return SendError(f"{where} refused the message: {meta_text}{hint}", permanent=True)


_HINTS = {
    551: " (the person is not available: they blocked the account or left Messenger)",
    2018278: " (outside the messaging window: 24 hours after the contact's last message, or 7 "
    "days for a person's reply tagged HUMAN_AGENT)",
    10: " (the app lacks a permission for this message)",
    200: " (permission missing: the token needs pages_messaging / instagram_manage_messages, "
    "and the app must be approved for it)",
    190: " (the access token is invalid or expired: create a new one and update the secret)",
    100: " (Meta did not accept a parameter, or the recipient id is unknown to this account)",
    368: " (the account is temporarily blocked from sending for policy reasons)",
}


def _retry_after(headers: Mapping[str, str]) -> float:
    value = headers.get("retry-after")
    if value:
        try:
            return max(float(value), 1.0)
        except ValueError:
            pass
    minutes = 0.0
    for name in ("x-business-use-case-usage", "x-app-usage", "x-page-usage"):
        try:
            usage = json.loads(headers.get(name) or "null")
        except ValueError:
            continue
        for found in _regain_minutes(usage):
            minutes = max(minutes, found)
    return minutes * 60 if minutes > 0 else DEFAULT_RETRY_AFTER


def _regain_minutes(usage: Any) -> list[float]:
    """``estimated_time_to_regain_access`` values anywhere in a usage header's JSON."""
    found: list[float] = []
    stack = [usage]
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            minutes = value.get("estimated_time_to_regain_access")
            if isinstance(minutes, int | float) and not isinstance(minutes, bool):
                found.append(float(minutes))
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


# Errors raised before a request left this machine: sending again cannot duplicate it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteTimeout)


def network_error(exc: httpx.HTTPError, *, platform: str) -> SendError:
    """No answer from Meta: transient if the request never left, ``uncertain`` if it may have
    arrived (a read timeout, a dropped connection): resending could send it twice."""
    name = type(exc).__name__
    if isinstance(exc, _NOT_SENT):
        return SendError(f"{platform} Send API unreachable ({name}), message not sent")
    return SendError(
        f"no answer from the {platform} Send API ({name}); the message may have been delivered",
        uncertain=True,
    )
