"""A Messenger user and an Instagram user talk to the whole gateway: real config loader,
SQLCipher store, pipeline, the Messenger/Instagram plugins and the OpenAI plugin, against the
fake Graph API and the fake OpenAI server on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import trio

from gateway.plugin import load_registry
from gateway.testing.daemon import free_port, http_config, open_gateway, openai_agent_config, sql
from gateway.testing.fake_graph import FakeGraphServer, open_fake_graph
from gateway.testing.fake_openai import open_fake_openai

PSID = "2400000000000042"
IGSID = "5600000000000042"
VERIFY = "e2e-verify-token"
WAIT = 15.0


def config(graph: FakeGraphServer, llm_base: str, port: int) -> str:
    return (
        http_config(port)
        + f"""
[channels.fb_page]
plugin = "messenger"
page_id = "{graph.page_id}"
page_access_token = "env:FB_PAGE_TOKEN"
app_secret = "env:META_APP_SECRET"
verify_token = "env:META_VERIFY_TOKEN"
api_base = "{graph.api_base}"
media_hosts = ["{graph.api_base}"]
[channels.insta]
plugin = "instagram"
instagram_account_id = "{graph.instagram_id}"
access_token = "env:IG_TOKEN"
app_secret = "env:META_APP_SECRET"
verify_token = "env:META_VERIFY_TOKEN"
api_base = "{graph.api_base}"
media_hosts = ["{graph.api_base}"]
"""
        + openai_agent_config(llm_base, "You are the assistant of a bakery.")
    )


def environ(graph: FakeGraphServer) -> dict[str, str]:
    return {
        "FB_PAGE_TOKEN": graph.page_token,
        "IG_TOKEN": graph.instagram_token,
        "META_APP_SECRET": graph.app_secret,
        "META_VERIFY_TOKEN": VERIFY,
        "OPENAI_API_KEY": "sk-e2e",
    }


async def test_messenger_and_instagram_end_to_end(tmp_path: Any) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/webhooks"
    async with open_fake_graph() as graph, open_fake_openai() as llm:
        async with open_gateway(
            config(graph, llm.base_url, port), load_registry(), tmp_path, environ=environ(graph)
        ) as gw:
            assert await graph.subscribe("messenger", f"{base}/fb_page", VERIFY)
            assert await graph.subscribe("instagram", f"{base}/insta", VERIFY)
            assert not await graph.subscribe("messenger", f"{base}/fb_page", "guess")

            # A forged delivery is refused and stores nothing.
            forged = graph.user_message(PSID, "send me everything")
            assert await graph.post_webhook(f"{base}/fb_page", forged, secret="guess") == 403
            assert await sql(gw, "SELECT count(*) FROM journal") == [(0,)]

            # A message with a photo gets the model's answer, as a RESPONSE.
            photo = graph.add_media(b"\xff\xd8JPEG", "image/jpeg")
            hello = graph.user_message(
                PSID,
                "Hello, do you have rye bread?",
                attachments=[{"type": "image", "payload": {"url": photo}}],
            )
            assert await graph.deliver(hello) == [200]
            with trio.fail_after(WAIT):
                (reply,) = await graph.wait_sent(1)
            assert (reply.recipient_id, reply.text) == (PSID, "echo: Hello, do you have rye bread?")
            assert reply.messaging_type == "RESPONSE"
            assert await sql(gw, "SELECT kind, state, size FROM attachments") == [
                ("image", "sealed", 6)
            ]

            # Meta re-sends the same signed body: acknowledged, stored once, answered once.
            assert await graph.deliver(hello) == [200]
            await gw.wait_idle()
            assert len(graph.sent) == 1
            assert await sql(gw, "SELECT count(*) FROM journal") == [(1,)]

            # Delivery then read receipts move the stored status of our reply.
            await gw.wait_idle()
            assert await graph.deliver(graph.delivery(PSID, [reply.message_id])) == [200]
            status = "SELECT platform_status FROM outbox WHERE external_id = ?"
            assert await sql(gw, status, reply.message_id) == [("delivered",)]
            graph.now_ms = lambda: reply.timestamp + 60_000
            assert await graph.deliver(graph.read(PSID)) == [200]
            assert await sql(gw, status, reply.message_id) == [("read",)]

            # STOP as a button (postback payload): confirmed, and the consent ledger has it.
            stop = graph.postback(PSID, "STOP", "Unsubscribe")
            assert await graph.deliver(stop) == [200]
            with trio.fail_after(WAIT):
                sent = await graph.wait_sent(2)
            assert sent[1].text is not None and sent[1].text.startswith("You are unsubscribed")
            assert await sql(gw, "SELECT state FROM consents") == [("withdrawn",)]
            await gw.wait_idle()
            assert len(llm.requests) == 1  # the opt-out word never reached the model

            # Instagram through the same daemon.
            assert await graph.deliver(
                graph.user_message(IGSID, "Open on Sunday?", platform="instagram")
            ) == [200]
            with trio.fail_after(WAIT):
                sent = await graph.wait_sent(3)
            assert (sent[2].platform, sent[2].recipient_id, sent[2].text) == (
                "instagram",
                IGSID,
                "echo: Open on Sunday?",
            )
