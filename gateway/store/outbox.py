"""The outbox and its delivery log."""

from __future__ import annotations

import dataclasses

import sqlite_utils

from gateway.store.journal import now


@dataclasses.dataclass(frozen=True)
class OutboxItem:
    id: int
    idempotency_key: str
    conversation_id: int
    channel: str
    account: str
    thread_key: str
    text: str
    reply_to_external_id: str | None
    attempts: int
    message_id: int | None


def recover_outbox_txn(db: sqlite_utils.Database) -> list[int]:
    """At start-up: rows left 'sending' by a crash may or may not have reached the platform.

    At-most-once delivery wins: they become 'unknown' (logged, visible to operators) instead of
    being sent again. Returns their ids.
    """
    conn = db.conn
    ids = [r[0] for r in conn.execute("SELECT id FROM outbox WHERE state = 'sending'")]
    ts = now()
    for outbox_id in ids:
        conn.execute(
            "UPDATE outbox SET state = 'unknown', updated_at = ?, "
            "last_error = 'interrupted while sending; not resent (at-most-once)' WHERE id = ?",
            (ts, outbox_id),
        )
        conn.execute(
            "INSERT INTO deliveries (outbox_id, attempt, at, outcome, detail) "
            "SELECT id, attempts, ?, 'unknown', 'interrupted while sending' FROM outbox WHERE id = ?",
            (ts, outbox_id),
        )
    return ids


def open_conversations_txn(db: sqlite_utils.Database) -> list[int]:
    return [
        r[0]
        for r in db.conn.execute(
            "SELECT DISTINCT conversation_id FROM outbox WHERE state = 'pending' ORDER BY conversation_id"
        )
    ]


def next_outbox_txn(db: sqlite_utils.Database, conversation_id: int) -> OutboxItem | None:
    row = db.conn.execute(
        "SELECT id, idempotency_key, conversation_id, channel, account, thread_key, text, "
        "reply_to_external_id, attempts, message_id FROM outbox "
        "WHERE conversation_id = ? AND state = 'pending' ORDER BY id LIMIT 1",
        (conversation_id,),
    ).fetchone()
    return OutboxItem(*row) if row else None


def mark_sending_txn(db: sqlite_utils.Database, outbox_id: int) -> int:
    """Claim a row for one send attempt. Returns the attempt number (0 if no longer pending)."""
    cur = db.conn.execute(
        "UPDATE outbox SET state = 'sending', attempts = attempts + 1, updated_at = ? "
        "WHERE id = ? AND state = 'pending' RETURNING attempts",
        (now(), outbox_id),
    )
    row = cur.fetchone()
    return int(row[0]) if row else 0


def record_attempt_txn(
    db: sqlite_utils.Database,
    outbox_id: int,
    attempt: int,
    outcome: str,
    *,
    detail: str | None = None,
    external_id: str | None = None,
) -> None:
    """Record what a send attempt came to and move the row to its next state.

    outcome: 'sent', 'retry' (back to pending), 'failed', 'unknown'.
    """
    conn = db.conn
    ts = now()
    state = {"sent": "sent", "retry": "pending", "failed": "failed", "unknown": "unknown"}[outcome]
    conn.execute(
        "UPDATE outbox SET state = ?, updated_at = ?, last_error = ?, "
        "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END, "
        "external_id = coalesce(?, external_id) WHERE id = ?",
        (state, ts, None if outcome == "sent" else detail, outcome, ts, external_id, outbox_id),
    )
    if external_id is not None:
        conn.execute(
            "UPDATE messages SET external_id = ?, platform_sent_at = ? "
            "WHERE id = (SELECT message_id FROM outbox WHERE id = ?)",
            (external_id, ts, outbox_id),
        )
    conn.execute(
        "INSERT INTO deliveries (outbox_id, attempt, at, outcome, detail) VALUES (?, ?, ?, ?, ?)",
        (outbox_id, attempt, ts, outcome, detail),
    )


def outbox_counts_txn(db: sqlite_utils.Database) -> dict[str, int]:
    return dict(db.conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())


def journal_counts_txn(db: sqlite_utils.Database) -> dict[str, int]:
    return dict(db.conn.execute("SELECT state, count(*) FROM journal GROUP BY state").fetchall())
