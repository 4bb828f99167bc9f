"""A Telegram user talks to the whole gateway: real config loader, SQLCipher store, pipeline,
Telegram plugin (polling and webhook) and OpenAI plugin, against the fake Bot API and the fake
OpenAI server on 127.0.0.1."""

from __future__ import annotations

import httpx
import trio

from gateway.plugin import load_registry
from gateway.testing.daemon import (
    free_port,
    http_config,
    open_gateway,
    openai_agent_config,
    table_count,
)
from gateway.testing.fake_openai import open_fake_openai
from gateway.testing.fake_telegram import open_fake_telegram

TOKEN = "123456:E2E-test-token"
ENV = {"TELEGRAM_TOKEN": TOKEN, "OPENAI_API_KEY": "sk-e2e", "WEBHOOK_SECRET": "s3cret-Value_1"}


def config(tg_base: str, llm_base: str, *, mode: str = "polling", port: int = 0) -> str:
    webhook = 'webhook_secret = "env:WEBHOOK_SECRET"' if mode == "webhook" else ""
    return (
        http_config(port)
        + f"""
[channels.support_bot]
plugin = "telegram"
token = "env:TELEGRAM_TOKEN"
mode = "{mode}"
api_base = "{tg_base}"
poll_timeout = 5
{webhook}
"""
        + openai_agent_config(llm_base)
    )


async def test_polling_user_gets_model_answer_once(tmp_path):
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        async with open_gateway(
            config(tg.api_base, llm.base_url), load_registry(), tmp_path, environ=ENV
        ) as gw:
            update = tg.push_message(555, "Hello, do you ship to Norway?", first_name="Ola")
            (reply,) = await tg.wait_sent(1)
            assert reply.chat_id == 555 and reply.text == "echo: Hello, do you ship to Norway?"
            body = llm.requests[0]
            assert body["model"] == "gpt-4o-mini"
            assert body["messages"][0] == {
                "role": "system",
                "content": "You are the support assistant of Example Ltd.",
            }
            # The same message again (e.g. a lost offset): acknowledged, stored once, answered once.
            tg.redeliver(update)
            tg.push_message(555, "And to Sweden?")
            await tg.wait_sent(2)
            await gw.wait_idle()
            assert [m.text for m in tg.sent_to(555)] == [
                "echo: Hello, do you ship to Norway?",
                "echo: And to Sweden?",
            ]
            assert await table_count(gw, "journal") == 2
            contact = await gw.running.store.read(
                "c", lambda db: db.conn.execute("SELECT display_name FROM contacts").fetchall()
            )
            assert contact == [("Ola",)]
            async with httpx.AsyncClient() as http:
                status = (await http.get(f"{gw.running.admin_urls[0]}/status")).json()
            assert status["journal"] == {"done": 2} and status["outbox"] == {"sent": 2}
            assert status["counters"]["duplicates"] == 1
            assert status["channels"] == {"support_bot": {"plugin": "telegram", "enabled": True}}


async def test_webhook_checks_secret_and_dedupes(tmp_path):
    port = free_port()
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        text = config(tg.api_base, llm.base_url, mode="webhook", port=port)
        async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
            assert tg.webhook_url == f"http://127.0.0.1:{port}/webhooks/support_bot"
            assert tg.webhook_secret == ENV["WEBHOOK_SECRET"]
            update = {
                "update_id": 9001,
                "message": {
                    "message_id": 1,
                    "date": 1700000000,
                    "text": "hi there",
                    "chat": {"id": 77, "type": "private", "first_name": "Kari"},
                    "from": {"id": 77, "is_bot": False, "first_name": "Kari"},
                },
            }
            assert await tg.post_webhook(tg.webhook_url, update, "wrong-secret") == 403
            assert await tg.post_webhook(tg.webhook_url, update, None) == 401
            assert await table_count(gw, "journal") == 0  # fail-closed: nothing stored
            assert await tg.post_webhook(tg.webhook_url, update, ENV["WEBHOOK_SECRET"]) == 200
            assert await table_count(gw, "journal") == 1  # committed before the 200
            assert await tg.post_webhook(tg.webhook_url, update, ENV["WEBHOOK_SECRET"]) == 200
            await tg.wait_sent(1)
            await gw.wait_idle()
            assert [m.text for m in tg.sent] == ["echo: hi there"]
            assert await table_count(gw, "journal") == 1


async def test_model_failing_gives_fallback_and_flood_control_is_honoured(tmp_path):
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        async with open_gateway(
            config(tg.api_base, llm.base_url), load_registry(), tmp_path, environ=ENV
        ) as gw:
            llm.fail_next(1, status=429, retry_after=0.01)
            llm.fail_next(1, status=503)
            tg.fail_next("sendMessage", status=429, retry_after=1)
            tg.push_message(8, "anyone?")
            (reply,) = await tg.wait_sent(1)
            assert reply.text == "We are busy, a person will answer soon."
            assert len(llm.requests) == 2
            await gw.wait_idle()
            outcomes = await gw.running.store.read(
                "d",
                lambda db: [
                    r[0] for r in db.conn.execute("SELECT outcome FROM deliveries ORDER BY id")
                ],
            )
            assert outcomes == ["retry", "sent"]
            assert len(tg.sent) == 1


async def test_many_chats_keep_order(tmp_path):
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        text = config(tg.api_base, llm.base_url).replace(
            "poll_timeout = 5",
            "poll_timeout = 5\nsend_rate_per_chat = 1000\nsend_burst_per_chat = 100\nsend_rate = 10000",
        )
        async with open_gateway(text, load_registry(), tmp_path, environ=ENV):
            llm.latency = 0.01
            for n in range(5):
                for chat in range(20):
                    tg.push_message(100 + chat, f"c{chat} m{n}")
            with trio.fail_after(30):
                await tg.wait_sent(100)
            for chat in range(20):
                assert [m.text for m in tg.sent_to(100 + chat)] == [
                    f"echo: c{chat} m{n}" for n in range(5)
                ]
