"""The encrypted store: one SQLCipher file, one writer thread, reader connections under WAL.

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

import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils
import trio

from gateway.privacy.sealing import Sealer, derive_wrap_key
from gateway.store.db import connect
from gateway.store.migrations import migrations
from gateway.store.writer import Writer

log = logging.getLogger("gateway.store")
T = TypeVar("T")
ATTACHMENTS_DIR = "attachments"


class Store:
    def __init__(self, path: Path, key: bytes, writer: Writer) -> None:
        self.path = path
        self._key = key
        self._writer = writer
        self._idle: list[sqlite_utils.Database] = []
        self._lock = threading.Lock()
        # Reads are cheap under WAL but each holds a thread; a few suffice.
        self._read_limiter = trio.CapacityLimiter(4)
        self.sealer = Sealer(derive_wrap_key(key), path.parent / ATTACHMENTS_DIR)
        """Seals attachments per contact (files under ``<data dir>/attachments``)."""

    async def write(self, desc: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(db, *args, **kwargs)`` in the writer's next transaction; return once committed."""
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        result: T = await self._writer.run(desc, fn, *args)
        return result

    async def read(self, desc: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(db, *args)`` on a reader connection (sees every committed write)."""
        return await trio.to_thread.run_sync(self._read_sync, fn, args, limiter=self._read_limiter)

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

    @property
    def stats(self) -> dict[str, int]:
        return {"commits": self._writer.commits, "writes": self._writer.jobs}

    def _close_readers(self) -> None:
        with self._lock:
            for db in self._idle:
                db.conn.close()
            self._idle.clear()


@contextlib.asynccontextmanager
async def open_store(path: Path, key: bytes) -> AsyncIterator[Store]:
    """Open (creating if needed) the encrypted database, migrate it, start the writer."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _open() -> sqlite_utils.Database:
        db = connect(path, key)
        migrations.apply(db)
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(path) + suffix)
            if p.exists():
                p.chmod(0o600)
        return db

    db = await trio.to_thread.run_sync(_open)
    writer = Writer(db)
    writer.start()
    store = Store(path, key, writer)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await writer.stop()
            store._close_readers()
            db.conn.close()
