"""Message bodies, sealed per contact: what every reader of message text goes through.

The text of a message (``messages.body``) and of a reply waiting to be sent (``outbox.body``)
is AES-256-GCM under the contact's key (gateway.privacy.sealing), so erasing a contact
(destroying that key) makes their messages unreadable in every copy of the database file too:
old backups, disk images, a stolen replica. The SQLCipher layer still encrypts the whole file;
this layer is what makes erasure reach copies.

Format: ``b"SGM1"`` + 12-byte nonce + ciphertext with tag; associated data ``m:<contact id>``
(a body copied to another contact's row does not open). ``messages.text`` / ``outbox.text``
hold ``''`` for a sealed row; rows written before sealing existed keep their plain text there
(``body`` NULL) until ``seal_legacy_txn`` converts them.

Read text only through these functions: ``conversation_messages`` (a conversation's page),
``contact_messages`` (everything of one contact: export), ``message_text`` (one row),
``open_text`` (a row the caller selected with its contact id, ``text`` and ``body``: the
search indexer's batches).
A body whose key was destroyed reads as :data:`SHREDDED`.
"""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import StoreError
from gateway.privacy.sealing import KeyDestroyed, Sealer

MAGIC = b"SGM1"
SHREDDED = "[erased]"
"""What a message reads as once its contact's key was destroyed."""


def seal_text(sealer: Sealer, conn: sqlite3.Connection, contact_id: int, text: str) -> bytes:
    key = sealer.cached_key(conn, contact_id, create=True)
    nonce = secrets.token_bytes(12)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, text.encode(), f"m:{contact_id}".encode())


def open_text(
    sealer: Sealer, conn: sqlite3.Connection, contact_id: int, plain: str, body: bytes | None
) -> str:
    """The text of a row: ``plain`` for a legacy row, the opened ``body`` otherwise."""
    if body is None:
        return plain
    blob = bytes(body)
    if not blob.startswith(MAGIC):
        raise StoreError("a message body is not sealed text (bad header)")
    try:
        key = sealer.cached_key(conn, contact_id, create=False)
    except KeyDestroyed:
        return SHREDDED
    try:
        return AESGCM(key).decrypt(blob[4:16], blob[16:], f"m:{contact_id}".encode()).decode()
    except InvalidTag:
        raise StoreError(
            f"a message body of contact {contact_id} does not open with their key (tampered?)"
        ) from None


@dataclasses.dataclass(frozen=True)
class StoredMessage:
    id: int
    conversation_id: int
    direction: str
    """'in' (from the contact) or 'out'."""
    author: str
    """'contact', 'ai', 'fallback', 'notice', 'human'."""
    text: str
    created_at: str
    external_id: str | None
    analysis: str | None
    """JSON labels (intent, category, sentiment, urgency), inbound only."""
    suggestions: str | None
    """JSON list of suggested replies for a person, while the conversation is handed off."""


_COLUMNS = (
    "m.id, m.conversation_id, m.direction, m.author, m.text, m.body, m.created_at, "
    "m.external_id, m.analysis, m.suggestions, c.contact_id"
)


def _rows(
    sealer: Sealer, conn: sqlite3.Connection, cursor: sqlite3.Cursor
) -> Iterator[StoredMessage]:
    for (
        mid,
        cid,
        direction,
        author,
        plain,
        body,
        created,
        external,
        analysis,
        sugg,
        contact,
    ) in cursor:
        yield StoredMessage(
            mid,
            cid,
            direction,
            author,
            open_text(sealer, conn, contact, plain, body),
            created,
            external,
            analysis,
            sugg,
        )


def conversation_messages(
    sealer: Sealer,
    conn: sqlite3.Connection,
    conversation_id: int,
    *,
    limit: int = 100,
    before_id: int | None = None,
) -> list[StoredMessage]:
    """Up to ``limit`` messages of a conversation before ``before_id``, oldest first."""
    cursor = conn.execute(
        f"SELECT {_COLUMNS} FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "WHERE m.conversation_id = ? AND m.id < ? ORDER BY m.id DESC LIMIT ?",
        (conversation_id, before_id if before_id is not None else 2**62, limit),
    )
    return list(_rows(sealer, conn, cursor))[::-1]


def contact_messages(
    sealer: Sealer, conn: sqlite3.Connection, contact_id: int, *, page: int = 1000
) -> Iterator[StoredMessage]:
    """Every message of a contact, conversation by conversation, each in id order (export:
    stream it). Pages along the (conversation_id, id) index, so memory stays flat however many
    messages there are (one ORDER BY across conversations would sort them all in memory)."""
    conversations = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM conversations WHERE contact_id = ? ORDER BY id", (contact_id,)
        )
    ]
    for conversation_id in conversations:
        after = 0
        while True:
            cursor = conn.execute(
                f"SELECT {_COLUMNS} FROM messages m "
                "JOIN conversations c ON c.id = m.conversation_id "
                "WHERE m.conversation_id = ? AND m.id > ? ORDER BY m.id LIMIT ?",
                (conversation_id, after, page),
            )
            rows = list(_rows(sealer, conn, cursor))
            yield from rows
            if len(rows) < page:
                break
            after = rows[-1].id


def message_text(sealer: Sealer, conn: sqlite3.Connection, message_id: int) -> str | None:
    row = conn.execute(
        "SELECT c.contact_id, m.text, m.body FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id WHERE m.id = ?",
        (message_id,),
    ).fetchone()
    if row is None:
        return None
    return open_text(sealer, conn, row[0], row[1], row[2])


def register_sql_function(conn: sqlite3.Connection, sealer: Sealer) -> None:
    """``open_body(contact_id, text, body)`` in SQL on ``conn`` (tools and tests):
    ``SELECT open_body(c.contact_id, m.text, m.body) FROM messages m JOIN conversations c ...``."""

    def _open(contact_id: int, plain: str, body: bytes | None) -> str:
        return open_text(sealer, conn, contact_id, plain, body)

    conn.create_function("open_body", 3, _open)


def sealer_for(conn: sqlite3.Connection, attachments_dir: Path) -> Sealer:
    """A Sealer for a database opened outside the daemon (its wrap key is in ``store_keys``)."""
    row = conn.execute("SELECT value FROM store_keys WHERE name = 'contact-wrap'").fetchone()
    if row is None:
        raise StoreError("the database has no contact wrap key yet: start the gateway once")
    return Sealer(bytes(row[0]), attachments_dir)


def seal_legacy_txn(
    db: object, sealer: Sealer, table: str, after_id: int, limit: int = 500
) -> int | None:
    """Seal the plain-text rows of ``table`` ('messages' or 'outbox', written before bodies
    were sealed) among the ``limit`` rows after ``after_id``. Returns the last id looked at
    (the next call's ``after_id``), or None when the table is done. Bounded work per call."""
    if table not in ("messages", "outbox"):
        raise ValueError(f"no sealed bodies in table {table!r}")
    conn: sqlite3.Connection = db.conn  # type: ignore[attr-defined]
    rows = conn.execute(
        f"SELECT t.id, t.text, t.body, c.contact_id FROM {table} t "
        "JOIN conversations c ON c.id = t.conversation_id WHERE t.id > ? ORDER BY t.id LIMIT ?",
        (after_id, limit),
    ).fetchall()
    for row_id, text, body, contact_id in rows:
        if body is None and text:
            conn.execute(
                f"UPDATE {table} SET body = ?, text = '' WHERE id = ?",
                (seal_text(sealer, conn, contact_id, text), row_id),
            )
    return int(rows[-1][0]) if rows else None
