"""An SMS contact and a caller talk to the whole gateway: real config loader, SQLCipher store,
pipeline, Twilio plugin and OpenAI plugin, against the fake Twilio and the fake OpenAI server on
127.0.0.1. Webhooks are signed by the fake exactly as Twilio signs them."""

from __future__ import annotations

import json
from typing import Any

import trio

from gateway.plugin import load_registry
from gateway.testing.daemon import free_port, http_config, open_gateway, openai_agent_config, sql
from gateway.testing.fake_openai import open_fake_openai
from gateway.testing.fake_twilio import (
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    DEFAULT_NUMBER,
    FAKE_AUDIO,
    open_fake_twilio,
)

ENV = {"TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN, "OPENAI_API_KEY": "sk-e2e"}
CONTACT = "+15557654321"
WAIT = 15.0


def config(twilio_base: str, llm_base: str, port: int) -> str:
    return (
        http_config(port)
        + f"""
[channels.sms]
plugin = "twilio"
account_sid = "{DEFAULT_ACCOUNT_SID}"
auth_token = "env:TWILIO_AUTH_TOKEN"
from_number = "{DEFAULT_NUMBER}"
api_base = "{twilio_base}"
record_voicemail = true
send_rate = 100
send_rate_per_chat = 100
"""
        + openai_agent_config(llm_base)
    )


async def test_sms_gets_an_ai_reply_once_and_its_delivery_status(tmp_path: Any) -> None:
    port = free_port()
    async with open_fake_twilio() as twilio, open_fake_openai() as llm:
        text = config(twilio.api_base, llm.base_url, port)
        async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
            twilio.point_webhooks(f"http://127.0.0.1:{port}/webhooks/sms")
            params = await twilio.send_sms(CONTACT, "Do you ship to Norway?")
            assert twilio.webhook_log == [(twilio.sms_url, 200)]
            # Twilio retries (here: the same signed request again): stored and answered once.
            again = await twilio.post_form(twilio.sms_url or "", params)
            assert again.status_code == 200
            with trio.fail_after(WAIT):
                [reply] = await twilio.wait_sent(1)
            await gw.wait_idle()
            assert (reply.to, reply.from_, reply.body) == (
                CONTACT,
                DEFAULT_NUMBER,
                "echo: Do you ship to Norway?",
            )
            assert reply.status_callback == f"http://127.0.0.1:{port}/webhooks/sms/status"
            assert len(twilio.sent) == 1 and len(llm.requests) == 1
            assert await sql(gw, "SELECT count(*) FROM journal") == [(1,)]

            assert await twilio.message_status(reply.sid, "sent") == 200
            assert await twilio.message_status(reply.sid, "delivered") == 200
            assert await sql(
                gw, "SELECT external_id, platform_status FROM outbox WHERE channel = 'sms'"
            ) == [(reply.sid, "delivered")]

            # A forged callback changes nothing.
            forged = await twilio.post_form(
                f"http://127.0.0.1:{port}/webhooks/sms/status",
                {"MessageSid": reply.sid, "MessageStatus": "failed"},
                token="not-our-token",
            )
            assert forged.status_code == 403
            assert await sql(gw, "SELECT platform_status FROM outbox") == [("delivered",)]


async def test_stop_and_start_are_confirmed_by_twilio_and_recorded(tmp_path: Any) -> None:
    port = free_port()
    async with open_fake_twilio() as twilio, open_fake_openai() as llm:
        text = config(twilio.api_base, llm.base_url, port)
        async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
            twilio.point_webhooks(f"http://127.0.0.1:{port}/webhooks/sms")
            await twilio.send_sms(CONTACT, "STOP")
            await gw.wait_idle()
            # The confirmation comes from Twilio's Advanced Opt-Out, not from a second message
            # of ours (which Twilio would refuse with 21610 anyway).
            [confirmation] = twilio.auto_replies
            assert confirmation.to == CONTACT and "unsubscribed" in confirmation.body
            assert twilio.sent == [] and llm.requests == []
            assert await sql(gw, "SELECT state, source FROM consents ORDER BY id") == [
                ("withdrawn", "keyword:STOP")
            ]

            await twilio.send_sms(CONTACT, "START")
            await gw.wait_idle()
            assert [m.body.split(".")[0] for m in twilio.auto_replies] == [
                "You have successfully been unsubscribed",
                "You have successfully been re-subscribed to messages from this number",
            ]
            states = await sql(gw, "SELECT state FROM consents ORDER BY id")
            assert states == [("withdrawn",), ("granted",)]
            assert twilio.sent == [] and llm.requests == []  # confirmed once, by Twilio

            await twilio.send_sms(CONTACT, "Thanks, and do you ship to Norway?")
            with trio.fail_after(WAIT):
                [reply] = await twilio.wait_sent(1)
            assert reply.body == "echo: Thanks, and do you ship to Norway?"


async def test_a_call_is_logged_and_its_voicemail_sealed(tmp_path: Any) -> None:
    port = free_port()
    async with open_fake_twilio() as twilio, open_fake_openai() as llm:
        text = config(twilio.api_base, llm.base_url, port)
        async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
            twilio.point_webhooks(f"http://127.0.0.1:{port}/webhooks/sms")
            outcome = await twilio.call(CONTACT, recording=FAKE_AUDIO, recording_seconds=11)
            assert all(status == 200 for _, status in outcome.webhooks), outcome.webhooks
            assert "recorded" in outcome.said[1]
            events = await sql(gw, "SELECT kind, detail, id FROM conversation_events ORDER BY id")
            kinds = [kind for kind, _, _ in events]
            assert kinds == ["call", "voicemail"]  # the callbacks merged into one call row
            call = json.loads(events[0][1])
            assert call["status"] == "completed" and call["from"] == CONTACT
            assert call["duration"] == 17 and "start" in call and "end" in call
            assert json.loads(events[1][1]) == {"call_sid": outcome.call_sid, "duration": 11}
            attachments = await sql(
                gw,
                "SELECT event_id, category, kind, mime_type, size, state FROM attachments",
            )
            assert attachments == [
                (events[1][2], "voicemail", "audio", "audio/mpeg", len(FAKE_AUDIO), "sealed")
            ]
            [(path,)] = await sql(gw, "SELECT path FROM attachments")
            assert FAKE_AUDIO not in await trio.Path(path).read_bytes()  # sealed, not plain
