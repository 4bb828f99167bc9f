"""Pure conversions from Meta's messaging webhooks (Messenger and Instagram) to gateway values.

A webhook body is ``{"object": "page" | "instagram", "entry": [{"id": ACCOUNT, "time": ms,
"messaging": [EVENT, ...]}]}``; each EVENT has ``sender.id``, ``recipient.id``, ``timestamp``
(milliseconds) and one payload key. :func:`parse_webhook` sorts the events:

- ``message`` from a user -> an :class:`~gateway.messages.Inbound` keyed by ``message.mid``
  (Meta re-sends the same mid on a retry, so the journal dedupes). Text, quick replies
  (``quick_reply.payload`` in metadata; a payload that is an opt-out/opt-in word becomes the
  text), attachments (image/audio/video/file carry ``payload.url`` for the plugin to download),
  Instagram story mentions, shares, reels and unsupported media (link-only attachments of kind
  ``"other"``: never downloaded, Meta's policy forbids storing story media) and story replies
  (``metadata["story_reply"]``).
- ``postback`` (a button or ice breaker) -> an Inbound whose text is the button title, or the
  payload when that is an opt-out/opt-in word; keyed by ``postback.mid`` when Meta sends one.
- ``delivery`` (``mids`` and/or ``watermark``) and ``read`` (Messenger: ``watermark``; Instagram:
  ``mid``) -> a :class:`StatusUpdate` for messages the account sent.
- ignored, with a reason for the debug log: echoes (``is_echo``, or a sender that is the account
  itself: what the Page sent must never come back as a user message), deleted messages
  (``is_deleted``), Meta's self-test (``is_self``), reactions, referrals, opt-ins, handover and
  policy events, edits, events for another account, ``standby`` (another app owns the thread).

Anything else about the shape raises :class:`MalformedWebhook` (the route answers 400); nothing
else is raised, whatever the input.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, Literal

from gateway.messages import Attachment, Inbound

__all__ = [
    "OBJECT_TYPES",
    "MalformedWebhook",
    "Platform",
    "StatusUpdate",
    "WebhookBatch",
    "event_to_item",
    "millis_to_datetime",
    "parse_webhook",
]

Platform = Literal["messenger", "instagram"]
OBJECT_TYPES: dict[str, str] = {"messenger": "page", "instagram": "instagram"}

# Media Meta hosts for the receiving account: downloaded into Attachment.data by the plugin.
_MEDIA_KINDS: dict[str, Literal["image", "audio", "video", "document"]] = {
    "image": "image",
    "audio": "audio",
    "video": "video",
    "file": "document",
}
# Events that carry no user message and need nothing from us.
_IGNORED_EVENTS = (
    "reaction",
    "optin",
    "referral",
    "account_linking",
    "policy_enforcement",
    "pass_thread_control",
    "take_thread_control",
    "request_thread_control",
    "app_roles",
    "message_edit",
    "game_play",
    "messaging_feedback",
    "checkout_update",
    "payment",
)


class MalformedWebhook(ValueError):
    """The body is not a Meta messaging webhook; the message is safe to answer with a 400."""


@dataclasses.dataclass(frozen=True)
class StatusUpdate:
    """A delivery or read receipt for messages the account sent to ``thread_key``.

    ``mids`` names messages explicitly; ``watermark`` means "everything sent at or before this
    instant" (Messenger sends one or both; an Instagram read names the last message seen).
    """

    thread_key: str
    status: Literal["delivered", "read"]
    mids: tuple[str, ...] = ()
    watermark: dt.datetime | None = None


@dataclasses.dataclass
class WebhookBatch:
    inbounds: list[Inbound] = dataclasses.field(default_factory=list)
    statuses: list[StatusUpdate] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    """Why events were left out, for a debug log (no message content)."""


def parse_webhook(
    body: Mapping[str, Any],
    *,
    platform: Platform,
    account: str,
    is_keyword: Callable[[str], bool] = lambda _: False,
) -> WebhookBatch:
    """Sort a webhook body for ``account`` (a Page id, an Instagram account id) into inbound
    messages, delivery statuses and ignored events, in the order Meta sent them.

    ``is_keyword(payload)`` says whether a postback or quick-reply payload is an opt-out/opt-in
    word (the core matches words on ``Inbound.text``). Raises only :class:`MalformedWebhook`.
    """
    expected = OBJECT_TYPES[platform]
    found = body.get("object")
    if found != expected:
        raise MalformedWebhook(
            f"object is {str(found)[:40]!r}; this {platform} channel takes {expected!r} webhooks "
            "(check which product's webhook points at this URL)"
        )
    entries = body.get("entry")
    if not isinstance(entries, list):
        raise MalformedWebhook("entry is missing or not a list")
    batch = WebhookBatch()
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise MalformedWebhook("an entry is not an object")
        entry_id = _id_of(entry)
        if entry_id != account:
            batch.ignored.append(f"entry for account {str(entry_id)[:30]}, not {account}")
            continue
        if entry.get("standby"):
            batch.ignored.append("standby events (another app controls the thread)")
        if entry.get("changes"):
            batch.ignored.append("changes (not a messaging event)")
        events = entry.get("messaging", [])
        if not isinstance(events, list):
            raise MalformedWebhook("entry.messaging is not a list")
        for event in events:
            item = event_to_item(event, platform=platform, account=account, is_keyword=is_keyword)
            if isinstance(item, Inbound):
                batch.inbounds.append(item)
            elif isinstance(item, StatusUpdate):
                batch.statuses.append(item)
            else:
                batch.ignored.append(item)
    return batch


def event_to_item(
    event: Any,
    *,
    platform: Platform,
    account: str,
    is_keyword: Callable[[str], bool] = lambda _: False,
) -> Inbound | StatusUpdate | str:
    """One ``messaging[]`` event: an Inbound, a StatusUpdate, or the reason it is ignored."""
    if not isinstance(event, Mapping):
        raise MalformedWebhook("a messaging event is not an object")
    sender = _id_of(event.get("sender"))
    if sender is None:
        raise MalformedWebhook("a messaging event has no sender.id")
    timestamp = event.get("timestamp")
    message = event.get("message")
    if message is not None:
        if not isinstance(message, Mapping):
            raise MalformedWebhook("message is not an object")
        if message.get("is_echo") or sender == account:
            return "echo of a message the account sent"
        return _message(message, sender, account, timestamp, is_keyword)
    if sender == account:
        return "event sent by the account itself"
    if "postback" in event:
        return _postback(event, sender, account, timestamp, is_keyword)
    if "delivery" in event:
        delivery = _object(event, "delivery")
        return StatusUpdate(
            sender, "delivered", _strings(delivery.get("mids")), _watermark(delivery)
        )
    if "read" in event:
        read = _object(event, "read")
        mid = read.get("mid")
        mids = (mid,) if isinstance(mid, str) and mid else ()
        return StatusUpdate(sender, "read", mids, _watermark(read))
    for key in _IGNORED_EVENTS:
        if key in event:
            return f"{key} event"
    keys = ",".join(sorted(str(k)[:20] for k in event if k not in ("sender", "recipient")))
    return f"unknown event ({keys[:80]})"


def millis_to_datetime(value: Any) -> dt.datetime | None:
    """Meta's timestamps are milliseconds since the epoch; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return dt.datetime.fromtimestamp(value / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _message(
    message: Mapping[str, Any],
    sender: str,
    account: str,
    timestamp: Any,
    is_keyword: Callable[[str], bool],
) -> Inbound | str:
    mid = message.get("mid")
    if not isinstance(mid, str) or not mid:
        raise MalformedWebhook("a message has no mid")
    if message.get("is_deleted"):
        return "message deleted by the user"
    if message.get("is_self"):
        return "Meta's self-test message"
    text = message.get("text")
    text = text if isinstance(text, str) else ""
    metadata: dict[str, Any] = {}
    quick_reply = message.get("quick_reply")
    if isinstance(quick_reply, Mapping) and isinstance(quick_reply.get("payload"), str):
        payload = quick_reply["payload"]
        metadata["quick_reply_payload"] = payload
        if is_keyword(payload):
            text = payload
    attachments = []
    raw = message.get("attachments")
    for item in raw if isinstance(raw, list) else ():
        attachment = _attachment(item, metadata)
        if attachment is not None:
            attachments.append(attachment)
    if message.get("is_unsupported"):
        # A GIF, sticker or other media Meta does not pass on: keep the fact, not lose it.
        metadata["unsupported"] = True
        attachments.append(Attachment(kind="other"))
    reply_to = message.get("reply_to")
    if isinstance(reply_to, Mapping):
        if isinstance(reply_to.get("mid"), str):
            metadata["reply_to_external_id"] = reply_to["mid"]
        story = reply_to.get("story")
        if isinstance(story, Mapping):
            metadata["story_reply"] = {
                k: story[k] for k in ("id", "url") if isinstance(story.get(k), str)
            }
    if not text and not attachments:
        return "message with neither text nor attachments"
    return Inbound(
        account=account,
        external_id=mid,
        thread_key=sender,
        sender_id=sender,
        text=text,
        sent_at=millis_to_datetime(timestamp),
        attachments=tuple(attachments),
        metadata=metadata,
    )


def _attachment(item: Any, metadata: dict[str, Any]) -> Attachment | None:
    if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
        return None
    kind = item["type"]
    payload = item.get("payload")
    payload = payload if isinstance(payload, Mapping) else {}
    url = payload.get("url")
    url = url if isinstance(url, str) and url.startswith(("https://", "http://")) else None
    if kind in _MEDIA_KINDS:
        media = "sticker" if payload.get("sticker_id") is not None else _MEDIA_KINDS[kind]
        return Attachment(kind=media, url=url, filename=_filename(url) if kind == "file" else None)
    # Story mentions, shares, reels, posts, fallback links: only where they are, kind "other".
    metadata.setdefault("link_attachments", []).append(kind[:40])
    if kind == "story_mention":
        metadata["story_mention"] = True
    return Attachment(kind="other", url=url)


def _filename(url: str | None) -> str | None:
    if not url:
        return None
    name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return name[:200] or None


def _postback(
    event: Mapping[str, Any],
    sender: str,
    account: str,
    timestamp: Any,
    is_keyword: Callable[[str], bool],
) -> Inbound | str:
    postback = _object(event, "postback")
    title = postback.get("title") if isinstance(postback.get("title"), str) else ""
    payload = postback.get("payload") if isinstance(postback.get("payload"), str) else ""
    text = payload if payload and is_keyword(payload) else (title or payload)
    if not text:
        return "postback with neither title nor payload"
    mid = postback.get("mid")
    if not isinstance(mid, str) or not mid:
        # Before Graph API v11 postbacks had no mid. A retry re-sends the same event, so a hash
        # of it (with its timestamp) keys it the same way every time.
        canonical = json.dumps(
            {"sender": sender, "timestamp": timestamp, "postback": postback},
            sort_keys=True,
            default=str,
        )
        mid = "postback:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]
    return Inbound(
        account=account,
        external_id=mid,
        thread_key=sender,
        sender_id=sender,
        text=text,
        sent_at=millis_to_datetime(timestamp),
        metadata={"postback_payload": payload, "postback_title": title},
    )


def _object(event: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = event.get(key)
    if not isinstance(value, Mapping):
        raise MalformedWebhook(f"{key} is not an object")
    return value


def _watermark(value: Mapping[str, Any]) -> dt.datetime | None:
    return millis_to_datetime(value.get("watermark"))


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str) and v)


def _id_of(value: Any) -> str | None:
    """``{"id": "123"}`` -> "123" (Meta sends ids as strings; numbers are accepted too)."""
    if not isinstance(value, Mapping):
        return None
    raw = value.get("id")
    if isinstance(raw, bool) or not isinstance(raw, str | int) or raw == "":
        return None
    return str(raw)
