"""The built-in retention categories (see gateway.privacy.retention_categories), in sweep order.

Times compared are the ones the store writes (ISO 8601 UTC): a conversation's activity is its
``last_message_at``; attachments, events and deliveries their own creation time.
"""

from __future__ import annotations

import collections
import importlib
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import sqlite_utils

from gateway.errors import GatewayError
from gateway.privacy import audit
from gateway.privacy.retention_categories import (
    Category,
    Rows,
    Scope,
    Subjects,
    delete_attachments,
    delete_rows,
    marks,
    register_category,
)

KEPT = "kept:"
"""Subjects key prefix for records an apply function had to keep (with the reason after it)."""


def _and(extra: str, expiry: tuple[str, list[Any]]) -> tuple[str, list[Any]]:
    return f"{extra} AND {expiry[0]}", expiry[1]


def _per_contact(conn: sqlite3.Connection, sql: str, ids: Sequence[int]) -> Subjects:
    """``sql`` selects (contact id, count) for ``ids`` (its one parameter list)."""
    done: Subjects = collections.Counter()
    for contact_id, n in conn.execute(sql.format(ids=marks(ids)), list(ids)):
        done[f"contact:{contact_id}" if contact_id is not None else ""] += n
    return done


def _delete_each(conn: sqlite3.Connection, table: str, ids: Sequence[int]) -> list[int]:
    """Delete rows by id; a row another table still refers to (a foreign key of a feature this
    module does not know) is kept. Returns the ids kept."""
    conn.execute("SAVEPOINT retention_all")
    try:
        conn.execute(f"DELETE FROM {table} WHERE id IN ({marks(ids)})", list(ids))
        conn.execute("RELEASE retention_all")
        return []
    except sqlite3.IntegrityError:
        conn.execute("ROLLBACK TO retention_all")
        conn.execute("RELEASE retention_all")
    kept = []
    for row_id in ids:
        conn.execute("SAVEPOINT retention_one")
        try:
            conn.execute(f"DELETE FROM {table} WHERE id = ?", (row_id,))
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO retention_one")
            kept.append(row_id)
        conn.execute("RELEASE retention_one")
    return kept


# Message content: anonymised --------------------------------------------------------------------


def _anonymise_messages(db: sqlite_utils.Database, scope: Scope, ids: Sequence[int]) -> Subjects:
    conn = db.conn
    done = _per_contact(
        conn,
        "SELECT c.contact_id, count(*) FROM messages m JOIN conversations c "
        "ON c.id = m.conversation_id WHERE m.id IN ({ids}) GROUP BY c.contact_id",
        ids,
    )
    conn.execute(
        "UPDATE messages SET text = '', body = NULL, analysis = NULL, suggestions = NULL, "
        f"redacted_at = ? WHERE id IN ({marks(ids)})",
        [scope.now, *ids],
    )
    # The copy of a reply's text in the outbox; rows still to be sent are live work.
    conn.execute(
        f"UPDATE outbox SET text = '', body = NULL, redacted_at = ? WHERE message_id IN "
        f"({marks(ids)}) AND state NOT IN ('pending', 'sending') AND redacted_at IS NULL",
        [scope.now, *ids],
    )
    return done


MESSAGE_CONTENT = Category(
    name="message_content",
    key="message_content_days",
    title="Message content",
    action="anonymised",
    what="text of messages and replies (plain and sealed body), their AI analysis and "
    "suggested replies; the rows stay as metadata, marked redacted_at",
    rows=Rows(
        "messages m JOIN conversations c ON c.id = m.conversation_id",
        "m.id",
        lambda s: _and(
            # An unanswered message (however old) is work the pipeline still has to do.
            "m.redacted_at IS NULL AND NOT EXISTS (SELECT 1 FROM journal j WHERE "
            "j.conversation_id = c.id AND j.state = 'pending')",
            s.older("c.last_message_at", "c.channel"),
        ),
        contact="c.contact_id",
        conversation="c.id",
    ),
    apply=_anonymise_messages,
)


# Attachments and voicemail: sealed files deleted -------------------------------------------------


def _delete_attachments(db: sqlite_utils.Database, scope: Scope, ids: Sequence[int]) -> Subjects:
    return delete_attachments(db.conn, f"id IN ({marks(ids)})", ids)


def _attachment_rows(category: str) -> Rows:
    return Rows(
        "attachments a JOIN conversations c ON c.id = a.conversation_id",
        "a.id",
        lambda s: _and(f"a.category = '{category}'", s.older("a.created_at", "c.channel")),
        contact="a.contact_id",
        conversation="a.conversation_id",
    )


ATTACHMENTS = Category(
    name="attachments",
    key="attachments_days",
    title="Attachments",
    action="deleted",
    what="files received with messages: the sealed file is deleted from disk, then its record",
    rows=_attachment_rows("attachments"),
    apply=_delete_attachments,
)


# Call logs: call and voicemail events, with their recordings ------------------------------------


def _delete_events(db: sqlite_utils.Database, scope: Scope, ids: Sequence[int]) -> Subjects:
    conn = db.conn
    done = _per_contact(
        conn,
        "SELECT c.contact_id, count(*) FROM conversation_events e JOIN conversations c "
        "ON c.id = e.conversation_id WHERE e.id IN ({ids}) GROUP BY c.contact_id",
        ids,
    )
    # Recordings first: deleting the event would cascade to their rows but leave the files.
    delete_attachments(conn, f"event_id IN ({marks(ids)})", ids)
    conn.execute(f"DELETE FROM conversation_events WHERE id IN ({marks(ids)})", list(ids))
    return done


CALL_LOGS = Category(
    name="call_logs",
    key="call_logs_days",
    title="Call logs",
    action="deleted",
    what="call and voicemail events (numbers, times, durations) and their sealed recordings",
    rows=Rows(
        "conversation_events e JOIN conversations c ON c.id = e.conversation_id",
        "e.id",
        lambda s: _and("e.kind IN ('call', 'voicemail')", s.older("e.at", "c.channel")),
        contact="c.contact_id",
        conversation="c.id",
    ),
    apply=_delete_events,
)

VOICEMAIL = Category(
    name="voicemail",
    key="call_logs_days",
    title="Voicemail recordings",
    action="deleted",
    what="recordings kept under the voicemail category (sealed file, then record)",
    rows=_attachment_rows("voicemail"),
    apply=_delete_attachments,
)


# Delivery log -----------------------------------------------------------------------------------


def _delete_deliveries(db: sqlite_utils.Database, scope: Scope, ids: Sequence[int]) -> Subjects:
    conn = db.conn
    done = _per_contact(
        conn,
        "SELECT c.contact_id, count(*) FROM deliveries d JOIN outbox o ON o.id = d.outbox_id "
        "JOIN conversations c ON c.id = o.conversation_id WHERE d.id IN ({ids}) "
        "GROUP BY c.contact_id",
        ids,
    )
    outbox_ids = [
        r[0]
        for r in conn.execute(
            f"SELECT DISTINCT outbox_id FROM deliveries WHERE id IN ({marks(ids)})", list(ids)
        )
    ]
    conn.execute(f"DELETE FROM deliveries WHERE id IN ({marks(ids)})", list(ids))
    # The platform's last word and the last error on a reply whose whole log has expired.
    conn.execute(
        "UPDATE outbox SET platform_status = NULL, platform_status_at = NULL, last_error = NULL "
        f"WHERE id IN ({marks(outbox_ids)}) AND state NOT IN ('pending', 'sending') "
        "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.outbox_id = outbox.id)",
        outbox_ids,
    )
    return done


DELIVERY_LOG = Category(
    name="delivery_log",
    key="delivery_log_days",
    title="Delivery log",
    action="deleted",
    what="delivery attempts and platform statuses of replies; a reply's last status and "
    "error are cleared once its whole log has gone",
    rows=Rows(
        "deliveries d JOIN outbox o ON o.id = d.outbox_id "
        "JOIN conversations c ON c.id = o.conversation_id",
        "d.id",
        lambda s: s.older("d.at", "o.channel"),
        contact="c.contact_id",
        conversation="o.conversation_id",
    ),
    apply=_delete_deliveries,
)


# Transfer log -----------------------------------------------------------------------------------


def _delete_transfers(db: sqlite_utils.Database, scope: Scope, ids: Sequence[int]) -> Subjects:
    done = _per_contact(
        db.conn,
        "SELECT c.contact_id, count(*) FROM transfers t LEFT JOIN conversations c "
        "ON c.id = t.conversation_id WHERE t.id IN ({ids}) GROUP BY c.contact_id",
        ids,
    )
    db.conn.execute(f"DELETE FROM transfers WHERE id IN ({marks(ids)})", list(ids))
    return done


TRANSFER_LOG = Category(
    name="transfer_log",
    key="transfer_log_days",
    title="Transfer log",
    action="deleted",
    what="records of data sent to model providers (who, where, which categories; no content)",
    rows=Rows(
        "transfers t LEFT JOIN conversations c ON c.id = t.conversation_id",
        "t.id",
        lambda s: s.older("t.at", "c.channel"),
        contact="c.contact_id",
        conversation="t.conversation_id",
    ),
    apply=_delete_transfers,
)


# Conversation metadata: whole conversations --------------------------------------------------


def _delete_conversations(db: sqlite_utils.Database, scope: Scope, ids: Sequence[int]) -> Subjects:
    conn = db.conn
    contacts = dict(
        conn.execute(
            f"SELECT id, contact_id FROM conversations WHERE id IN ({marks(ids)})", list(ids)
        ).fetchall()
    )
    done: Subjects = collections.Counter()
    kept = 0
    for conversation_id in ids:
        conn.execute("SAVEPOINT retention_conversation")
        try:
            one = [conversation_id]
            delete_attachments(conn, "conversation_id = ?", one)
            for table in ("journal", "outbox", "messages"):
                conn.execute(f"DELETE FROM {table} WHERE conversation_id = ?", one)
            conn.execute("DELETE FROM conversations WHERE id = ?", one)
        except sqlite3.IntegrityError:
            # Another feature's records still refer to it: keep the whole conversation.
            conn.execute("ROLLBACK TO retention_conversation")
            kept += 1
        else:
            done[f"contact:{contacts[conversation_id]}"] += 1
        conn.execute("RELEASE retention_conversation")
    if kept:
        done[f"{KEPT}other records refer to it"] = kept
    return done


CONVERSATION_METADATA = Category(
    name="conversation_metadata",
    key="conversation_metadata_days",
    title="Conversation metadata",
    action="deleted",
    what="inactive conversations with every message row, reply, delivery log, event and "
    "attachment in them (sealed files deleted)",
    rows=Rows(
        "conversations c",
        "c.id",
        # Work in progress (an unanswered message, a reply not yet sent) keeps it.
        lambda s: _and(
            "NOT EXISTS (SELECT 1 FROM journal j WHERE j.conversation_id = c.id "
            "AND j.state = 'pending') AND NOT EXISTS (SELECT 1 FROM outbox o "
            "WHERE o.conversation_id = c.id AND o.state IN ('pending', 'sending'))",
            s.older("c.last_message_at", "c.channel"),
        ),
        contact="c.contact_id",
        conversation="c.id",
    ),
    apply=_delete_conversations,
)


# Contacts of inactive users: erased by the data-subject eraser ----------------------------------

ERASURE_MODULE = "gateway.privacy.erasure"


def _eraser() -> Callable[..., Any] | None:
    try:
        module = importlib.import_module(ERASURE_MODULE)
    except ImportError:
        return None
    fn: Callable[..., Any] | None = getattr(module, "erase_contact_txn", None)
    return fn


def _erasure_available(conn: sqlite3.Connection) -> str | None:
    if _eraser() is None:
        return f"the contact eraser ({ERASURE_MODULE}.erase_contact_txn) is not installed"
    columns = {r[1] for r in conn.execute("PRAGMA table_info(contacts)")}
    if "erased_at" not in columns:
        return "contacts.erased_at is missing (the data-subject requests migration)"
    return None


def _erase_contacts(db: sqlite_utils.Database, scope: Scope, ids: Sequence[int]) -> Subjects:
    erase = _eraser()
    assert erase is not None  # checked by available()
    conn = db.conn
    done: Subjects = collections.Counter()
    for contact_id in ids:
        conn.execute("SAVEPOINT retention_erase")
        try:
            erase(db, scope.sealer, contact_id, actor=scope.actor, basis=scope.basis)
        except GatewayError as exc:  # the eraser refused this one (its message says why)
            conn.execute("ROLLBACK TO retention_erase")
            done[f"{KEPT}{exc}"] += 1
        else:
            done[f"contact:{contact_id}"] += 1
        conn.execute("RELEASE retention_erase")
    return done


def _contact_expired(s: Scope) -> tuple[str, list[Any]]:
    # Inactive: no conversation of theirs is recent for its channel's setting (and a contact
    # with no conversation at all is judged by when it was created). Erased contacts no longer
    # match.
    recent, params = s.older("c.last_message_at", "c.channel")
    return (
        "k.erased_at IS NULL "
        f"AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.contact_id = k.id AND NOT ({recent})) "
        "AND (EXISTS (SELECT 1 FROM conversations c WHERE c.contact_id = k.id) OR k.created_at < ?)",
        [*params, s.cutoff],
    )


INACTIVE_CONTACTS = Category(
    name="inactive_contacts",
    key="inactive_contacts_days",
    title="Contacts of inactive users",
    action="erased",
    what="everything about a contact who has not written for the period, by the data-subject "
    "eraser (their key destroyed: crypto-shredded in backups too)",
    rows=Rows("contacts k", "k.id", _contact_expired, contact="k.id"),
    apply=_erase_contacts,
    batch_share=50,
    available=_erasure_available,
)


# Operator accounts, audit log -------------------------------------------------------------------


def _delete_users(db: sqlite_utils.Database, scope: Scope, ids: Sequence[int]) -> Subjects:
    kept = _delete_each(db.conn, "users", ids)
    done: Subjects = collections.Counter(f"user:{i}" for i in ids if i not in kept)
    if kept:
        done[f"{KEPT}other records refer to it"] = len(kept)
    return done


ACCOUNTS = Category(
    name="accounts",
    key="accounts_days",
    title="Operator and developer accounts",
    action="deleted",
    what="accounts deactivated for the period: email, name, password hash, 2FA secrets",
    rows=Rows("users u", "u.id", lambda s: s.older("u.deactivated_at")),
    apply=_delete_users,
    per_channel=False,
)


def _truncate_audit(db: sqlite_utils.Database, scope: Scope, ids: Sequence[int]) -> Subjects:
    (last_at,) = db.conn.execute("SELECT at FROM audit_log WHERE id = ?", (max(ids),)).fetchone()
    # Everything up to this batch's newest entry ("~" sorts after every character of an ISO
    # time: just after its time, before any later one); the chain keeps its anchor and the
    # removal itself is audited.
    removed = audit.truncate_before_txn(db, last_at + "~", actor=scope.actor)
    return collections.Counter({"": removed})


AUDIT_LOG = Category(
    name="audit_log",
    key="audit_log_days",
    title="Audit log",
    action="deleted",
    what="audit entries older than the period; the hash of the last one removed is kept as "
    "the chain's anchor and the removal itself is audited",
    rows=Rows("audit_log a", "a.id", lambda s: s.older("a.at")),
    apply=_truncate_audit,
    per_channel=False,
)

for _category in (
    MESSAGE_CONTENT,
    ATTACHMENTS,
    CALL_LOGS,
    VOICEMAIL,
    DELIVERY_LOG,
    TRANSFER_LOG,
    CONVERSATION_METADATA,
    INACTIVE_CONTACTS,
    ACCOUNTS,
    AUDIT_LOG,
):
    register_category(_category)

__all__ = ["KEPT", "delete_rows"]
