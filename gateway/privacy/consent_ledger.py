"""Consent per purpose, across all of a contact's channels.

The ledger is the append-only ``consents`` table (gateway.store.records): one row per identity
(channel + platform user id), purpose and change, with its source and evidence. The purposes:

- ``service``: answering the contact's own messages. Recorded; nothing is switched by it (the
  contact stops the service by not writing, or asks for restriction or erasure).
- ``marketing``: messages we initiate. A withdrawal also writes the ``messages`` purpose that
  the opt-out keywords (STOP) use and that the core checks before every notification
  (``queue_notification_txn``), so it takes effect at once; the contact's marketing state is the
  newest row of either purpose.
- ``ai_processing``: sending their messages to a model. Withdrawn = AI off for the contact
  (``contacts.ai_enabled = 0``); granted again = AI back on (a restriction still keeps it off).

A withdrawal or grant is written for every identity of the contact, so it holds on every
channel at once. Sources: ``keyword``, ``widget``, ``gpc`` (the Sec-GPC header), ``api``,
``admin``, ``cli``, optionally with a detail after a colon (``admin:dpo@example.com``,
``keyword:STOP``); ``evidence`` says what proves it (a message id, a form version, a header).

After an erasure only a keyed hash of each opted-out identity's (channel, platform id) stays in
``consent_suppressions`` (see :func:`suppress_txn`): a person who said "no marketing" and then
"forget me" must not receive marketing when they write again, and the hash says nothing about
who they were without the database's dedupe key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import sqlite3
from typing import TYPE_CHECKING, Any

from gateway.privacy import audit
from gateway.privacy.requests import RequestError, check_contact, now

if TYPE_CHECKING:
    import sqlite_utils

PURPOSES = ("service", "marketing", "ai_processing")
SOURCES = ("keyword", "widget", "gpc", "api", "admin", "cli")
KEYWORD_PURPOSE = "messages"
"""What the core's opt-out keywords withdraw (gateway.store.records.CONSENT_PURPOSE)."""
_SELF = ("keyword", "widget", "gpc")


@dataclasses.dataclass(frozen=True)
class ConsentState:
    purpose: str
    state: str | None
    """'granted', 'withdrawn', or None when nothing was ever recorded."""
    at: str | None
    source: str | None
    evidence: str | None
    identities: dict[int, str | None]
    """Each identity's own latest state."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(purpose: str, source: str) -> None:
    if purpose not in PURPOSES:
        raise RequestError(f"unknown consent purpose {purpose!r}; one of: {', '.join(PURPOSES)}")
    kind = source.split(":", 1)[0]
    if kind not in SOURCES:
        raise RequestError(
            f"unknown consent source {source!r}; one of: {', '.join(SOURCES)} "
            "(optionally with a detail: admin:dpo@example.com)"
        )


def _identities(conn: sqlite3.Connection, contact_id: int) -> list[int]:
    check_contact(conn, contact_id)
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM identities WHERE contact_id = ? ORDER BY id", (contact_id,)
        )
    ]
    if not ids:
        raise RequestError(f"contact {contact_id} has no channel identity to record consent for")
    return ids


def _record(
    db: sqlite_utils.Database,
    contact_id: int,
    purpose: str,
    state: str,
    source: str,
    evidence: str | None,
    actor: str | None,
) -> int:
    _check(purpose, source)
    conn = db.conn
    identities = _identities(conn, contact_id)
    ts = now()
    purposes = [purpose] + ([KEYWORD_PURPOSE] if purpose == "marketing" else [])
    for identity_id in identities:
        for p in purposes:
            conn.execute(
                "INSERT INTO consents (identity_id, purpose, state, at, source, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (identity_id, p, state, ts, source, evidence),
            )
    if purpose == "ai_processing":
        conn.execute(
            "UPDATE contacts SET ai_enabled = ?, updated_at = ? WHERE id = ?",
            (int(state == "granted"), ts, contact_id),
        )
    kind = source.split(":", 1)[0]
    who = actor or (f"contact:{contact_id}" if kind in _SELF else source)
    audit.append_txn(
        db,
        actor=who,
        action=f"consent.{'withdraw' if state == 'withdrawn' else 'grant'}",
        target=f"contact:{contact_id}",
        detail={"purpose": purpose, "source": kind, "identities": len(identities)},
    )
    return len(identities)


def withdraw_consent_txn(
    db: sqlite_utils.Database,
    contact_id: int,
    purpose: str,
    source: str,
    evidence: str | None = None,
    *,
    actor: str | None = None,
) -> int:
    """Withdraw ``purpose`` on every identity of the contact, effective at once. Returns how
    many identities it was recorded for. ``actor`` (for the audit log) defaults to the contact
    for keyword/widget/gpc sources and to ``source`` otherwise."""
    return _record(db, contact_id, purpose, "withdrawn", source, evidence, actor)


def grant_consent_txn(
    db: sqlite_utils.Database,
    contact_id: int,
    purpose: str,
    source: str,
    evidence: str | None = None,
    *,
    actor: str | None = None,
) -> int:
    return _record(db, contact_id, purpose, "granted", source, evidence, actor)


def consent_status(conn: sqlite3.Connection, contact_id: int) -> dict[str, ConsentState]:
    """Each purpose's state for the contact: 'withdrawn' if any identity's newest row says so
    (a withdrawal on one channel holds on all), else the newest state."""
    identities = [
        r[0] for r in conn.execute("SELECT id FROM identities WHERE contact_id = ?", (contact_id,))
    ]
    result = {}
    for purpose in PURPOSES:
        names = (purpose, KEYWORD_PURPOSE) if purpose == "marketing" else (purpose,)
        marks = ",".join("?" * len(names))
        per_identity: dict[int, str | None] = {}
        newest: tuple[Any, ...] | None = None
        newest_withdrawal: tuple[Any, ...] | None = None
        for identity_id in identities:
            row = conn.execute(
                "SELECT id, state, at, source, detail FROM consents WHERE identity_id = ? "
                f"AND purpose IN ({marks}) ORDER BY id DESC LIMIT 1",
                (identity_id, *names),
            ).fetchone()
            per_identity[identity_id] = row[1] if row else None
            if row is None:
                continue
            if newest is None or row[0] > newest[0]:
                newest = row
            if row[1] == "withdrawn" and (
                newest_withdrawal is None or row[0] > newest_withdrawal[0]
            ):
                newest_withdrawal = row
        chosen = newest_withdrawal or newest
        result[purpose] = ConsentState(
            purpose,
            chosen[1] if chosen else None,
            chosen[2] if chosen else None,
            chosen[3] if chosen else None,
            chosen[4] if chosen else None,
            per_identity,
        )
    return result


def consent_history(conn: sqlite3.Connection, contact_id: int) -> list[dict[str, Any]]:
    """Every ledger row of the contact's identities, oldest first (for exports)."""
    keys = ("id", "identity_id", "channel", "purpose", "state", "at", "source", "evidence")
    rows = conn.execute(
        "SELECT s.id, s.identity_id, i.channel, s.purpose, s.state, s.at, s.source, s.detail "
        "FROM consents s JOIN identities i ON i.id = s.identity_id WHERE i.contact_id = ? "
        "ORDER BY s.id",
        (contact_id,),
    ).fetchall()
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _dedupe_key(conn: sqlite3.Connection) -> bytes | None:
    row = conn.execute("SELECT value FROM store_keys WHERE name = 'dedupe'").fetchone()
    return bytes(row[0]) if row else None


def suppression_hash(key: bytes, channel: str, external_id: str) -> str:
    material = "\0".join(("suppress", channel, external_id)).encode()
    return hmac.new(key, material, hashlib.sha256).hexdigest()


def suppress_txn(db: sqlite_utils.Database, contact_id: int) -> int:
    """Before an erasure: keep a keyed hash of each identity whose marketing consent is
    withdrawn. Returns how many were kept."""
    conn = db.conn
    key = _dedupe_key(conn)
    if key is None:
        return 0
    status = consent_status(conn, contact_id)["marketing"]
    kept = 0
    for identity_id, state in status.identities.items():
        if state != "withdrawn":
            continue
        channel, external_id = conn.execute(
            "SELECT channel, external_id FROM identities WHERE id = ?", (identity_id,)
        ).fetchone()
        conn.execute(
            "INSERT OR IGNORE INTO consent_suppressions (hash, purpose, since) VALUES (?, ?, ?)",
            (suppression_hash(key, channel, external_id), "marketing", now()),
        )
        kept += 1
    return kept


def is_suppressed(
    conn: sqlite3.Connection, channel: str, external_id: str, purpose: str = "marketing"
) -> bool:
    """Whether an erased person opted out of ``purpose`` on this channel identity."""
    key = _dedupe_key(conn)
    if key is None:
        return False
    return (
        conn.execute(
            "SELECT 1 FROM consent_suppressions WHERE hash = ? AND purpose = ?",
            (suppression_hash(key, channel, external_id), purpose),
        ).fetchone()
        is not None
    )
