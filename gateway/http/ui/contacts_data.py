"""What the contacts pages read: a page of the contact list (with filters), one contact with
identities, conversations, consent per purpose, legal holds and requests, and the small changes
of the contact page that the privacy engine has no function for (AI on/off), audited."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlite_utils

from gateway.privacy import audit
from gateway.privacy.consent_ledger import ConsentState, consent_status
from gateway.privacy.holds import Hold
from gateway.privacy.requests import Request, RequestError, check_contact, list_requests
from gateway.store.journal import set_contact_ai_txn

PAGE = 50


@dataclasses.dataclass(frozen=True)
class Filters:
    contact_id: int | None = None
    channel: str | None = None
    external_id: str | None = None
    """Exact platform id (a partial match would let masked ids be guessed a character at a time)."""
    erased: bool = False
    """Include erased contacts (anonymised tombstones)."""
    before: int | None = None
    """Only contacts with a smaller id (the next page)."""


@dataclasses.dataclass(frozen=True)
class Identity:
    id: int
    channel: str
    external_id: str
    display_name: str | None
    created_at: str


@dataclasses.dataclass(frozen=True)
class ContactRow:
    id: int
    display_name: str | None
    language: str | None
    created_at: str
    ai_enabled: bool
    restricted: bool
    erased_at: str | None
    conversations: int
    last_message_at: str | None
    held: bool
    identities: list[Identity]


@dataclasses.dataclass(frozen=True)
class Conversation:
    id: int
    channel: str
    status: str
    last_message_at: str
    messages: int


@dataclasses.dataclass(frozen=True)
class ContactView:
    row: ContactRow
    conversations: list[Conversation]
    consent: dict[str, ConsentState]
    holds: list[Hold]
    """Holds on the contact or one of their conversations, released ones too (newest first)."""
    requests: list[Request]


_HELD = (
    "EXISTS (SELECT 1 FROM legal_holds h WHERE h.released_at IS NULL AND (h.contact_id = k.id "
    "OR h.conversation_id IN (SELECT c.id FROM conversations c WHERE c.contact_id = k.id)))"
)
_ROW = (
    "k.id, k.display_name, k.language, k.created_at, k.ai_enabled, k.restricted, k.erased_at, "
    "(SELECT count(*) FROM conversations c WHERE c.contact_id = k.id), "
    "(SELECT max(c.last_message_at) FROM conversations c WHERE c.contact_id = k.id), " + _HELD
)


def _identities(db: sqlite_utils.Database, ids: Sequence[int]) -> dict[int, list[Identity]]:
    found: dict[int, list[Identity]] = {i: [] for i in ids}
    if not ids:
        return found
    marks = ",".join("?" * len(ids))
    for row in db.conn.execute(
        "SELECT contact_id, id, channel, external_id, display_name, created_at FROM identities "
        f"WHERE contact_id IN ({marks}) ORDER BY id",
        list(ids),
    ):
        found[row[0]].append(Identity(*row[1:]))
    return found


def _rows(db: sqlite_utils.Database, rows: list[tuple[Any, ...]]) -> list[ContactRow]:
    identities = _identities(db, [r[0] for r in rows])
    return [
        ContactRow(
            r[0], r[1], r[2], r[3], bool(r[4]), bool(r[5]), r[6], r[7], r[8], bool(r[9]),
            identities[r[0]],
        )
        for r in rows
    ]  # fmt: skip


def contacts_txn(
    db: sqlite_utils.Database, filters: Filters, limit: int = PAGE
) -> list[ContactRow]:
    """A page of contacts, newest first."""
    where: list[str] = []
    args: list[Any] = []
    if filters.contact_id is not None:
        where.append("k.id = ?")
        args.append(filters.contact_id)
    if filters.channel or filters.external_id:
        clauses, values = [], []
        if filters.channel:
            clauses.append("i.channel = ?")
            values.append(filters.channel)
        if filters.external_id:
            clauses.append("i.external_id = ?")
            values.append(filters.external_id)
        where.append(
            "EXISTS (SELECT 1 FROM identities i WHERE i.contact_id = k.id AND "
            + " AND ".join(clauses)
            + ")"
        )
        args += values
    if not filters.erased:
        where.append("k.erased_at IS NULL")
    if filters.before is not None:
        where.append("k.id < ?")
        args.append(filters.before)
    sql = f"SELECT {_ROW} FROM contacts k"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY k.id DESC LIMIT {int(limit)}"
    return _rows(db, db.conn.execute(sql, args).fetchall())


def channels_txn(db: sqlite_utils.Database) -> list[str]:
    return [r[0] for r in db.conn.execute("SELECT DISTINCT channel FROM identities ORDER BY 1")]


def contact_row_txn(db: sqlite_utils.Database, contact_id: int) -> ContactRow | None:
    rows = db.conn.execute(f"SELECT {_ROW} FROM contacts k WHERE k.id = ?", (contact_id,))
    found = _rows(db, rows.fetchall())
    return found[0] if found else None


def contact_txn(db: sqlite_utils.Database, contact_id: int) -> ContactView | None:
    row = contact_row_txn(db, contact_id)
    if row is None:
        return None
    conn = db.conn
    conversations = [
        Conversation(*r)
        for r in conn.execute(
            "SELECT c.id, c.channel, c.status, c.last_message_at, "
            "(SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) "
            "FROM conversations c WHERE c.contact_id = ? ORDER BY c.last_message_at DESC",
            (contact_id,),
        )
    ]
    holds = [
        Hold(*r)
        for r in conn.execute(
            "SELECT id, contact_id, conversation_id, reason, author, created_at, released_at, "
            "released_by, release_reason FROM legal_holds WHERE contact_id = ? OR "
            "conversation_id IN (SELECT id FROM conversations WHERE contact_id = ?) "
            "ORDER BY released_at IS NOT NULL, id DESC",
            (contact_id, contact_id),
        )
    ]
    requests = list_requests(conn, open_only=False, contact_id=contact_id)
    return ContactView(row, conversations, consent_status(conn, contact_id), holds, requests[::-1])


def set_ai_txn(db: sqlite_utils.Database, contact_id: int, enabled: bool, actor: str) -> None:
    """AI replies on or off for the contact (an operator's decision, not the contact's
    consent). Turning it on is refused while the contact's AI-processing consent is withdrawn
    or their processing is restricted: record a grant or lift the restriction first."""
    conn = db.conn
    check_contact(conn, contact_id)
    if enabled:
        if consent_status(conn, contact_id)["ai_processing"].state == "withdrawn":
            raise RequestError(
                f"contact {contact_id} withdrew consent to AI processing: record their grant "
                "under Consent first"
            )
        row = conn.execute("SELECT restricted FROM contacts WHERE id = ?", (contact_id,))
        if row.fetchone()[0]:
            raise RequestError(
                f"contact {contact_id}'s processing is restricted (no AI): lift the restriction "
                "first"
            )
    before = conn.execute("SELECT ai_enabled FROM contacts WHERE id = ?", (contact_id,))
    changed = bool(before.fetchone()[0]) != enabled
    set_contact_ai_txn(db, contact_id, enabled)
    audit.append_txn(
        db,
        actor=actor,
        action="contact.ai.on" if enabled else "contact.ai.off",
        target=f"contact:{contact_id}",
        detail={"changed": changed},
    )
