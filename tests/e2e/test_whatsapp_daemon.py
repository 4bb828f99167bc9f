"""A WhatsApp user talks to the whole gateway: real config loader, SQLCipher store, pipeline,
WhatsApp plugin and OpenAI plugin, against the fake Cloud API and the fake OpenAI server on
127.0.0.1. Meta's side (signed webhooks, retries until 2xx) is played by the fake."""

from __future__ import annotations

import hashlib
from typing import Any

from gateway.plugin import load_registry
from gateway.testing.daemon import free_port, http_config, open_gateway, openai_agent_config, sql
from gateway.testing.fake_openai import open_fake_openai
from gateway.testing.fake_whatsapp import (
    DEFAULT_APP_SECRET,
    DEFAULT_PHONE_NUMBER_ID,
    DEFAULT_TOKEN,
    open_fake_whatsapp,
)

USER = "4791234567"
ENV = {
    "WHATSAPP_TOKEN": DEFAULT_TOKEN,
    "WHATSAPP_APP_SECRET": DEFAULT_APP_SECRET,
    "WHATSAPP_VERIFY_TOKEN": "e2e-verify-Token",
    "OPENAI_API_KEY": "sk-e2e",
}


def config(wa_base: str, llm_base: str, port: int) -> str:
    return (
        http_config(port)
        + f"""
[channels.wa]
plugin = "whatsapp"
phone_number_id = "{DEFAULT_PHONE_NUMBER_ID}"
access_token = "env:WHATSAPP_TOKEN"
app_secret = "env:WHATSAPP_APP_SECRET"
verify_token = "env:WHATSAPP_VERIFY_TOKEN"
api_base = "{wa_base}"
"""
        + openai_agent_config(llm_base)
    )


async def test_whatsapp_user_gets_answers_statuses_and_can_opt_out(tmp_path: Any) -> None:
    port = free_port()
    async with open_fake_whatsapp() as wa, open_fake_openai() as llm:
        text = config(wa.api_base, llm.base_url, port)
        async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
            wa.webhook_url = f"http://127.0.0.1:{port}/webhooks/wa"
            assert await wa.verify_webhook("e2e-verify-Token", challenge="87") == (200, "87")
            assert (await wa.verify_webhook("wrong"))[0] == 403

            # Only Meta's signature gets in; nothing is stored otherwise (fail-closed).
            note = wa.push_message(USER, "Do you ship to Norway?", name="Kari Nordmann")
            assert await wa.post_webhook(note, signature=None) == 401
            assert await wa.post_webhook(note, signature=wa.sign(b"{}")) == 403
            assert await sql(gw, "SELECT count(*) FROM journal") == [(0,)]

            assert await wa.deliver(note) == 200
            assert await sql(gw, "SELECT count(*) FROM journal") == [(1,)]  # before the 200
            assert await wa.deliver(note) == 200  # Meta's retry of the same notification
            (reply,) = await wa.wait_sent(1)
            assert (reply.to, reply.text) == (USER, "echo: Do you ship to Norway?")
            inbound_id = note["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
            assert reply.reply_to == inbound_id
            await gw.wait_idle()
            assert len(wa.sent) == 1 and await sql(gw, "SELECT count(*) FROM journal") == [(1,)]
            assert await sql(gw, "SELECT display_name FROM contacts") == [("Kari Nordmann",)]

            # Meta's status callbacks land on the outbox row of that reply.
            for status in ("sent", "delivered", "read"):
                assert await wa.deliver(wa.status(reply.message_id, status)) == 200
            assert await sql(
                gw,
                "SELECT state, platform_status FROM outbox WHERE external_id = ?",
                reply.message_id,
            ) == [("sent", "read")]

            # A photo with a caption: the bytes are sealed, the caption answered.
            photo = b"\xff\xd8\xff\xe0 fake jpeg " * 50
            assert (
                await wa.deliver(
                    wa.push_media(USER, "image", photo, "image/jpeg", caption="Broken?")
                )
                == 200
            )
            await wa.wait_sent(2)
            assert wa.sent[1].text == "echo: Broken?"
            assert await sql(gw, "SELECT kind, size, sha256, state FROM attachments") == [
                ("image", len(photo), hashlib.sha256(photo).hexdigest(), "sealed")
            ]

            # STOP: a confirmation and a consents row.
            assert await wa.deliver(wa.push_message(USER, "STOP")) == 200
            (*_, confirmation) = await wa.wait_sent(3)
            assert confirmation.text.startswith("You are unsubscribed")
            await gw.wait_idle()
            consents = await sql(gw, "SELECT state, source FROM consents")
            assert consents == [("withdrawn", "keyword:STOP")]
            assert len(wa.sent) == 3

            # A failed delivery reported later is recorded and shown in the conversation.
            failed = [{"code": 131026, "title": "Message undeliverable"}]
            assert (
                await wa.deliver(wa.status(confirmation.message_id, "failed", errors=failed)) == 200
            )
            assert await sql(
                gw,
                "SELECT platform_status FROM outbox WHERE external_id = ?",
                confirmation.message_id,
            ) == [("failed",)]
            events = await sql(
                gw, "SELECT kind, reason FROM conversation_events WHERE kind = 'delivery_failed'"
            )
            assert events == [("delivery_failed", "131026 Message undeliverable")]
