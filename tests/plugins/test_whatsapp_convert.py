"""WhatsApp webhook JSON -> Inbound / statuses, and sends / Graph errors, on recorded payloads
that follow Meta's published webhook reference (no I/O)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.messages import Attachment
from plugins.whatsapp.convert import (
    NotANotification,
    OtherProduct,
    parse_notification,
    render_contacts,
)
from plugins.whatsapp.outgoing import (
    graph_error,
    media_message,
    message_id,
    send_error,
    template_message,
    text_message,
    transport_error,
    within_window,
)

PAYLOADS = Path(__file__).parent / "payloads" / "whatsapp"
NUMBER = "106540352242922"
USER = "16505551234"
GRAPH = "https://graph.facebook.com/v23.0"


def payload(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def parse(body: dict[str, Any], number: str = NUMBER) -> Any:
    return parse_notification(body, phone_number_id=number, media_url=lambda m: f"{GRAPH}/{m}")


def single(name: str) -> Any:
    note = parse(payload(name))
    assert len(note.received) == 1, note.skipped
    return note.received[0]


def test_text_message() -> None:
    inbound = single("text").inbound
    assert (inbound.account, inbound.thread_key, inbound.sender_id) == (NUMBER, USER, USER)
    assert inbound.external_id == "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA="
    assert inbound.text == "Hi! Is my order #4411 on its way?"
    assert inbound.sender_name == "Sheena Nelson"
    assert inbound.sent_at == dt.datetime(2025, 2, 12, 0, 43, 44, tzinfo=dt.UTC)
    assert inbound.attachments == () and inbound.metadata["type"] == "text"


def test_reply_context_is_kept() -> None:
    inbound = single("reply_context").inbound
    assert inbound.metadata["reply_to_external_id"].startswith("wamid.")


def test_image_caption_becomes_text_and_media_is_referenced() -> None:
    item = single("image_caption")
    assert item.inbound.text == "The box arrived crushed"
    assert item.inbound.attachments == (
        Attachment(kind="image", mime_type="image/jpeg", url=f"{GRAPH}/1003383421387256"),
    )
    assert [(m.media_id, m.sha256) for m in item.media] == [
        ("1003383421387256", "VTe3Y4vtx1Bw+RY7XUDOnXTIcSGi6RqcM4TKpnvSZNA=")
    ]


@pytest.mark.parametrize(
    ("name", "kind", "mime", "text", "filename"),
    [
        ("audio_voice", "audio", "audio/ogg", "", None),
        ("video", "video", "video/mp4", "Unboxing", None),
        ("document", "document", "application/pdf", "Invoice attached", "invoice-4411.pdf"),
        ("sticker", "sticker", "image/webp", "", None),
    ],
)
def test_media_kinds(name: str, kind: str, mime: str, text: str, filename: str | None) -> None:
    item = single(name)
    [attachment] = item.inbound.attachments
    assert (attachment.kind, attachment.mime_type, attachment.filename) == (kind, mime, filename)
    assert attachment.data is None and attachment.url == f"{GRAPH}/{item.media[0].media_id}"
    assert item.inbound.text == text


def test_voice_note_is_flagged() -> None:
    assert single("audio_voice").inbound.metadata["voice"] is True


def test_location_is_rendered_and_kept() -> None:
    inbound = single("location").inbound
    assert inbound.text == (
        "[location] Philz Coffee | 101 Forest Ave, Palo Alto, CA 94301 | 37.442215, -122.161514"
        " | https://www.philzcoffee.com"
    )
    assert inbound.metadata["location"]["latitude"] == pytest.approx(37.44221496582)


def test_contacts_are_rendered() -> None:
    inbound = single("contacts").inbound
    assert inbound.text == "[contact] Barbara J. Johnson: +1 (940) 555-1234, bjohnson@example.com"
    assert inbound.metadata["contact_count"] == 1
    assert render_contacts([{"name": {"first_name": "Ann"}}, "junk"]) == "[contact] Ann"
    assert render_contacts([]) == "[contact] (empty card)"


@pytest.mark.parametrize(
    ("name", "text", "info"),
    [
        ("interactive_button_reply", "Cancel", {"type": "button_reply", "id": "cancel-button"}),
        (
            "interactive_list_reply",
            "Priority Mail Express",
            {"type": "list_reply", "id": "priority_express", "description": "Next Day to 2 Days"},
        ),
    ],
)
def test_interactive_replies_give_the_title(name: str, text: str, info: dict[str, str]) -> None:
    inbound = single(name).inbound
    assert inbound.text == text and inbound.metadata["interactive"] == info
    assert inbound.metadata["reply_to_external_id"].startswith("wamid.")


def test_template_quick_reply_button_gives_its_label() -> None:
    inbound = single("button").inbound
    assert inbound.text == "Unsubscribe"  # an opt-out word: the core records the opt-out
    assert inbound.metadata["button_payload"] == "Unsubscribe"


def test_unsupported_message_is_kept_with_empty_text() -> None:
    inbound = single("unsupported").inbound
    assert inbound.text == "" and inbound.attachments == ()
    assert inbound.metadata["unsupported_type"] == "poll_update"
    assert inbound.metadata["error_codes"] == [131051]


def test_reaction_is_ignored() -> None:
    note = parse(payload("reaction"))
    assert note.received == () and note.skipped[0].startswith("reaction wamid.")


def test_batch_keeps_order_and_names_each_sender() -> None:
    note = parse(payload("batch"))
    assert [
        (r.inbound.thread_key, r.inbound.text, r.inbound.sender_name) for r in note.received
    ] == [
        (USER, "first", "Sheena Nelson"),
        ("4791234567", "hei", "Jonas Berg"),
        (USER, "third", "Sheena Nelson"),
    ]
    assert len({r.inbound.external_id for r in note.received}) == 3


@pytest.mark.parametrize(
    ("name", "status", "when"),
    [
        ("status_sent", "sent", 1739322100),
        ("status_delivered", "delivered", 1739322101),
        ("status_read", "read", 1739322160),
    ],
)
def test_statuses(name: str, status: str, when: int) -> None:
    [found] = parse(payload(name)).statuses
    assert found.message_id == "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBIzRjU0QjJCRjQ4RjNEMkQ3RjUA"
    assert (found.status, found.detail) == (status, None)
    assert found.at == dt.datetime.fromtimestamp(when, dt.UTC)


def test_failed_status_carries_code_title_and_details() -> None:
    [found] = parse(payload("status_failed")).statuses
    assert found.status == "failed"
    assert found.detail == (
        "131047 Re-engagement message: Message failed to send because more than 24 hours have "
        "passed since the customer last replied to this number."
    )


def test_value_level_errors_are_reported() -> None:
    note = parse(payload("value_errors"))
    assert note.received == () and note.statuses == ()
    assert note.errors == (
        "130429 Rate limit hit: Message failed to send because there were too many messages "
        "sent from this phone number in a short period of time",
    )


def test_other_fields_and_other_numbers_are_skipped() -> None:
    assert parse(payload("template_status_update")).skipped == (
        "field 'message_template_status_update'",
    )
    note = parse(payload("text"), number="999")
    assert note.received == () and "is not ours" in note.skipped[0]


def test_other_meta_products_and_non_notifications_raise() -> None:
    with pytest.raises(OtherProduct) as excinfo:
        parse(payload("page_object"))
    assert excinfo.value.object == "page"
    for body in ({}, {"object": "whatsapp_business_account"}, {"entry": []}, {"object": 1}):
        with pytest.raises(NotANotification):
            parse(body)


def test_same_message_redelivered_converts_identically() -> None:
    assert parse(payload("text")) == parse(payload("text"))


# -- fuzzing -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
keys = ["from", "id", "timestamp", "type", "text", "image", "location", "contacts", "context"]
keys += ["interactive", "button", "unsupported", "errors", "document", "audio", "sticker"]
messages = st.dictionaries(
    st.sampled_from(keys),
    json_values
    | st.sampled_from(["text", "image", "location", "interactive", "button", "unsupported"])
    | st.fixed_dictionaries({"body": json_values, "id": json_values, "caption": json_values}),
    max_size=8,
)
statuses = st.dictionaries(
    st.sampled_from(["id", "status", "timestamp", "errors", "recipient_id"]),
    json_values | st.sampled_from(["sent", "delivered", "read", "failed", "deleted"]),
)
values = st.fixed_dictionaries(
    {"metadata": st.just({"phone_number_id": NUMBER}) | json_values},
    optional={
        "messages": st.lists(messages, max_size=4) | json_values,
        "statuses": st.lists(statuses, max_size=3) | json_values,
        "contacts": json_values,
        "errors": json_values,
    },
)
notifications = st.fixed_dictionaries(
    {
        "object": st.just("whatsapp_business_account") | st.text(max_size=8),
        "entry": st.lists(
            st.fixed_dictionaries(
                {
                    "changes": st.lists(
                        st.fixed_dictionaries(
                            {"field": st.just("messages") | json_values, "value": values}
                        ),
                        max_size=3,
                    )
                    | json_values
                }
            )
            | json_values,
            max_size=3,
        ),
    }
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(notifications, json_values.filter(lambda v: isinstance(v, dict))))
def test_parser_never_raises_anything_undocumented(body: Any) -> None:
    try:
        note = parse(body)
    except NotANotification:
        return
    for item in note.received:
        inbound = item.inbound
        assert inbound.external_id and inbound.thread_key == inbound.sender_id
        assert inbound.account == NUMBER and isinstance(inbound.text, str)
        assert len(item.media) == len(inbound.attachments)
    for status in note.statuses:
        assert status.status in ("sent", "delivered", "read", "failed")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=100, max_value=599), json_values, st.text(max_size=6) | st.none())
def test_error_mapping_never_raises(status: int, body: Any, retry_after: str | None) -> None:
    error = send_error(status, body, retry_after=retry_after)
    assert not (error.permanent and error.retry_after is not None)
    assert str(error)


# -- sending -------------------------------------------------------------------------------


def test_message_bodies() -> None:
    assert text_message(USER, "hi", reply_to="wamid.X") == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": USER,
        "type": "text",
        "text": {"body": "hi", "preview_url": False},
        "context": {"message_id": "wamid.X"},
    }
    assert media_message(USER, "image", link="https://x/a.png", caption="look")["image"] == {
        "link": "https://x/a.png",
        "caption": "look",
    }
    audio = media_message(USER, "audio", media_id="77", caption="dropped", filename="x")
    assert audio["audio"] == {"id": "77"}  # audio takes no caption
    with pytest.raises(ValueError):
        media_message(USER, "image")


def test_template_body_parameter_is_folded() -> None:
    body = template_message(USER, "reply_later", "de", body_text="two\nlines\t and    more")
    assert body["template"] == {
        "name": "reply_later",
        "language": {"code": "de"},
        "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "two lines and more"}]}
        ],
    }
    assert "components" not in template_message(USER, "hello_world", "en_US")["template"]


def test_message_id_of_the_answer() -> None:
    answer = {"messaging_product": "whatsapp", "messages": [{"id": "wamid.ABC"}]}
    assert message_id(answer) == "wamid.ABC"
    assert message_id({"messages": []}) is None and message_id(None) is None


def test_window() -> None:
    now = dt.datetime(2025, 2, 12, 12, 0, tzinfo=dt.UTC)
    assert within_window(now - dt.timedelta(hours=23, minutes=59), now)
    assert not within_window(now - dt.timedelta(hours=24), now)
    assert not within_window(None, now)
    assert within_window(dt.datetime(2025, 2, 12, 11, 0), now)  # naive means UTC


def graph(code: int, message: str = "title", details: str = "details") -> dict[str, Any]:
    return {"error": {"message": f"(#{code}) {message}", "type": "OAuthException", "code": code,
                      "error_data": {"messaging_product": "whatsapp", "details": details},
                      "fbtrace_id": "A"}}  # fmt: skip


@pytest.mark.parametrize(
    ("code", "status", "wait"),
    [(4, 400, 60.0), (80007, 400, 60.0), (130429, 400, 1.0), (131056, 400, 6.0), (1, 429, 1.0)],
)
def test_throttling_codes_retry_after(code: int, status: int, wait: float) -> None:
    error = send_error(status, graph(code))
    assert error.retry_after == wait and not (error.permanent or error.uncertain)


def test_retry_after_header_wins() -> None:
    assert send_error(429, graph(130429), retry_after="7").retry_after == 7.0
    assert send_error(429, None, retry_after="soon").retry_after == 1.0


def test_pair_rate_limit_is_named() -> None:
    assert "pair rate limit" in str(send_error(400, graph(131056)))


def test_reengagement_is_permanent_and_names_the_fix() -> None:
    error = send_error(400, graph(131047, "Re-engagement message"), where="[channels.wa]")
    assert error.permanent
    assert (
        "24 hours" in str(error)
        and "window_template" in str(error)
        and "[channels.wa]" in str(error)
    )


@pytest.mark.parametrize("code", [131026, 131051, 131030, 131048, 132001, 100, 368])
def test_refusals_are_permanent(code: int) -> None:
    error = send_error(400, graph(code))
    assert error.permanent and error.retry_after is None
    assert f"(#{code})" in str(error)


def test_bad_token_is_permanent_with_the_fix() -> None:
    error = send_error(401, graph(190), where="[channels.wa]")
    assert error.permanent and "access_token" in str(error)


@pytest.mark.parametrize(
    ("status", "code"), [(500, 131000), (503, 131016), (400, 131057), (502, None)]
)
def test_server_trouble_is_transient(status: int, code: int | None) -> None:
    error = send_error(status, graph(code) if code else "<html>Bad Gateway</html>")
    assert not (error.permanent or error.uncertain) and error.retry_after is None


def test_graph_error_reads_code_and_details() -> None:
    assert graph_error(graph(131026, "Message undeliverable", "not on WhatsApp")) == (
        131026,
        "(#131026) Message undeliverable: not on WhatsApp",
    )
    assert graph_error({"error": {"code": "100"}}) == (100, "")
    assert graph_error([1]) == (None, "")


def test_transport_errors() -> None:
    request = httpx.Request("POST", "https://graph.facebook.com/v23.0/1/messages")
    assert transport_error(httpx.ReadTimeout("read", request=request)).uncertain
    assert transport_error(httpx.RemoteProtocolError("gone", request=request)).uncertain
    for exc in (
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow"),
        httpx.PoolTimeout("x"),
    ):
        error = transport_error(exc)
        assert not (error.uncertain or error.permanent)
    # an upload delivers nothing to the user: a lost answer is safe to repeat
    assert not transport_error(httpx.ReadTimeout("read"), sent=False).uncertain
