"""Legal holds: a contact's or a conversation's data that no retention sweep may touch.

A hold has a reason and an author; releasing it takes a reason too and keeps the row (who held
what, when and why stays on record; the table has no foreign keys so a hold outlives the data).
Every change is audited in the same transaction. Retention categories skip held rows and the
act says how many were held back (gateway.privacy.retention_categories.held_clause).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3

import sqlite_utils

from gateway.errors import GatewayError
from gateway.privacy import audit


class HoldError(GatewayError):
    """A hold cannot be placed or released as asked; nothing was changed."""


@dataclasses.dataclass(frozen=True)
class Hold:
    id: int
    contact_id: int | None
    conversation_id: int | None
    reason: str
    author: str
    created_at: str
    released_at: str | None = None
    released_by: str | None = None
    release_reason: str | None = None

    @property
    def target(self) -> str:
        if self.contact_id is not None:
            return f"contact:{self.contact_id}"
        return f"conversation:{self.conversation_id}"

    @property
    def active(self) -> bool:
        return self.released_at is None


_COLUMNS = (
    "id, contact_id, conversation_id, reason, author, created_at, released_at, released_by, "
    "release_reason"
)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise HoldError('a reason is required (--reason "case 2024-17, court order")')
    return text


def add_hold_txn(
    db: sqlite_utils.Database,
    *,
    contact_id: int | None = None,
    conversation_id: int | None = None,
    reason: str,
    author: str,
) -> Hold:
    """Place a hold on one contact (all their conversations) or one conversation."""
    if (contact_id is None) == (conversation_id is None):
        raise HoldError("a hold is on one contact or one conversation: give exactly one of them")
    text = _reason(reason)
    conn = db.conn
    table, row_id = (
        ("contacts", contact_id) if contact_id is not None else ("conversations", conversation_id)
    )
    if conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (row_id,)).fetchone() is None:
        kind = "contact" if table == "contacts" else "conversation"
        raise HoldError(
            f"no {kind} {row_id} (see `gateway conversations list` for ids); nothing was held"
        )
    at = _now()
    hold_id = conn.execute(
        "INSERT INTO legal_holds (contact_id, conversation_id, reason, author, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (contact_id, conversation_id, text, author, at),
    ).lastrowid
    assert hold_id is not None
    hold = Hold(hold_id, contact_id, conversation_id, text, author, at)
    audit.append_txn(
        db,
        actor=author,
        action="retention.hold.add",
        target=hold.target,
        detail={"hold": hold_id, "reason": text},
    )
    return hold


def release_hold_txn(db: sqlite_utils.Database, hold_id: int, *, reason: str, author: str) -> Hold:
    text = _reason(reason)
    hold = get_hold(db.conn, hold_id)
    if hold is None:
        raise HoldError(f"no legal hold {hold_id} (see `gateway holds list`)")
    if not hold.active:
        raise HoldError(
            f"legal hold {hold_id} was already released at {hold.released_at} by {hold.released_by}"
        )
    at = _now()
    db.conn.execute(
        "UPDATE legal_holds SET released_at = ?, released_by = ?, release_reason = ? WHERE id = ?",
        (at, author, text, hold_id),
    )
    audit.append_txn(
        db,
        actor=author,
        action="retention.hold.release",
        target=hold.target,
        detail={"hold": hold_id, "reason": text},
    )
    return dataclasses.replace(hold, released_at=at, released_by=author, release_reason=text)


def get_hold(conn: sqlite3.Connection, hold_id: int) -> Hold | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM legal_holds WHERE id = ?", (hold_id,)).fetchone()
    return Hold(*row) if row is not None else None


def list_holds(conn: sqlite3.Connection, *, include_released: bool = False) -> list[Hold]:
    where = "" if include_released else " WHERE released_at IS NULL"
    return [
        Hold(*r) for r in conn.execute(f"SELECT {_COLUMNS} FROM legal_holds{where} ORDER BY id")
    ]


def is_held(
    conn: sqlite3.Connection, *, contact_id: int | None = None, conversation_id: int | None = None
) -> bool:
    """Whether an active hold covers the contact, or the conversation (or its contact): for
    other features (erasure) that must respect holds too."""
    if conversation_id is not None and contact_id is None:
        row = conn.execute(
            "SELECT contact_id FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        contact_id = row[0] if row else None
    found = conn.execute(
        "SELECT 1 FROM legal_holds WHERE released_at IS NULL AND "
        "(contact_id = ? OR conversation_id = ?) LIMIT 1",
        (contact_id, conversation_id),
    ).fetchone()
    return found is not None
