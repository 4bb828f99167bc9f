"""Full-text search over message text (FTS5), in its own encrypted file: ``data_dir/search.db``.

Why a separate file: message bodies are sealed per contact so that erasing a contact reaches old
backups too (gateway.store.bodies). A plaintext index inside the main database would be copied
into every backup and defeat that. ``search.db`` is SQLCipher under its own key
(``master.derive("search")``), is never backed up, and can be deleted at any time: it is rebuilt
from the messages (a file that no longer opens, e.g. after a master-key rotation, is rebuilt).

The index is contentless (FTS5 ``content=''``): it holds the inverted index, not the text; a
search returns message and conversation ids and the caller reads text through bodies.
``secure_delete`` zeroes freed pages, and a forget merges the index segments, so a forgotten
contact's words do not linger in the file.

Writers: :meth:`SearchIndex.catch_up` (the scheduled indexer, and every search before it asks)
reads messages with ids above the last one indexed, through ``bodies.open_text``;
:meth:`SearchIndex.forget_contact` (the erasure engine calls it after its commit). A forget
records the contact, and the indexer skips recorded contacts inside its own write transaction,
so a batch read before an erasure cannot put that contact's words back.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlite_utils
import trio

from gateway.errors import MasterKeyError, StoreError
from gateway.store.bodies import SHREDDED, open_text
from gateway.store.db import DatabaseError, connect

if TYPE_CHECKING:
    from gateway.privacy.sealing import Sealer
    from gateway.services import Services
    from gateway.store import Store

log = logging.getLogger("gateway.search")

T = TypeVar("T")

SQLITE_BUSY = 5
"""The primary result code of "database is locked" (extended codes add high bits)."""

SEARCH_FILE = "search.db"
BATCH = 500
JOB_BATCH = 50
JOB_PAUSE = 0.02
"""The scheduled indexer's pace: it runs in the event loop (``catch_up(inline=True)``), 50
messages at a time (~1 ms), then leaves the loop to the messages for 20 ms; still up to ~2,000
messages indexed a second, far above what a gateway takes in. On worker threads it competed with
the event loop for the GIL: at 115 msg/s the slowest 1 % of replies all arrived during the
10-second indexer's 0.5-0.8 s runs (bench/README "Where the time goes")."""
MAX_TERMS = 12

_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS message_fts USING fts5(
    text, content='', contentless_delete=1, tokenize='unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS indexed (
    message_id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL,
    contact_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS indexed_contact ON indexed (contact_id);
CREATE TABLE IF NOT EXISTS forgotten (contact_id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS progress (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_message_id INTEGER NOT NULL,
    last_created_at TEXT NOT NULL
);
"""

_TERM = re.compile(r"\w+", re.UNICODE)


def match_expression(query: str) -> str | None:
    """A safe FTS5 query for what a person typed: every word must appear (as a prefix), quoted
    so FTS5 operators and punctuation in the input mean nothing. None if there is no word."""
    terms = _TERM.findall(query)[:MAX_TERMS]
    if not terms:
        return None
    return " ".join('"' + term.replace('"', '""') + '"*' for term in terms)


Row = tuple[int, int, int, str, str]
"""(message id, conversation id, contact id, text, created at)"""


def messages_after_txn(
    db: sqlite_utils.Database, sealer: Sealer, after_id: int, limit: int
) -> list[Row]:
    """The next messages to index, text read through bodies (the one way to read it)."""
    conn = db.conn
    rows = conn.execute(
        "SELECT m.id, m.conversation_id, c.contact_id, m.created_at, m.text, m.body "
        "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "WHERE m.id > ? ORDER BY m.id LIMIT ?",
        (after_id, limit),
    ).fetchall()
    return [
        (
            message_id,
            conversation_id,
            contact_id,
            open_text(sealer, conn, contact_id, text, body) or "",
            created_at,
        )
        for message_id, conversation_id, contact_id, created_at, text, body in rows
    ]


def message_at_txn(db: sqlite_utils.Database, message_id: int) -> tuple[str | None, int]:
    """(created_at of a message or None, the newest message id)."""
    conn = db.conn
    row = conn.execute("SELECT created_at FROM messages WHERE id = ?", (message_id,)).fetchone()
    newest = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
    return (row[0] if row else None), int(newest)


class SearchIndex:
    """One search file. Cheap to create: every operation opens its own connection on a worker
    thread (SQLCipher with a raw key opens in well under a millisecond), so index, forget and
    search can come from the daemon, a job or a CLI command alike; SQLite's lock orders them."""

    def __init__(self, data_dir: Path, key: bytes) -> None:
        self.path = data_dir / SEARCH_FILE
        self._key = key

    @classmethod
    def for_services(cls, services: Services) -> SearchIndex:
        return cls(services.config.data_dir, services.master.derive("search"))

    @contextmanager
    def _open(self, *, wait_for_lock: bool = True) -> Iterator[sqlite3.Connection]:
        """A connection to the index; ``wait_for_lock=False`` fails at once with "database is
        locked" instead of waiting for another writer (the event loop's indexer must not
        block)."""
        try:
            db = connect(self.path, self._key)
        except (MasterKeyError, StoreError) as exc:
            # Not ours to keep: the index is rebuilt from the messages.
            log.warning("search index %s does not open (%s); rebuilding it", self.path, exc)
            self.delete_files()
            db = connect(self.path, self._key)
        conn = db.conn
        try:
            if not wait_for_lock:
                conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA secure_delete = ON")
            conn.executescript(_SCHEMA)
            self.path.chmod(0o600)
            yield conn
        finally:
            conn.close()

    def delete_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)

    # -- writing -----------------------------------------------------------------------------

    def _opened(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` on a connection of its own (for a worker thread or the CLI)."""
        with self._open() as conn:
            return fn(conn, *args)

    def last_indexed_sync(self) -> tuple[int, str]:
        """(id, created_at) of the last message indexed; (0, "") at first."""
        return self._opened(_last_indexed)

    def reset_sync(self) -> None:
        """Empty the index (to rebuild it); forgotten contacts stay forgotten."""
        self._opened(_reset)

    def add_sync(self, rows: list[Row]) -> int:
        """Index ``rows`` and record the last of them as done, in one transaction; rows of
        forgotten contacts are skipped. Returns how many were indexed."""
        return self._opened(_add, rows)

    async def catch_up(
        self, store: Store, *, batch: int = BATCH, pause: float = 0.0, inline: bool = False
    ) -> int:
        """Index every message not indexed yet, ``batch`` at a time with ``pause`` seconds
        between batches; returns how many were added. An index ahead of the database (restored
        from a backup: the ids it remembers now hold other messages or none) is emptied and
        rebuilt.

        ``inline`` does the work in the calling thread, the event loop, a batch at a time
        (~1 ms for 50 messages) instead of on worker threads. A worker thread doing Python
        work competes with the event loop for the GIL for as long as it runs: indexing that
        way, every message arriving meanwhile took several times longer (bench/README). Inline,
        nothing waits for a lock: a busy index or database raises (``database is locked``,
        :class:`trio.WouldBlock`) and the caller tries again later."""
        if not inline:
            return await self._catch_up(self._in_thread, store.read, store, batch, pause)
        with self._open(wait_for_lock=False) as conn:

            async def index(fn: Callable[..., T], *args: Any) -> T:
                return fn(conn, *args)

            async def read(desc: str, fn: Callable[..., T], *args: Any) -> T:
                return store.read_now(desc, fn, *args)

            return await self._catch_up(index, read, store, batch, pause)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(self._opened, fn, *args)

    async def _catch_up(
        self,
        index: Callable[..., Awaitable[Any]],
        read: Callable[..., Awaitable[Any]],
        store: Store,
        batch: int,
        pause: float,
    ) -> int:
        added = 0
        after, after_at = await index(_last_indexed)
        if after:
            at, newest = await read("search: last indexed", message_at_txn, after)
            if (at is not None and at != after_at) or (at is None and newest < after):
                log.warning("search index is ahead of the database (a restore?): rebuilding it")
                await index(_reset)
                after = 0
        while True:
            rows: list[Row] = await read(
                "search: messages to index", messages_after_txn, store.sealer, after, batch
            )
            if not rows:
                return added
            after = rows[-1][0]
            added += int(await index(_add, rows))
            if len(rows) < batch:
                return added
            if pause:
                await trio.sleep(pause)

    def forget_contact_sync(self, contact_id: int) -> int:
        """Remove every indexed message of a contact, and index none of theirs again."""
        with self._open() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT OR IGNORE INTO forgotten (contact_id) VALUES (?)", (contact_id,)
                )
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT message_id FROM indexed WHERE contact_id = ?", (contact_id,)
                    )
                ]
                self._remove(conn, ids)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            # Merge the segments so the deleted entries are gone from the file, not just marked.
            conn.execute("INSERT INTO message_fts (message_fts) VALUES ('optimize')")
        return len(ids)

    async def forget_contact(self, contact_id: int) -> int:
        return await trio.to_thread.run_sync(self.forget_contact_sync, contact_id)

    @staticmethod
    def _remove(conn: sqlite3.Connection, ids: list[int]) -> None:
        """Remove entries (inside the caller's transaction)."""
        for message_id in ids:
            conn.execute("DELETE FROM message_fts WHERE rowid = ?", (message_id,))
            conn.execute("DELETE FROM indexed WHERE message_id = ?", (message_id,))

    def indexed_between_sync(self, low: int, high: int) -> set[int]:
        with self._open() as conn:
            return {
                r[0]
                for r in conn.execute(
                    "SELECT message_id FROM indexed WHERE message_id >= ? AND message_id < ?",
                    (low, high),
                )
            }

    def highest_indexed_sync(self) -> int:
        with self._open() as conn:
            return int(
                conn.execute("SELECT coalesce(max(message_id), 0) FROM indexed").fetchone()[0]
            )

    def remove_sync(self, ids: list[int]) -> int:
        with self._open() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._remove(conn, ids)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return len(ids)

    async def prune(self, store: Store, *, window: int = 10_000) -> int:
        """Drop the entries of messages that no longer exist (deleted by retention), comparing
        id windows of both files (bounded memory however many messages there are)."""

        def existing_txn(db: sqlite_utils.Database, low: int, high: int) -> set[int]:
            return {
                r[0]
                for r in db.conn.execute(
                    "SELECT id FROM messages WHERE id >= ? AND id < ? AND redacted_at IS NULL",
                    (low, high),
                )
            }

        newest: int = await store.read(
            "search: newest message",
            lambda db: db.conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0],
        )
        highest = max(newest, await trio.to_thread.run_sync(self.highest_indexed_sync))
        removed = 0
        for low in range(0, highest + 1, window):
            indexed = await trio.to_thread.run_sync(self.indexed_between_sync, low, low + window)
            if not indexed:
                continue
            existing = await store.read("search: message ids", existing_txn, low, low + window)
            gone = sorted(indexed - existing)
            if gone:
                removed += await trio.to_thread.run_sync(self.remove_sync, gone)
        return removed

    # -- searching ---------------------------------------------------------------------------

    def search_sync(self, query: str, limit: int) -> list[tuple[int, int]]:
        """(conversation id, newest matching message id), best match first."""
        expression = match_expression(query)
        if expression is None:
            return []
        with self._open() as conn:
            rows = conn.execute(
                "SELECT i.conversation_id, max(i.message_id), min(f.rank) "
                "FROM message_fts f JOIN indexed i ON i.message_id = f.rowid "
                "WHERE message_fts MATCH ? GROUP BY i.conversation_id ORDER BY min(f.rank) "
                "LIMIT ?",
                (expression, limit),
            ).fetchall()
        return [(int(r[0]), int(r[1])) for r in rows]

    async def search(self, store: Store, query: str, *, limit: int = 50) -> list[tuple[int, int]]:
        """Catch up with new messages, then search."""
        await self.catch_up(store)
        return await trio.to_thread.run_sync(self.search_sync, query, limit)


async def forget_contact(services: Services, contact_id: int) -> int:
    """For the erasure engine: call after the erasure committed. Returns entries removed."""
    return await SearchIndex.for_services(services).forget_contact(contact_id)


async def index_job(services: Services) -> None:
    """The scheduled indexer (gateway.http.ui.install registers it), in the event loop."""
    index = SearchIndex.for_services(services)
    try:
        added = await index.catch_up(services.store, batch=JOB_BATCH, pause=JOB_PAUSE, inline=True)
    except trio.WouldBlock:
        log.debug("search index: the database readers are taken (a key rotation?); next run")
        return
    except DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF != SQLITE_BUSY:
            raise
        log.debug("search index: %s (a search or an erasure is writing it); next run", exc)
        return
    if added:
        log.debug("search index: %d messages added", added)


# -- on an open index connection (a worker thread's, or the event loop's indexer's) --------------


def _last_indexed(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT last_message_id, last_created_at FROM progress").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, "")


def _reset(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT INTO message_fts (message_fts) VALUES ('delete-all')")
        conn.execute("DELETE FROM indexed")
        conn.execute("DELETE FROM progress")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _add(conn: sqlite3.Connection, rows: list[Row]) -> int:
    added = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        forgotten = {r[0] for r in conn.execute("SELECT contact_id FROM forgotten")}
        todo = [row for row in rows if row[2] not in forgotten and row[3] and row[3] != SHREDDED]
        if todo:
            # Only an entry indexed before (a test, a repair) is replaced; new messages, nearly
            # all of them, go straight in. Whole batches through executemany: a third of the
            # CPU of a statement per row and message (bench/README "Where the time goes").
            ids = {r[0] for r in todo}
            again = [
                (r[0],)
                for r in conn.execute(
                    "SELECT message_id FROM indexed WHERE message_id BETWEEN ? AND ?",
                    (min(ids), max(ids)),
                )
                if r[0] in ids
            ]
            conn.executemany("DELETE FROM message_fts WHERE rowid = ?", again)
            conn.executemany(
                "INSERT INTO message_fts (rowid, text) VALUES (?, ?)", [(r[0], r[3]) for r in todo]
            )
            conn.executemany(
                "INSERT OR REPLACE INTO indexed (message_id, conversation_id, contact_id) "
                "VALUES (?, ?, ?)",
                [(r[0], r[1], r[2]) for r in todo],
            )
            added = len(todo)
        if rows:
            conn.execute(
                "INSERT INTO progress (id, last_message_id, last_created_at) "
                "VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "last_message_id = excluded.last_message_id, "
                "last_created_at = excluded.last_created_at "
                "WHERE excluded.last_message_id > last_message_id",
                (rows[-1][0], rows[-1][4]),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return added
