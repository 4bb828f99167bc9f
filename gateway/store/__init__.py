"""The encrypted store: one SQLCipher file, one writer thread, reader connections under WAL,
and WAL checkpoints on a connection of their own (checkpoint.py).

Use::

    async with open_store(path, key) as store:
        accepted = await store.write("accept inbound", accept_txn, ...)
        rows = await store.read("load history", history_txn, ...)

``*_txn`` functions take a ``sqlite_utils.Database`` first and run on a database thread.
"""

from __future__ import annotations

# isort: off
# SQLCipher must stand in for pysqlite3 before sqlite_utils is first imported (see db.py); this
# package's __init__ runs before any of its modules, so the shim goes first here.
import gateway.store.db  # noqa: F401
# isort: on

import collections
import contextlib
import functools
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils
import trio

from gateway.privacy.sealing import Sealer, derive_wrap_key
from gateway.store.checkpoint import WRITER_CHECKPOINT_PAGES, Checkpointer
from gateway.store.db import connect
from gateway.store.migrations import migrations
from gateway.store.writer import Writer

log = logging.getLogger("gateway.store")
T = TypeVar("T")
ATTACHMENTS_DIR = "attachments"
READERS = 4


class Store:
    def __init__(
        self,
        path: Path,
        key: bytes,
        writer: Writer,
        checkpointer: Checkpointer,
        *,
        wrap_key: bytes | None = None,
        dedupe_key: bytes = b"",
    ) -> None:
        self.path = path
        self._key = key
        self._writer = writer
        self._checkpointer = checkpointer
        self._idle: list[sqlite_utils.Database] = []
        self._lock = threading.Lock()
        # Reads are cheap under WAL but each holds a thread; a few suffice.
        self._read_limiter = trio.CapacityLimiter(READERS)
        self.sealer = Sealer(wrap_key or derive_wrap_key(key), path.parent / ATTACHMENTS_DIR)
        """Seals attachments per contact (files under ``<data dir>/attachments``)."""
        self.dedupe_key = dedupe_key
        """Keys the journal's dedupe hashes; kept in the database, stable across rotations."""

    async def write(self, desc: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(db, *args, **kwargs)`` in the writer's next transaction; return once committed."""
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        result: T = await self._writer.run(desc, fn, *args)
        return result

    def write_soon(self, desc: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(db, *args)`` for the writer's next transaction and return at once; it
        commits no later than any write queued after it (a failure is logged)."""
        self._writer.submit(desc, fn, *args)

    async def read(self, desc: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(db, *args)`` on a reader connection (sees every committed write)."""
        return await trio.to_thread.run_sync(self._read_sync, fn, args, limiter=self._read_limiter)

    def read_now(self, desc: str, fn: Callable[..., T], *args: Any) -> T:
        """Run a short ``fn(db, *args)`` on a reader connection in the calling thread: for the
        event loop's own jobs, which must not hand the GIL to a worker thread. Raises
        :class:`trio.WouldBlock` instead of waiting when every reader is taken (a key rotation
        holds them all)."""
        holder = object()
        self._read_limiter.acquire_on_behalf_of_nowait(holder)
        try:
            return self._read_sync(fn, args)
        finally:
            self._read_limiter.release_on_behalf_of(holder)

    def _read_sync(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        # A pool rather than thread-locals: trio's worker threads come and go.
        with self._lock:
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = connect(self.path, self._key, readonly=True)
        try:
            return fn(db, *args)
        finally:
            if db.conn.in_transaction:
                db.conn.rollback()
            with self._lock:
                self._idle.append(db)

    async def rekey(self, new_key: bytes) -> int:
        """Rotate online: re-wrap every contact key under a fresh wrap key, then re-encrypt the
        database under ``new_key`` (SQLCipher ``PRAGMA rekey``, one transaction), while reads
        wait and writes queue. Returns how many contact keys were re-wrapped."""
        # Hold every reader slot: a reader keyed with the old key must not read meanwhile.
        holders = [object() for _ in range(READERS)]
        held: list[object] = []
        try:
            for holder in holders:
                await self._read_limiter.acquire_on_behalf_of(holder)
                held.append(holder)
            new_wrap = secrets.token_bytes(32)
            async with self._checkpointer.paused():
                count: int = await self._writer.run(
                    "rotate keys", _rekey_sync, self.sealer, new_wrap, new_key, exclusive=True
                )
                self._checkpointer.use_key(new_key)
            self._close_readers()
            self._key = new_key
        finally:
            for holder in held:
                self._read_limiter.release_on_behalf_of(holder)
        log.info("database re-keyed; %d contact keys re-wrapped", count)
        return count

    @property
    def stats(self) -> dict[str, int]:
        return {
            "commits": self._writer.commits,
            "writes": self._writer.jobs,
            **self._checkpointer.stats,
        }

    @property
    def writes_by_kind(self) -> collections.Counter[str]:
        """Writer jobs run since start, by description ("accept inbound", "commit reply"...)."""
        return self._writer.kinds

    def _close_readers(self) -> None:
        with self._lock:
            for db in self._idle:
                db.conn.close()
            self._idle.clear()


@contextlib.asynccontextmanager
async def open_store(
    path: Path, key: bytes, *, dedupe_seed: bytes | None = None
) -> AsyncIterator[Store]:
    """Open (creating if needed) the encrypted database, migrate it, start the writer.

    ``dedupe_seed`` is the dedupe key a database gets the first time (the daemon passes the one
    it always derived from the master key, so existing journals keep matching)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _open() -> sqlite_utils.Database:
        db = connect(path, key)
        migrations.apply(db)
        # The checkpointer below copies the log into the database; the writer's commits only
        # finish the job when the log gets this long (gateway/store/checkpoint.py).
        db.conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(path) + suffix)
            if p.exists():
                p.chmod(0o600)
        return db

    db = await trio.to_thread.run_sync(_open)
    wrap_key, dedupe_key = await trio.to_thread.run_sync(
        _store_keys, db, key, dedupe_seed or secrets.token_bytes(32)
    )
    writer = Writer(db)
    checkpointer = Checkpointer(path, key)
    writer.checkpoint_due = checkpointer.due
    writer.start()
    store = Store(path, key, writer, checkpointer, wrap_key=wrap_key, dedupe_key=dedupe_key)
    try:
        async with trio.open_nursery() as nursery:
            # Checkpointer.run never raises, so it cannot cancel the caller's body.
            nursery.start_soon(checkpointer.run)
            try:
                yield store
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await writer.stop()
            # Closed before the writer's connection: the last one to close checkpoints and
            # removes the log.
            await checkpointer.close()
            store._close_readers()
            db.conn.close()


def _store_keys(db: sqlite_utils.Database, key: bytes, dedupe_seed: bytes) -> tuple[bytes, bytes]:
    """The wrap and dedupe keys kept in the database, created on first use. The first wrap key
    is the one earlier versions derived from the store key, so existing contact keys open."""
    conn = db.conn
    with conn:
        for name, value in (("contact-wrap", derive_wrap_key(key)), ("dedupe", dedupe_seed)):
            conn.execute(
                "INSERT OR IGNORE INTO store_keys (name, value, created_at) "
                "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ'))",
                (name, value),
            )
    rows = dict(conn.execute("SELECT name, value FROM store_keys").fetchall())
    return bytes(rows["contact-wrap"]), bytes(rows["dedupe"])


def _rekey_sync(db: sqlite_utils.Database, sealer: Sealer, new_wrap: bytes, new_key: bytes) -> int:
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        count = sealer.rewrap_all(conn, new_wrap)
        conn.execute(
            "UPDATE store_keys SET value = ?, created_at = strftime('%Y-%m-%dT%H:%M:%fZ') "
            "WHERE name = 'contact-wrap'",
            (new_wrap,),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    sealer.use_wrap_key(new_wrap)  # here, on the writer thread: the next job already uses it
    # If the process dies between the commit above and the re-key below, the database still
    # opens with the old master key and holds the new wrap key: consistent either way.
    conn.execute(f"PRAGMA rekey = \"x'{new_key.hex()}'\"")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return count
