"""Calls: the TwiML built from config (pure), and whole calls played by the fake Twilio against
the channel: call log merged by CallSid, forwarding, voicemail recorded only when configured and
announced, downloaded and stored under its own retention category."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.messages import Event
from gateway.testing.fake_twilio import FAKE_AUDIO
from plugins.twilio import twiml
from plugins.twilio.config import TwilioConfig

from .test_twilio_channel import CONTACT, NUMBER, config, running

BASE = "https://gw.example.com/webhooks/tw"


def verbs(document: str) -> list[str]:
    root = ET.fromstring(document)
    assert root.tag == "Response"
    return [child.tag for child in root]


def parsed(document: str) -> ET.Element:
    return ET.fromstring(document)


# -- TwiML (pure) ----------------------------------------------------------------------------


def test_default_call_is_greeting_goodbye_hangup_and_never_records() -> None:
    document = twiml.answer_call(config(), BASE, CONTACT, NUMBER)
    assert document.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    assert verbs(document) == ["Say", "Say", "Hangup"]
    assert "Record" not in document


def test_say_is_escaped_and_carries_language_and_voice() -> None:
    cfg = config(
        voice_greeting='Tom & Jerry <Ltd> "welcome"',
        voice_language="de-DE",
        voice_name="Polly.Marlene",
    )
    document = twiml.answer_call(cfg, BASE, CONTACT, NUMBER)
    assert "Tom &amp; Jerry &lt;Ltd&gt;" in document
    say = parsed(document).find("Say")
    assert say is not None and say.text == 'Tom & Jerry <Ltd> "welcome"'
    assert say.attrib == {"language": "de-DE", "voice": "Polly.Marlene"}


def test_voicemail_is_announced_right_before_the_beep() -> None:
    cfg = config(
        record_voicemail=True, recording_notice="Calls are recorded. Speak after the tone."
    )
    root = parsed(twiml.answer_call(cfg, BASE, CONTACT, NUMBER))
    assert [c.tag for c in root] == ["Say", "Say", "Record"]
    assert root[1].text == "Calls are recorded. Speak after the tone."
    record = root[2].attrib
    assert record["playBeep"] == "true" and record["maxLength"] == "120"
    assert record["action"] == f"{BASE}/voice/recorded"
    callback = urlsplit(record["recordingStatusCallback"])
    assert callback.path.endswith("/voice/recording")
    assert parse_qs(callback.query) == {"from": [CONTACT], "to": [NUMBER]}
    assert record["recordingStatusCallbackEvent"] == "completed"


def test_forwarding_dials_with_an_action() -> None:
    cfg = config(forward_to="+15551230000", dial_timeout=15, record_voicemail=True)
    root = parsed(twiml.answer_call(cfg, BASE, CONTACT, NUMBER))
    assert [c.tag for c in root] == ["Say", "Dial"]
    dial = root[1]
    assert dial.attrib == {"action": f"{BASE}/voice/dial", "method": "POST", "timeout": "15"}
    assert dial.findtext("Number") == "+15551230000"
    assert "record" not in dial.attrib  # the forwarded conversation is never recorded


def test_after_dial() -> None:
    with_mail = config(forward_to="+15551230000", record_voicemail=True)
    assert verbs(twiml.after_dial(with_mail, BASE, "completed", CONTACT, NUMBER)) == ["Hangup"]
    assert verbs(twiml.after_dial(with_mail, BASE, "no-answer", CONTACT, NUMBER)) == [
        "Say",
        "Record",
    ]
    no_mail = config(forward_to="+15551230000")
    assert verbs(twiml.after_dial(no_mail, BASE, "busy", CONTACT, NUMBER)) == ["Say", "Hangup"]
    assert verbs(twiml.after_recording(no_mail)) == ["Say", "Hangup"]
    assert verbs(twiml.empty()) == []


def test_recording_without_an_announcement_is_refused() -> None:
    for notice in ("", "   "):
        with pytest.raises(pydantic.ValidationError, match="recording_notice"):
            config(record_voicemail=True, recording_notice=notice)
    config(record_voicemail=False, recording_notice="")  # nothing recorded, nothing to announce


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(max_size=80),
    caller=st.text(max_size=20),
    record=st.booleans(),
    forward=st.booleans(),
)
def test_twiml_is_always_well_formed(text: str, caller: str, record: bool, forward: bool) -> None:
    options: dict[str, Any] = {
        "voice_greeting": text,
        "voicemail_goodbye": text,
        "record_voicemail": record,
    }
    if forward:
        options["forward_to"] = "+15551230000"
    cfg = config(**options)
    answer = twiml.answer_call(cfg, BASE, caller, NUMBER)
    nobody = twiml.after_dial(cfg, BASE, "no-answer", caller, NUMBER)
    for document, records in ((answer, record and not forward), (nobody, record)):
        root = parsed(document)  # raises if it is not XML
        assert ("Record" in [c.tag for c in root]) == records
        if records:
            says = [c.text for c in root if c.tag == "Say"]
            assert says[-1] == cfg.recording_notice  # the notice is right before the beep
        elif text.strip() and "\x00" not in text:
            assert any(c.tag == "Say" for c in root)


# -- whole calls through the fake -------------------------------------------------------------


def calls(events: list[Event], kind: str = "call") -> list[Event]:
    return [e for e in events if e.kind == kind]


async def test_a_call_is_greeted_and_logged_once_by_callsid() -> None:
    async with running() as env:
        outcome = await env.fake.call(CONTACT)
        assert outcome.said == ["Thank you for calling.", "Thank you. Goodbye."]
        assert outcome.recording_sid is None and outcome.dialed == []
        assert all(status == 200 for _, status in outcome.webhooks)
        ringing, completed = calls(env.context.events)
        assert ringing.event_key == completed.event_key == outcome.call_sid
        assert (ringing.thread_key, ringing.account) == (CONTACT, NUMBER)
        assert ringing.detail["status"] == "ringing" and "start" in ringing.detail
        assert ringing.detail["direction"] == "inbound"
        assert completed.detail["status"] == "completed" and completed.detail["duration"] == 4
        assert "end" in completed.detail
        assert calls(env.context.events, "voicemail") == []


async def test_voicemail_is_downloaded_and_stored_with_its_category() -> None:
    async with running(record_voicemail=True) as env:
        outcome = await env.fake.call(CONTACT, recording=FAKE_AUDIO, recording_seconds=9)
        assert outcome.said == [
            "Thank you for calling.",
            "This call is recorded. Please leave a message after the beep.",
            "Thank you. Goodbye.",
        ]
        [mail] = calls(env.context.events, "voicemail")
        assert mail.event_key == outcome.recording_sid and mail.category == "voicemail"
        assert (mail.thread_key, mail.account, mail.sender_id) == (CONTACT, NUMBER, CONTACT)
        assert dict(mail.detail) == {"call_sid": outcome.call_sid, "duration": 9}
        [audio] = mail.attachments
        assert (audio.kind, audio.mime_type, audio.data) == ("audio", "audio/mpeg", FAKE_AUDIO)
        assert audio.filename == f"{outcome.recording_sid}.mp3"
        assert audio.url and audio.url.endswith(f"/Recordings/{outcome.recording_sid}.mp3")
        recording_path = urlsplit(audio.url).path
        assert recording_path in env.fake.with_credentials


async def test_wav_recordings() -> None:
    async with running(record_voicemail=True, recording_format="wav") as env:
        await env.fake.call(CONTACT)
        [mail] = calls(env.context.events, "voicemail")
        assert mail.attachments[0].mime_type == "audio/x-wav"
        assert mail.attachments[0].url and mail.attachments[0].url.endswith(".wav")


async def test_forward_then_voicemail_when_nobody_answers() -> None:
    async with running(forward_to="+15551230000", record_voicemail=True) as env:
        outcome = await env.fake.call(CONTACT, answer="no-answer")
        assert outcome.dialed == ["+15551230000"]
        assert outcome.recording_sid is not None
        merged: dict[str, Any] = {}
        for event in calls(env.context.events):
            merged.update(event.detail)
        assert merged["forward_status"] == "no-answer" and merged["status"] == "completed"
        assert len(calls(env.context.events, "voicemail")) == 1


async def test_answered_forward_hangs_up_without_recording() -> None:
    async with running(forward_to="+15551230000", record_voicemail=True) as env:
        outcome = await env.fake.call(CONTACT, answer="completed")
        assert outcome.recording_sid is None and outcome.said == ["Thank you for calling."]
        dial = [e for e in calls(env.context.events) if "forward_status" in e.detail]
        assert dial[0].detail == {"forward_status": "completed", "forward_duration": 42}
        assert calls(env.context.events, "voicemail") == []


async def test_failed_recording_download_keeps_the_link() -> None:
    async with running(record_voicemail=True) as env:
        env.fake.download_failures = 10
        outcome = await env.fake.call(CONTACT)
        [mail] = calls(env.context.events, "voicemail")
        [audio] = mail.attachments
        assert audio.data is None and audio.url and outcome.recording_sid in audio.url


async def test_a_live_call_is_answered_even_when_its_log_cannot_be_stored() -> None:
    async with running(record_voicemail=True) as env:
        env.context.fail_accepts = 1  # the call log entry of the ringing call
        outcome = await env.fake.call(CONTACT)
        assert outcome.webhooks[0] == (f"{env.base}/voice", 200)  # the caller got the TwiML
        assert outcome.recording_sid is not None
        [completed] = calls(env.context.events)  # the status callback filled the log in
        assert completed.detail["status"] == "completed"
        assert len(calls(env.context.events, "voicemail")) == 1


async def test_call_status_callback_retried_after_503() -> None:
    async with running() as env:
        params = {
            "CallSid": "CA1",
            "From": CONTACT,
            "To": NUMBER,
            "CallStatus": "completed",
            "CallDuration": "5",
        }
        env.context.fail_accepts = 1
        assert (await env.fake.post_form(f"{env.base}/voice/status", params)).status_code == 503
        assert (await env.fake.post_form(f"{env.base}/voice/status", params)).status_code == 200
        [event] = calls(env.context.events)
        assert event.detail["duration"] == 5


async def test_recording_callback_retried_after_503() -> None:
    async with running(record_voicemail=True) as env:
        outcome = await env.fake.call(CONTACT)
        [(url, _)] = [(u, s) for u, s in env.fake.webhook_log if "/voice/recording" in u]
        params = {
            "AccountSid": env.fake.account_sid,
            "CallSid": outcome.call_sid,
            "RecordingSid": "RE" + "ab" * 16,
            "RecordingUrl": f"{env.fake.api_base}/2010-04-01/Accounts/{env.fake.account_sid}/Recordings/RE{'ab' * 16}",
            "RecordingStatus": "completed",
            "RecordingDuration": "3",
        }
        env.context.fail_accepts = 1
        assert (await env.fake.post_form(url, params)).status_code == 503
        assert (await env.fake.post_form(url, params)).status_code == 200
        assert len(calls(env.context.events, "voicemail")) == 2


async def test_tampered_recording_callback_query_is_refused() -> None:
    async with running(record_voicemail=True) as env:
        outcome = await env.fake.call(CONTACT)
        [url] = [u for u, _ in env.fake.webhook_log if "/voice/recording" in u]
        params = {
            "AccountSid": env.fake.account_sid,
            "CallSid": outcome.call_sid,
            "RecordingSid": outcome.recording_sid or "",
            "RecordingUrl": "https://api.twilio.com/x",
            "RecordingStatus": "completed",
        }
        signature = env.fake.signature(url, params)
        forged = url.replace("from=%2B15557654321", "from=%2B19995550000")
        response = await env.fake.post_form(forged, params, signature=signature)
        assert response.status_code == 403


async def test_absent_recording_is_not_stored() -> None:
    async with running(record_voicemail=True) as env:
        url = f"{env.base}/voice/recording?from=%2B15557654321&to=%2B15005550006"
        params = {
            "CallSid": "CA1",
            "RecordingSid": "RE1",
            "RecordingUrl": "https://api.twilio.com/r",
            "RecordingStatus": "absent",
            "ErrorCode": "16101",
        }
        assert (await env.fake.post_form(url, params)).status_code == 200
        assert env.context.events == []


async def test_call_webhook_without_callsid_is_a_400() -> None:
    async with running() as env:
        response = await env.fake.post_form(
            f"{env.base}/voice", {"From": CONTACT, "To": NUMBER, "CallStatus": "ringing"}
        )
        assert response.status_code == 400 and "CallSid" in response.text


async def test_greeting_with_markup_reaches_the_caller_intact() -> None:
    greeting = "Welcome to Smith & Sons <Plumbing>; press nothing."
    async with running(voice_greeting=greeting) as env:
        outcome = await env.fake.call(CONTACT)
        assert outcome.said[0] == greeting


def test_config_type_is_exported() -> None:
    assert config().__class__ is TwilioConfig
