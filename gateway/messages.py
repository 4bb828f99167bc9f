"""PUBLIC: the values that flow between platforms, the pipeline and models.

All are frozen dataclasses: a plugin builds them, the core stores and routes them, and nobody
mutates them on the way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Attachment:
    """A file that came with a message or goes out with one.

    ``data`` holds the bytes when the plugin has them; ``url`` names where the platform keeps them
    when it does not. The core seals ``data`` before it reaches the disk.
    """

    kind: Literal["image", "audio", "video", "document", "sticker", "other"]
    mime_type: str | None = None
    filename: str | None = None
    data: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class Inbound:
    """One message from an end user, as a channel plugin hands it to ``ChannelContext.accept``.

    The journal key is ``(channel name, account, external_id)``: a plugin must give the same
    ``external_id`` every time the platform re-delivers the same message (retries, replays, a
    switch between polling and webhooks), and different ids for different messages.

    - ``account``: the platform account that received it (the bot id, the phone number id).
    - ``thread_key``: where a reply goes (a chat id, a visitor id); one thread is one conversation.
    - ``sender_id``: the end user's id on the platform; with the channel it names an identity.
    """

    account: str
    external_id: str
    thread_key: str
    sender_id: str
    text: str
    sender_name: str | None = None
    language: str | None = None
    sent_at: dt.datetime | None = None
    attachments: tuple[Attachment, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outbound:
    """One reply for a channel plugin to send (``Channel.send``).

    ``idempotency_key`` is stable across restarts: a platform that supports idempotent sends
    should be given it. ``outbox_id`` orders messages within a thread.
    """

    outbox_id: int
    idempotency_key: str
    account: str
    thread_key: str
    text: str
    reply_to_external_id: str | None = None
    attachments: tuple[Attachment, ...] = ()
    message_id: int | None = None
    """The stored message this sends (``HistoryItem.message_id`` of the same message)."""
    author: str = "ai"
    """Who wrote it: 'ai', 'fallback', 'notice' (the gateway), 'human' (an operator). Platforms
    with a human-agent allowance (Messenger's HUMAN_AGENT tag) use it for 'human' only."""
    purpose: Literal["reply", "transactional", "notification"] = "reply"
    """'reply' answers the contact's message; 'transactional' confirms what they asked for (an
    opt-out); 'notification' is initiated by us (refused to a contact who opted out)."""
    last_inbound_at: dt.datetime | None = None
    """When the contact last wrote in this thread (None: never), for platforms that only allow
    free-form messages within a window after it (WhatsApp, Messenger: 24 hours)."""


@dataclass(frozen=True)
class Event:
    """Something that happened in a thread that is not a text message: a call, a voicemail.

    Stored as a conversation event (``ChannelContext.record_event``). ``event_key`` is the
    platform's id for it: callbacks that repeat or update the same event (a call ringing, then
    completed) merge their ``detail`` into one row. ``attachments`` (a recording) are sealed and
    kept under retention ``category``.
    """

    account: str
    thread_key: str
    sender_id: str
    kind: str
    event_key: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    sender_name: str | None = None
    attachments: tuple[Attachment, ...] = ()
    category: str = "attachments"


@dataclass(frozen=True)
class SendResult:
    """What a platform answered to a successful send: its id for the message, if it has one."""

    external_id: str | None = None


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation as a model sees it."""

    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class CompletionRequest:
    """What an agent asks of a provider: a system prompt and the recent turns, newest last."""

    system: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    language: str | None = None


@dataclass(frozen=True)
class Completion:
    """A provider's answer. ``text`` is never empty: an empty answer is a ``ProviderError``."""

    text: str
    model: str
    input_tokens: int | None = None
    output_tokens: int | None = None
