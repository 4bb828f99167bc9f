"""A Max user talks to the whole gateway: real config loader, SQLCipher store, pipeline, Max
plugin (polling, and webhook) and OpenAI plugin, against the fake Max Bot API and the fake OpenAI
server on 127.0.0.1."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import trio

from gateway.plugin import load_registry
from gateway.testing.daemon import free_port, http_config, open_gateway, openai_agent_config, sql
from gateway.testing.fake_max import DEFAULT_TOKEN, FakeMaxServer, open_fake_max
from gateway.testing.fake_openai import open_fake_openai

CHAT = 182182182
ENV = {"MAX_TOKEN": DEFAULT_TOKEN, "OPENAI_API_KEY": "sk-e2e", "MAX_SECRET": "e2e-Secret_42"}


def config(mx: FakeMaxServer, llm_base: str, *, mode: str = "polling", port: int = 0) -> str:
    webhook = 'webhook_secret = "env:MAX_SECRET"' if mode == "webhook" else ""
    return (
        http_config(port)
        + f"""
[channels.max]
plugin = "max"
token = "env:MAX_TOKEN"
mode = "{mode}"
api_base = "{mx.api_base}"
media_hosts = ["{mx.api_base}"]
poll_timeout = 5
{webhook}
"""
        + openai_agent_config(llm_base)
    )


async def status(gw: Any) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        answer: dict[str, Any] = (await http.get(f"{gw.running.admin_urls[0]}/status")).json()
    return answer


async def test_a_max_user_gets_answers_presses_files_and_can_unsubscribe(tmp_path: Any) -> None:
    async with open_fake_max() as mx, open_fake_openai() as llm:
        async with open_gateway(
            config(mx, llm.base_url), load_registry(), tmp_path, environ=ENV
        ) as gw:
            asked = mx.push_message(CHAT, "Вы доставляете в Казань?", first_name="Ирина")
            (reply,) = await mx.wait_sent(1)
            assert (reply.chat_id, reply.text) == (CHAT, "echo: Вы доставляете в Казань?")
            assert reply.reply_to == asked["message"]["body"]["mid"]
            assert await sql(gw, "SELECT display_name FROM contacts") == [("Ирина",)]

            # An inline button: the press is answered at Max, its label reaches the agent.
            press = mx.push_callback(CHAT, "shipping_prices", label="Shipping prices")
            (answer,) = await mx.wait_answers(1)
            assert answer.callback_id == press["callback"]["callback_id"]
            assert (await mx.wait_sent(2))[1].text == "echo: Shipping prices"

            # A deep link: /start with its payload reaches the core as a command would.
            mx.push_bot_started(CHAT, payload="promo42")
            assert (await mx.wait_sent(3))[2].text == "echo: /start promo42"

            # A photo: downloaded, sealed, the caption answered.
            photo = b"\xff\xd8\xff\xe0 fake jpeg " * 50
            mx.push_message(CHAT, "Broken?", attachments=[mx.file_attachment(photo, "image/jpeg")])
            assert (await mx.wait_sent(4))[3].text == "echo: Broken?"
            assert await sql(gw, "SELECT kind, size, sha256, state FROM attachments") == [
                ("image", len(photo), hashlib.sha256(photo).hexdigest(), "sealed")
            ]

            # /unsubscribe: the opt-out confirmation and a consents row.
            mx.push_message(CHAT, "/unsubscribe")
            confirmation = (await mx.wait_sent(5))[4]
            assert confirmation.text.startswith("You are unsubscribed")
            await gw.wait_idle()
            assert await sql(gw, "SELECT state, source FROM consents") == [
                ("withdrawn", "keyword:/unsubscribe")
            ]
            assert len(mx.sent) == 5 and len(mx.answers) == 1
            assert await sql(gw, "SELECT count(*) FROM journal") == [(5,)]


async def test_a_restart_does_not_re_read_updates(tmp_path: Any) -> None:
    async with open_fake_max() as mx, open_fake_openai() as llm:
        text = config(mx, llm.base_url)
        held = trio.Event()

        async def hold_the_next_poll(params: dict[str, Any]) -> None:
            # The poll after the first batch: the bot stops before it reaches Max, so Max has
            # not committed the batch; only the marker the plugin stored can skip it now.
            if mx.deliveries and not held.is_set():
                held.set()
                await trio.sleep_forever()

        mx.on_poll = hold_the_next_poll
        async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
            mx.push_message(CHAT, "before the restart")
            await held.wait()
            await mx.wait_sent(1)
            await gw.wait_idle()
            gw.crash()
        assert len(mx.updates) == 1  # not committed at Max
        mx.on_poll = None
        polls = len(mx.polls)
        async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
            mx.push_message(CHAT, "after the restart")
            await mx.wait_sent(2)
            await gw.wait_idle()
            assert mx.polls[polls]["marker"] is not None  # resumed from the stored marker
            assert set(mx.deliveries.values()) == {1}  # no update was handed out twice
            assert [m.text for m in mx.sent] == [
                "echo: before the restart",
                "echo: after the restart",
            ]
            assert await sql(gw, "SELECT count(*) FROM journal") == [(2,)]
            assert (await status(gw))["counters"].get("duplicates", 0) == 0


async def test_webhook_checks_the_secret_and_answers_a_replay_once(tmp_path: Any) -> None:
    port = free_port()
    async with open_fake_max() as mx, open_fake_openai() as llm:
        text = config(mx, llm.base_url, mode="webhook", port=port)
        async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
            (subscription,) = mx.subscriptions
            assert subscription["url"] == f"http://127.0.0.1:{port}/webhooks/max"
            update = mx.push_message(CHAT, "hi by webhook")
            assert await mx.post_webhook(update, secret="e2e-Secret_43") == 403
            assert await mx.post_webhook(update, secret=None) == 401
            assert await sql(gw, "SELECT count(*) FROM journal") == [(0,)]  # fail-closed
            assert await mx.deliver(update) == 200
            assert await sql(gw, "SELECT count(*) FROM journal") == [(1,)]  # before the 200
            assert await mx.post_webhook(update) == 200  # a replay
            await mx.wait_sent(1)
            await gw.wait_idle()
            assert [m.text for m in mx.sent] == ["echo: hi by webhook"]
            assert await sql(gw, "SELECT count(*) FROM journal") == [(1,)]
