"""Pure conversions between Telegram Bot API objects and gateway messages (no I/O).

Which updates become an :class:`~gateway.messages.Inbound`
----------------------------------------------------------
Only ``message`` updates: a new message from a user in a private chat or a group. Everything
else converts to ``None`` and is acknowledged without reaching the journal:

- ``edited_message``: an edit is not a new message, and its id is the original's, so the
  journal would treat it as a retry anyway;
- ``channel_post`` / ``edited_channel_post``: posts in a channel the bot administers, not
  conversations with a user;
- ``callback_query``, ``inline_query``, ``my_chat_member``, polls, reactions...: we send no
  buttons or inline results, so these carry no user message;
- service messages (a member joined, a pinned message) and messages with neither text, caption
  nor a file.

The journal key is ``external_id = f"{chat_id}:{message_id}"`` (message ids are unique within a
chat), never the update id: the same message re-delivered as a new update (a webhook retry also
fetched by polling, an offset lost in a crash) then dedupes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import httpx
import telegram
import telegram.error

from gateway.errors import SendError
from gateway.messages import Attachment, Inbound

__all__ = ["bot_id_from_token", "message_to_inbound", "send_error", "update_to_inbound"]

# Media keys of a Telegram Message and the Attachment kind each maps to. ``photo`` is a list of
# sizes (the last is the largest); the others are single objects.
_MEDIA: dict[str, str] = {
    "photo": "image",
    "sticker": "sticker",
    "voice": "audio",
    "audio": "audio",
    "video": "video",
    "video_note": "video",
    "animation": "video",
    "document": "document",
}


def bot_id_from_token(token: str) -> str:
    """The bot's numeric id: the part of a bot token before the colon (Telegram's format)."""
    head, sep, rest = token.partition(":")
    if not (sep and head.isdigit() and rest):
        # Never echo the token itself: this message may reach a log.
        raise ValueError(
            "not a Telegram bot token (expected digits, a colon, then the secret part)"
        )
    return head


def update_to_inbound(
    update: Mapping[str, Any] | telegram.Update, *, account: str
) -> Inbound | None:
    """Convert one Update (the JSON dict, or PTB's ``telegram.Update``) to an Inbound.

    Returns None for updates that carry no new user message (see the module docstring).
    Raises nothing for odd but well-formed updates; a ``message`` missing ``chat`` or
    ``message_id`` (never sent by Telegram) also yields None.
    """
    data: Mapping[str, Any] = update.to_dict() if isinstance(update, telegram.Update) else update
    message = data.get("message")
    if not isinstance(message, Mapping):
        return None
    return message_to_inbound(message, account=account)


def message_to_inbound(message: Mapping[str, Any], *, account: str) -> Inbound | None:
    """Convert a Telegram Message dict received by bot ``account``; None if it is unusable."""
    chat = message.get("chat")
    message_id = message.get("message_id")
    if not isinstance(chat, Mapping) or "id" not in chat or message_id is None:
        return None
    sender = message.get("from")
    sender_chat = message.get("sender_chat")
    if isinstance(sender_chat, Mapping) and "id" in sender_chat:
        # Sent on behalf of a chat (an anonymous group admin, a linked channel): "from" then
        # holds a placeholder user (GroupAnonymousBot), so the chat is the sender.
        sender_id = str(sender_chat["id"])
        sender_name = sender_chat.get("title") or sender_chat.get("username")
        language = None
    elif isinstance(sender, Mapping) and "id" in sender:
        sender_id = str(sender["id"])
        sender_name = _full_name(sender)
        language = sender.get("language_code")
    else:
        return None

    text = message.get("text")
    if not isinstance(text, str):
        caption = message.get("caption")
        text = caption if isinstance(caption, str) else ""
    attachments, file_ids = _attachments(message)
    if not text and not attachments:
        return None

    metadata: dict[str, Any] = {"chat_type": chat.get("type")}
    if file_ids:
        # The download URL of a Telegram file contains the bot token, so we keep the file id and
        # let whoever needs the bytes call getFile.
        metadata["file_ids"] = file_ids
    reply_to = message.get("reply_to_message")
    if isinstance(reply_to, Mapping) and "message_id" in reply_to:
        metadata["reply_to_external_id"] = f"{chat['id']}:{reply_to['message_id']}"
    if "message_thread_id" in message:
        metadata["message_thread_id"] = message["message_thread_id"]

    sent_at = _sent_at(message.get("date"))
    return Inbound(
        account=account,
        external_id=f"{chat['id']}:{message_id}",
        thread_key=str(chat["id"]),
        sender_id=sender_id,
        text=text,
        sender_name=sender_name,
        language=language if isinstance(language, str) and language else None,
        sent_at=sent_at,
        attachments=attachments,
        metadata=metadata,
    )


def _full_name(user: Mapping[str, Any]) -> str | None:
    parts = [user.get("first_name"), user.get("last_name")]
    name = " ".join(p for p in parts if isinstance(p, str) and p)
    return name or user.get("username") or None


def _attachments(message: Mapping[str, Any]) -> tuple[tuple[Attachment, ...], list[str]]:
    found: list[Attachment] = []
    file_ids: list[str] = []
    for key, kind in _MEDIA.items():
        media = message.get(key)
        if isinstance(media, list):
            media = media[-1] if media else None
        if not isinstance(media, Mapping):
            continue
        mime = media.get("mime_type")
        if mime is None and key == "photo":
            mime = "image/jpeg"  # Telegram re-encodes every photo as JPEG
        found.append(Attachment(kind=kind, mime_type=mime, filename=media.get("file_name")))  # type: ignore[arg-type]
        if isinstance(media.get("file_id"), str):
            file_ids.append(media["file_id"])
    return tuple(found), file_ids


# httpx errors raised before a request left this machine: resending cannot duplicate it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# httpx errors after the request may have reached Telegram: the answer was lost, not the message.
_MAYBE_SENT = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)


def send_error(exc: telegram.error.TelegramError) -> SendError:
    """Map an error of a Telegram send to the SendError the dispatcher understands.

    - ``RetryAfter`` (HTTP 429, flood control) -> ``retry_after`` seconds;
    - ``Forbidden`` (the user blocked the bot), ``BadRequest`` (chat not found, text too long),
      ``ChatMigrated`` (the group became a supergroup with a new id) and ``InvalidToken`` ->
      permanent: the same request can never succeed;
    - a timeout or a lost answer after the request was written -> ``uncertain``: Telegram may
      have delivered it, and resending would duplicate it (PTB's ``TimedOut`` also covers
      connect and pool timeouts; those never left the machine and are transient);
    - any other network or server error -> transient.
    """
    if isinstance(exc, telegram.error.RetryAfter):
        wait = exc.retry_after  # a timedelta with PTB_TIMEDELTA set (see channel.py), else int
        seconds = wait.total_seconds() if isinstance(wait, dt.timedelta) else float(wait)
        return SendError(f"Telegram flood control: retry after {seconds:g} s", retry_after=seconds)
    if isinstance(exc, telegram.error.ChatMigrated):
        return SendError(
            f"the Telegram group moved to chat id {exc.new_chat_id}; replies to the old id cannot arrive",
            permanent=True,
        )
    if isinstance(exc, telegram.error.Forbidden):
        return SendError(f"Telegram refused the message: {exc.message}", permanent=True)
    if isinstance(exc, telegram.error.BadRequest):
        return SendError(f"Telegram rejected the message: {exc.message}", permanent=True)
    if isinstance(exc, telegram.error.InvalidToken):
        return SendError(
            "Telegram rejected the bot token; check the channel's token reference", permanent=True
        )
    if _caused_by(exc, _NOT_SENT):
        return SendError(f"Telegram unreachable, message not sent: {exc.message}")
    if isinstance(exc, telegram.error.TimedOut) or _caused_by(exc, _MAYBE_SENT):
        return SendError(
            f"no answer from Telegram ({exc.message}); the message may have been delivered",
            uncertain=True,
        )
    return SendError(f"Telegram error, will retry: {exc.message}")


def _caused_by(exc: BaseException, types: tuple[type[BaseException], ...]) -> bool:
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, types):
            return True
        cause = cause.__cause__
    return False


def _sent_at(date: Any) -> dt.datetime | None:
    """Telegram's ``date`` (unix seconds); None when missing or out of datetime's range (a
    malformed update still delivers its text)."""
    if not isinstance(date, int | float) or isinstance(date, bool):
        return None
    try:
        return dt.datetime.fromtimestamp(date, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None
