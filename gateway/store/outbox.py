"""The outbox and its delivery log."""

from __future__ import annotations

import dataclasses
import json

import sqlite_utils

from gateway.privacy.sealing import Sealer
from gateway.store.bodies import open_text, seal_text
from gateway.store.journal import PendingWork, commit_reply_txn, now

_OPEN = "state IN ('pending', 'sending')"
"""The condition of the partial index ``outbox_open``, repeated in queries for pending rows:
SQLite uses a partial index only when the WHERE clause contains its condition term for term
(``state = 'pending'`` alone does not qualify), and without it every look-up scans the whole
outbox, one row per reply ever sent: the writer thread slowed down with every reply (bench/soak.py
found it: 145 replies/s fell to 13 by 35,000 messages)."""


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
    author: str = "ai"
    purpose: str = "reply"
    last_inbound_at: str | None = None
    opted_out: bool = False
    """A notification whose contact withdrew consent (or was restricted) since it was queued:
    not to be sent."""
    refusal: str = ""
    """Why, when ``opted_out``."""
    more: bool = True
    """Another row of the conversation was pending behind this one when it was read."""


def recover_outbox_txn(db: sqlite_utils.Database) -> list[int]:
    """At start-up: rows left 'sending' by a crash may or may not have reached the platform.

    At-most-once delivery wins: they become 'unknown' (logged, visible to operators) instead of
    being sent again. Returns their ids.
    """
    conn = db.conn
    ids = [
        r[0]
        for r in conn.execute(
            f"SELECT id FROM outbox INDEXED BY outbox_open WHERE {_OPEN} AND state = 'sending'"
        )
    ]
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
            "SELECT DISTINCT conversation_id FROM outbox INDEXED BY outbox_open "
            f"WHERE {_OPEN} AND state = 'pending' ORDER BY conversation_id"
        )
    ]


def next_outbox_txn(
    db: sqlite_utils.Database, conversation_id: int, sealer: Sealer
) -> OutboxItem | None:
    from gateway.store.records import notification_refusal

    conn = db.conn
    row = conn.execute(
        "SELECT o.id, o.idempotency_key, o.conversation_id, o.channel, o.account, o.thread_key, "
        "o.text, o.reply_to_external_id, o.attempts, o.message_id, "
        "coalesce(m.author, 'ai'), o.purpose, "
        # The last inbound time, from the top of its own index (m019), not a walk through
        # every message of the conversation.
        "(SELECT max(coalesce(i.platform_sent_at, i.created_at)) "
        " FROM messages i INDEXED BY messages_last_inbound "
        " WHERE i.conversation_id = o.conversation_id AND i.direction = 'in'), "
        "o.body, c.contact_id "
        # INDEXED BY: with outbox(conversation_id) also there (retention's), SQLite would walk
        # every reply the conversation ever had; the partial index holds only open ones.
        "FROM outbox o INDEXED BY outbox_open LEFT JOIN messages m ON m.id = o.message_id "
        "JOIN conversations c ON c.id = o.conversation_id "
        f"WHERE o.conversation_id = ? AND o.{_OPEN} AND o.state = 'pending' ORDER BY o.id LIMIT 1",
        (conversation_id,),
    ).fetchone()
    if row is None:
        return None
    *fields, body, contact_id = row
    more = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM outbox INDEXED BY outbox_open WHERE conversation_id = ? "
        f"AND {_OPEN} AND state = 'pending' AND id > ?)",
        (conversation_id, fields[0]),
    ).fetchone()[0]
    item = OutboxItem(*fields)
    if not more:
        item = dataclasses.replace(item, more=False)
    if body is not None:
        item = dataclasses.replace(item, text=open_text(sealer, conn, contact_id, item.text, body))
    if item.purpose == "notification":
        refusal = notification_refusal(conn, conversation_id)
        if refusal is not None:
            item = dataclasses.replace(item, opted_out=True, refusal=refusal)
    return item


def commit_reply_and_next_txn(
    db: sqlite_utils.Database,
    work: PendingWork,
    text: str,
    author: str,
    sealer: Sealer,
    *,
    analysis: str | None = None,
) -> tuple[int | None, OutboxItem | None]:
    """:func:`~gateway.store.journal.commit_reply_txn`, then the conversation's next outbox row
    (:func:`next_outbox_txn`, usually the reply just stored) read in the same transaction.

    The delivery lane starts from that row instead of asking the writer for it: one writer
    round trip fewer on every AI reply's way out. The row may be claimed by someone else before
    the lane gets to it (a lane already running for the conversation); ``mark_sending_txn``
    then finds it no longer pending and the lane reads again, so a stale row is never sent.
    Returns (outbox id or None if the work was already done, the next pending row or None)."""
    outbox_id = commit_reply_txn(db, work, text, author, sealer, analysis=analysis)
    if outbox_id is None:
        return None, None
    return outbox_id, next_outbox_txn(db, work.conversation_id, sealer)


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
    if external_id is not None:
        from gateway.store.records import apply_early_statuses

        apply_early_statuses(conn, outbox_id, external_id)
    if outcome == "failed":
        # Shown in the conversation (CLI, admin inbox): a reply that will never arrive is news
        # for the people reading it, not only a log line.
        from gateway.store.records import record_event

        conversation_id = conn.execute(
            "SELECT conversation_id FROM outbox WHERE id = ?", (outbox_id,)
        ).fetchone()[0]
        record_event(
            conn,
            conversation_id,
            "send_failed",
            actor="gateway",
            reason=detail,
            detail={"outbox_id": outbox_id, "attempt": attempt},
        )


def outbox_counts_txn(db: sqlite_utils.Database) -> dict[str, int]:
    return dict(db.conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())


def journal_counts_txn(db: sqlite_utils.Database) -> dict[str, int]:
    return dict(db.conn.execute("SELECT state, count(*) FROM journal GROUP BY state").fetchall())


class OptedOut(Exception):
    """The contact withdrew consent to messages we initiate (STOP, /unsubscribe) on any of
    their channels, or their processing is restricted."""


def queue_notification_txn(
    db: sqlite_utils.Database,
    channel: str,
    account: str,
    thread_key: str,
    text: str,
    key: str,
    sealer: Sealer,
) -> tuple[int, int, bool]:
    """Queue a message we initiate to an existing thread; refuse it if the contact opted out.

    ``key`` makes a repeated request (a client's retry) return the first one's row.
    Returns (outbox id, conversation id, already queued). Raises LookupError for an unknown
    thread, OptedOut for a contact who withdrew consent.
    """
    from gateway.store.records import notification_refusal

    conn = db.conn
    idem = f"notify:{key}"
    row = conn.execute(
        "SELECT id, conversation_id FROM outbox WHERE idempotency_key = ?", (idem,)
    ).fetchone()
    if row is not None:
        return row[0], row[1], True
    conversation = conn.execute(
        "SELECT id, contact_id FROM conversations "
        "WHERE channel = ? AND account = ? AND thread_key = ?",
        (channel, account, thread_key),
    ).fetchone()
    if conversation is None:
        raise LookupError(f"no conversation on channel {channel!r} with thread {thread_key!r}")
    conversation_id, contact_id = conversation
    refusal = notification_refusal(conn, conversation_id)
    if refusal is not None:
        raise OptedOut(
            f"notifications to the contact of conversation {conversation_id} are refused: "
            f"{refusal}" + (" (until they subscribe again)" if "unsubscribed" in refusal else "")
        )
    ts = now()
    body = seal_text(sealer, conn, contact_id, text)
    message_id = conn.execute(
        "INSERT INTO messages (conversation_id, direction, text, body, author, created_at) "
        "VALUES (?, 'out', '', ?, 'notice', ?)",
        (conversation_id, body, ts),
    ).lastrowid
    outbox_id = conn.execute(
        "INSERT INTO outbox (idempotency_key, conversation_id, message_id, channel, account, "
        "thread_key, text, body, created_at, updated_at, purpose) "
        "VALUES (?, ?, ?, ?, ?, ?, '', ?, ?, ?, 'notification')",
        (idem, conversation_id, message_id, channel, account, thread_key, body, ts, ts),
    ).lastrowid
    assert outbox_id is not None
    return outbox_id, conversation_id, False


def queue_human_reply_txn(
    db: sqlite_utils.Database,
    conversation_id: int,
    text: str,
    actor: str,
    key: str,
    sealer: Sealer,
    audit_detail: dict[str, object] | None = None,
) -> tuple[int, bool]:
    """Queue a person's reply (admin UI, CLI) to a conversation: author 'human', purpose
    'reply' (a channel applies its reply rules, e.g. Messenger's HUMAN_AGENT tag after 24 h).
    A conversation event records who wrote it. ``key`` makes a double submit one reply.
    Returns (outbox id, already queued); LookupError for an unknown conversation. With
    ``audit_detail``, a ``conversation.reply`` audit entry is written in the same transaction."""
    conn = db.conn
    idem = f"human:{key}"
    row = conn.execute("SELECT id FROM outbox WHERE idempotency_key = ?", (idem,)).fetchone()
    if row is not None:
        return row[0], True
    conversation = conn.execute(
        "SELECT channel, account, thread_key, contact_id FROM conversations WHERE id = ?",
        (conversation_id,),
    ).fetchone()
    if conversation is None:
        raise LookupError(f"conversation {conversation_id} does not exist")
    channel, account, thread_key, contact_id = conversation
    ts = now()
    body = seal_text(sealer, conn, contact_id, text)
    message_id = conn.execute(
        "INSERT INTO messages (conversation_id, direction, text, body, author, created_at) "
        "VALUES (?, 'out', '', ?, 'human', ?)",
        (conversation_id, body, ts),
    ).lastrowid
    outbox_id = conn.execute(
        "INSERT INTO outbox (idempotency_key, conversation_id, message_id, channel, account, "
        "thread_key, text, body, created_at, updated_at, purpose) "
        "VALUES (?, ?, ?, ?, ?, ?, '', ?, ?, ?, 'reply')",
        (idem, conversation_id, message_id, channel, account, thread_key, body, ts, ts),
    ).lastrowid
    conn.execute(
        "INSERT INTO conversation_events (conversation_id, at, kind, actor, detail) "
        "VALUES (?, ?, 'human_reply', ?, ?)",
        (
            conversation_id,
            ts,
            actor,
            json.dumps({"message_id": message_id, "outbox_id": outbox_id}),
        ),
    )
    conn.execute("UPDATE conversations SET last_message_at = ? WHERE id = ?", (ts, conversation_id))
    assert outbox_id is not None
    if audit_detail is not None:  # audited in the same transaction as the reply it records
        from gateway.privacy import audit

        audit.append_txn(
            db,
            actor=actor,
            action="conversation.reply",
            target=f"conversation:{conversation_id}",
            detail={"outbox_id": outbox_id, **audit_detail},
        )
    return outbox_id, False
