"""A sweep inside the running daemon while messages keep arriving: live messages are acknowledged
between the sweep's batches, answered, and left untouched; expired data is anonymised."""

from __future__ import annotations

import datetime as dt

import trio

from gateway.plugin import Registry
from gateway.privacy.retention_sweep import sweep
from gateway.store.bodies import conversation_messages
from gateway.testing.daemon import http_config, open_gateway
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider
from tests.privacy.test_retention import NOW, seed_txn

CONFIG = (
    http_config(0, public_url=False)
    + """
[channels.support]
plugin = "fake"
[agents.default]
provider = "model"
[providers.model]
plugin = "fake"
[retention]
batch_size = 10
"""
)


async def test_a_sweep_runs_while_messages_flow_and_touches_nothing_live(tmp_path):
    registry = Registry()
    registry.add("channel", "fake", FakeChannel)
    registry.add("llm", "fake", FakeProvider)
    async with open_gateway(CONFIG, registry, tmp_path) as gw:
        store = gw.running.store
        expired = [
            await store.write("seed", seed_txn, store.sealer, channel="support", days=120)
            for _ in range(30)
        ]
        channel = gw.channel("support")
        sweeping = trio.Event()
        swept = trio.Event()
        live: list[tuple[str, str]] = []
        acked_during_sweep = 0

        async def traffic() -> None:
            nonlocal acked_during_sweep
            n = 0
            while not swept.is_set():
                n += 1
                thread, text = f"live-{n % 5}", f"live message {n}"
                accepted = await channel.deliver(thread, f"user-{n % 5}", text)
                assert not accepted.duplicate
                live.append((thread, text))
                if sweeping.is_set() and not swept.is_set():
                    acked_during_sweep += 1
                if n == 3:
                    sweeping.set()  # the sweep starts once traffic is flowing

        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic)
            await sweeping.wait()
            # Times: the seeded rows are 120 days before NOW; live rows are written at the
            # real time, after NOW, so none of them can look expired to this sweep.
            result = await sweep(
                store, gw.config, sealer=store.sealer, now=NOW + dt.timedelta(minutes=1)
            )
            swept.set()
        await gw.wait_idle()

        content = {c.name: c for c in result.categories}["message_content"]
        assert content.records == 30 * 3
        assert acked_during_sweep > 0, "no live message was acknowledged during the sweep"
        batches = content.records // 10
        assert batches >= 9

        def check(db):
            conn = db.conn
            redacted_live = conn.execute(
                "SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                "WHERE c.thread_key LIKE 'live-%' AND (m.redacted_at IS NOT NULL OR m.body IS NULL)"
            ).fetchone()[0]
            texts = []
            for (cid,) in conn.execute(
                "SELECT id FROM conversations WHERE thread_key LIKE 'live-%' ORDER BY id"
            ):
                texts += [
                    (m.text, m.direction)
                    for m in conversation_messages(store.sealer, conn, cid, limit=10_000)
                ]
            left = conn.execute(
                "SELECT count(*) FROM messages WHERE redacted_at IS NULL AND conversation_id IN "
                f"({','.join(str(e.conversation_id) for e in expired)})"
            ).fetchone()[0]
            return redacted_live, texts, left

        redacted_live, texts, left = await store.read("check", check)
        assert redacted_live == 0 and left == 0
        inbound = sorted(t for t, d in texts if d == "in")
        assert inbound == sorted(text for _, text in live)
        assert sum(1 for _, d in texts if d == "out") == len(live)  # each one answered
