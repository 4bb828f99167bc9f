"""Pure conversions between Max Bot API JSON and gateway values (no I/O).

An update (``GET /updates`` lists them, a webhook POST carries one) has an ``update_type`` and a
``timestamp`` in milliseconds. What becomes an :class:`~gateway.messages.Inbound`:

- ``message_created``: a user's message in a dialog or group chat. The text is ``body.text``;
  image, video, audio, file and sticker attachments become :class:`Attachment` values whose
  bytes the channel downloads (:class:`Received.media`); a shared contact, location or link is
  added to the text as one line (details in ``metadata``). The journal key is ``body.mid``.
- ``message_callback``: an inline button was pressed. The text is what the user tapped: the
  button's label, or its payload when that is a command (``/unsubscribe``) so buttons can drive
  commands; both are in ``metadata``. The callback is answered once the press is stored.
- ``bot_started``: the user pressed Start, perhaps through a deep link
  ``https://max.ru/BOT/start/PAYLOAD``: the text is ``/start PAYLOAD`` (or ``/start``), as the
  user would have typed it elsewhere.

Everything else is acknowledged and skipped with a reason: edits (the edited text keeps the
original ``mid``; the journal would call it a retry anyway), removals, the bot's own and other
bots' messages, channel posts, ``bot_stopped``, membership and dialog events.

Thread keys are chat ids (``recipient.chat_id``; a dialog has its own chat id), sender ids are
user ids. Journal keys of presses and starts contain a colon, which no ``mid`` does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, Literal

import httpx

from gateway.errors import SendError
from gateway.messages import Attachment, Inbound

__all__ = [
    "MAX_TEXT",
    "UPDATE_TYPES",
    "MediaRef",
    "Received",
    "api_error_text",
    "message_body",
    "parse_update",
    "sent_message_id",
    "send_error",
    "split_text",
    "transport_error",
]

MAX_TEXT = 4000
"""NewMessageBody.text: at most 4000 characters."""
UPDATE_TYPES = ("message_created", "message_callback", "bot_started")
"""What the channel asks Max for (``types=`` of a poll, ``update_types`` of a subscription)."""

AttachmentKind = Literal["image", "audio", "video", "document", "sticker", "other"]
_MEDIA: dict[str, AttachmentKind] = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "file": "document",
    "sticker": "sticker",
}
_SKIPPED_TYPES = {
    "message_edited": "an edit (the original message was already taken)",
    "message_removed": "a removal",
    "bot_stopped": "the user stopped the bot",
}


@dataclasses.dataclass(frozen=True)
class MediaRef:
    """Where the bytes of one inbound attachment are: a URL Max gave, or for a video the token
    to look its direct links up with (``GET /videos/{token}``)."""

    url: str | None
    video_token: str | None = None
    size: int | None = None


@dataclasses.dataclass(frozen=True)
class Received:
    """One update as an Inbound (attachments without bytes, ``url`` the link Max gave) and,
    index for index with its attachments, where their bytes are; ``callback_id`` of a press."""

    inbound: Inbound
    media: tuple[MediaRef, ...] = ()
    callback_id: str | None = None


def parse_update(update: Mapping[str, Any], *, account: str) -> Received | str:
    """Convert one update received by bot ``account`` (its user id).

    Returns a :class:`Received`, or a short reason (for a debug log) when the update carries no
    user message. Never raises for odd but well-formed JSON objects.
    """
    kind = update.get("update_type")
    if kind == "message_created":
        return _message_created(update, account)
    if kind == "message_callback":
        return _callback(update, account)
    if kind == "bot_started":
        return _bot_started(update, account)
    reason = _SKIPPED_TYPES.get(kind) if isinstance(kind, str) else None
    return f"{str(kind)[:40]}: {reason or 'not a user message'}"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _objects(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def when(millis: Any) -> dt.datetime | None:
    """Max's times are milliseconds since the epoch."""
    value = _int(millis)
    if value is None:
        return None
    try:
        return dt.datetime.fromtimestamp(value / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def user_name(user: Mapping[str, Any]) -> str | None:
    full = " ".join(p for p in (_text(user.get("first_name")), _text(user.get("last_name"))) if p)
    return full or _text(user.get("name")) or _text(user.get("username"))


def _user(value: Any) -> tuple[str, Mapping[str, Any]] | None:
    if not isinstance(value, Mapping) or _int(value.get("user_id")) is None:
        return None
    return str(value["user_id"]), value


def _language(update: Mapping[str, Any]) -> str | None:
    return _text(update.get("user_locale"))


def _message_created(update: Mapping[str, Any], account: str) -> Received | str:
    message = update.get("message")
    if not isinstance(message, Mapping):
        return "message_created without a message"
    body, recipient = message.get("body"), message.get("recipient")
    if not isinstance(body, Mapping) or not isinstance(recipient, Mapping):
        return "message_created without body or recipient"
    mid, chat_id = _text(body.get("mid")), _int(recipient.get("chat_id"))
    sender = _user(message.get("sender"))
    if mid is None or chat_id is None:
        return "message_created without mid or chat_id"
    if sender is None:
        return f"message {mid[:60]} posted on behalf of a channel"
    sender_id, user = sender
    if sender_id == account or user.get("is_bot") is True:
        return f"message {mid[:60]} from a bot"
    if recipient.get("chat_type") == "channel":
        return f"message {mid[:60]} in a channel"
    metadata: dict[str, Any] = {"type": "message", "chat_type": recipient.get("chat_type")}
    lines = [body["text"]] if _text(body.get("text")) else []
    attachments: list[Attachment] = []
    media: list[MediaRef] = []
    for item in _objects(body.get("attachments")):
        found = _attachment(item, metadata)
        if isinstance(found, str):
            lines.append(found)
        elif found is not None:
            attachments.append(found[0])
            media.append(found[1])
    link = message.get("link")
    if isinstance(link, Mapping) and isinstance(link.get("message"), Mapping):
        linked = link["message"]
        if link.get("type") == "reply" and _text(linked.get("mid")):
            metadata["reply_to_external_id"] = linked["mid"]
        elif link.get("type") == "forward":
            metadata["forwarded"] = True
            if not lines and _text(linked.get("text")):
                lines.append(linked["text"])  # a bare forward: what was forwarded is the message
    if not lines and not attachments:
        return f"message {mid[:60]} without text or files"
    return Received(
        Inbound(
            account=account,
            external_id=mid,
            thread_key=str(chat_id),
            sender_id=sender_id,
            text="\n".join(lines),
            sender_name=user_name(user),
            language=_language(update),
            sent_at=when(message.get("timestamp")),
            attachments=tuple(attachments),
            metadata=metadata,
        ),
        tuple(media),
    )


def _attachment(
    item: Mapping[str, Any], metadata: dict[str, Any]
) -> tuple[Attachment, MediaRef] | str | None:
    """A file (with where its bytes are), a line of text (contact, location, link), or None."""
    kind = item.get("type")
    payload = item.get("payload")
    payload = payload if isinstance(payload, Mapping) else {}
    if kind in _MEDIA:
        url = _text(payload.get("url"))
        token = _text(payload.get("token")) if kind == "video" else None
        if url is None and token is None:
            return None
        filename = _text(item.get("filename")) if kind == "file" else None
        size = _int(item.get("size"))
        attachment = Attachment(kind=_MEDIA[str(kind)], filename=filename, url=url)
        return attachment, MediaRef(url, token, size)
    if kind == "location":
        lat, lon = item.get("latitude"), item.get("longitude")
        if isinstance(lat, int | float) and isinstance(lon, int | float):
            metadata["location"] = {"latitude": float(lat), "longitude": float(lon)}
            return f"[location] {float(lat):.6f}, {float(lon):.6f}"
        return None
    if kind == "contact":
        metadata.setdefault("contacts", []).append(dict(payload))
        return render_contact(payload)
    if kind == "share":
        url = _text(payload.get("url"))
        title = _text(item.get("title"))
        return f"[link] {' '.join(p for p in (title, url) if p)}" if url or title else None
    if isinstance(kind, str) and kind not in ("inline_keyboard", "reply_keyboard", "data"):
        metadata.setdefault("unknown_attachments", []).append(kind[:40])
    return None


_VCF_LINE = re.compile(r"^(FN|TEL)[;:]", re.IGNORECASE)


def render_contact(payload: Mapping[str, Any]) -> str:
    """``[contact] Name: +7 900...`` from a contact card's ``max_info`` and/or ``vcf_info``."""
    name = None
    phones: list[str] = []
    info = payload.get("max_info")
    if isinstance(info, Mapping):
        name = user_name(info)
    vcf = payload.get("vcf_info")
    if isinstance(vcf, str):
        for line in vcf.splitlines():
            if not _VCF_LINE.match(line):
                continue
            value = line.split(":", 1)[1].strip() if ":" in line else ""
            if line[:2].upper() == "FN" and value and name is None:
                name = value
            elif line[:3].upper() == "TEL" and value:
                phones.append(value)
    return f"[contact] {name or 'unnamed'}" + (f": {', '.join(phones)}" if phones else "")


def _callback(update: Mapping[str, Any], account: str) -> Received | str:
    callback = update.get("callback")
    if not isinstance(callback, Mapping):
        return "message_callback without a callback"
    callback_id = _text(callback.get("callback_id"))
    presser = _user(callback.get("user"))
    if callback_id is None or presser is None:
        return "message_callback without callback_id or user"
    message = update.get("message")
    recipient = message.get("recipient") if isinstance(message, Mapping) else None
    chat_id = _int(recipient.get("chat_id")) if isinstance(recipient, Mapping) else None
    if chat_id is None:
        # Max sends message = null when the message with the keyboard was deleted: no chat.
        return f"button press {callback_id[:40]} on a deleted message"
    payload = callback.get("payload") if isinstance(callback.get("payload"), str) else None
    label = button_label(message, payload) if isinstance(message, Mapping) else None
    text = payload if payload and payload.startswith("/") else (label or payload)
    if not text:
        return f"button press {callback_id[:40]} without payload or label"
    sender_id, user = presser
    body = message.get("body") if isinstance(message, Mapping) else None
    metadata: dict[str, Any] = {"type": "callback", "payload": payload, "label": label}
    if isinstance(body, Mapping) and _text(body.get("mid")):
        metadata["reply_to_external_id"] = body["mid"]
    stamp = _int(callback.get("timestamp")) or _int(update.get("timestamp")) or 0
    return Received(
        Inbound(
            account=account,
            # The press's own id and time: a redelivered update gives the same key.
            external_id=f"callback:{callback_id}:{stamp}",
            thread_key=str(chat_id),
            sender_id=sender_id,
            text=text,
            sender_name=user_name(user),
            language=_language(update),
            sent_at=when(stamp),
            metadata=metadata,
        ),
        callback_id=callback_id,
    )


def button_label(message: Mapping[str, Any], payload: str | None) -> str | None:
    """The label of the callback button with ``payload`` in the message's inline keyboard."""
    body = message.get("body")
    if payload is None or not isinstance(body, Mapping):
        return None
    for item in _objects(body.get("attachments")):
        keyboard = item.get("payload") if item.get("type") == "inline_keyboard" else None
        rows = keyboard.get("buttons") if isinstance(keyboard, Mapping) else None
        for row in rows if isinstance(rows, list) else []:
            for button in _objects(row):
                if button.get("type") == "callback" and button.get("payload") == payload:
                    return _text(button.get("text"))
    return None


def _bot_started(update: Mapping[str, Any], account: str) -> Received | str:
    chat_id = _int(update.get("chat_id"))
    starter = _user(update.get("user"))
    if chat_id is None or starter is None:
        return "bot_started without chat_id or user"
    sender_id, user = starter
    payload = update.get("payload")
    payload = payload.strip() if isinstance(payload, str) else ""
    stamp = _int(update.get("timestamp")) or 0
    return Received(
        Inbound(
            account=account,
            external_id=f"bot_started:{chat_id}:{sender_id}:{stamp}",
            thread_key=str(chat_id),
            sender_id=sender_id,
            text=f"/start {payload}" if payload else "/start",
            sender_name=user_name(user),
            language=_language(update),
            sent_at=when(stamp),
            metadata={"type": "bot_started", "start_payload": payload or None},
        )
    )


# -- sending ----------------------------------------------------------------------------------


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """``text`` in parts of at most ``limit`` characters, cut after a paragraph, a line or a
    word where there is one in the second half of the part (else mid-word). The whitespace at a
    cut is dropped; no part is empty or only whitespace."""
    parts: list[str] = []
    rest = text.strip()
    while rest:
        if len(rest) <= limit:
            parts.append(rest)
            break
        cut = -1
        for separator in ("\n\n", "\n", " "):
            cut = rest.rfind(separator, limit // 2, limit + 1)
            if cut > 0:
                break
        if cut <= 0:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return [p for p in parts if p]


def message_body(text: str, *, reply_to: str | None = None) -> dict[str, Any]:
    """A NewMessageBody of plain text (no ``format``: a model's ``*`` stays a ``*``), linked as a
    reply to message ``reply_to`` when that is a Max message id."""
    body: dict[str, Any] = {"text": text}
    if reply_to and ":" not in reply_to:  # presses and starts have ids of ours, with a colon
        body["link"] = {"type": "reply", "mid": reply_to}
    return body


def sent_message_id(answer: Any) -> str | None:
    """``message.body.mid`` of a SendMessageResult."""
    message = answer.get("message") if isinstance(answer, Mapping) else None
    body = message.get("body") if isinstance(message, Mapping) else None
    return _text(body.get("mid")) if isinstance(body, Mapping) else None


def api_error_text(body: Any) -> str:
    """Max's error JSON ``{"code": "verify.token", "message": "Invalid access_token"}`` as
    "verify.token: Invalid access_token" (either part may be missing)."""
    if not isinstance(body, Mapping):
        return "no error description in the answer"
    code, message = _text(body.get("code")), _text(body.get("message"))
    if code and message:
        return f"{code}: {message}"
    return code or message or _text(body.get("error")) or "no error description in the answer"


def retry_seconds(header: str | None, default: float = 1.0) -> float:
    """A Retry-After value in seconds (Max may leave it out: then ``default``)."""
    try:
        seconds = float(header) if header is not None else default
    except ValueError:
        return default
    return seconds if 0 <= seconds <= 3600 else default


def send_error(status: int, body: Any, *, retry_after: str | None = None) -> SendError:
    """An HTTP error answer to ``POST /messages`` as the SendError the dispatcher understands:
    429 waits (Retry-After, else 1 s), 5xx is transient, other 4xx permanent with Max's text."""
    detail = api_error_text(body)
    if status == 429:
        seconds = retry_seconds(retry_after)
        return SendError(
            f"Max rate limit ({detail}); retry after {seconds:g} s", retry_after=seconds
        )
    if status >= 500:
        return SendError(f"Max server error {status} ({detail}); will retry")
    if status == 401:
        return SendError(
            f"Max rejected the bot token ({detail}); check the channel's token reference",
            permanent=True,
        )
    return SendError(f"Max refused the message (HTTP {status}): {detail}", permanent=True)


# httpx errors raised before the request left this machine: resending cannot duplicate it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def transport_error(exc: httpx.HTTPError) -> SendError:
    """A network failure: transient if the request never left, else uncertain (Max may have
    delivered it, and a resend would show it twice)."""
    if isinstance(exc, _NOT_SENT):
        return SendError(f"Max unreachable, message not sent ({type(exc).__name__}: {exc})")
    return SendError(
        f"no answer from Max ({type(exc).__name__}); the message may have been delivered",
        uncertain=True,
    )
