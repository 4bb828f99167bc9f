"""Pure conversions between Twilio's webhook form parameters / REST answers and gateway values.

Twilio posts ``application/x-www-form-urlencoded`` forms (names as published at
twilio.com/docs/messaging/guides/webhook-request, .../track-outbound-message-status,
twilio.com/docs/voice/twiml#request-parameters, .../twiml/record). Every function here takes the
parsed form (``name -> [values]``, as :func:`parse_form` returns it and as the signature check
needs it) and either returns a gateway value or raises :class:`FormError`, a ``ValueError``
whose message is safe to answer with a 400. Nothing else is raised, whatever the input.

Which ids key what
------------------
- an inbound message: ``external_id = MessageSid`` (Twilio re-sends the same SID on a retry);
  ``account = To`` (our number), ``thread_key = sender_id = From`` (the contact's number);
- a call: ``Event(kind="call", event_key=CallSid)``; the call webhook, the dial result and the
  call status callback all merge into it;
- a voicemail: ``Event(kind="voicemail", event_key=RecordingSid)``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import mimetypes
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import parse_qs

import httpx

from gateway.errors import SendError
from gateway.messages import Attachment, Event, Inbound

__all__ = [
    "MAX_BODY_UNITS",
    "MAX_MEDIA",
    "DeliveryUpdate",
    "FormError",
    "MediaItem",
    "Voicemail",
    "attachment_kind",
    "call_event",
    "delivery_update",
    "dial_event",
    "message_matches",
    "message_to_inbound",
    "parse_form",
    "send_error",
    "split_body",
    "transport_error",
    "voicemail",
    "voicemail_event",
]

MAX_MEDIA = 10
"""Twilio attaches at most 10 media items to a message."""
MAX_BODY_UNITS = 1600
"""Twilio refuses a Body longer than 1,600 characters (error 21617)."""
_MAX_FIELDS = 500

Status = Literal["sent", "delivered", "read", "failed"]

# MessageStatus -> the gateway's delivery status; the rest (queued, accepted, scheduled,
# sending, receiving, received) are steps before "sent" or belong to inbound messages.
_STATUS: dict[str, Status] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
}

# The codes a status callback most often carries (twilio.com/docs/api/errors), to make the
# conversation's "delivery failed" event readable without a trip to the docs.
_ERRORS = {
    "21610": "the recipient replied STOP to this sender",
    "30001": "queue overflow",
    "30002": "account suspended",
    "30003": "unreachable destination handset",
    "30004": "message blocked",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "filtered by the carrier as spam",
    "30008": "unknown error",
    "30034": "sender not registered for A2P 10DLC",
}


class FormError(ValueError):
    """A webhook form is malformed or lacks a required parameter (answer 400)."""


@dataclasses.dataclass(frozen=True)
class MediaItem:
    """One MMS attachment as the webhook names it: ``MediaUrl{N}`` and ``MediaContentType{N}``."""

    url: str
    content_type: str | None

    @property
    def attachment(self) -> Attachment:
        """The attachment with its link only (what is stored when the download fails)."""
        return Attachment(
            kind=attachment_kind(self.content_type),
            mime_type=self.content_type,
            filename=_filename(self.url, self.content_type),
            url=self.url,
        )


@dataclasses.dataclass(frozen=True)
class DeliveryUpdate:
    """A message status callback: ``status`` is None for steps the gateway does not track."""

    external_id: str
    status: Status | None
    detail: str | None
    at: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class Voicemail:
    """A recording status callback for a voicemail (``from``/``to`` come from the signed query
    string of the callback URL: Twilio does not send them with this callback)."""

    recording_sid: str
    recording_url: str
    call_sid: str
    status: str
    duration: int | None
    caller: str
    called: str


def parse_form(body: bytes) -> dict[str, list[str]]:
    """A form body as ``name -> values`` (blank values kept: they are signed too)."""
    if not body:
        return {}
    try:
        text = body.decode("utf-8")
        return parse_qs(
            text, keep_blank_values=True, strict_parsing=True, max_num_fields=_MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise FormError("body is not valid form data (application/x-www-form-urlencoded)") from None


def _get(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _require(params: Mapping[str, Sequence[str]], *names: str) -> list[str]:
    found = []
    for name in names:
        value = _get(params, name)
        if not value:
            raise FormError(f"missing required parameter {name}")
        found.append(value)
    return found


def _int(params: Mapping[str, Sequence[str]], name: str) -> int | None:
    value = _get(params, name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise FormError(f"parameter {name} is not a whole number") from None
    if number < 0:
        raise FormError(f"parameter {name} is negative")
    return number


def attachment_kind(
    content_type: str | None,
) -> Literal["image", "audio", "video", "document", "sticker", "other"]:
    major = (content_type or "").split("/", 1)[0].lower()
    if major in ("image", "audio", "video"):
        return major  # type: ignore[return-value]
    if major in ("application", "text"):
        return "document"  # PDFs, vCards (text/vcard), calendar files
    return "other"


def _filename(url: str, content_type: str | None) -> str | None:
    # Twilio gives no file names; the media SID (the URL's last segment) is a stable one.
    sid = url.rstrip("/").rsplit("/", 1)[-1]
    if not sid or len(sid) > 64:
        return None
    extension = mimetypes.guess_extension(content_type or "") if content_type else None
    return sid + (extension or "")


def message_to_inbound(params: Mapping[str, Sequence[str]]) -> tuple[Inbound, list[MediaItem]]:
    """An incoming SMS/MMS webhook as an Inbound (attachments as links) and its media to fetch."""
    sid, sender, to = _require(params, "MessageSid", "From", "To")
    count = _int(params, "NumMedia") or 0
    media = []
    for index in range(min(count, MAX_MEDIA)):
        url = _get(params, f"MediaUrl{index}")
        if url and url.startswith(("https://", "http://")):
            media.append(MediaItem(url, _get(params, f"MediaContentType{index}") or None))
    metadata: dict[str, Any] = {}
    segments = _int(params, "NumSegments")
    if segments is not None:
        metadata["num_segments"] = segments
    service = _get(params, "MessagingServiceSid")
    if service:
        metadata["messaging_service_sid"] = service
    inbound = Inbound(
        account=to,
        external_id=sid,
        thread_key=sender,
        sender_id=sender,
        text=_get(params, "Body") or "",
        attachments=tuple(m.attachment for m in media),
        metadata=metadata,
    )
    return inbound, media


def delivery_update(params: Mapping[str, Sequence[str]]) -> DeliveryUpdate:
    """A message status callback (``MessageStatus``, ``ErrorCode``) for one of our messages."""
    (sid,) = _require(params, "MessageSid")
    raw = (_get(params, "MessageStatus") or _get(params, "SmsStatus") or "").lower()
    if not raw:
        raise FormError("missing required parameter MessageStatus")
    status = _STATUS.get(raw)
    code = _get(params, "ErrorCode") or None
    detail = None
    if code:
        meaning = _ERRORS.get(code)
        detail = f"Twilio error {code}" + (f": {meaning}" if meaning else "")
    elif raw == "canceled":
        detail = "canceled before it was sent"
    return DeliveryUpdate(sid, status, detail, _dlr_time(_get(params, "RawDlrDoneDate")))


def _dlr_time(value: str | None) -> dt.datetime | None:
    # RawDlrDoneDate is the carrier's receipt time as YYMMDDhhmm (UTC), on "delivered" only.
    if not value or len(value) != 10 or not value.isdigit():
        return None
    try:
        return dt.datetime.strptime(value, "%y%m%d%H%M").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _call(params: Mapping[str, Sequence[str]], detail: dict[str, Any]) -> Event:
    call_sid, caller, called = _require(params, "CallSid", "From", "To")
    return Event(
        account=called,
        thread_key=caller,
        sender_id=caller,
        kind="call",
        event_key=call_sid,
        detail={k: v for k, v in detail.items() if v is not None},
        sender_name=_get(params, "CallerName") or None,
    )


def call_event(
    params: Mapping[str, Sequence[str]], *, now: dt.datetime, callback: bool = False
) -> Event:
    """A call log entry: from the call webhook (``callback=False``: the call is ringing, so it
    gets a ``start``) or from a call status callback (the ``status`` so far, ``duration`` in
    seconds and ``end`` once it is over). Both merge into one event through the CallSid."""
    (status,) = _require(params, "CallStatus")
    status = status.lower()
    detail: dict[str, Any] = {
        "from": _get(params, "From"),
        "to": _get(params, "To"),
        "status": status,
        "direction": _get(params, "Direction") or None,
        "duration": _int(params, "CallDuration"),
    }
    if not callback:
        detail["start"] = now.isoformat()
    elif status in _CALL_OVER:
        detail["end"] = (_rfc2822(_get(params, "Timestamp")) or now).isoformat()
    return _call(params, detail)


_CALL_OVER = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


def dial_event(params: Mapping[str, Sequence[str]]) -> Event:
    """The result of forwarding the call (``<Dial action>``), merged into the call log."""
    (status,) = _require(params, "DialCallStatus")
    return _call(
        params,
        {"forward_status": status.lower(), "forward_duration": _int(params, "DialCallDuration")},
    )


def _rfc2822(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def voicemail(params: Mapping[str, Sequence[str]], query: Mapping[str, Sequence[str]]) -> Voicemail:
    """A recording status callback; ``query`` is the callback URL's own query (from, to)."""
    sid, url, call_sid = _require(params, "RecordingSid", "RecordingUrl", "CallSid")
    if not url.startswith(("https://", "http://")):
        raise FormError("RecordingUrl is not an http(s) URL")
    caller, called = _get(query, "from"), _get(query, "to")
    if not caller or not called:
        raise FormError("the callback URL lacks from/to (use the URL the gateway's TwiML gives)")
    status = (_get(params, "RecordingStatus") or "completed").lower()
    return Voicemail(sid, url, call_sid, status, _int(params, "RecordingDuration"), caller, called)


def voicemail_event(mail: Voicemail, audio: Attachment) -> Event:
    return Event(
        account=mail.called,
        thread_key=mail.caller,
        sender_id=mail.caller,
        kind="voicemail",
        event_key=mail.recording_sid,
        detail={"call_sid": mail.call_sid, "duration": mail.duration},
        attachments=(audio,),
        category="voicemail",
    )


# -- sending ----------------------------------------------------------------------------------


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_body(text: str, limit: int = MAX_BODY_UNITS) -> list[str]:
    """Split ``text`` into bodies Twilio accepts (``limit`` UTF-16 units each, counted as
    Twilio counts them), at the last whitespace before the limit when there is one."""
    parts: list[str] = []
    rest = text
    while _units(rest) > limit:
        cut = 0
        units = 0
        for index, char in enumerate(rest):
            units += _units(char)
            if units > limit:
                cut = index
                break
        space = max(rest.rfind(" ", 0, cut + 1), rest.rfind("\n", 0, cut + 1))
        if space > cut // 2:
            cut = space
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not parts:
        parts.append(rest)
    return parts


def message_matches(
    message: Mapping[str, Any],
    *,
    to: str,
    sender: str | None,
    service: str | None,
    body: str,
    since: dt.datetime,
) -> bool:
    """Is ``message`` (a Message resource from the list API) the one an earlier attempt of
    ours created? Same recipient, sender (number or service) and body, created after the
    attempt began (one minute of clock skew allowed)."""
    if message.get("to") != to or message.get("body") != body:
        return False
    if str(message.get("direction", "")).startswith("inbound"):
        return False
    if sender is not None and message.get("from") != sender:
        return False
    if service is not None and message.get("messaging_service_sid") != service:
        return False
    created = _rfc2822(
        message.get("date_created") if isinstance(message.get("date_created"), str) else None
    )
    return created is not None and created >= since - dt.timedelta(minutes=1)


_PERMANENT = {
    "20003": "Twilio rejected the account SID or auth token; check the channel's credentials",
    "21211": "the recipient's number is not a valid phone number",
    "21408": "sending to this country is not enabled; enable it under Messaging > Settings > "
    "Geo permissions in the Twilio Console",
    "21606": "the sender number cannot send messages; check from_number",
    "21610": "the recipient replied STOP to this sender and Twilio refuses further messages "
    "until they reply START",
    "21612": "Twilio cannot route a message to this number",
    "21614": "the recipient's number is not a mobile number that can receive SMS",
}


def send_error(status: int, body: Any, retry_after: str | None = None) -> SendError:
    """Map a refused Messages create (HTTP ``status``, Twilio's JSON error ``body``) to the
    SendError the dispatcher understands: 429 waits, other 4xx are permanent (the same request
    cannot succeed), 5xx are transient."""
    data = body if isinstance(body, Mapping) else {}
    code = str(data.get("code") or "")
    message = str(data.get("message") or f"HTTP {status}")[:300]
    if status == 429 or code == "20429":
        try:
            wait = float(retry_after) if retry_after else 1.0
        except ValueError:
            wait = 1.0
        return SendError(
            f"Twilio asks us to slow down (HTTP 429): retry after {wait:g} s",
            retry_after=max(wait, 0.0),
        )
    if 400 <= status < 500:
        reason = _PERMANENT.get(code, f"Twilio refused the message: {message}")
        return SendError(f"{reason} (Twilio error {code or status})", permanent=True)
    return SendError(f"Twilio error HTTP {status} ({message}); will retry")


# Errors raised before the request left this machine: resending cannot duplicate the message.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def transport_error(exc: httpx.HTTPError) -> SendError:
    """A network failure of a Messages create: connect failures are transient, anything after
    the request may have reached Twilio (a read timeout, a lost answer) is ``uncertain``."""
    if isinstance(exc, _NOT_SENT):
        return SendError(f"Twilio unreachable, message not sent ({type(exc).__name__})")
    return SendError(
        f"no answer from Twilio ({type(exc).__name__}); the message may have been sent",
        uncertain=True,
    )
