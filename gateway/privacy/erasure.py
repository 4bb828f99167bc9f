"""Erasure: everything the gateway holds about one contact, in one transaction, with a receipt.

``erase_contact_txn(db, sealer, contact_id, *, actor, basis)`` (the retention sweep calls it for
inactive contacts; ``execute_erasure_txn`` for a verified request):

- deletes their messages (sealed bodies), outbox rows (with their delivery log, the channels'
  send state and early statuses), attachments (rows and files on disk), conversation events,
  identities (with their consent rows), rectification history, and the rows of any other table
  with a ``contact_id``, ``identity_id`` or ``conversation_id`` column that is not one of
  :data:`KEPT_TABLES` (a feature added later is erased too, and named in the receipt);
- destroys the contact's key (crypto-shredding) after writing its tombstone
  (gateway.privacy.shredding): their bodies and files stop opening in every copy, and a restore
  of an older backup destroys the key again;
- keeps, and says so in the receipt: the contact row as an anonymised tombstone (``erased_at``;
  an id is never reused, it would meet the destroyed key), each conversation as an empty
  tombstone (thread replaced) holding the journal's **keyed dedupe hashes** (a platform retry of
  an erased message is recognised as a duplicate and creates nothing), the request register
  and audit entries (legal obligation), the transfer log de-linked from them, and a keyed hash
  of each identity that had opted out of marketing (gateway.privacy.consent_ledger).

The store runs with ``secure_delete`` on (SQLCipher's default, set again here), so freed pages
are zeroed; ``gateway erase --vacuum`` also rewrites the file and truncates the WAL.

Refused with :class:`RequestError`, nothing changed: an unknown contact, one already erased, one
under a legal hold (the retention feature's ``legal_holds`` table, when it exists: a row for the
contact or one of their conversations that has not been released).

A reply being sent at the moment of erasure cannot be taken back; its outbox row is emptied and
removed by :func:`sweep_residue_txn` (the daemon runs it with the erasure job) once the send
completes. Files are deleted inside the transaction, after every row: should the commit itself
fail, the rows stay and the erasure can simply be run again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.privacy import audit
from gateway.privacy.consent_ledger import suppress_txn
from gateway.privacy.requests import RequestError, get_request, now, set_status_txn
from gateway.privacy.sealing import Sealer
from gateway.privacy.shredding import destroy_contact_key

if TYPE_CHECKING:
    import sqlite_utils

HANDLED_TABLES = {
    "contacts",
    "identities",
    "conversations",
    "messages",
    "outbox",
    "deliveries",
    "attachments",
    "conversation_events",
    "consents",
    "transfers",
    "rectifications",
    "early_statuses",
}
KEPT_TABLES = {
    "journal": "keyed dedupe hashes only, so a platform retry cannot resurrect a message",
    "contact_keys": "the destroyed key's row: proof of when it was destroyed",
    "requests": "the request register (legal obligation to show how requests were handled)",
    "request_events": "the request register's history",
    "audit_log": "the audit log (legal obligation; ids and counts, never content)",
    "audit_anchor": "the audit log's anchor",
    "consent_suppressions": "keyed hashes of opted-out identities",
    "legal_holds": "legal holds (legal obligation)",
    "destruction_acts": "destruction acts (legal obligation)",
    "incidents": "the incident register (legal obligation)",
    "store_keys": "keys of the store",
    "users": "operators, not contacts",
    "channel_state": "the channels' own state (send records of the contact are removed)",
}
_HOLD_RELEASED = ("released_at", "lifted_at", "ended_at", "removed_at")


@dataclasses.dataclass(frozen=True)
class ErasureReceipt:
    contact_id: int
    erased_at: str
    actor: str
    basis: str
    request_id: int | None
    erased: dict[str, int]
    """What was deleted, by kind, with counts."""
    files_deleted: int
    key_destroyed: bool
    kept: list[dict[str, Any]]
    """What stays, how many, and why."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_text(self) -> str:
        lines = [
            f"Erasure receipt: contact {self.contact_id}",
            f"Erased at: {self.erased_at} (UTC)",
            f"Basis: {self.basis}" + (f" (request #{self.request_id})" if self.request_id else ""),
            "",
            "Erased:",
        ]
        lines += [f"  - {what}: {count}" for what, count in self.erased.items() if count]
        lines.append(f"  - files on disk deleted: {self.files_deleted}")
        lines.append(
            "  - the encryption key of your messages and files was destroyed: copies in older "
            "backups can no longer be read"
            if self.key_destroyed
            else "  - no readable encryption key of yours existed (none, or destroyed before)"
        )
        lines += ["", "Kept, and why:"]
        lines += [f"  - {k['what']} ({k['count']}): {k['why']}" for k in self.kept if k["count"]]
        return "\n".join(lines) + "\n"


def _ids(conn: sqlite3.Connection, sql: str, *args: Any) -> list[int]:
    return [int(r[0]) for r in conn.execute(sql, args)]


def _in(ids: list[int]) -> str:
    return ",".join(str(int(i)) for i in ids) or "NULL"


def legal_hold(conn: sqlite3.Connection, contact_id: int, conversations: list[int]) -> str | None:
    """A description of an active legal hold on the contact, if the retention feature's
    ``legal_holds`` table exists and holds one."""
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'legal_holds'"
    ).fetchone():
        return None
    columns = {r[1] for r in conn.execute("PRAGMA table_info(legal_holds)")}
    where = []
    if "contact_id" in columns:
        where.append(f"contact_id = {int(contact_id)}")
    if "conversation_id" in columns and conversations:
        where.append(f"conversation_id IN ({_in(conversations)})")
    if not where:
        return None
    active = "".join(f" AND {c} IS NULL" for c in _HOLD_RELEASED if c in columns)
    shown = [c for c in ("id", "reason", "author", "created_at") if c in columns] or ["rowid"]
    row = conn.execute(
        f"SELECT {', '.join(shown)} FROM legal_holds WHERE ({' OR '.join(where)}){active} LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    return ", ".join(f"{k} {v}" for k, v in zip(shown, row, strict=True) if v is not None)


def _check(conn: sqlite3.Connection, contact_id: int) -> list[int]:
    row = conn.execute("SELECT erased_at FROM contacts WHERE id = ?", (contact_id,)).fetchone()
    if row is None:
        raise RequestError(f"no contact with id {contact_id}: nothing to erase")
    if row[0] is not None:
        raise RequestError(f"contact {contact_id} was already erased at {row[0]}")
    conversations = _ids(conn, "SELECT id FROM conversations WHERE contact_id = ?", contact_id)
    hold = legal_hold(conn, contact_id, conversations)
    if hold:
        raise RequestError(
            f"contact {contact_id} is under a legal hold ({hold}); erasure is refused until the "
            "hold is released"
        )
    return conversations


def _other_tables(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(table, column) for every table not handled or kept that links rows to a contact."""
    found = []
    for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "AND name NOT LIKE '\\_%' ESCAPE '\\' AND sql NOT LIKE 'CREATE VIRTUAL%'"
    ).fetchall():
        if name in HANDLED_TABLES or name in KEPT_TABLES:
            continue
        columns = {r[1] for r in conn.execute(f'PRAGMA table_info("{name}")')}
        for column in ("contact_id", "identity_id", "conversation_id"):
            if column in columns:
                found.append((name, column))
                break
    return found


def _delete_files(sealer: Sealer, paths: list[str]) -> int:
    root = sealer.root.resolve()
    deleted = 0
    for text in paths:
        path = Path(text).resolve()
        if not path.is_relative_to(root):
            continue  # never outside the attachment directory, whatever a row says
        try:
            path.unlink()
            deleted += 1
        except FileNotFoundError:
            pass
    return deleted


def erase_contact_txn(
    db: sqlite_utils.Database,
    sealer: Sealer,
    contact_id: int,
    *,
    actor: str,
    basis: str,
    request_id: int | None = None,
) -> ErasureReceipt:
    """Erase a contact (see the module docstring); returns the receipt for the subject.
    ``basis``: why (e.g. "request #12 (GDPR art. 17)", "retention: inactive 3 years")."""
    conn = db.conn
    conversations = _check(conn, contact_id)
    if not basis.strip():
        raise RequestError("an erasure needs its basis (a request, a retention policy)")
    conn.execute("PRAGMA secure_delete = ON")
    ts = now()
    convs = _in(conversations)
    erased: dict[str, int] = {}
    kept_suppressions = suppress_txn(db, contact_id)
    identities = _ids(conn, "SELECT id FROM identities WHERE contact_id = ?", contact_id)
    paths = [
        r[0]
        for r in conn.execute(
            "SELECT path FROM attachments WHERE (contact_id = ? OR conversation_id IN "
            f"({convs})) AND path IS NOT NULL",
            (contact_id,),
        )
    ]
    erased["attachments"] = conn.execute(
        f"DELETE FROM attachments WHERE contact_id = ? OR conversation_id IN ({convs})",
        (contact_id,),
    ).rowcount
    sent = conn.execute(
        f"SELECT idempotency_key, channel, external_id FROM outbox WHERE conversation_id IN ({convs})"
    ).fetchall()
    for key, channel, external_id in sent:
        conn.execute(
            "DELETE FROM channel_state WHERE channel = ? AND key = ?", (channel, f"send:{key}")
        )
        if external_id:
            conn.execute(
                "DELETE FROM early_statuses WHERE channel = ? AND external_id = ?",
                (channel, external_id),
            )
    erased["deliveries"] = conn.execute(
        "DELETE FROM deliveries WHERE outbox_id IN (SELECT id FROM outbox WHERE "
        f"conversation_id IN ({convs}) AND state != 'sending')"
    ).rowcount
    erased["outbox"] = conn.execute(
        f"DELETE FROM outbox WHERE conversation_id IN ({convs}) AND state != 'sending'"
    ).rowcount
    in_flight = conn.execute(
        "UPDATE outbox SET text = '', body = NULL, thread_key = 'erased', "
        f"reply_to_external_id = NULL WHERE conversation_id IN ({convs})"
    ).rowcount
    erased["messages"] = conn.execute(
        f"DELETE FROM messages WHERE conversation_id IN ({convs})"
    ).rowcount
    dedupe = conn.execute(
        "UPDATE journal SET state = 'done', done_at = NULL, received_at = ?, message_id = NULL "
        f"WHERE conversation_id IN ({convs})",
        (ts,),
    ).rowcount
    erased["conversation events"] = conn.execute(
        f"DELETE FROM conversation_events WHERE conversation_id IN ({convs})"
    ).rowcount
    transfers = conn.execute(
        "UPDATE transfers SET conversation_id = NULL, journal_id = NULL "
        f"WHERE conversation_id IN ({convs})"
    ).rowcount
    erased["rectification history"] = conn.execute(
        "DELETE FROM rectifications WHERE contact_id = ?", (contact_id,)
    ).rowcount
    erased["consent records"] = conn.execute(
        f"DELETE FROM consents WHERE identity_id IN ({_in(identities)})"
    ).rowcount
    for table, column in _other_tables(conn):
        ids = {"contact_id": [contact_id], "identity_id": identities}.get(column, conversations)
        erased[f"{table} rows"] = conn.execute(
            f'DELETE FROM "{table}" WHERE {column} IN ({_in(ids)})'
        ).rowcount
    requests = conn.execute(
        "UPDATE requests SET requester = NULL, details = NULL, verification_note = NULL, "
        "identity_id = NULL WHERE contact_id = ?",
        (contact_id,),
    ).rowcount
    erased["identities"] = conn.execute(
        "DELETE FROM identities WHERE contact_id = ?", (contact_id,)
    ).rowcount
    conn.execute(
        "UPDATE conversations SET thread_key = 'erased:' || id, status = 'closed', "
        "ai_enabled = 0, created_at = ?, last_message_at = ? WHERE contact_id = ?",
        (ts, ts, contact_id),
    )
    conn.execute(
        "UPDATE contacts SET display_name = NULL, language = NULL, ai_enabled = 0, "
        "restricted = 1, created_at = ?, updated_at = ?, erased_at = ? WHERE id = ?",
        (ts, ts, ts, contact_id),
    )
    had_key = (
        conn.execute(
            "SELECT 1 FROM contact_keys WHERE contact_id = ? AND destroyed_at IS NULL",
            (contact_id,),
        ).fetchone()
        is not None
    )
    if had_key:
        # The tombstone file (with the key's fingerprint) keeps them erased when an older
        # backup is restored (gateway.privacy.shredding), then the key is destroyed.
        destroy_contact_key(sealer, conn, sealer.root.parent, contact_id)
    else:
        # A contact without a key gets a destroyed one: nothing can ever be sealed for them.
        conn.execute(
            "INSERT OR IGNORE INTO contact_keys (contact_id, wrapped, created_at) "
            "VALUES (?, zeroblob(0), ?)",
            (contact_id, ts),
        )
        sealer.destroy(conn, contact_id)
    kept = [
        {"what": "anonymised contact record (id, time of erasure)", "count": 1,
         "why": "so the id is never given to anyone else"},
        {"what": "empty conversation records", "count": len(conversations),
         "why": "they hold the hashes below; thread ids and times were removed"},
        {"what": "keyed hashes of platform message ids", "count": dedupe,
         "why": "so a platform re-sending an erased message cannot bring it back"},
        {"what": "record that your key was destroyed", "count": 1,
         "why": "proof of crypto-shredding"},
        {"what": "data-subject request records", "count": requests,
         "why": "legal obligation to show how requests were handled (requester details removed)"},
        {"what": "audit log entries", "count": 1,
         "why": "legal obligation; they hold ids and counts, never content"},
        {"what": "AI transfer log entries, no longer linked to you", "count": transfers,
         "why": "record of processing (which provider received what categories, when)"},
        {"what": "keyed hashes of identities that opted out of marketing",
         "count": kept_suppressions, "why": "so you are not sent marketing if you write again"},
        {"what": "replies being sent at the moment of erasure", "count": in_flight,
         "why": "emptied now, removed once the send completes"},
    ]  # fmt: skip
    receipt = ErasureReceipt(
        contact_id=contact_id,
        erased_at=ts,
        actor=actor,
        basis=basis.strip(),
        request_id=request_id,
        erased=erased,
        files_deleted=0,
        key_destroyed=had_key,
        kept=kept,
    )
    audit.append_txn(
        db,
        actor=actor,
        action="privacy.erase",
        target=f"contact:{contact_id}",
        detail={"basis": basis.strip(), "request": request_id, **erased, "files": len(paths)},
    )
    if request_id is not None:
        set_status_txn(db, request_id, "completed", actor=actor, outcome=receipt.to_json())
    files = _delete_files(sealer, paths)
    receipt = dataclasses.replace(receipt, files_deleted=files)
    if request_id is not None:
        conn.execute(
            "UPDATE requests SET outcome = ? WHERE id = ?",
            (json.dumps(receipt.to_json(), ensure_ascii=False, sort_keys=True), request_id),
        )
    return receipt


def execute_erasure_txn(
    db: sqlite_utils.Database, sealer: Sealer, request_id: int, *, actor: str
) -> ErasureReceipt:
    """Carry out a verified erasure request; it is completed with the receipt as its outcome."""
    try:
        request = get_request(db.conn, request_id)
    except LookupError as exc:
        raise RequestError(str(exc)) from None
    if request.kind != "erasure":
        raise RequestError(f"request #{request_id} asks for {request.kind}, not erasure")
    if not request.is_open:
        raise RequestError(f"request #{request_id} is already {request.status}")
    if request.verification != "verified":
        raise RequestError(
            f"request #{request_id} is not verified ({request.verification}): "
            f"`gateway requests verify {request_id} --method ...` first"
        )
    if request.contact_id is None:
        raise RequestError(
            f"request #{request_id} is not linked to a contact; find the contact and give it "
            "(`gateway erase CONTACT_ID --request ...`)"
        )
    return erase_contact_txn(
        db,
        sealer,
        request.contact_id,
        actor=actor,
        basis=f"erasure request #{request_id} (GDPR art. 17; 152-FZ art. 21)",
        request_id=request_id,
    )


RESIDUE_HOURS = 24
"""How long after an erasure its tombstones are checked for late arrivals."""


def recently_erased(conn: sqlite3.Connection, within_hours: int = RESIDUE_HOURS) -> list[int]:
    """Conversations of contacts erased within the last ``within_hours`` (index on erased_at)."""
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=within_hours)).isoformat()
    return _ids(
        conn,
        "SELECT c.id FROM contacts k JOIN conversations c ON c.contact_id = k.id "
        "WHERE k.erased_at IS NOT NULL AND k.erased_at >= ?",
        since,
    )


def sweep_residue_txn(
    db: sqlite_utils.Database, sealer: Sealer, *, within_hours: int = RESIDUE_HOURS
) -> int:
    """Remove what reached a recently erased contact's tombstones after the erasure (a reply
    whose send was in flight, an answer committed by a lane that was mid-way). Returns rows."""
    conn = db.conn
    conversations = recently_erased(conn, within_hours)
    if not conversations:
        return 0
    convs = _in(conversations)
    paths = [
        r[0]
        for r in conn.execute(
            f"SELECT path FROM attachments WHERE conversation_id IN ({convs}) AND path IS NOT NULL"
        )
    ]
    removed = 0
    for sql in (
        f"DELETE FROM attachments WHERE conversation_id IN ({convs})",
        f"DELETE FROM outbox WHERE conversation_id IN ({convs}) AND state != 'sending'",
        f"UPDATE outbox SET text = '', body = NULL WHERE conversation_id IN ({convs}) "
        "AND (text != '' OR body IS NOT NULL)",
        f"DELETE FROM messages WHERE conversation_id IN ({convs})",
        f"DELETE FROM conversation_events WHERE conversation_id IN ({convs})",
        "UPDATE transfers SET conversation_id = NULL, journal_id = NULL "
        f"WHERE conversation_id IN ({convs})",
    ):
        removed += conn.execute(sql).rowcount
    _delete_files(sealer, paths)
    return removed
