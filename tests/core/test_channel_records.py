"""What channels record besides messages, through the whole in-process daemon (real SQLCipher
store): sealed attachments, the consent ledger and opt-out words, platform delivery statuses,
call-like events, and failed sends shown in the conversation."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import trio

from gateway.errors import SendError
from gateway.messages import Attachment, Event
from gateway.privacy.sealing import KeyDestroyed
from gateway.store.outbox import OptedOut
from gateway.store.records import (
    attachments_txn,
    consent_ledger_txn,
    events_txn,
    open_attachment_txn,
)
from gateway.testing.daemon import http_config, open_gateway
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider

CONFIG = (
    http_config(0, public_url=False)
    + """
[channels.support]
plugin = "fake"
{extra}
[agents.default]
provider = "model"
system_prompt = "Be brief."
max_attempts = 1
fallback_text = "Sorry."
[providers.model]
plugin = "fake"
"""
)


def config(extra: str = "") -> str:
    return CONFIG.format(extra=extra)


async def sql(gw, query: str, *args):
    return await gw.running.store.read(
        "test query", lambda db: db.conn.execute(query, args).fetchall()
    )


async def test_attachment_bytes_are_sealed_per_contact_and_shredded_with_the_key(
    tmp_path, fake_registry
):
    secret = b"PASSPORT-SCAN-" + bytes(range(256)) * 8
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        accepted = await channel.deliver(
            "chat1",
            "alice",
            "my passport",
            attachments=(
                Attachment("image", "image/jpeg", "scan.jpg", data=secret),
                Attachment("video", url="https://platform.example/media/1"),
            ),
        )
        store = gw.running.store
        stored = await store.read("att", attachments_txn, accepted.conversation_id)
        assert [(a.kind, a.state, a.size) for a in stored] == [
            ("image", "sealed", len(secret)),
            ("video", "unavailable", None),
        ]
        assert stored[1].source_ref == "https://platform.example/media/1"
        (path,) = [p for p in (tmp_path / "data" / "attachments").rglob("*.sealed")]
        on_disk = path.read_bytes()
        assert on_disk.startswith(b"SGA1") and b"PASSPORT" not in on_disk
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        opened = await store.read("open", open_attachment_txn, store.sealer, stored[0].id)
        assert opened == secret

        # Crypto-shredding: destroy the contact's key; the same file no longer opens.
        contact = (await sql(gw, "SELECT contact_id FROM conversations"))[0][0]
        await store.write("shred", lambda db: store.sealer.destroy(db.conn, contact))
        with pytest.raises(KeyDestroyed):
            await store.read("open", open_attachment_txn, store.sealer, stored[0].id)
        assert path.read_bytes() == on_disk  # the ciphertext is all that is left


async def test_stop_is_confirmed_recorded_and_blocks_notifications_until_start(
    tmp_path, fake_registry
):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        provider: FakeProvider = gw.provider()
        pipeline = gw.running.pipeline
        await channel.deliver("chat1", "alice", "/start")  # a first /start is no consent event
        await channel.wait_sent(1)
        assert len(provider.requests) == 1
        await pipeline.send_notification(
            "support", "fake-bot", "chat1", "Your order shipped", key="n1"
        )
        await channel.wait_sent(2)
        assert channel.sent[1].purpose == "notification"

        await channel.deliver("chat1", "alice", "  Stop! ")
        sent = await channel.wait_sent(3)
        assert sent[2].text.startswith("You are unsubscribed")
        assert sent[2].purpose == "transactional" and sent[2].author == "notice"
        assert len(provider.requests) == 1  # the model never saw the opt-out
        with pytest.raises(OptedOut):
            await pipeline.send_notification("support", "fake-bot", "chat1", "Sale!", key="n2")

        # Asking a question after STOP still gets an answer: that is a reply, not a notification.
        await channel.deliver("chat1", "alice", "what are your hours?")
        await channel.wait_sent(4)
        assert len(provider.requests) == 2

        await channel.deliver("chat1", "alice", "START")
        sent = await channel.wait_sent(5)
        assert sent[4].text == "You are subscribed again."
        await pipeline.send_notification("support", "fake-bot", "chat1", "Welcome back", key="n3")
        await channel.wait_sent(6)
        # The same key again is the same notification, not a second one.
        await pipeline.send_notification("support", "fake-bot", "chat1", "Welcome back", key="n3")
        await gw.wait_idle()
        assert len(channel.sent) == 6

        ledger = await gw.running.store.read("ledger", consent_ledger_txn, None)
        assert [(r["state"], r["source"], r["sender_id"]) for r in ledger] == [
            ("withdrawn", "keyword:Stop!", "alice"),
            ("granted", "keyword:START", "alice"),
        ]


async def test_channel_keywords_per_language_and_empty_reply(tmp_path, fake_registry):
    extra = 'opt_out_keywords = { ru = ["хватит"] }\nopt_out_reply = ""'
    async with open_gateway(config(extra), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        await channel.deliver("chat1", "ivan", "Хватит")
        await channel.deliver("chat1", "ivan", "СТОП")
        await gw.wait_idle()
        assert channel.sent == []  # no confirmation configured, and the AI stayed silent
        assert gw.provider().requests == []
        ledger = await gw.running.store.read("ledger", consent_ledger_txn, "support")
        assert [r["state"] for r in ledger] == ["withdrawn", "withdrawn"]


async def test_a_notification_queued_before_an_opt_out_is_not_sent(tmp_path, fake_registry):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        channel.send_gate = gate = trio.Event()
        await channel.deliver("chat1", "alice", "hello")
        await channel.at_gate.wait()  # the reply is held in flight...
        await gw.running.pipeline.send_notification(
            "support", "fake-bot", "chat1", "Flash sale", key="late"
        )  # ...the notification queues behind it, and then the contact opts out
        await channel.deliver("chat1", "alice", "unsubscribe")
        gate.set()
        await channel.wait_sent(2)
        await gw.wait_idle()
        assert [o.purpose for o in channel.sent] == ["reply", "transactional"]
        (row,) = await sql(
            gw, "SELECT state, last_error FROM outbox WHERE purpose = 'notification'"
        )
        assert row[0] == "failed" and "unsubscribed" in row[1]


async def test_platform_statuses_move_forward_and_failures_show_in_the_conversation(
    tmp_path, fake_registry
):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        context = channel.context
        await channel.deliver("chat1", "alice", "hello")
        await channel.wait_sent(1)
        await gw.wait_idle()
        at = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
        assert await context.update_delivery("out1", "read", at=at)
        assert await context.update_delivery("out1", "delivered")  # late, out of order
        assert not await context.update_delivery("nope", "delivered")
        (row,) = await sql(gw, "SELECT platform_status, platform_status_at FROM outbox")
        assert row == ("read", at.isoformat())
        outcomes = await sql(gw, "SELECT outcome FROM deliveries ORDER BY id")
        assert [o for (o,) in outcomes] == ["sent", "platform:read", "platform:delivered"]
        assert await context.update_delivery("out1", "failed", detail="131047 re-engagement")
        events = await gw.running.store.read("events", events_txn, 1)
        assert [(e["kind"], e["reason"]) for e in events] == [
            ("delivery_failed", "131047 re-engagement")
        ]


async def test_a_permanently_failed_send_is_an_event_of_the_conversation(tmp_path, fake_registry):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        channel.fail_next(
            SendError("outside the 24-hour window; set window_template", permanent=True)
        )
        accepted = await channel.deliver("chat1", "alice", "hello")
        await gw.wait_idle()
        events = await gw.running.store.read("events", events_txn, accepted.conversation_id)
        assert [(e["kind"], e["actor"], e["reason"]) for e in events] == [
            ("send_failed", "gateway", "outside the 24-hour window; set window_template")
        ]


async def test_events_merge_by_key_and_keep_their_recording_once(tmp_path, fake_registry):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        context = gw.channel("support").context
        call = Event("fake-bot", "+15550001", "+15550001", "call", "CA1", {"status": "ringing"})
        first = await context.record_event(call)
        again = await context.record_event(
            Event(
                "fake-bot",
                "+15550001",
                "+15550001",
                "call",
                "CA1",
                {"status": "completed", "duration": 42},
            )
        )
        assert first == again
        mail = Event(
            "fake-bot",
            "+15550001",
            "+15550001",
            "voicemail",
            "RE1",
            {"call_sid": "CA1"},
            attachments=(Attachment("audio", "audio/mpeg", data=b"ID3 voice"),),
            category="voicemail",
        )
        await context.record_event(mail)
        await context.record_event(mail)  # the recording callback, retried
        events = await gw.running.store.read("events", events_txn, 1)
        assert [(e["kind"], e["detail"]) for e in events] == [
            ("call", {"status": "completed", "duration": 42}),
            ("voicemail", {"call_sid": "CA1"}),
        ]
        stored = await gw.running.store.read("att", attachments_txn, 1)
        assert [(a.category, a.kind, a.state, a.event_id) for a in stored] == [
            ("voicemail", "audio", "sealed", events[1]["id"])
        ]
        assert json.loads(json.dumps(events[0]["detail"]))["duration"] == 42


async def test_conversations_show_lists_attachments_and_events(tmp_path, fake_registry, capsys):
    from gateway import conversations_cli

    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        accepted = await channel.deliver(
            "chat1", "alice", "photo", attachments=(Attachment("image", "image/png", data=b"png"),)
        )
        await channel.context.record_event(
            Event(
                "fake-bot", "chat1", "alice", "call", "CA9", {"duration": 7, "status": "completed"}
            )
        )
        await gw.wait_idle()
        await gw.running.store.read(
            "show", conversations_cli._show, gw.running.store.sealer, accepted.conversation_id
        )
    shown = capsys.readouterr().out
    assert "#1 image image/png  (3 bytes, sealed, retention category attachments)" in shown
    assert "call by contact duration=7 status=completed" in shown


async def test_a_status_that_arrives_before_the_send_returned_is_applied_after(
    tmp_path, fake_registry
):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        channel.send_gate = gate = trio.Event()
        await channel.deliver("chat1", "alice", "hello")
        await channel.at_gate.wait()
        # The platform reports on "out1" while our send call has not returned yet.
        assert not await channel.context.update_delivery("out1", "delivered")
        gate.set()
        await channel.wait_sent(1)
        await gw.wait_idle()
        (row,) = await sql(gw, "SELECT platform_status FROM outbox")
        assert row == ("delivered",)
        assert await sql(gw, "SELECT count(*) FROM early_statuses") == [(0,)]
