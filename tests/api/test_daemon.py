"""The developer API end to end: a Telegram user subscribes with /start acme to the whole
daemon (real config loader, SQLCipher store, pipeline, Telegram plugin against the fake Bot API,
hypercorn on 127.0.0.1); the developer's key sends a notification (once, though repeated with
the same Idempotency-Key) and a one-time code that verifies once; /unsubscribe -> pick ->
confirm removes the subscription, and the next notification is refused."""

from __future__ import annotations

import re
from typing import Any

import httpx
import trio

from gateway.devapi import keys
from gateway.plugin import load_registry
from gateway.testing.daemon import http_config, open_gateway, openai_agent_config
from gateway.testing.fake_openai import open_fake_openai
from gateway.testing.fake_telegram import open_fake_telegram

TOKEN = "123456:API-e2e-token"
ENV = {"TELEGRAM_TOKEN": TOKEN, "OPENAI_API_KEY": "sk-e2e"}
ANN = 4242


def config(tg_base: str, llm_base: str) -> str:
    return (
        http_config(0, public_url=False)
        + f"""
[channels.support_bot]
plugin = "telegram"
token = "env:TELEGRAM_TOKEN"
mode = "polling"
api_base = "{tg_base}"
poll_timeout = 5
subscription_menu = true
"""
        + openai_agent_config(llm_base)
        + '\n[api]\notp_message = "Your {project} login code: {code}"\n'
    )


async def reply(tg: Any, text: str) -> str:
    before = len(tg.sent_to(ANN))
    tg.push_message(ANN, text, first_name="Ann")
    with trio.fail_after(10):
        while len(tg.sent_to(ANN)) <= before:
            await tg.wait_sent(len(tg.sent) + 1)
    return str(tg.sent_to(ANN)[before].text)


async def test_subscribe_notify_code_and_unsubscribe_through_the_daemon(tmp_path):
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        async with open_gateway(
            config(tg.api_base, llm.base_url), load_registry(), tmp_path, environ=ENV
        ) as gw:
            store = gw.running.store

            def setup(db: Any) -> str:
                keys.add_project_txn(db, "acme", "Acme Shop", "test")
                keys.add_project_txn(db, "news", "Daily News", "test")
                return keys.create_key_txn(
                    db, "acme", ["notify", "otp", "subscribers"], rate=None, label=None, actor="t"
                )[1]

            key = await store.write("setup", setup)
            auth = {"Authorization": f"Bearer {key}"}
            base = gw.running.public_urls[0]
            assert "You are subscribed to Acme Shop" in await reply(tg, "/start acme")
            assert "Daily News" in await reply(tg, "/start news")
            async with httpx.AsyncClient(base_url=base, headers=auth) as http:
                page = (await http.get("/api/v1/subscribers")).json()
                (subscriber,) = [s["id"] for s in page["data"]]
                send = {"subscriber": subscriber, "text": "Your order 1042 has shipped."}
                headers = {"Idempotency-Key": "order-1042-shipped"}
                first = await http.post("/api/v1/notifications", json=send, headers=headers)
                second = await http.post("/api/v1/notifications", json=send, headers=headers)
                assert first.status_code == second.status_code == 202
                assert first.json() == second.json()
                with trio.fail_after(10):
                    while "Your order 1042 has shipped." not in [m.text for m in tg.sent_to(ANN)]:
                        await tg.wait_sent(len(tg.sent) + 1)
                # One-time code: arrives in the chat, verifies once.
                created = await http.post(
                    "/api/v1/otp",
                    json={"subscriber": subscriber},
                    headers={"Idempotency-Key": "login-1"},
                )
                assert created.status_code == 201
                with trio.fail_after(10):
                    while not any("login code" in m.text for m in tg.sent_to(ANN)):
                        await tg.wait_sent(len(tg.sent) + 1)
                (message,) = [m.text for m in tg.sent_to(ANN) if "login code" in m.text]
                code = re.search(r"(\d{6})", message).group(1)  # type: ignore[union-attr]
                check = {"id": created.json()["id"], "code": code}
                assert (await http.post("/api/v1/otp/verify", json=check)).status_code == 200
                assert (await http.post("/api/v1/otp/verify", json=check)).status_code == 409
                # Unsubscribe from acme in the chat: list, pick, confirm.
                menu = await reply(tg, "/unsubscribe")
                assert "1. Acme Shop" in menu and "2. Daily News" in menu
                assert "Unsubscribe from Acme Shop?" in await reply(tg, "1")
                assert "unsubscribed from Acme Shop" in await reply(tg, "YES")
                after = await http.post(
                    "/api/v1/notifications", json=send, headers={"Idempotency-Key": "later"}
                )
                assert after.status_code == 404
                assert after.headers["Content-Type"] == "application/problem+json"
                assert (await http.get("/api/v1/subscribers")).json()["data"] == []
            await gw.wait_idle()
            texts = [m.text for m in tg.sent_to(ANN)]
            assert texts.count("Your order 1042 has shipped.") == 1
            assert sum("login code" in t for t in texts) == 1
