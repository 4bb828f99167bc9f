"""Max update JSON -> Inbound, and outgoing bodies / errors, on recorded payloads in the
published format (no I/O), with Hypothesis for the parts that take arbitrary input."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.messages import Attachment
from plugins.max.convert import (
    MAX_TEXT,
    MediaRef,
    Received,
    api_error_text,
    message_body,
    parse_update,
    retry_seconds,
    send_error,
    sent_message_id,
    split_text,
    transport_error,
)

PAYLOADS = Path(__file__).parent / "payloads" / "max"
BOT = "229229229"


def payload(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def received(name: str) -> Received:
    item = parse_update(payload(name), account=BOT)
    assert isinstance(item, Received), item
    return item


def test_text_message_in_a_dialog() -> None:
    inbound = received("message_created_text").inbound
    assert (inbound.account, inbound.thread_key, inbound.sender_id) == (
        BOT,
        "182182182",
        "123456789",
    )
    assert inbound.external_id == "mid.000000000adf429c019d47b1ce4600ff"
    assert inbound.text == "Здравствуйте! Когда будет доставка?"
    assert inbound.sender_name == "John Doe" and inbound.language == "ru"
    assert inbound.sent_at == dt.datetime(2026, 4, 1, 14, 20, 55, 737000, tzinfo=dt.UTC)
    assert inbound.attachments == () and inbound.metadata["chat_type"] == "dialog"


def test_group_chat_thread_is_the_chat() -> None:
    inbound = received("message_created_group").inbound
    assert inbound.thread_key == "-70801090403050" and inbound.sender_id == "123456789"
    assert inbound.language is None and inbound.metadata["chat_type"] == "chat"


def test_image_is_referenced_by_its_link() -> None:
    item = received("message_created_image")
    url = (
        "https://i.oneme.ru/i?r=BTGBPUwtwgYUeoFhO7rESmr8FddYu8EkRnc1BbDFbQm1bcgN8COxyU5BTkp85aDzgF4"
    )
    assert item.inbound.text == "Коробка пришла помятой"
    assert item.inbound.attachments == (Attachment(kind="image", url=url),)
    assert item.media == (MediaRef(url),)


def test_file_keeps_its_name_and_size_and_a_null_text_is_empty() -> None:
    item = received("message_created_file")
    (attachment,) = item.inbound.attachments
    assert (attachment.kind, attachment.filename) == ("document", "invoice-4411.pdf")
    assert item.media[0].size == 48213 and item.inbound.text == ""


def test_video_is_looked_up_by_token_and_audio_by_link() -> None:
    item = received("message_created_video_audio")
    assert [a.kind for a in item.inbound.attachments] == ["video", "audio"]
    assert item.media[0] == MediaRef("https://max.ru/video/9900123", "vid_9900123-AbC")
    assert item.media[1].url == "https://vd.okcdn.ru/audio?id=77120&sig=FakeSig"


def test_reply_and_forward() -> None:
    reply = received("message_created_reply").inbound
    assert reply.metadata["reply_to_external_id"] == "mid.000000000adf429c019d47d58f2b3d9e"
    forward = received("message_created_forward").inbound
    assert forward.text == "Лада седан - баклажан" and forward.metadata["forwarded"] is True


def test_contact_location_and_link_become_lines_of_text() -> None:
    inbound = received("message_created_contact_location").inbound
    assert inbound.text.splitlines() == [
        "Мой адрес и контакт",
        "[contact] Ivan Petrov: +79001234567",
        "[location] 55.751244, 37.618423",
        "[link] Order 4411 https://example.ru/order/4411",
    ]
    assert inbound.metadata["location"] == {"latitude": 55.751244, "longitude": 37.618423}
    assert inbound.attachments == ()


def test_button_press_is_the_label_the_user_tapped() -> None:
    item = received("message_callback")
    inbound = item.inbound
    assert inbound.text == "🖼 Send a picture"
    assert inbound.metadata["payload"] == "picture"
    assert inbound.thread_key == "182182182" and inbound.sender_id == "123456789"
    assert item.callback_id is not None and item.callback_id.startswith("f9LHodD0cOJf4_")
    assert inbound.external_id == f"callback:{item.callback_id}:1775026702210"
    # The press answers the bot's message: a reply would quote it.
    assert inbound.metadata["reply_to_external_id"] == "mid.000000000adf429c019d47d58f2b3d9e"


def test_a_command_payload_is_the_text_so_buttons_can_unsubscribe() -> None:
    inbound = received("message_callback_command").inbound
    assert inbound.text == "/unsubscribe" and inbound.metadata["label"] == "Unsubscribe"


def test_bot_started_with_a_deep_link_payload_is_a_start_command() -> None:
    inbound = received("bot_started_payload").inbound
    assert inbound.text == "/start acme-newsletter"
    assert (inbound.thread_key, inbound.sender_id) == ("1234567890", "1234567890")
    assert inbound.metadata == {"type": "bot_started", "start_payload": "acme-newsletter"}
    assert inbound.external_id == "bot_started:1234567890:1234567890:1573226679188"
    plain = received("bot_started").inbound
    assert plain.text == "/start" and plain.metadata["start_payload"] is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("message_edited", "an edit"),
        ("bot_stopped", "stopped the bot"),
        ("message_created_from_bot", "from a bot"),
        ("message_callback_deleted", "deleted message"),
    ],
)
def test_skipped_updates_say_why(name: str, reason: str) -> None:
    result = parse_update(payload(name), account=BOT)
    assert isinstance(result, str) and reason in result


def test_the_bots_own_message_is_skipped_even_without_is_bot() -> None:
    update = payload("message_created_text")
    update["message"]["sender"]["user_id"] = int(BOT)
    update["message"]["sender"]["is_bot"] = False
    assert "from a bot" in str(parse_update(update, account=BOT))


def test_updates_list_converts_each() -> None:
    body = payload("updates")
    results = [parse_update(u, account=BOT) for u in body["updates"]]
    assert [type(r).__name__ for r in results] == ["Received", "Received", "str", "Received"]
    assert isinstance(body["marker"], int)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(["message", "callback", "body", "recipient", "sender", "attachments"])


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["message_created", "message_callback", "bot_started", "x", None]),
    fields=st.dictionaries(KEYS | st.text(max_size=8), JSON, max_size=6),
)
def test_any_json_object_converts_or_is_skipped_never_raises(
    kind: Any, fields: dict[str, Any]
) -> None:
    result = parse_update({**fields, "update_type": kind}, account=BOT)
    assert isinstance(result, Received | str)


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(["message_created_text", "message_callback", "bot_started"]),
    data=st.data(),
)
def test_mutated_recorded_updates_never_raise(name: str, data: st.DataObject) -> None:
    update = payload(name)
    target = update.get("message") or update
    key = data.draw(st.sampled_from(sorted(target)))
    target[key] = data.draw(JSON)
    result = parse_update(update, account=BOT)
    if isinstance(result, Received):
        assert result.inbound.thread_key.lstrip("-").isdigit()
        assert len(result.media) == len(result.inbound.attachments)


# -- sending ------------------------------------------------------------------------------------


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(st.sampled_from("ab \n\t.ё😀"), max_size=400),
    limit=st.integers(min_value=2, max_value=60),
)
def test_split_keeps_every_character_in_order_within_the_limit(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert all(0 < len(p) <= limit and p.strip() == p for p in parts)
    assert _squeezed("".join(parts)) == _squeezed(text)
    position = 0
    for part in parts:  # each part is a slice of the text, in order
        found = text.find(part, position)
        assert found >= position
        position = found + len(part)


def test_split_prefers_paragraphs_then_lines_then_words() -> None:
    para = "a" * 3000
    assert split_text(f"{para}\n\n{'b' * 2000}") == [para, "b" * 2000]
    words = " ".join(["word"] * 1200)  # 5999 characters
    parts = split_text(words)
    assert [len(p) for p in parts] == [3999, 1999] and all(p.endswith("word") for p in parts)
    assert split_text("x" * (MAX_TEXT + 1)) == ["x" * MAX_TEXT, "x"]
    assert split_text("   \n ") == []


def test_message_body_links_replies_to_max_messages_only() -> None:
    assert message_body("hi", reply_to="mid.abc") == {
        "text": "hi",
        "link": {"type": "reply", "mid": "mid.abc"},
    }
    assert message_body("hi", reply_to="callback:f9L:17750") == {"text": "hi"}
    assert message_body("hi") == {"text": "hi"}


def test_sent_message_id() -> None:
    assert sent_message_id(payload("send_message_result")) == "mid.000000000adf429c019d47d58f2b3d9e"
    assert sent_message_id({"message": {"body": {}}}) is None and sent_message_id(None) is None


def test_error_mapping() -> None:
    assert api_error_text(payload("error_invalid_token")) == "verify.token: Invalid access_token"
    assert api_error_text(payload("error_attachment_not_ready")) == "attachment.not.ready"
    limited = send_error(
        429, {"code": "too.many.requests", "message": "Slow down"}, retry_after="3"
    )
    assert limited.retry_after == 3.0 and not limited.permanent
    assert send_error(429, None).retry_after == 1.0  # Max may give no Retry-After
    server = send_error(503, None)
    assert not (server.permanent or server.uncertain or server.retry_after)
    refused = send_error(403, {"code": "chat.denied", "message": "bot was blocked"})
    assert refused.permanent and "chat.denied: bot was blocked" in str(refused)
    assert send_error(401, payload("error_invalid_token")).permanent


@given(st.text(max_size=10) | st.none())
def test_retry_after_is_always_a_sane_number(header: str | None) -> None:
    assert 0 <= retry_seconds(header) <= 3600


def test_transport_errors() -> None:
    request = httpx.Request("POST", "https://platform-api.max.ru/messages")
    not_sent = transport_error(httpx.ConnectError("refused", request=request))
    assert not (not_sent.uncertain or not_sent.permanent)
    lost = transport_error(httpx.ReadTimeout("slow", request=request))
    assert lost.uncertain
