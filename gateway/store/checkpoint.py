"""WAL checkpoints on their own connection, off the writer's commits.

By default SQLite checkpoints a WAL database inside a COMMIT: the commit that takes the log past
``wal_autocheckpoint`` pages (1,000) copies the whole log into the database file and syncs both
before it returns. On the group-commit writer that stalled every job queued behind it, several
times a second under load: in ``bench/load.py --webhook --rate 120 --model-latency 200`` each
writer round trip's p99 was 5-7 ms and the reply's added p99 23-32 ms; with the checkpoints
here, 16-21 ms (bench/README, "Checkpoints off the writer", session 10).

Every :data:`CHECKPOINT_EVERY` commits the writer tells the event loop, which runs one
``PRAGMA wal_checkpoint(PASSIVE)`` on this module's connection in a worker thread: it copies the
log into the database and never blocks the writer or a reader. It cannot start the log over,
though: SQLite does that only at the start of a write transaction that finds the whole log
copied, and under load the writer has always committed more while a checkpoint ran. So the
writer's connection keeps ``wal_autocheckpoint`` at :data:`WRITER_CHECKPOINT_PAGES`: the commit
that takes the log past it copies what is left (the few hundred pages committed during the last
checkpoint here) and the next transaction starts the log over. If the checkpoints here stop (a
key rotation pauses them, one fails), that commit does all the work, as SQLite does by default.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import sqlite_utils
import trio

from gateway.store.db import connect

log = logging.getLogger("gateway.store")

CHECKPOINT_EVERY = 128
"""Commits between checkpoints: at 120 messages/s (five commits each) about four a second, each
copying a few hundred pages. Once a second, the added p99 varied more (16-30 ms, bench/README)."""

WRITER_CHECKPOINT_PAGES = 2_000
"""``wal_autocheckpoint`` on the writer's connection: the log stays under ~8 MB. With 10,000 the
added p99 was the same and the log grew to 40 MB between restarts."""


class Checkpointer:
    """Runs a passive WAL checkpoint whenever :meth:`due` was called since the last one."""

    def __init__(self, path: Path, key: bytes) -> None:
        self._path = path
        self._key = key
        self._db: sqlite_utils.Database | None = None
        self._due = trio.Event()
        # One checkpoint at a time; holding it (paused()) keeps them from running.
        self._limiter = trio.CapacityLimiter(1)
        self.runs = 0
        self.failures = 0
        self.slowest = 0.0
        """Seconds the slowest checkpoint took."""

    def due(self) -> None:
        """Ask for a checkpoint (from the event loop; the writer calls it every
        :data:`CHECKPOINT_EVERY` commits)."""
        self._due.set()

    async def run(self) -> None:
        """Run checkpoints as they fall due, until cancelled. Never raises: a failed checkpoint
        is logged and retried at the next one due (the writer's own checkpoints bound the log
        meanwhile)."""
        while True:
            await self._due.wait()
            self._due = trio.Event()
            await trio.to_thread.run_sync(self._checkpoint, limiter=self._limiter)

    def _checkpoint(self) -> None:
        started = time.perf_counter()
        try:
            if self._db is None:
                self._db = connect(self._path, self._key)
            self._db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except Exception as exc:
            self.failures += 1
            log.warning("WAL checkpoint failed (%s); retried after the next commits", exc)
            self._close_sync()
            return
        elapsed = time.perf_counter() - started
        self.runs += 1
        self.slowest = max(self.slowest, elapsed)
        if elapsed > 1.0:
            log.warning("slow WAL checkpoint: %.2fs", elapsed)

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No checkpoint runs inside; its connection is closed, so one opened after
        :meth:`use_key` uses the new key (a key rotation re-encrypts the database)."""
        holder = object()
        await self._limiter.acquire_on_behalf_of(holder)
        try:
            self._close_sync()
            yield
        finally:
            self._limiter.release_on_behalf_of(holder)

    def use_key(self, key: bytes) -> None:
        self._key = key

    async def close(self) -> None:
        """Wait for a checkpoint in progress and close the connection (before the writer's, so
        that the writer's connection, closing last, checkpoints and removes the log)."""
        async with self.paused():
            pass

    def _close_sync(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            with contextlib.suppress(Exception):
                db.conn.close()

    @property
    def stats(self) -> dict[str, int]:
        return {
            "checkpoints": self.runs,
            "checkpoint_failures": self.failures,
            "checkpoint_slowest_ms": round(self.slowest * 1000),
        }
