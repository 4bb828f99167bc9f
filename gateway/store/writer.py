"""One writer thread with group commit.

Every write of the daemon is a ``*_txn(db, ...)`` function run here. Jobs that queue up while a
transaction commits go into the next transaction together (group commit): ~100k acknowledged
writes/s against ~13k/s with one thread hop and commit each (ARCHITECTURE.md). Each job runs in
its own savepoint, so one failing job rolls back alone and its caller gets the exception. A
transaction that cannot begin or commit (the disk is full, another connection holds the write
lock past the busy timeout) fails its batch's jobs with StoreError and the writer goes on: once
the disk has room again the next batch commits, with no restart (tests/resilience/test_faults.py).
The WAL is checkpointed off this thread: every ``CHECKPOINT_EVERY`` commits the writer asks the
checkpointer (gateway/store/checkpoint.py) for one on its own connection; a commit checkpoints
only what is left once the log passes ``WRITER_CHECKPOINT_PAGES``.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlite_utils
import trio

from gateway.store.checkpoint import CHECKPOINT_EVERY

log = logging.getLogger("gateway.store")

MAX_BATCH = 512


class Job:
    __slots__ = ("desc", "fn", "args", "result", "error", "event", "exclusive", "detached")

    def __init__(
        self, desc: str, fn: Callable[..., Any], args: tuple[Any, ...], exclusive: bool = False
    ) -> None:
        self.desc = desc
        self.fn = fn
        self.args = args
        self.exclusive = exclusive
        self.result: Any = None
        self.error: BaseException | None = None
        self.event = trio.Event()
        self.detached = False
        """Nobody waits for it (:meth:`Writer.submit`): a failure is logged instead."""


_STOP = object()


class Writer:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self._db = db
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._loop, name="gateway-db-writer", daemon=True)
        self.commits = 0
        self.checkpoint_due: Callable[[], None] | None = None
        """Called in the event loop every ``CHECKPOINT_EVERY`` commits (gateway/store/
        checkpoint.py), so that the commits themselves seldom checkpoint the WAL."""
        self._since_checkpoint = 0
        self.kinds: collections.Counter[str] = collections.Counter()
        """Jobs run, by description (what a message costs the writer: bench and tests)."""

    @property
    def jobs(self) -> int:
        """Jobs run since start."""
        return self.kinds.total()

    def start(self) -> None:
        self._thread.start()

    async def run(
        self, desc: str, fn: Callable[..., Any], *args: Any, exclusive: bool = False
    ) -> Any:
        """Run ``fn(db, *args)`` in the next group transaction; ``exclusive`` runs it alone and
        outside any transaction (it manages its own, e.g. a re-key)."""
        job = Job(desc, fn, args, exclusive)
        self._queue.put(job)
        # Not shielded: a cancelled caller stops waiting, the write still happens; every
        # txn is safe to have happened without its caller knowing (dedupe keys, states).
        await job.event.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def submit(self, desc: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(db, *args)`` for the next group transaction without waiting for it.

        For records whose caller must not wait a writer round trip but that must commit no
        later than what the caller writes next: the queue is in order, so a write submitted
        before another commits in the same transaction or an earlier one. A failure is logged
        (the caller has gone on)."""
        job = Job(desc, fn, args)
        job.detached = True
        self._queue.put(job)

    async def stop(self) -> None:
        self._queue.put(_STOP)
        await trio.to_thread.run_sync(self._thread.join)

    def _loop(self) -> None:
        conn = self._db.conn
        stopping = False
        held: Any = None
        while not stopping:
            item = held if held is not None else self._queue.get()
            held = None
            if item is _STOP:
                break
            if item.exclusive:
                self._run_exclusive(item)
                continue
            batch: list[Job] = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                if nxt.exclusive:
                    held = nxt  # after this batch commits, alone
                    break
                batch.append(nxt)
            started = time.perf_counter()
            try:
                conn.execute("BEGIN IMMEDIATE")
                # Alone in its transaction, a job needs no savepoint: if it fails, the
                # transaction is rolled back instead. Under a paced load most batches hold one
                # job, and SAVEPOINT + RELEASE were a tenth of this thread's time (py-spy,
                # bench/README "Where the time goes").
                alone = len(batch) == 1
                for job in batch:
                    if not alone:
                        conn.execute("SAVEPOINT job")
                    try:
                        job.result = job.fn(self._db, *job.args)
                    except Exception as exc:
                        job.error = exc
                        if conn.in_transaction:
                            conn.execute("ROLLBACK" if alone else "ROLLBACK TO job")
                    if not alone:
                        conn.execute("RELEASE job")
                if conn.in_transaction:
                    conn.execute("COMMIT")
            except Exception as exc:  # the commit itself failed (disk full, I/O error)
                log.error("database commit failed (%s); %d writes rolled back", exc, len(batch))
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except Exception:  # pragma: no cover - best effort after a failed commit
                    pass
                from gateway.errors import StoreError

                for job in batch:
                    job.error = StoreError(f"database write {job.desc!r} failed: {exc}")
            self.commits += 1
            self.kinds.update(job.desc for job in batch)
            elapsed = time.perf_counter() - started
            if elapsed > 1.0:
                log.warning("slow commit: %d writes took %.2fs", len(batch), elapsed)
            self._since_checkpoint += 1
            due = None
            if self._since_checkpoint >= CHECKPOINT_EVERY:
                self._since_checkpoint = 0
                due = self.checkpoint_due
            try:
                self._token.run_sync_soon(_wake, batch, due)
            except trio.RunFinishedError:  # pragma: no cover - the loop ended under us
                return

    def _run_exclusive(self, job: Job) -> None:
        try:
            job.result = job.fn(self._db, *job.args)
        except Exception as exc:
            job.error = exc
            if self._db.conn.in_transaction:
                self._db.conn.rollback()
        self.kinds[job.desc] += 1
        try:
            self._token.run_sync_soon(_wake, [job], None)
        except trio.RunFinishedError:  # pragma: no cover - the loop ended under us
            return


def _wake(batch: list[Job], checkpoint_due: Callable[[], None] | None) -> None:
    if checkpoint_due is not None:
        checkpoint_due()
    for job in batch:
        if job.detached and job.error is not None:
            log.error("database write %r failed: %s", job.desc, job.error, exc_info=job.error)
        job.event.set()
