"""Replay: every webhook update delivered 10 times, concurrently and out of order, gives exactly
one stored message and one reply (the journal's dedupe key under concurrent commits)."""

from __future__ import annotations

import random

import trio

from gateway.plugin import load_registry
from gateway.testing.daemon import open_gateway
from gateway.testing.fake_openai import open_fake_openai
from gateway.testing.fake_telegram import open_fake_telegram
from tests.e2e.test_telegram_daemon import ENV, TOKEN, config, free_port

UPDATES = 30
COPIES = 10


async def test_each_update_ten_times_concurrently_and_out_of_order(tmp_path):
    port = free_port()
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        text = config(tg.api_base, llm.base_url, mode="webhook", port=port).replace(
            "poll_timeout = 5",
            "poll_timeout = 5\nsend_rate_per_chat = 1000\nsend_burst_per_chat = 100\nsend_rate = 10000",
        )
        async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
            updates = [tg.push_message(500 + n % 5, f"question {n}") for n in range(UPDATES)]
            deliveries = [u for u in updates for _ in range(COPIES)]
            random.Random(7).shuffle(deliveries)
            statuses: list[int] = []

            async def deliver(update: dict) -> None:
                statuses.append(
                    await tg.post_webhook(tg.webhook_url, update, ENV["WEBHOOK_SECRET"])
                )

            async with trio.open_nursery() as nursery:
                for update in deliveries:
                    nursery.start_soon(deliver, update)
            await tg.wait_sent(UPDATES)
            await gw.wait_idle()
            stored = await gw.running.store.read(
                "n",
                lambda db: db.conn.execute(
                    "SELECT count(*) FROM messages WHERE direction = 'in'"
                ).fetchone()[0],
            )
    assert statuses == [200] * UPDATES * COPIES  # every copy acknowledged
    assert stored == UPDATES
    replies = sorted(m.text for m in tg.sent)
    assert replies == sorted(f"echo: question {n}" for n in range(UPDATES))
    assert gw.running.pipeline.counters["duplicates"] == UPDATES * (COPIES - 1)
