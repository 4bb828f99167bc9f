"""The encrypted store: SQLCipher at rest, group commit, journal dedupe, outbox idempotency."""

from __future__ import annotations

import sqlite3

import pytest
import trio

from gateway.errors import MasterKeyError, StoreError
from gateway.messages import Inbound
from gateway.store import open_store
from gateway.store.db import connect
from gateway.store.journal import (
    Intake,
    accept_txn,
    commit_reply_txn,
    next_pending_txn,
    pending_conversations_txn,
)
from gateway.store.outbox import (
    mark_sending_txn,
    next_outbox_txn,
    record_attempt_txn,
    recover_outbox_txn,
)

KEY = bytes(range(32))


def intake(external_id: str, text: str = "hello", thread: str = "chat1") -> Intake:
    return Intake(
        f"k-{thread}-{external_id}",
        "tg",
        "default",
        Inbound(
            account="bot", external_id=external_id, thread_key=thread, sender_id="u1", text=text
        ),
    )


async def test_database_is_encrypted_at_rest(tmp_path):
    path = tmp_path / "gateway.db"
    async with open_store(path, KEY) as store:
        await store.write(
            "accept", accept_txn, [intake("1", "my secret passport number 4711")], store.sealer
        )
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("gateway.db"))
    assert b"4711" not in raw and b"passport" not in raw and b"SQLite format 3" not in raw
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(path).execute("SELECT * FROM messages").fetchall()
    with pytest.raises(MasterKeyError):
        connect(path, bytes(32))


async def test_accept_dedupes_and_creates_contact_conversation(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:
        first = await store.write("accept", accept_txn, [intake("1"), intake("2")], store.sealer)
        again = await store.write("accept", accept_txn, [intake("1")], store.sealer)
        assert [a.duplicate for a in first] == [False, False]
        assert again[0].duplicate and again[0].message_id == first[0].message_id
        assert first[0].conversation_id == first[1].conversation_id

        def counts(db):
            return {
                t: db[t].count
                for t in ("contacts", "identities", "conversations", "messages", "journal")
            }

        assert await store.read("counts", counts) == {
            "contacts": 1,
            "identities": 1,
            "conversations": 1,
            "messages": 2,
            "journal": 2,
        }


async def test_group_commit_batches_concurrent_writers(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:
        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(
                    store.write,
                    "accept",
                    accept_txn,
                    [intake(str(i), thread=f"c{i % 30}")],
                    store.sealer,
                )
        assert store.stats["writes"] >= 300
        assert store.stats["commits"] < 300  # several writes shared a commit
        assert await store.read("n", lambda db: db["journal"].count) == 300


async def test_failing_job_rolls_back_alone(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:

        def boom(db):
            db.conn.execute("INSERT INTO channel_state VALUES ('x', 'y', 'z')")
            raise RuntimeError("boom")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.write, "accept", accept_txn, [intake("1")], store.sealer)
            with pytest.raises(RuntimeError, match="boom"):
                await store.write("boom", boom)
        assert await store.read("n", lambda db: db["channel_state"].count) == 0
        assert await store.read("n", lambda db: db["journal"].count) == 1


async def test_lone_failing_job_rolls_back_without_savepoint(tmp_path):
    # A batch of one runs without a savepoint: its failure rolls the whole transaction back,
    # leaves none of its rows, and the writer goes on with the next job.
    async with open_store(tmp_path / "g.db", KEY) as store:

        def boom(db):
            db.conn.execute("INSERT INTO channel_state VALUES ('x', 'y', 'z')")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await store.write("boom", boom)
        assert await store.read("n", lambda db: db["channel_state"].count) == 0
        await store.write("accept", accept_txn, [intake("1")], store.sealer)
        assert await store.read("n", lambda db: db["journal"].count) == 1


async def test_write_soon_commits_no_later_than_the_next_write(tmp_path, caplog):
    # write_soon returns before its job runs; a write queued after it sees it committed, and
    # a failing one is logged (nobody awaits it) without touching the writes around it.
    async with open_store(tmp_path / "g.db", KEY) as store:

        def put(db, value):
            db.conn.execute("INSERT INTO channel_state VALUES ('soon', ?, 'v')", (value,))

        def boom(db):
            raise RuntimeError("soon-boom")

        store.write_soon("put", put, "a")
        store.write_soon("boom", boom)
        seen = await store.write(
            "count", lambda db: db.conn.execute("SELECT count(*) FROM channel_state").fetchone()[0]
        )
        assert seen == 1
        assert await store.read("n", lambda db: db["channel_state"].count) == 1
    assert "database write 'boom' failed: soon-boom" in caplog.text


async def test_reply_is_idempotent_per_journal_entry(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:
        await store.write("accept", accept_txn, [intake("1"), intake("2")], store.sealer)
        (cid,) = await store.read("p", pending_conversations_txn)
        work = await store.read("next", next_pending_txn, cid, 10, store.sealer)
        assert [t.text for t in work.history] == ["hello"]
        first = await store.write("reply", commit_reply_txn, work, "hi!", "ai", store.sealer)
        # The same work answered again (a crash between model call and commit) adds nothing.
        assert (
            await store.write("reply", commit_reply_txn, work, "hi again", "ai", store.sealer)
            is None
        )
        assert first is not None
        work2 = await store.read("next", next_pending_txn, cid, 10, store.sealer)
        assert [t.text for t in work2.history] == ["hello", "hi!", "hello"]
        assert await store.read("n", lambda db: db["outbox"].count) == 1


async def test_outbox_states_and_crash_recovery(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:
        await store.write("accept", accept_txn, [intake("1"), intake("2")], store.sealer)
        (cid,) = await store.read("p", pending_conversations_txn)
        for _ in range(2):
            work = await store.read("next", next_pending_txn, cid, 10, store.sealer)
            await store.write("reply", commit_reply_txn, work, "answer", "ai", store.sealer)
        first = await store.read("o", next_outbox_txn, cid, store.sealer)
        assert await store.write("claim", mark_sending_txn, first.id) == 1
        assert await store.write("claim", mark_sending_txn, first.id) == 0  # not pending any more
        # A crash now: at restart the row becomes 'unknown' and is not sent again.
        assert await store.write("recover", recover_outbox_txn) == [first.id]
        second = await store.read("o", next_outbox_txn, cid, store.sealer)
        assert second.id != first.id
        await store.write("claim", mark_sending_txn, second.id)
        await store.write("sent", record_attempt_txn, second.id, 1, "sent", external_id="tg-9")
        assert await store.read("o", next_outbox_txn, cid, store.sealer) is None
        states = await store.read(
            "s", lambda db: dict(db.conn.execute("SELECT id, state FROM outbox"))
        )
        assert states == {first.id: "unknown", second.id: "sent"}


def test_sqlite_utils_uses_sqlcipher():
    """ARCHITECTURE.md's pitfall: sqlite-utils must see sqlcipher3 as its sqlite3, or its
    drop(ignore=True) and alter=True break on SQLCipher errors."""
    import subprocess
    import sys

    # A fresh interpreter: in this one, other tests may already have imported things in order.
    for first in ("gateway.store", "gateway.store.journal", "gateway.app"):
        code = f"import {first}, sqlite_utils.utils, sqlcipher3; print(sqlite_utils.utils.sqlite3 is sqlcipher3)"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "True", first


async def test_sqlite_utils_alter_and_drop_ignore_work_on_sqlcipher(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:

        def alter(db):
            db["scratch"].insert({"a": 1})
            db["scratch"].insert({"a": 2, "b": "new column"}, alter=True)
            db["missing"].drop(ignore=True)
            return db["scratch"].columns_dict

        assert await store.write("alter", alter) == {"a": int, "b": str}


def test_busy_timeout_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAY_DB_BUSY_TIMEOUT", "0.25")
    db = connect(tmp_path / "g.db", KEY)
    try:
        assert db.conn.execute("PRAGMA busy_timeout").fetchone() == (250,)
    finally:
        db.conn.close()
    for bad in ("soon", "-1"):
        monkeypatch.setenv("GATEWAY_DB_BUSY_TIMEOUT", bad)
        with pytest.raises(StoreError, match="GATEWAY_DB_BUSY_TIMEOUT"):
            connect(tmp_path / "g.db", KEY)
