"""WAL checkpoints run on their own connection every CHECKPOINT_EVERY commits, not inside the
writer's commits, and the log still starts over (stays bounded) under continuous writes.

Real SQLCipher files; whether a checkpoint ran is read from the database file itself: the rows
reach it only when the log is copied into it.
"""

from __future__ import annotations

import os

import trio
import trio.testing

from gateway.store import Store, open_store
from gateway.store.checkpoint import CHECKPOINT_EVERY, WRITER_CHECKPOINT_PAGES

KEY = bytes(range(32))
NEW_KEY = bytes(range(1, 33))
ROW = 3000  # bytes of random data per row: a page of the log each
PAGE = 4096


def _create(db) -> None:
    db.conn.execute("CREATE TABLE IF NOT EXISTS fill (id INTEGER PRIMARY KEY, data BLOB)")


def _insert(db) -> None:
    db.conn.execute("INSERT INTO fill (data) VALUES (?)", (os.urandom(ROW),))


async def _settle(store: Store) -> None:
    """Return once a checkpoint that fell due has finished (no sleeping: the checkpointer's task
    is parked in its worker thread once every task is blocked, and pausing waits for it)."""
    await trio.testing.wait_all_tasks_blocked()
    async with store._checkpointer.paused():
        pass


async def _commits_until_due(store: Store) -> int:
    return CHECKPOINT_EVERY - store.stats["commits"] % CHECKPOINT_EVERY


async def test_commits_leave_the_log_alone_until_the_checkpointer_copies_it(tmp_path):
    path = tmp_path / "c.db"
    async with open_store(path, KEY) as store:
        pages = await store.write(
            "q", lambda db: db.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
        assert pages == WRITER_CHECKPOINT_PAGES
        await store.write("create", _create)
        await _settle(store)
        runs = store.stats["checkpoints"]
        before = path.stat().st_size

        for _ in range(await _commits_until_due(store) - 1):
            await store.write("insert", _insert)
        await _settle(store)
        # One commit short of due: no checkpoint, and no commit copied anything itself.
        assert store.stats["checkpoints"] == runs
        assert path.stat().st_size == before

        await store.write("insert", _insert)
        await _settle(store)
        assert store.stats["checkpoints"] == runs + 1
        assert store.stats["checkpoint_failures"] == 0
        assert store.stats["checkpoint_slowest_ms"] >= 0
        # The rows are in the database file now: about a page each.
        assert path.stat().st_size >= before + (CHECKPOINT_EVERY - 8) * PAGE


async def test_the_log_starts_over_under_continuous_writes(tmp_path):
    """6,000 commits of a page or more each: without restarts the log would pass 24 MB."""
    path = tmp_path / "c.db"
    wal = tmp_path / "c.db-wal"
    commits = 6000
    largest = 0
    async with open_store(path, KEY) as store:
        await store.write("create", _create)
        for i in range(commits):
            await store.write("insert", _insert)
            if i % 100 == 0:
                largest = max(largest, wal.stat().st_size)
        largest = max(largest, wal.stat().st_size)
        assert store.stats["checkpoints"] >= commits // CHECKPOINT_EVERY - 1
        assert store.stats["checkpoint_failures"] == 0
        assert await store.read("n", lambda db: db["fill"].count) == commits
    assert commits * PAGE > 2.5 * WRITER_CHECKPOINT_PAGES * PAGE
    assert largest <= 1.1 * WRITER_CHECKPOINT_PAGES * (PAGE + 24), largest


async def test_checkpoints_go_on_under_the_new_key_after_a_rotation(tmp_path):
    path = tmp_path / "c.db"
    async with open_store(path, KEY) as store:
        await store.write("create", _create)
        for _ in range(await _commits_until_due(store)):
            await store.write("insert", _insert)
        await _settle(store)
        runs = store.stats["checkpoints"]
        assert runs >= 1

        await store.rekey(NEW_KEY)
        before = path.stat().st_size
        for _ in range(await _commits_until_due(store)):
            await store.write("insert", _insert)
        await _settle(store)
        assert store.stats["checkpoints"] == runs + 1
        assert store.stats["checkpoint_failures"] == 0
        assert path.stat().st_size > before
    # And the file opens under the new key with every row.
    async with open_store(path, NEW_KEY) as store:
        assert await store.read("n", lambda db: db["fill"].count) == 2 * CHECKPOINT_EVERY - 1
