"""Replay on every webhook channel, not only Telegram's (test_replay.py): each platform's update
delivered 10 times, concurrently and out of order, through the real daemon (config loader,
SQLCipher store, pipeline, the channel plugin, the openai provider) against the platform's fake
on 127.0.0.1. Each copy is acknowledged; each message is stored once and answered once. Every
platform names its messages differently (WhatsApp's wamid, Meta's mid, Twilio's MessageSid,
Max's mid), so each plugin's dedupe key is what is under test."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from gateway.plugin import load_registry
from gateway.testing.daemon import free_port, open_gateway, sql
from gateway.testing.fake_graph import open_fake_graph
from gateway.testing.fake_max import open_fake_max
from gateway.testing.fake_openai import open_fake_openai
from gateway.testing.fake_twilio import open_fake_twilio
from gateway.testing.fake_whatsapp import open_fake_whatsapp
from tests.e2e import test_max_daemon as max_e2e
from tests.e2e import test_messenger_daemon as messenger_e2e
from tests.e2e import test_twilio_daemon as twilio_e2e
from tests.e2e import test_whatsapp_daemon as whatsapp_e2e

UPDATES = 20
USERS = 4
COPIES = 10
WAIT = 60.0
NO_SEND_LIMITS = "send_rate = 10000\nsend_rate_per_chat = 1000\nsend_burst_per_chat = 100\n"


def question(n: int) -> str:
    return f"question {n}"


def without_send_limits(text: str, table: str) -> str:
    """The config with the channel's send rates lifted (WhatsApp allows one message per user
    every 6 s): the test waits for replies, not for rate limits."""
    header = f"[channels.{table}]\n"
    assert header in text, text
    return text.replace(header, header + NO_SEND_LIMITS, 1)


async def replay_and_check(
    gw: Any,
    updates: Sequence[Any],
    post: Callable[[Any], Awaitable[int]],
    wait_sent: Callable[[int], Awaitable[Sequence[Any]]],
    text_of: Callable[[Any], str],
) -> None:
    deliveries = [u for u in updates for _ in range(COPIES)]
    random.Random(11).shuffle(deliveries)
    statuses: list[int] = []

    async def deliver(update: Any) -> None:
        statuses.append(await post(update))

    async with trio.open_nursery() as nursery:
        for update in deliveries:
            nursery.start_soon(deliver, update)
    assert statuses == [200] * len(deliveries)  # every copy acknowledged
    with trio.fail_after(WAIT):
        await wait_sent(len(updates))
    await gw.wait_idle()
    sent = await wait_sent(len(updates))
    assert sorted(text_of(m) for m in sent) == sorted(
        f"echo: {question(n)}" for n in range(len(updates))
    )
    assert await sql(gw, "SELECT count(*) FROM messages WHERE direction = 'in'") == [
        (len(updates),)
    ]
    assert await sql(gw, "SELECT count(*) FROM journal") == [(len(updates),)]
    assert gw.running.pipeline.counters["duplicates"] == len(updates) * (COPIES - 1)


async def test_whatsapp_notifications_ten_times_out_of_order(tmp_path: Any) -> None:
    port = free_port()
    async with open_fake_whatsapp() as wa, open_fake_openai() as llm:
        text = without_send_limits(whatsapp_e2e.config(wa.api_base, llm.base_url, port), "wa")
        async with open_gateway(text, load_registry(), tmp_path, environ=whatsapp_e2e.ENV) as gw:
            wa.webhook_url = f"http://127.0.0.1:{port}/webhooks/wa"
            notes = [wa.push_message(f"47900000{n % USERS}", question(n)) for n in range(UPDATES)]
            await replay_and_check(gw, notes, wa.post_webhook, wa.wait_sent, lambda m: m.text)


async def test_messenger_events_ten_times_out_of_order(tmp_path: Any) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/fb_page"
    async with open_fake_graph() as graph, open_fake_openai() as llm:
        text = without_send_limits(messenger_e2e.config(graph, llm.base_url, port), "fb_page")
        environ = messenger_e2e.environ(graph)
        async with open_gateway(text, load_registry(), tmp_path, environ=environ) as gw:
            bodies = [
                graph.user_message(f"24000000000000{n % USERS}", question(n))
                for n in range(UPDATES)
            ]

            async def post(body: Any) -> int:
                return await graph.post_webhook(url, body)

            await replay_and_check(gw, bodies, post, graph.wait_sent, lambda m: m.text)


async def test_twilio_sms_ten_times_out_of_order(tmp_path: Any) -> None:
    port = free_port()
    async with open_fake_twilio() as twilio, open_fake_openai() as llm:
        text = without_send_limits(
            twilio_e2e.config(twilio.api_base, llm.base_url, port).replace(
                "send_rate = 100\nsend_rate_per_chat = 100\n", ""
            ),
            "sms",
        )
        async with open_gateway(text, load_registry(), tmp_path, environ=twilio_e2e.ENV) as gw:
            twilio.point_webhooks(f"http://127.0.0.1:{port}/webhooks/sms")
            forms = [
                twilio.incoming_message(f"+1555000000{n % USERS}", question(n))
                for n in range(UPDATES)
            ]

            async def post(params: dict[str, str]) -> int:
                return (await twilio.post_form(twilio.sms_url or "", params)).status_code

            await replay_and_check(gw, forms, post, twilio.wait_sent, lambda m: m.body)


async def test_max_updates_ten_times_out_of_order(tmp_path: Any) -> None:
    port = free_port()
    async with open_fake_max() as mx, open_fake_openai() as llm:
        text = without_send_limits(
            max_e2e.config(mx, llm.base_url, mode="webhook", port=port), "max"
        )
        async with open_gateway(text, load_registry(), tmp_path, environ=max_e2e.ENV) as gw:
            updates = [mx.push_message(182182180 + n % USERS, question(n)) for n in range(UPDATES)]
            await replay_and_check(gw, updates, mx.post_webhook, mx.wait_sent, lambda m: m.text)
