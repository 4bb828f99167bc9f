"""Looking up a conversation's next reply costs the same however many replies were ever sent
(bench/soak.py found the outbox scanned in full at every delivery: replies/s fell ~10x by 35,000
messages). Counted in SQLite VM steps, not seconds, so the test is deterministic."""

from __future__ import annotations

import sqlite_utils

from gateway.messages import Inbound
from gateway.store import open_store
from gateway.store.journal import (
    Intake,
    accept_txn,
    commit_reply_txn,
    next_pending_txn,
    pending_conversations_txn,
)
from gateway.store.outbox import next_outbox_txn, open_conversations_txn

KEY = bytes(range(32))
SENT = 20_000
STEP = 100
"""VM instructions between two calls of the progress handler."""


def intake(external_id: str) -> Intake:
    inbound = Inbound(
        account="bot", external_id=external_id, thread_key="chat1", sender_id="u1", text="hi"
    )
    return Intake(f"k-{external_id}", "tg", "default", inbound)


def add_sent_rows_txn(db: sqlite_utils.Database, count: int) -> None:
    """``count`` delivered replies, copies of the one pending row, which is then sent too: the
    outbox of a long-lived gateway."""
    db.conn.execute(
        "WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n WHERE value < ?) "
        "INSERT INTO outbox (idempotency_key, conversation_id, message_id, channel, account, "
        "thread_key, text, state, attempts, created_at, updated_at, sent_at) "
        "SELECT 'old-' || n.value, o.conversation_id, o.message_id, o.channel, o.account, "
        "o.thread_key, o.text, 'sent', 1, o.created_at, o.updated_at, o.created_at "
        "FROM outbox o, n",
        (count,),
    )
    db.conn.execute("UPDATE outbox SET state = 'sent' WHERE idempotency_key NOT LIKE 'old-%'")


def steps_txn(db: sqlite_utils.Database, fn, *args) -> tuple[object, int]:  # type: ignore[no-untyped-def]
    """Run ``fn(db, *args)``; return its result and how many STEPs of VM work it took."""
    calls = 0

    def tick() -> int:
        nonlocal calls
        calls += 1
        return 0

    db.conn.set_progress_handler(tick, STEP)
    try:
        return fn(db, *args), calls
    finally:
        db.conn.set_progress_handler(None, STEP)


async def test_next_reply_lookup_does_not_scan_sent_replies(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:
        await store.write("accept", accept_txn, [intake("1")], store.sealer)
        (cid,) = await store.read("p", pending_conversations_txn)
        work = await store.read("next", next_pending_txn, cid, 10, store.sealer)
        await store.write("reply", commit_reply_txn, work, "answer", "ai", store.sealer)
        _, before = await store.write("steps", steps_txn, next_outbox_txn, cid, store.sealer)
        await store.write("history", add_sent_rows_txn, SENT)
        await store.write("accept", accept_txn, [intake("2")], store.sealer)
        work = await store.read("next", next_pending_txn, cid, 10, store.sealer)
        await store.write("reply", commit_reply_txn, work, "answer 2", "ai", store.sealer)
        item, after = await store.write("steps", steps_txn, next_outbox_txn, cid, store.sealer)
        assert item is not None and item.text == "answer 2"
        # A scan costs several steps per row: 20,000 rows are >> 200 progress calls.
        assert after <= before + 2, (before, after)
        opened, steps = await store.write("steps", steps_txn, open_conversations_txn)
        assert opened == [cid] and steps <= before + 2


def add_messages_txn(db: sqlite_utils.Database, conversation_id: int, count: int) -> None:
    """``count`` earlier messages in the conversation, inbound and outbound in turn: a chat
    that has gone on for months."""
    db.conn.execute(
        "WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n WHERE value < ?) "
        "INSERT INTO messages (conversation_id, direction, text, author, created_at) "
        "SELECT ?, CASE value % 2 WHEN 0 THEN 'in' ELSE 'out' END, 'old', 'contact', "
        "'2026-01-01T00:00:00.000000+00:00' FROM n",
        (count, conversation_id),
    )


async def test_next_reply_lookup_does_not_walk_the_conversations_messages(tmp_path):
    # The reply's "last inbound at" (24-hour windows) was a max over every message of the
    # conversation: bench/soak.py's writer spent half its time there by 110k messages.
    async with open_store(tmp_path / "g.db", KEY) as store:
        await store.write("accept", accept_txn, [intake("1")], store.sealer)
        (cid,) = await store.read("p", pending_conversations_txn)
        work = await store.read("next", next_pending_txn, cid, 10, store.sealer)
        await store.write("reply", commit_reply_txn, work, "answer", "ai", store.sealer)
        first, before = await store.write("steps", steps_txn, next_outbox_txn, cid, store.sealer)
        await store.write("history", add_messages_txn, cid, SENT)
        item, after = await store.write("steps", steps_txn, next_outbox_txn, cid, store.sealer)
        assert after <= before + 2, (before, after)
        # Still the latest inbound time, even when a late delivery is stored after a newer one.
        assert item is not None and first is not None
        assert item.last_inbound_at == first.last_inbound_at
        await store.write(
            "late",
            lambda db: db.conn.execute(
                "UPDATE messages SET platform_sent_at = '2030-01-01T00:00:00+00:00' "
                "WHERE id = (SELECT min(id) FROM messages WHERE conversation_id = ? "
                "AND direction = 'in')",
                (cid,),
            ),
        )
        item = await store.read("next", next_outbox_txn, cid, store.sealer)
        assert item is not None and item.last_inbound_at == "2030-01-01T00:00:00+00:00"
