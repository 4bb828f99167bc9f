"""Pure conversions between WhatsApp Cloud API webhook JSON and gateway values (no I/O).

A webhook notification is ``{"object": "whatsapp_business_account", "entry": [{"id": WABA,
"changes": [{"field": "messages", "value": {...}}]}]}``; each ``value`` names the business number
(``metadata.phone_number_id``) and carries ``contacts[]`` (profile names), ``messages[]`` (from
users), ``statuses[]`` (of messages we sent) and sometimes ``errors[]``.

What becomes an :class:`~gateway.messages.Inbound`
--------------------------------------------------
- ``text``: its body;
- ``image``/``video``/``document``: the caption (or ""), ``audio``/``sticker``: "" -- each with one
  :class:`Attachment` whose bytes the channel downloads (:class:`Received.media`);
- ``location`` and ``contacts``: a one-line text rendering, the details in ``metadata``;
- ``interactive`` replies (``button_reply``, ``list_reply``) and template quick-reply ``button``
  messages: the label the user tapped as text, the button/row id or payload in ``metadata``
  (a button labelled "Unsubscribe" or "STOP" therefore opts out like the typed word);
- ``unsupported`` (polls, view-once media...; Meta's error 131051/131060): an empty text with the
  type in ``metadata``, so the agent answers with its ``non_text_reply`` ("I can only read
  text") as for a sticker, instead of the user hearing nothing.

Ignored (acknowledged, logged at debug): reactions (a thumbs-up is not a message to answer),
``system`` notices, orders and unknown types, other ``field`` values (template status updates),
and anything addressed to another business number: one Meta app may serve several numbers.

The journal key is the message id (``wamid...``), unique across WhatsApp: Meta re-delivers a
notification for days until it gets a 2xx, and the same id then dedupes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

from gateway.messages import Attachment, Inbound

__all__ = [
    "DeliveryStatus",
    "MediaRef",
    "Notification",
    "NotANotification",
    "OtherProduct",
    "Received",
    "parse_notification",
]

OBJECT = "whatsapp_business_account"
AttachmentKind = Literal["image", "audio", "video", "document", "sticker", "other"]
_MEDIA_TYPES: dict[str, AttachmentKind] = {
    "image": "image",
    "audio": "audio",
    "video": "video",
    "document": "document",
    "sticker": "sticker",
}
_STATUSES = ("sent", "delivered", "read", "failed")


class NotANotification(ValueError):
    """The body is JSON but not a Meta webhook notification (no ``object``/``entry[]``)."""


class OtherProduct(NotANotification):
    """A real Meta notification for another product (``object`` is "page", "instagram"...):
    the app's webhook for that product points at this URL."""

    def __init__(self, obj: str) -> None:
        super().__init__(f"notification for object {obj!r}, not {OBJECT!r}")
        self.object = obj


@dataclasses.dataclass(frozen=True)
class MediaRef:
    """A file of an inbound message, kept by Meta under ``media_id``."""

    media_id: str
    sha256: str | None


@dataclasses.dataclass(frozen=True)
class Received:
    """One user message: the Inbound (attachments without bytes, ``url`` naming the Graph media
    object) and, index for index with its attachments, where their bytes are."""

    inbound: Inbound
    media: tuple[MediaRef, ...] = ()


@dataclasses.dataclass(frozen=True)
class DeliveryStatus:
    """A status callback for a message we sent."""

    message_id: str
    status: Literal["sent", "delivered", "read", "failed"]
    at: dt.datetime | None
    detail: str | None


@dataclasses.dataclass(frozen=True)
class Notification:
    received: tuple[Received, ...] = ()
    statuses: tuple[DeliveryStatus, ...] = ()
    skipped: tuple[str, ...] = ()
    """Why parts were ignored (for a debug log): "reaction wamid.X", "field ..."."""
    errors: tuple[str, ...] = ()
    """Errors Meta reported without a message (``value.errors``), for a warning log."""


def parse_notification(
    body: Mapping[str, Any], *, phone_number_id: str, media_url: Callable[[str], str]
) -> Notification:
    """Everything in one webhook body addressed to ``phone_number_id``, in order.

    ``media_url(media_id)`` names a media object (the Graph URL, never containing a token); it
    becomes ``Attachment.url``. Raises :class:`OtherProduct` for another Meta product's
    notification and :class:`NotANotification` for JSON of any other shape; any odd part of a
    well-formed notification is skipped (and named in ``skipped``), never raised.
    """
    obj = body.get("object")
    entries = body.get("entry")
    if not isinstance(obj, str) or not isinstance(entries, list):
        raise NotANotification("not a Meta webhook notification (needs 'object' and 'entry')")
    if obj != OBJECT:
        raise OtherProduct(obj)
    received: list[Received] = []
    statuses: list[DeliveryStatus] = []
    skipped: list[str] = []
    errors: list[str] = []
    for entry in entries:
        changes = entry.get("changes") if isinstance(entry, Mapping) else None
        if not isinstance(changes, list):
            skipped.append("entry without changes")
            continue
        for change in changes:
            if not isinstance(change, Mapping):
                skipped.append("change that is not an object")
                continue
            value = change.get("value")
            if change.get("field") != "messages" or not isinstance(value, Mapping):
                skipped.append(f"field {str(change.get('field'))[:40]!r}")
                continue
            metadata = value.get("metadata")
            number = metadata.get("phone_number_id") if isinstance(metadata, Mapping) else None
            if str(number) != phone_number_id:
                skipped.append(f"business number {str(number)[:40]!r} is not ours")
                continue
            names = _profile_names(value.get("contacts"))
            for message in _objects(value.get("messages")):
                item = _message(message, phone_number_id, names, media_url)
                if isinstance(item, Received):
                    received.append(item)
                else:
                    skipped.append(item)
            for status in _objects(value.get("statuses")):
                parsed = _status(status)
                if isinstance(parsed, DeliveryStatus):
                    statuses.append(parsed)
                else:
                    skipped.append(parsed)
            errors.extend(describe_error(e) for e in _objects(value.get("errors")))
    return Notification(tuple(received), tuple(statuses), tuple(skipped), tuple(errors))


def _objects(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _profile_names(contacts: Any) -> dict[str, str]:
    names = {}
    for contact in _objects(contacts):
        profile = contact.get("profile")
        name = _text(profile.get("name")) if isinstance(profile, Mapping) else None
        wa_id = contact.get("wa_id")
        if name and isinstance(wa_id, str | int):
            names[str(wa_id)] = name
    return names


def timestamp(value: Any) -> dt.datetime | None:
    """Meta's timestamps are unix seconds as strings ("1739321024")."""
    try:
        seconds = int(value)
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _message(
    message: Mapping[str, Any],
    account: str,
    names: Mapping[str, str],
    media_url: Callable[[str], str],
) -> Received | str:
    message_id = _text(message.get("id"))
    sender = message.get("from")
    kind = message.get("type")
    if not message_id or not isinstance(sender, str | int) or not str(sender):
        return "message without id or sender"
    sender = str(sender)
    label = f"{str(kind)[:20]} {message_id[:80]}"
    metadata: dict[str, Any] = {"type": kind}
    context = message.get("context")
    if isinstance(context, Mapping):
        if _text(context.get("id")):
            metadata["reply_to_external_id"] = context["id"]
        if context.get("forwarded") or context.get("frequently_forwarded"):
            metadata["forwarded"] = True
    content = message.get(kind) if isinstance(kind, str) else None
    attachments: tuple[Attachment, ...] = ()
    media: tuple[MediaRef, ...] = ()
    if kind == "text" and isinstance(content, Mapping) and isinstance(content.get("body"), str):
        text = content["body"]
    elif kind in _MEDIA_TYPES and isinstance(content, Mapping) and _text(content.get("id")):
        text = _text(content.get("caption")) or ""
        media_id = str(content["id"])
        mime = _text(content.get("mime_type"))
        attachments = (
            Attachment(
                kind=_MEDIA_TYPES[kind],
                mime_type=mime.split(";")[0].strip() if mime else None,
                filename=_text(content.get("filename")),
                url=media_url(media_id),
            ),
        )
        media = (MediaRef(media_id, _text(content.get("sha256"))),)
        metadata["media_ids"] = [media_id]
        if content.get("voice") is True:
            metadata["voice"] = True
    elif kind == "location" and isinstance(content, Mapping):
        text, metadata["location"] = _location(content)
    elif kind == "contacts" and isinstance(content, list):
        text = render_contacts(content)
        metadata["contact_count"] = len(content)
    elif kind == "interactive" and isinstance(content, Mapping):
        reply = _interactive(content)
        if reply is None:
            return f"interactive reply of unknown shape {label}"
        text, metadata["interactive"] = reply
    elif kind == "button" and isinstance(content, Mapping) and _text(content.get("text")):
        text = content["text"]
        metadata["button_payload"] = content.get("payload")
    elif kind == "unsupported":
        text = ""
        detail = content.get("type") if isinstance(content, Mapping) else None
        metadata["unsupported_type"] = detail if isinstance(detail, str) else None
        codes = [e.get("code") for e in _objects(message.get("errors"))]
        metadata["error_codes"] = [c for c in codes if isinstance(c, int)]
    else:
        # reaction, system, order, request_welcome, ephemeral, a known type with a broken body
        return label
    return Received(
        Inbound(
            account=account,
            external_id=message_id,
            thread_key=sender,
            sender_id=sender,
            text=text,
            sender_name=names.get(sender),
            sent_at=timestamp(message.get("timestamp")),
            attachments=attachments,
            metadata=metadata,
        ),
        media,
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _location(content: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    lat, lon = _number(content.get("latitude")), _number(content.get("longitude"))
    name, address, url = (_text(content.get(k)) for k in ("name", "address", "url"))
    parts = [p for p in (name, address) if p]
    if lat is not None and lon is not None:
        parts.append(f"{lat:.6f}, {lon:.6f}")
    if url:
        parts.append(url)
    details = {"latitude": lat, "longitude": lon, "name": name, "address": address, "url": url}
    return "[location] " + (" | ".join(parts) or "shared without details"), details


def render_contacts(cards: Sequence[Any]) -> str:
    """``[contact] Name: +1 555..., mail@example.com`` per shared contact card, one per line."""
    lines = []
    for card in cards:
        if not isinstance(card, Mapping):
            continue
        name_obj = card.get("name")
        name = None
        if isinstance(name_obj, Mapping):
            name = _text(name_obj.get("formatted_name")) or " ".join(
                p
                for p in (_text(name_obj.get("first_name")), _text(name_obj.get("last_name")))
                if p
            )
        reach = [_text(p.get("phone")) for p in _objects(card.get("phones"))]
        reach += [_text(e.get("email")) for e in _objects(card.get("emails"))]
        found = ", ".join(r for r in reach if r)
        lines.append(f"[contact] {name or 'unnamed'}" + (f": {found}" if found else ""))
    return "\n".join(lines) or "[contact] (empty card)"


def _interactive(content: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    kind = content.get("type")
    if kind in ("button_reply", "list_reply"):
        reply = content.get(kind)
        if isinstance(reply, Mapping) and _text(reply.get("title")):
            info = {"type": kind, "id": reply.get("id")}
            if _text(reply.get("description")):
                info["description"] = reply["description"]
            return reply["title"], info
    if kind == "nfm_reply":  # a WhatsApp Flow was submitted
        reply = content.get(kind)
        if isinstance(reply, Mapping):
            body = _text(reply.get("body")) or "[form submitted]"
            return body, {
                "type": kind,
                "name": reply.get("name"),
                "response": reply.get("response_json"),
            }
    return None


def _status(status: Mapping[str, Any]) -> DeliveryStatus | str:
    message_id = _text(status.get("id"))
    state = status.get("status")
    if not message_id or state not in _STATUSES:
        return f"status {str(state)[:20]!r} for {str(message_id)[:80]}"
    detail = None
    if state == "failed":
        errors = _objects(status.get("errors"))
        detail = describe_error(errors[0]) if errors else "failed without an error from Meta"
    return DeliveryStatus(
        message_id,
        cast(Literal["sent", "delivered", "read", "failed"], state),
        timestamp(status.get("timestamp")),
        detail,
    )


def describe_error(error: Mapping[str, Any]) -> str:
    """``131047 Re-engagement message: Message failed to send because...`` (Meta's error object:
    code, title/message, error_data.details)."""
    code = error.get("code")
    title = _text(error.get("title")) or _text(error.get("message")) or "error"
    data = error.get("error_data")
    details = _text(data.get("details")) if isinstance(data, Mapping) else None
    text = f"{code} {title}" if isinstance(code, int) else title
    return f"{text}: {details}" if details and details != title else text
