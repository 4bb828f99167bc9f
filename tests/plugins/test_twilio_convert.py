"""Twilio webhook forms -> gateway values, REST errors -> SendError, on recorded payloads (no I/O),
plus Hypothesis: arbitrary forms give a value or FormError, never another exception."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.messages import Attachment
from gateway.secretref import Secret
from gateway.testing import fake_twilio
from gateway.webhooks import WebhookRefused, verify_twilio_signature
from plugins.twilio import TwilioConfig
from plugins.twilio.convert import (
    FormError,
    call_event,
    delivery_update,
    dial_event,
    message_matches,
    message_to_inbound,
    parse_form,
    send_error,
    split_body,
    transport_error,
    voicemail,
    voicemail_event,
)

PAYLOADS = Path(__file__).parent / "payloads" / "twilio"
NOW = dt.datetime(2024, 6, 10, 13, 41, 0, tzinfo=dt.UTC)
SID = fake_twilio.DEFAULT_ACCOUNT_SID
TOKEN = fake_twilio.DEFAULT_AUTH_TOKEN
NUMBER = fake_twilio.DEFAULT_NUMBER
SERVICE = "MG" + "5e" * 16


def recorded(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def form(name: str) -> dict[str, list[str]]:
    """The payload as the webhook parses it: through a real form encoding and back."""
    return parse_form(urlencode(recorded(name)["params"]).encode())


def query(name: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(recorded(name)["url"]).query)


# -- messages ---------------------------------------------------------------------------------


def test_sms() -> None:
    inbound, media = message_to_inbound(form("sms_inbound"))
    assert media == []
    assert inbound.account == "+16505558225"
    assert inbound.external_id == "SMbe794ce78f6b9fdf853d2acb76c080db"
    assert inbound.thread_key == inbound.sender_id == "+16505551199"
    assert inbound.text == "Hi! Are you open on Saturday? Ich komme um 10 & bringe 2 Freunde."
    assert inbound.attachments == ()
    assert inbound.metadata == {"num_segments": 1}


def test_mms_media_become_links_until_downloaded() -> None:
    inbound, media = message_to_inbound(form("mms_inbound"))
    assert [m.content_type for m in media] == ["image/jpeg", "application/pdf"]
    assert media[0].url.endswith("/Media/ME0a1b2c3d4e5f60718293a4b5c6d7e8f9")
    assert inbound.text == "The box arrived broken, photo and receipt attached"
    assert inbound.sender_id == "+4915112345678"
    image, pdf = inbound.attachments
    assert image == Attachment(
        kind="image",
        mime_type="image/jpeg",
        filename="ME0a1b2c3d4e5f60718293a4b5c6d7e8f9.jpg",
        url=media[0].url,
    )
    assert (pdf.kind, pdf.filename, pdf.data) == (
        "document",
        "ME9f8e7d6c5b4a39281706f5e4d3c2b1a0.pdf",
        None,
    )
    assert inbound.metadata["messaging_service_sid"] == "MG9752274e9e519418a7406176694466fa"


def test_stop_arrives_as_text_for_the_consent_ledger() -> None:
    inbound, _ = message_to_inbound(form("stop_inbound"))
    assert inbound.text == "STOP"


@pytest.mark.parametrize("missing", ["MessageSid", "From", "To"])
def test_required_message_parameters(missing: str) -> None:
    params = form("sms_inbound")
    del params[missing]
    with pytest.raises(FormError, match=f"missing required parameter {missing}"):
        message_to_inbound(params)


@pytest.mark.parametrize("value", ["two", "-1", "1.5"])
def test_num_media_must_be_a_count(value: str) -> None:
    params = {**form("sms_inbound"), "NumMedia": [value]}
    with pytest.raises(FormError, match="NumMedia"):
        message_to_inbound(params)


def test_media_count_is_capped_and_non_http_urls_are_skipped() -> None:
    params = {**form("sms_inbound"), "NumMedia": ["99"]}
    params.update({f"MediaUrl{i}": [f"https://api.twilio.com/m/ME{i}"] for i in range(12)})
    params["MediaUrl3"] = ["file:///etc/passwd"]
    _, media = message_to_inbound(params)
    assert len(media) == 9 and all(m.url.startswith("https://") for m in media)


def test_parse_form_keeps_blank_values_and_refuses_garbage() -> None:
    assert parse_form(b"Body=&To=%2B1555&A=1&A=2") == {
        "Body": [""],
        "To": ["+1555"],
        "A": ["1", "2"],
    }
    assert parse_form(b"") == {}
    with pytest.raises(FormError, match="not valid form data"):
        parse_form(b"Body=\xff\xfe")
    with pytest.raises(FormError):
        parse_form(b"a=1&&&b")


# -- status callbacks -------------------------------------------------------------------------


def test_delivered() -> None:
    update = delivery_update(form("status_delivered"))
    assert update.external_id == "SM5b1c0f9a8e7d6c5b4a39281706f5e4d3"
    assert (update.status, update.detail) == ("delivered", None)
    assert update.at == dt.datetime(2024, 6, 10, 13, 42, tzinfo=dt.UTC)


def test_undelivered_is_failed_with_the_error_code() -> None:
    update = delivery_update(form("status_undelivered"))
    assert update.status == "failed"
    assert update.detail == "Twilio error 30003: unreachable destination handset"


def test_sent() -> None:
    assert delivery_update(form("status_sent")).status == "sent"


@pytest.mark.parametrize("step", ["queued", "accepted", "sending", "scheduled", "received"])
def test_steps_before_sent_are_not_tracked(step: str) -> None:
    params = {**form("status_sent"), "MessageStatus": [step], "SmsStatus": [step]}
    assert delivery_update(params).status is None


def test_canceled_and_unknown_codes() -> None:
    canceled = delivery_update({**form("status_sent"), "MessageStatus": ["canceled"]})
    assert (canceled.status, canceled.detail) == ("failed", "canceled before it was sent")
    odd = delivery_update({**form("status_undelivered"), "ErrorCode": ["63016"]})
    assert odd.detail == "Twilio error 63016"


def test_status_needs_a_status() -> None:
    params = form("status_sent")
    del params["MessageStatus"], params["SmsStatus"]
    with pytest.raises(FormError, match="MessageStatus"):
        delivery_update(params)


# -- calls ------------------------------------------------------------------------------------


def test_incoming_call_is_logged_with_its_start() -> None:
    event = call_event(form("voice_incoming"), now=NOW)
    assert (event.kind, event.event_key) == ("call", "CA5f7b1c2e8a1d4e0012c3b4a5d6e7f809")
    assert (event.account, event.thread_key, event.sender_id) == (
        "+16505558225",
        "+16505551199",
        "+16505551199",
    )
    assert event.sender_name == "Ana Lima"
    assert dict(event.detail) == {
        "from": "+16505551199",
        "to": "+16505558225",
        "status": "ringing",
        "direction": "inbound",
        "start": NOW.isoformat(),
    }


def test_call_status_callback_gives_duration_and_end() -> None:
    event = call_event(form("call_status_completed"), now=NOW, callback=True)
    assert event.event_key == "CA5f7b1c2e8a1d4e0012c3b4a5d6e7f809"
    assert event.detail["status"] == "completed" and event.detail["duration"] == 63
    assert event.detail["end"] == "2024-06-10T13:42:07+00:00"
    assert "start" not in event.detail  # the merge keeps the call webhook's start


def test_dial_result() -> None:
    event = dial_event(form("dial_no_answer"))
    assert event.event_key == "CA5f7b1c2e8a1d4e0012c3b4a5d6e7f809"
    assert dict(event.detail) == {"forward_status": "no-answer"}


def test_voicemail_takes_caller_from_the_signed_query() -> None:
    mail = voicemail(form("recording_completed"), query("recording_completed"))
    assert (mail.caller, mail.called) == ("+16505551199", "+16505558225")
    assert (mail.recording_sid, mail.duration, mail.status) == (
        "RE9c2d4e0b1f3a4e5b6c7d8e9f0a1b2c3d",
        14,
        "completed",
    )
    audio = Attachment(kind="audio", mime_type="audio/mpeg", data=b"ID3")
    event = voicemail_event(mail, audio)
    assert (event.kind, event.event_key, event.category) == (
        "voicemail",
        mail.recording_sid,
        "voicemail",
    )
    assert event.thread_key == "+16505551199" and event.attachments == (audio,)
    assert dict(event.detail) == {"call_sid": "CA5f7b1c2e8a1d4e0012c3b4a5d6e7f809", "duration": 14}


def test_absent_recording_and_missing_query() -> None:
    assert voicemail(form("recording_absent"), query("recording_absent")).status == "absent"
    with pytest.raises(FormError, match="from/to"):
        voicemail(form("recording_completed"), {})
    bad = {**form("recording_completed"), "RecordingUrl": ["ftp://x/y"]}
    with pytest.raises(FormError, match="http"):
        voicemail(bad, query("recording_completed"))


# -- signatures (the verifier the channel uses, on Twilio's published vectors) -----------------


def test_published_signature_vector_verifies() -> None:
    data = recorded("signature_vectors")
    vector = data["vectors"][0]
    verify_twilio_signature(
        data["auth_token"], vector["url"], vector["params"], vector["signature"]
    )
    with pytest.raises(WebhookRefused) as wrong:
        verify_twilio_signature("54321", vector["url"], vector["params"], vector["signature"])
    assert wrong.value.status == 403 and vector["signature"] not in wrong.value.reason


def test_fake_signs_like_twilio_on_every_published_vector() -> None:
    data = recorded("signature_vectors")
    for vector in data["vectors"]:
        assert (
            fake_twilio.signature(data["auth_token"], vector["url"], vector["params"])
            == (vector["signature"])
        )


def test_repeated_parameter_vector_verifies() -> None:
    data = recorded("signature_vectors")
    vector = data["vectors"][1]
    verify_twilio_signature(
        data["auth_token"], vector["url"], vector["params"], vector["signature"]
    )


@settings(max_examples=200, deadline=None)
@given(
    params=st.dictionaries(
        st.text(min_size=1, max_size=12), st.lists(st.text(max_size=20), min_size=1, max_size=3)
    ),
    header=st.one_of(st.none(), st.text(max_size=40)),
)
def test_verifier_refuses_forgeries_without_revealing(
    params: dict[str, list[str]], header: str | None
) -> None:
    url = "https://gw.example.com/webhooks/sms/sms"
    expected = fake_twilio.signature("token-1", url, params)
    try:
        verify_twilio_signature("token-1", url, params, header)
    except WebhookRefused as exc:
        assert exc.status in (401, 403) and expected not in exc.reason
    else:
        assert header is not None and header.strip() == expected


# -- sending ----------------------------------------------------------------------------------


def twilio_error(code: int, status: int = 400) -> dict[str, Any]:
    return {"code": code, "message": "...", "more_info": "...", "status": status}


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (21610, "replied STOP"),
        (21211, "not a valid phone number"),
        (21614, "not a mobile number"),
        (21408, "Geo permissions"),
        (20003, "credentials"),
        (21999, "Twilio refused the message"),
    ],
)
def test_refusals_are_permanent(code: int, words: str) -> None:
    error = send_error(401 if code == 20003 else 400, twilio_error(code))
    assert error.permanent and not error.uncertain and error.retry_after is None
    assert words in str(error) and str(code) in str(error)


def test_429_waits() -> None:
    assert send_error(429, twilio_error(20429, 429), "7").retry_after == 7.0
    assert send_error(429, "not json", None).retry_after == 1.0
    assert send_error(429, {}, "soon").retry_after == 1.0


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient(status: int) -> None:
    error = send_error(status, twilio_error(20500, status))
    assert not (error.permanent or error.uncertain or error.retry_after)


def test_network_errors() -> None:
    request = httpx.Request("POST", "https://api.twilio.com/")
    for exc in (
        httpx.ConnectError("x", request=request),
        httpx.ConnectTimeout("x", request=request),
    ):
        error = transport_error(exc)
        assert not (error.permanent or error.uncertain)
    for exc in (
        httpx.ReadTimeout("x", request=request),
        httpx.RemoteProtocolError("x", request=request),
    ):
        assert transport_error(exc).uncertain


def test_split_body() -> None:
    assert split_body("short") == ["short"]
    assert split_body("") == [""]
    exact = "x" * 1600
    assert split_body(exact) == [exact]
    words = " ".join(["word"] * 700)  # 3,499 characters
    parts = split_body(words)
    assert len(parts) == 3 and all(len(p) <= 1600 for p in parts)
    assert " ".join(parts) == words
    emoji = "😀" * 900  # two UTF-16 units each, as Twilio counts them
    assert [len(p) for p in split_body(emoji)] == [800, 100]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=5000), st.integers(min_value=10, max_value=200))
def test_split_body_keeps_every_word(text: str, limit: int) -> None:
    parts = split_body(text, limit)
    assert all(len(p.encode("utf-16-le")) // 2 <= limit for p in parts)
    assert "".join("".join(p.split()) for p in parts) == "".join(text.split())


def test_message_matches() -> None:
    message = fake_twilio.FakeMessage(
        "SM1", "+15551", "+15550", "hi", "outbound-api", "queued", NOW
    ).resource("AC1")
    kwargs: dict[str, Any] = {"to": "+15551", "sender": "+15550", "service": None, "body": "hi"}
    assert message_matches(message, since=NOW, **kwargs)
    assert message_matches(message, since=NOW + dt.timedelta(seconds=30), **kwargs)  # skew
    assert not message_matches(message, since=NOW + dt.timedelta(minutes=5), **kwargs)
    assert not message_matches(message, since=NOW, **{**kwargs, "body": "hi!"})
    assert not message_matches(message, since=NOW, **{**kwargs, "sender": "+15559"})
    assert not message_matches(message, since=NOW, **{**kwargs, "service": "MG1"})
    assert not message_matches({**message, "direction": "inbound"}, since=NOW, **kwargs)


# -- config (pure validation) -----------------------------------------------------------------------------------


def _config(**overrides: Any) -> TwilioConfig:
    table: dict[str, Any] = {
        "plugin": "twilio",
        "account_sid": SID,
        "auth_token": Secret(TOKEN),
        "from_number": NUMBER,
        **overrides,
    }
    return TwilioConfig.model_validate(table)


def test_defaults_follow_twilio() -> None:
    cfg = _config()
    assert (cfg.send_rate, cfg.send_rate_per_chat, cfg.send_burst_per_chat) == (1.0, 1.0, 1)
    assert cfg.opt_out_reply == cfg.opt_in_reply == ""  # Twilio confirms STOP/START itself
    assert cfg.api_base == "https://api.twilio.com" and not cfg.record_voicemail


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"auth_token": None}, "auth_token"),
        ({"auth_token": Secret("  ")}, "auth token is empty"),
        ({"account_sid": "AC123"}, "AC followed by 32 hex"),
        ({"from_number": "0155 1234"}, "E.164"),
        ({"from_number": None}, "from_number"),
        ({"messaging_service_sid": "MG1"}, "MG followed by 32 hex"),
        ({"api_base": "api.twilio.com"}, "http(s) URL"),
        ({"media_hosts": ["mms.twiliocdn.com"]}, "as a URL"),
        ({"forward_to": "12345"}, "E.164"),
        ({"authtoken": "env:X"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_config_says_what_to_fix(overrides: dict[str, Any], words: str) -> None:
    table = {k: v for k, v in overrides.items() if v is not None}
    removed = [k for k, v in overrides.items() if v is None]
    base: dict[str, Any] = {
        "plugin": "twilio",
        "account_sid": SID,
        "auth_token": Secret(TOKEN),
        "from_number": NUMBER,
    }
    for key in removed:
        del base[key]
    with pytest.raises(pydantic.ValidationError) as excinfo:
        TwilioConfig.model_validate({**base, **table})
    assert words in str(excinfo.value)
    assert TOKEN not in str(excinfo.value)


def test_a_messaging_service_is_a_sender_too() -> None:
    cfg = _config(from_number=None, messaging_service_sid=SERVICE)
    assert cfg.messaging_service_sid == SERVICE


# -- never a crash ----------------------------------------------------------------------------

NAMES = [
    "MessageSid",
    "From",
    "To",
    "Body",
    "NumMedia",
    "MediaUrl0",
    "MediaContentType0",
    "NumSegments",
    "MessageStatus",
    "SmsStatus",
    "ErrorCode",
    "RawDlrDoneDate",
    "CallSid",
    "CallStatus",
    "CallDuration",
    "Timestamp",
    "DialCallStatus",
    "DialCallDuration",
    "RecordingSid",
    "RecordingUrl",
    "RecordingStatus",
    "RecordingDuration",
    "CallerName",
]
forms = st.dictionaries(
    st.sampled_from(NAMES) | st.text(max_size=8),
    st.lists(
        st.text(max_size=30) | st.sampled_from(["0", "3", "-1", "https://a/b", "delivered"]),
        max_size=2,
    ),
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(forms, forms)
def test_converters_give_a_value_or_form_error(
    params: dict[str, list[str]], query: dict[str, list[str]]
) -> None:
    for convert in (
        lambda: message_to_inbound(params),
        lambda: delivery_update(params),
        lambda: call_event(params, now=NOW),
        lambda: call_event(params, now=NOW, callback=True),
        lambda: dial_event(params),
        lambda: voicemail(params, query),
    ):
        try:
            convert()
        except FormError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_form_gives_a_dict_or_form_error(body: bytes) -> None:
    try:
        parsed = parse_form(body)
    except FormError:
        return
    assert all(isinstance(v, list) for v in parsed.values())
