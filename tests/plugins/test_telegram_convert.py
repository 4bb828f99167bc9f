"""Telegram Update JSON -> Inbound, and PTB errors -> SendError, on recorded payloads (no I/O)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import telegram
import telegram.error

from gateway.messages import Attachment
from plugins.telegram.convert import bot_id_from_token, send_error, update_to_inbound

PAYLOADS = Path(__file__).parent / "payloads" / "telegram"
ACCOUNT = "6011223344"


def payload(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def test_private_text_message() -> None:
    inbound = update_to_inbound(payload("private_text"), account=ACCOUNT)
    assert inbound is not None
    assert inbound.account == ACCOUNT
    assert inbound.external_id == "318822103:1187"
    assert inbound.thread_key == "318822103"
    assert inbound.sender_id == "318822103"
    assert inbound.sender_name == "Łucja Nowak"
    assert inbound.language == "pl"
    assert inbound.text == "Dzień dobry! Czy sklep jest otwarty w sobotę?"
    assert inbound.sent_at == dt.datetime(2024, 6, 10, 13, 40, tzinfo=dt.UTC)
    assert inbound.attachments == ()
    assert inbound.metadata["chat_type"] == "private"


@pytest.mark.parametrize("date", [-62135596801, 10**12, 1e300, float("nan"), True, "1718026800"])
def test_date_out_of_range_or_not_a_number_keeps_the_message(date: Any) -> None:
    # Hypothesis found "year 0 is out of range": a bad date must not cost the message.
    update = payload("private_text")
    update["message"]["date"] = date
    inbound = update_to_inbound(update, account=ACCOUNT)
    assert inbound is not None and inbound.text.startswith("Dzień dobry")
    assert inbound.sent_at is None


def test_external_id_ignores_update_id() -> None:
    """The same message under another update id (webhook, then polling) must dedupe."""
    first = payload("private_text")
    again = {**first, "update_id": first["update_id"] + 500}
    assert update_to_inbound(first, account=ACCOUNT) == update_to_inbound(again, account=ACCOUNT)


def test_ptb_update_object_converts_like_the_dict() -> None:
    data = payload("private_text")
    update = telegram.Update.de_json(data, None)  # no event loop, no bot needed
    assert update_to_inbound(update, account=ACCOUNT) == update_to_inbound(data, account=ACCOUNT)


def test_command_is_text() -> None:
    inbound = update_to_inbound(payload("start_command"), account=ACCOUNT)
    assert inbound is not None and inbound.text == "/start"
    assert inbound.sender_name == "Łucja"


def test_group_reply_in_forum_topic() -> None:
    inbound = update_to_inbound(payload("group_reply"), account=ACCOUNT)
    assert inbound is not None
    assert inbound.thread_key == "-1001987654321"
    assert inbound.sender_id == "77001234"
    assert inbound.sender_name == "Sam"
    assert inbound.language is None
    assert inbound.metadata["chat_type"] == "supergroup"
    assert inbound.metadata["reply_to_external_id"] == "-1001987654321:5519"
    assert inbound.metadata["message_thread_id"] == 5500


def test_photo_with_caption_keeps_caption_and_largest_size() -> None:
    inbound = update_to_inbound(payload("photo_caption"), account=ACCOUNT)
    assert inbound is not None
    assert inbound.text == "This arrived broken"
    assert inbound.attachments == (Attachment(kind="image", mime_type="image/jpeg"),)
    assert inbound.metadata["file_ids"] == ["AgACAgQAAxkBAAIEm2ZmLarge"]


def test_voice_without_text_is_an_attachment_message() -> None:
    inbound = update_to_inbound(payload("voice"), account=ACCOUNT)
    assert inbound is not None
    assert inbound.text == ""
    assert inbound.attachments == (Attachment(kind="audio", mime_type="audio/ogg"),)


def test_anonymous_admin_speaks_as_the_group() -> None:
    inbound = update_to_inbound(payload("anonymous_admin"), account=ACCOUNT)
    assert inbound is not None
    assert inbound.sender_id == "-1001987654321"
    assert inbound.sender_name == "Support Team"


@pytest.mark.parametrize(
    "name",
    ["edited_message", "callback_query", "channel_post", "new_chat_members", "my_chat_member"],
)
def test_updates_without_a_new_user_message_are_ignored(name: str) -> None:
    assert update_to_inbound(payload(name), account=ACCOUNT) is None


@pytest.mark.parametrize(
    "update",
    [
        {"update_id": 1},
        {"update_id": 1, "message": "not an object"},
        {"update_id": 1, "message": {"message_id": 3, "text": "no chat"}},
        {"update_id": 1, "message": {"chat": {"id": 5, "type": "private"}, "text": "no id"}},
        {"update_id": 1, "message": {"message_id": 3, "chat": {"id": 5}, "text": "no sender"}},
    ],
)
def test_malformed_updates_yield_none_not_errors(update: dict[str, Any]) -> None:
    assert update_to_inbound(update, account=ACCOUNT) is None


def test_bot_id_from_token() -> None:
    assert bot_id_from_token("6011223344:AAH-abc_def") == "6011223344"
    with pytest.raises(ValueError) as excinfo:
        bot_id_from_token("AAH-abc_def-secret-part")
    assert "secret-part" not in str(excinfo.value)


# -- errors ----------------------------------------------------------------------------------


def test_retry_after_maps_to_retry_after_seconds() -> None:
    error = send_error(telegram.error.RetryAfter(7))
    assert error.retry_after == 7.0
    assert not error.permanent and not error.uncertain


@pytest.mark.parametrize(
    "exc",
    [
        telegram.error.Forbidden("Forbidden: bot was blocked by the user"),
        telegram.error.BadRequest("Bad Request: chat not found"),
        telegram.error.ChatMigrated(-1001234),
        telegram.error.InvalidToken("Unauthorized"),
    ],
)
def test_refusals_are_permanent(exc: telegram.error.TelegramError) -> None:
    error = send_error(exc)
    assert error.permanent and error.retry_after is None and not error.uncertain


def test_blocked_message_says_why() -> None:
    error = send_error(telegram.error.Forbidden("Forbidden: bot was blocked by the user"))
    assert "blocked by the user" in str(error)


def _caused(
    exc: telegram.error.TelegramError, cause: BaseException
) -> telegram.error.TelegramError:
    exc.__cause__ = cause
    return exc


def test_read_timeout_is_uncertain() -> None:
    error = send_error(_caused(telegram.error.TimedOut(), httpx.ReadTimeout("read")))
    assert error.uncertain and not error.permanent


def test_lost_answer_is_uncertain() -> None:
    exc = _caused(
        telegram.error.NetworkError("httpx.RemoteProtocolError: Server disconnected"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    )
    assert send_error(exc).uncertain


@pytest.mark.parametrize(
    "exc",
    [
        _caused(telegram.error.TimedOut("Pool timeout"), httpx.PoolTimeout("pool")),
        _caused(telegram.error.TimedOut(), httpx.ConnectTimeout("connect")),
        _caused(telegram.error.NetworkError("httpx.ConnectError"), httpx.ConnectError("refused")),
        telegram.error.NetworkError("Internal Server Error"),
        telegram.error.NetworkError("Bad Gateway"),
    ],
)
def test_not_sent_or_server_errors_are_transient(exc: telegram.error.TelegramError) -> None:
    error = send_error(exc)
    assert not (error.permanent or error.uncertain) and error.retry_after is None
