"""Rectification (with history), restriction and objection.

- **Rectification**: a contact's display name and language, and the display name of each of
  their channel identities. The value before the change is kept in ``rectifications`` (who, when,
  which request); the audit entry names the fields, never the values.
- **Restriction** (GDPR art. 18): ``contacts.restricted = 1``. The core then never sends the
  contact's messages to a model (``next_pending_txn``); their data stays stored. Lifting it is
  recorded the same way.
- **Objection** (art. 21): AI processing and marketing withdrawn in the consent ledger for every
  identity (gateway.privacy.consent_ledger): AI off for the contact, no notifications.

Each takes an optional ``request_id``: that request (of the matching type, about this contact,
verified) is completed in the same transaction with what was done as its outcome.
"""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING, Any

from gateway.privacy import audit
from gateway.privacy.consent_ledger import withdraw_consent_txn
from gateway.privacy.requests import (
    RequestError,
    check_contact,
    get_request,
    now,
    set_status_txn,
)

if TYPE_CHECKING:
    import sqlite_utils

LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
MAX_NAME = 200


def check_request(
    conn: sqlite3.Connection, request_id: int | None, contact_id: int, kinds: tuple[str, ...]
) -> None:
    """Refuse a request that is not open, verified, of one of ``kinds`` and about this contact."""
    if request_id is None:
        return
    try:
        request = get_request(conn, request_id)
    except LookupError as exc:
        raise RequestError(str(exc)) from None
    if request.kind not in kinds:
        raise RequestError(
            f"request #{request_id} asks for {request.kind}, not {' or '.join(kinds)}"
        )
    if request.contact_id != contact_id:
        raise RequestError(
            f"request #{request_id} is about contact {request.contact_id}, not {contact_id}"
        )
    if not request.is_open:
        raise RequestError(f"request #{request_id} is already {request.status}")
    if request.verification != "verified":
        raise RequestError(
            f"request #{request_id} is not verified ({request.verification}): "
            f"`gateway requests verify {request_id} --method ...` first"
        )


def complete_request(
    db: sqlite_utils.Database, request_id: int | None, actor: str, outcome: dict[str, Any]
) -> None:
    if request_id is not None:
        set_status_txn(db, request_id, "completed", actor=actor, outcome=outcome)


def _clean_name(value: str) -> str | None:
    value = " ".join(value.split())
    if len(value) > MAX_NAME:
        raise RequestError(f"a display name is at most {MAX_NAME} characters")
    return value or None


def rectify_txn(
    db: sqlite_utils.Database,
    contact_id: int,
    *,
    actor: str,
    display_name: str | None = None,
    language: str | None = None,
    identity_names: dict[int, str] | None = None,
    request_id: int | None = None,
) -> list[dict[str, Any]]:
    """Correct what is given (``None``: leave as is; ``""``: clear). Returns the changes
    ``{"field", "identity_id", "old", "new"}``; an unchanged value is no change."""
    conn = db.conn
    check_contact(conn, contact_id)
    check_request(conn, request_id, contact_id, ("rectification",))
    wanted: list[tuple[str, int | None, str | None]] = []
    if display_name is not None:
        wanted.append(("display_name", None, _clean_name(display_name)))
    if language is not None:
        lang = language.strip() or None
        if lang is not None and not LANGUAGE.match(lang):
            raise RequestError(f"{language!r} is not a language code (e.g. en, ru, pt-BR)")
        wanted.append(("language", None, lang))
    for named, name in (identity_names or {}).items():
        row = conn.execute("SELECT contact_id FROM identities WHERE id = ?", (named,)).fetchone()
        if row is None or row[0] != contact_id:
            raise RequestError(f"identity {named} is not one of contact {contact_id}'s")
        wanted.append(("identity_display_name", named, _clean_name(name)))
    if not wanted:
        raise RequestError("nothing to correct: give --name, --language or --identity-name")
    changes = []
    ts = now()
    for field, identity_id, new in wanted:
        if identity_id is None:
            old = conn.execute(
                f"SELECT {field} FROM contacts WHERE id = ?", (contact_id,)
            ).fetchone()[0]
        else:
            old = conn.execute(
                "SELECT display_name FROM identities WHERE id = ?", (identity_id,)
            ).fetchone()[0]
        if old == new:
            continue
        if identity_id is None:
            conn.execute(
                f"UPDATE contacts SET {field} = ?, updated_at = ? WHERE id = ?",
                (new, ts, contact_id),
            )
        else:
            conn.execute("UPDATE identities SET display_name = ? WHERE id = ?", (new, identity_id))
        conn.execute(
            "INSERT INTO rectifications (contact_id, identity_id, field, old_value, new_value, "
            "at, actor, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (contact_id, identity_id, field, old, new, ts, actor, request_id),
        )
        changes.append({"field": field, "identity_id": identity_id, "old": old, "new": new})
    audit.append_txn(
        db,
        actor=actor,
        action="privacy.rectify",
        target=f"contact:{contact_id}",
        detail={
            "fields": sorted({c["field"] for c in changes}),
            "identities": sorted(c["identity_id"] for c in changes if c["identity_id"]),
            "request": request_id,
        },
    )
    complete_request(
        db,
        request_id,
        actor,
        {"rectified": [{"field": c["field"], "identity_id": c["identity_id"]} for c in changes]},
    )
    return changes


def rectification_history(conn: sqlite3.Connection, contact_id: int) -> list[dict[str, Any]]:
    keys = ("id", "field", "identity_id", "old_value", "new_value", "at", "actor", "request_id")
    rows = conn.execute(
        "SELECT id, field, identity_id, old_value, new_value, at, actor, request_id "
        "FROM rectifications WHERE contact_id = ? ORDER BY id",
        (contact_id,),
    ).fetchall()
    return [dict(zip(keys, r, strict=True)) for r in rows]


def restrict_txn(
    db: sqlite_utils.Database,
    contact_id: int,
    *,
    actor: str,
    lift: bool = False,
    reason: str | None = None,
    request_id: int | None = None,
) -> bool:
    """Restrict processing (or lift the restriction). Returns False if it already was so."""
    conn = db.conn
    check_contact(conn, contact_id)
    check_request(conn, request_id, contact_id, ("restriction",))
    value = 0 if lift else 1
    changed = (
        conn.execute(
            "UPDATE contacts SET restricted = ?, updated_at = ? WHERE id = ? AND restricted != ?",
            (value, now(), contact_id, value),
        ).rowcount
        > 0
    )
    audit.append_txn(
        db,
        actor=actor,
        action="privacy.restrict.lift" if lift else "privacy.restrict",
        target=f"contact:{contact_id}",
        detail={"changed": changed, "reason": reason, "request": request_id},
    )
    complete_request(db, request_id, actor, {"restricted": not lift})
    return changed


def object_txn(
    db: sqlite_utils.Database,
    contact_id: int,
    *,
    actor: str,
    source: str = "cli",
    evidence: str | None = None,
    request_id: int | None = None,
) -> dict[str, Any]:
    """The contact objects: AI processing and marketing withdrawn on every identity."""
    conn = db.conn
    check_contact(conn, contact_id)
    check_request(conn, request_id, contact_id, ("objection",))
    proof = evidence or (f"request #{request_id}" if request_id else None)
    identities = withdraw_consent_txn(db, contact_id, "ai_processing", source, proof, actor=actor)
    withdraw_consent_txn(db, contact_id, "marketing", source, proof, actor=actor)
    outcome = {"ai": "off", "marketing": "withdrawn", "identities": identities}
    audit.append_txn(
        db,
        actor=actor,
        action="privacy.object",
        target=f"contact:{contact_id}",
        detail={**outcome, "request": request_id},
    )
    complete_request(db, request_id, actor, outcome)
    return outcome
