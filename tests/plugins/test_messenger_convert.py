"""Meta webhook JSON -> gateway values, the messaging window, request bodies and Graph errors,
on recorded payloads (Messenger and Instagram) and random ones (Hypothesis). No I/O."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import SendError
from gateway.messages import Attachment, Inbound, Outbound
from gateway.pipeline.consent import Keywords
from plugins.messenger.convert import MalformedWebhook, StatusUpdate, parse_webhook
from plugins.messenger.outbound import (
    graph_error,
    messaging_policy,
    network_error,
    send_requests,
    split_text,
)

PAYLOADS = Path(__file__).parent / "payloads"
PAGE = "109876543210987"
PSID = "6543210987654321"
IG = "17841405309211844"
IGSID = "5678901234567890"
T = dt.datetime(2024, 6, 10, 13, 50, tzinfo=dt.UTC)
KEYWORDS = Keywords()


def is_keyword(payload: str) -> bool:
    return KEYWORDS.match(payload) is not None


def messenger(name: str) -> Any:
    body = json.loads((PAYLOADS / "messenger" / f"{name}.json").read_text())
    return parse_webhook(body, platform="messenger", account=PAGE, is_keyword=is_keyword)


def instagram(name: str) -> Any:
    body = json.loads((PAYLOADS / "instagram" / f"{name}.json").read_text())
    return parse_webhook(body, platform="instagram", account=IG, is_keyword=is_keyword)


def only_inbound(batch: Any) -> Inbound:
    assert batch.statuses == [] and len(batch.inbounds) == 1, batch
    inbound: Inbound = batch.inbounds[0]
    return inbound


# -- Messenger ---------------------------------------------------------------------------------


def test_text_message() -> None:
    inbound = only_inbound(messenger("text"))
    assert (inbound.account, inbound.thread_key, inbound.sender_id) == (PAGE, PSID, PSID)
    assert inbound.external_id.startswith("m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM")
    assert inbound.text == "Hola! ¿Tienen pan sin gluten hoy?"
    assert inbound.sent_at == T
    assert inbound.attachments == ()


def test_image_attachment_keeps_its_url_for_download() -> None:
    inbound = only_inbound(messenger("image"))
    assert inbound.text == ""
    (attachment,) = inbound.attachments
    assert attachment.kind == "image" and attachment.data is None
    assert attachment.url is not None and attachment.url.startswith("https://scontent.xx.fbcdn.net")


def test_sticker_is_a_sticker() -> None:
    (attachment,) = only_inbound(messenger("sticker")).attachments
    assert attachment.kind == "sticker" and attachment.url


def test_audio_video_file_with_text() -> None:
    inbound = only_inbound(messenger("audio_video_file"))
    assert inbound.text == "Here is the invoice and a voice note"
    assert [a.kind for a in inbound.attachments] == ["audio", "video", "document"]
    assert inbound.attachments[2].filename == "invoice-0042.pdf"


def test_quick_reply_keeps_title_as_text_and_payload_in_metadata() -> None:
    inbound = only_inbound(messenger("quick_reply"))
    assert inbound.text == "Red"
    assert inbound.metadata["quick_reply_payload"] == "COLOR_RED"


def test_quick_reply_payload_that_is_an_opt_out_word_becomes_the_text() -> None:
    assert only_inbound(messenger("quick_reply_stop")).text == "STOP"


def test_reply_to_a_message() -> None:
    inbound = only_inbound(messenger("reply"))
    assert inbound.metadata["reply_to_external_id"] == "m_original_0001"


def test_postback_title_is_the_text() -> None:
    inbound = only_inbound(messenger("postback"))
    assert (inbound.text, inbound.external_id) == ("Opening hours", "m_postback_0001")
    assert inbound.metadata == {
        "postback_payload": "HOURS_PAYLOAD",
        "postback_title": "Opening hours",
    }


def test_postback_payload_stop_counts_as_stop() -> None:
    assert only_inbound(messenger("postback_stop")).text == "STOP"


def test_legacy_postback_without_mid_gets_a_stable_id() -> None:
    first = only_inbound(messenger("postback_get_started_legacy"))
    again = only_inbound(messenger("postback_get_started_legacy"))
    assert first.external_id.startswith("postback:") and first.external_id == again.external_id
    assert first.text == "Get Started"


@pytest.mark.parametrize("name", ["echo", "reaction", "standby", "handover"])
def test_events_that_are_ignored(name: str) -> None:
    batch = messenger(name)
    assert batch.inbounds == [] and batch.statuses == [] and batch.ignored


def test_echo_is_never_a_user_message() -> None:
    (reason,) = messenger("echo").ignored
    assert "echo" in reason


def test_delivery_with_mids() -> None:
    batch = messenger("delivery")
    assert batch.statuses == [
        StatusUpdate(PSID, "delivered", ("m_sent_0001", "m_sent_0002"), T + dt.timedelta(seconds=5))
    ]


def test_delivery_watermark_only_and_read() -> None:
    (delivered,) = messenger("delivery_watermark_only").statuses
    assert delivered == StatusUpdate(PSID, "delivered", (), T + dt.timedelta(seconds=5))
    (read,) = messenger("read").statuses
    assert read == StatusUpdate(PSID, "read", (), T + dt.timedelta(seconds=9))


def test_batch_keeps_order_and_skips_other_pages() -> None:
    batch = messenger("batch")
    assert [(i.external_id, i.thread_key) for i in batch.inbounds] == [
        ("m_batch_0001", PSID),
        ("m_batch_0002", "7000000000000001"),
    ]
    assert len(batch.statuses) == 1
    assert any("not " + PAGE in reason for reason in batch.ignored)


# -- Instagram ---------------------------------------------------------------------------------


def test_instagram_text() -> None:
    inbound = only_inbound(instagram("text"))
    assert (inbound.account, inbound.thread_key, inbound.text) == (
        IG,
        IGSID,
        "Do you ship to Lisbon?",
    )


def test_instagram_image_is_downloadable() -> None:
    (attachment,) = only_inbound(instagram("image")).attachments
    assert attachment.kind == "image" and attachment.url


def test_story_mention_is_a_link_only() -> None:
    inbound = only_inbound(instagram("story_mention"))
    (attachment,) = inbound.attachments
    assert attachment.kind == "other" and attachment.url and attachment.data is None
    assert inbound.metadata["story_mention"] is True


def test_story_reply() -> None:
    inbound = only_inbound(instagram("story_reply"))
    assert inbound.text == "Love this cake!"
    assert inbound.metadata["story_reply"]["id"] == "17888888888888888"


@pytest.mark.parametrize("name", ["share", "reel"])
def test_shares_and_reels_are_links(name: str) -> None:
    inbound = only_inbound(instagram(name))
    assert [a.kind for a in inbound.attachments] == ["other"]


def test_unsupported_media_is_kept_as_a_fact() -> None:
    inbound = only_inbound(instagram("unsupported"))
    assert inbound.attachments == (Attachment(kind="other"),)
    assert inbound.metadata["unsupported"] is True


@pytest.mark.parametrize("name", ["deleted", "echo", "is_self", "reaction", "referral"])
def test_instagram_events_that_are_ignored(name: str) -> None:
    batch = instagram(name)
    assert batch.inbounds == [] and batch.statuses == [] and batch.ignored


def test_instagram_seen_names_the_last_message_read() -> None:
    assert instagram("seen").statuses == [StatusUpdate(IGSID, "read", ("aWdf_sent_0002",), None)]


def test_instagram_icebreaker_and_quick_reply_stop() -> None:
    assert only_inbound(instagram("postback")).text == "What are your opening hours?"
    assert only_inbound(instagram("quick_reply")).text == "STOP"


# -- malformed ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"object": "instagram", "entry": []}, "object is 'instagram'"),
        ({"object": "page"}, "entry is missing"),
        ({"object": "page", "entry": [1]}, "entry is not an object"),
        ({"object": "page", "entry": [{"id": PAGE, "messaging": {}}]}, "not a list"),
        ({"object": "page", "entry": [{"id": PAGE, "messaging": [{"message": {}}]}]}, "sender"),
        (
            {
                "object": "page",
                "entry": [
                    {"id": PAGE, "messaging": [{"sender": {"id": "1"}, "message": {"text": "x"}}]}
                ],
            },
            "no mid",
        ),
    ],
)
def test_malformed_bodies_say_why(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedWebhook, match=reason):
        parse_webhook(body, platform="messenger", account=PAGE)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=16,
)
ids = st.sampled_from([PAGE, PSID, 7, "", None, True])
events = st.fixed_dictionaries(
    {"sender": st.fixed_dictionaries({"id": ids}) | json_values},
    optional={
        "recipient": st.fixed_dictionaries({"id": ids}),
        "timestamp": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
        "message": st.dictionaries(
            st.sampled_from(
                [
                    "mid",
                    "text",
                    "attachments",
                    "quick_reply",
                    "is_echo",
                    "is_deleted",
                    "reply_to",
                    "is_unsupported",
                ]
            ),
            json_values,
        ),
        "postback": json_values,
        "delivery": json_values,
        "read": json_values,
        "reaction": json_values,
    },
)
bodies = st.fixed_dictionaries(
    {
        "object": st.sampled_from(["page", "instagram", None]),
        "entry": st.lists(
            st.fixed_dictionaries(
                {"id": ids, "messaging": st.lists(events, max_size=3) | json_values}
            ),
            max_size=3,
        )
        | json_values,
    }
)


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_random_bodies_convert_or_raise_malformed_only(body: dict[str, Any]) -> None:
    try:
        batch = parse_webhook(body, platform="messenger", account=PAGE, is_keyword=is_keyword)
    except MalformedWebhook:
        return
    for inbound in batch.inbounds:
        assert inbound.external_id and inbound.thread_key and inbound.account == PAGE
        assert inbound.text or inbound.attachments
    for status in batch.statuses:
        assert status.status in ("delivered", "read") and status.thread_key


# -- the messaging window ----------------------------------------------------------------------

NOW = dt.datetime(2024, 6, 20, 12, 0, tzinfo=dt.UTC)


def outbound(**fields: Any) -> Outbound:
    defaults: dict[str, Any] = {"text": "hello", "last_inbound_at": NOW - dt.timedelta(hours=1)}
    return Outbound(1, "k-1", PAGE, PSID, **{**defaults, **fields})


def test_within_24_hours_is_a_response_or_an_update() -> None:
    assert messaging_policy(outbound(), NOW, platform="Messenger") == {"messaging_type": "RESPONSE"}
    edge = outbound(last_inbound_at=NOW - dt.timedelta(hours=24), purpose="notification")
    assert messaging_policy(edge, NOW, platform="Messenger") == {"messaging_type": "UPDATE"}


def test_unknown_last_inbound_leaves_the_window_to_meta() -> None:
    unknown = outbound(last_inbound_at=None, author="ai")
    assert messaging_policy(unknown, NOW, platform="Messenger") == {"messaging_type": "RESPONSE"}


def test_naive_last_inbound_is_utc() -> None:
    naive = outbound(last_inbound_at=(NOW - dt.timedelta(hours=2)).replace(tzinfo=None))
    assert messaging_policy(naive, NOW, platform="Messenger")["messaging_type"] == "RESPONSE"


def test_a_persons_reply_after_24_hours_is_tagged_human_agent() -> None:
    late = outbound(author="human", last_inbound_at=NOW - dt.timedelta(days=6, hours=23))
    assert messaging_policy(late, NOW, platform="Messenger") == {
        "messaging_type": "MESSAGE_TAG",
        "tag": "HUMAN_AGENT",
    }


@pytest.mark.parametrize(
    ("fields", "human_agent", "fix"),
    [
        (
            {"author": "ai", "last_inbound_at": NOW - dt.timedelta(hours=25)},
            True,
            "have an operator",
        ),
        (
            {"author": "notice", "last_inbound_at": NOW - dt.timedelta(days=2)},
            True,
            "have an operator",
        ),
        (
            {"author": "human", "last_inbound_at": NOW - dt.timedelta(days=8)},
            True,
            "7 days are over",
        ),
        (
            {"author": "human", "last_inbound_at": NOW - dt.timedelta(days=2)},
            False,
            "human_agent_tag",
        ),
    ],
)
def test_outside_the_window_is_refused_permanently(
    fields: dict[str, Any], human_agent: bool, fix: str
) -> None:
    with pytest.raises(SendError) as excinfo:
        messaging_policy(outbound(**fields), NOW, platform="Messenger", human_agent=human_agent)
    error = excinfo.value
    assert error.permanent and not error.uncertain and error.retry_after is None
    assert "24-hour rule" in str(error) and "HUMAN_AGENT" in str(error) and "7 days" in str(error)
    assert fix in str(error)


# -- request bodies ----------------------------------------------------------------------------

POLICY = {"messaging_type": "RESPONSE"}


def test_long_text_is_split_at_spaces() -> None:
    text = " ".join(["word"] * 1000)  # 4,999 characters
    pieces = split_text(text, 2000)
    assert all(len(p) <= 2000 for p in pieces) and " ".join(pieces) == text
    assert split_text("x" * 2500, 2000) == ["x" * 2000, "x" * 500]
    assert split_text("  ", 2000) == []


def test_text_and_attachments_by_url_and_by_bytes() -> None:
    message = outbound(
        attachments=(
            Attachment("image", url="https://example.com/a.png"),
            Attachment("document", mime_type="application/pdf", filename="a.pdf", data=b"%PDF"),
        )
    )
    text, by_url, upload = send_requests(
        message, POLICY, platform="Messenger", text_limit=2000, max_media_bytes=100, uploads=True
    )
    assert text.json == {
        "recipient": {"id": PSID},
        "messaging_type": "RESPONSE",
        "message": {"text": "hello"},
    }
    assert by_url.json is not None
    assert by_url.json["message"] == {
        "attachment": {
            "type": "image",
            "payload": {"url": "https://example.com/a.png", "is_reusable": False},
        }
    }
    assert upload.file == ("a.pdf", b"%PDF", "application/pdf") and upload.form is not None
    assert json.loads(upload.form["message"])["attachment"]["type"] == "file"
    assert json.loads(upload.form["recipient"]) == {"id": PSID}


@pytest.mark.parametrize(
    ("attachment", "kwargs", "reason"),
    [
        (Attachment("image", data=b"123"), {"uploads": False}, "by URL only"),
        (Attachment("image", data=b"x" * 101), {"uploads": True}, "max_media_bytes"),
        (
            Attachment("document", url="https://e.com/a.pdf"),
            {"uploads": False, "file_attachments": False},
            "images, audio and video",
        ),
        (Attachment("image"), {"uploads": True}, "neither a URL nor bytes"),
    ],
)
def test_attachments_the_platform_cannot_take(
    attachment: Attachment, kwargs: dict[str, Any], reason: str
) -> None:
    with pytest.raises(SendError, match=reason) as excinfo:
        send_requests(
            outbound(text="", attachments=(attachment,)),
            POLICY,
            platform="Instagram",
            text_limit=1000,
            max_media_bytes=100,
            **kwargs,
        )
    assert excinfo.value.permanent


def test_nothing_to_send_is_refused() -> None:
    with pytest.raises(SendError, match="neither text nor attachments"):
        send_requests(
            outbound(text=" "), POLICY, platform="M", text_limit=10, max_media_bytes=1, uploads=True
        )


# -- Graph errors ------------------------------------------------------------------------------


def error_body(code: int, subcode: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": f"(#{code}) meta says no",
        "type": "OAuthException",
        "code": code,
    }
    if subcode:
        error["error_subcode"] = subcode
    return {"error": error}


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80006])
def test_rate_limits_wait(code: int) -> None:
    error = graph_error(400, error_body(code), {}, platform="Messenger")
    assert error.retry_after == 60.0 and not error.permanent


def test_rate_limit_wait_comes_from_usage_headers() -> None:
    usage = json.dumps(
        {PAGE: [{"type": "messenger", "call_count": 100, "estimated_time_to_regain_access": 3}]}
    )
    headers = httpx.Headers({"X-Business-Use-Case-Usage": usage})
    assert graph_error(400, error_body(613), headers, platform="M").retry_after == 180.0
    assert (
        graph_error(429, None, httpx.Headers({"Retry-After": "7"}), platform="M").retry_after == 7.0
    )


@pytest.mark.parametrize(
    ("status", "code", "subcode", "words"),
    [
        (400, 551, None, "not available"),
        (400, 10, 2018278, "outside the messaging window"),
        (403, 200, None, "permission"),
        (400, 190, None, "token is invalid"),
        (400, 100, 2018001, "recipient id"),
        (400, 368, None, "policy"),
    ],
)
def test_permanent_errors(status: int, code: int, subcode: int | None, words: str) -> None:
    error = graph_error(status, error_body(code, subcode), {}, platform="Messenger")
    assert error.permanent and not error.uncertain and error.retry_after is None
    assert words in str(error) and f"code {code}" in str(error)


@pytest.mark.parametrize(
    ("status", "body"), [(500, error_body(2)), (400, error_body(1200)), (502, "<html>")]
)
def test_transient_errors(status: int, body: Any) -> None:
    error = graph_error(status, body, {}, platform="Messenger")
    assert not (error.permanent or error.uncertain) and error.retry_after is None


def test_network_errors() -> None:
    request = httpx.Request("POST", "https://graph.facebook.com/v23.0/me/messages")
    before = network_error(httpx.ConnectError("refused", request=request), platform="Messenger")
    after = network_error(httpx.ReadTimeout("slow", request=request), platform="Messenger")
    assert not before.uncertain and not before.permanent
    assert after.uncertain and "may have been delivered" in str(after)
