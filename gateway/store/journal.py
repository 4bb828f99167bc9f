"""The intake journal and the conversation records it creates (contacts, identities, messages)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
from collections.abc import Sequence

import sqlite_utils

from gateway.messages import Inbound
from gateway.plugin import Accepted
from gateway.privacy.sealing import Sealer
from gateway.store.bodies import open_text, seal_text


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


@dataclasses.dataclass(frozen=True)
class Intake:
    """An inbound message with what the core adds before it is journaled."""

    dedupe_key: str
    channel: str
    agent: str
    inbound: Inbound
    consent: str | None = None
    """'withdrawn' or 'granted' when the text is one of the channel's opt-out/opt-in keywords."""


def thread_txn_part(
    conn: sqlite3.Connection,
    channel: str,
    agent: str,
    account: str,
    thread_key: str,
    sender_id: str,
    sender_name: str | None,
    language: str | None,
    ts: str,
) -> tuple[int, int, int]:
    """Find or create the contact, identity and conversation of a thread.

    Returns (contact_id, identity_id, conversation_id); bumps the conversation's activity time.
    """
    identity = conn.execute(
        "SELECT contact_id, id FROM identities WHERE channel = ? AND external_id = ?",
        (channel, sender_id),
    ).fetchone()
    if identity is None:
        contact_id = conn.execute(
            "INSERT INTO contacts (display_name, language, created_at, updated_at) "
            "VALUES (?, ?, ?, ?)",
            (sender_name, language, ts, ts),
        ).lastrowid
        identity_id = conn.execute(
            "INSERT INTO identities (contact_id, channel, external_id, display_name, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (contact_id, channel, sender_id, sender_name, ts),
        ).lastrowid
    else:
        contact_id, identity_id = identity
    conversation = conn.execute(
        "SELECT id FROM conversations WHERE channel = ? AND account = ? AND thread_key = ?",
        (channel, account, thread_key),
    ).fetchone()
    if conversation is None:
        conversation_id = conn.execute(
            "INSERT INTO conversations (channel, account, thread_key, contact_id, agent, "
            "created_at, last_message_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (channel, account, thread_key, contact_id, agent, ts, ts),
        ).lastrowid
    else:
        conversation_id = conversation[0]
        conn.execute(
            "UPDATE conversations SET last_message_at = ? WHERE id = ?", (ts, conversation_id)
        )
    assert contact_id is not None and identity_id is not None and conversation_id is not None
    return contact_id, identity_id, conversation_id


def accept_txn(
    db: sqlite_utils.Database, items: Sequence[Intake], sealer: Sealer
) -> list[Accepted]:
    """Journal each message unless its dedupe key is known; create contact/identity/conversation;
    seal its attachments; record an opt-out/opt-in keyword in the consent ledger."""
    from gateway.store.records import record_consent_keyword, store_attachments

    conn = db.conn
    result = []
    for item in items:
        row = conn.execute(
            "SELECT message_id, conversation_id FROM journal WHERE dedupe_key = ?",
            (item.dedupe_key,),
        ).fetchone()
        if row is not None:
            result.append(Accepted(row[0] or 0, row[1], duplicate=True))
            continue
        m = item.inbound
        ts = now()
        contact_id, identity_id, conversation_id = thread_txn_part(
            conn,
            item.channel,
            item.agent,
            m.account,
            m.thread_key,
            m.sender_id,
            m.sender_name,
            m.language,
            ts,
        )
        message_id = conn.execute(
            "INSERT INTO messages (conversation_id, direction, text, body, external_id, author, "
            "created_at, platform_sent_at) VALUES (?, 'in', '', ?, ?, 'contact', ?, ?)",
            (
                conversation_id,
                seal_text(sealer, conn, contact_id, m.text),
                m.external_id,
                ts,
                # UTC, as every stored time: times are compared as ISO strings.
                m.sent_at.astimezone(dt.UTC).isoformat() if m.sent_at else None,
            ),
        ).lastrowid
        if m.attachments:
            store_attachments(
                conn,
                sealer,
                m.attachments,
                conversation_id=conversation_id,
                contact_id=contact_id,
                message_id=message_id,
            )
        if item.consent is not None:
            record_consent_keyword(conn, identity_id, item.consent, m.text, message_id)
        conn.execute(
            "INSERT INTO journal (dedupe_key, channel, conversation_id, message_id, received_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (item.dedupe_key, item.channel, conversation_id, message_id, ts),
        )
        assert message_id is not None
        result.append(Accepted(message_id, conversation_id, duplicate=False))
    return result


@dataclasses.dataclass(frozen=True)
class Turn:
    direction: str
    text: str


@dataclasses.dataclass(frozen=True)
class PendingWork:
    """The oldest unanswered inbound message of a conversation, with what an agent needs."""

    journal_id: int
    conversation_id: int
    message_id: int
    channel: str
    account: str
    thread_key: str
    agent: str
    external_id: str | None
    history: tuple[Turn, ...]
    """Earlier messages of the conversation, oldest first, ending with this message."""
    status: str = "open"
    """The conversation's status: 'open' (AI answers), 'handoff' (a person does), 'closed'."""
    ai_allowed: bool = True
    """False when AI is off for the conversation or the contact, or the contact is restricted."""
    contact_id: int = 0
    """The conversation's contact (whose key seals the reply)."""
    restricted: bool = False
    """The contact's processing is restricted (GDPR Art. 18): stored, never analysed or sent
    to a model."""
    more: bool = True
    """Another message of the conversation was pending behind this one when it was read."""


def pending_conversations_txn(db: sqlite_utils.Database) -> list[int]:
    return [
        r[0]
        for r in db.conn.execute(
            "SELECT DISTINCT conversation_id FROM journal INDEXED BY journal_pending "
            "WHERE state = 'pending' ORDER BY conversation_id"
        )
    ]


def next_pending_txn(
    db: sqlite_utils.Database, conversation_id: int, history_turns: int, sealer: Sealer
) -> PendingWork | None:
    conn = db.conn
    row = conn.execute(
        "SELECT j.id, j.message_id, c.channel, c.account, c.thread_key, c.agent, m.external_id, "
        "c.status, c.ai_enabled AND k.ai_enabled AND NOT k.restricted, c.contact_id, k.restricted "
        "FROM journal j INDEXED BY journal_pending "
        "JOIN conversations c ON c.id = j.conversation_id "
        "JOIN contacts k ON k.id = c.contact_id "
        "LEFT JOIN messages m ON m.id = j.message_id "
        "WHERE j.conversation_id = ? AND j.state = 'pending' ORDER BY j.id LIMIT 1",
        (conversation_id,),
    ).fetchone()
    if row is None:
        return None
    (
        journal_id,
        message_id,
        channel,
        account,
        thread_key,
        agent,
        external_id,
        status,
        ai,
        contact_id,
        restricted,
    ) = row
    # Earlier messages, and every reply so far: a reply committed after this message arrived
    # answers an earlier one (one conversation is answered in order), so it belongs before it.
    turns = conn.execute(
        "SELECT direction, text, body FROM messages WHERE conversation_id = ? "
        "AND (id < ? OR direction = 'out') ORDER BY id DESC LIMIT ?",
        (conversation_id, message_id or 0, history_turns),
    ).fetchall()
    current = conn.execute(
        "SELECT direction, text, body FROM messages WHERE id = ?", (message_id,)
    ).fetchone()
    if current is not None:
        turns.insert(0, current)
    more = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM journal INDEXED BY journal_pending "
        "WHERE conversation_id = ? AND state = 'pending' AND id > ?)",
        (conversation_id, journal_id),
    ).fetchone()[0]
    return PendingWork(
        journal_id=journal_id,
        conversation_id=conversation_id,
        message_id=message_id or 0,
        channel=channel,
        account=account,
        thread_key=thread_key,
        agent=agent,
        external_id=external_id,
        history=tuple(
            Turn(d, open_text(sealer, conn, contact_id, t, b)) for d, t, b in reversed(turns)
        ),
        status=status,
        ai_allowed=bool(ai),
        contact_id=contact_id,
        restricted=bool(restricted),
        more=bool(more),
    )


def annotate_message(
    db: sqlite_utils.Database, message_id: int, analysis: str | None, suggestions: str | None
) -> None:
    if analysis is not None or suggestions is not None:
        db.conn.execute(
            "UPDATE messages SET analysis = coalesce(?, analysis), "
            "suggestions = coalesce(?, suggestions) WHERE id = ?",
            (analysis, suggestions, message_id),
        )


def close_without_reply_txn(
    db: sqlite_utils.Database,
    work: PendingWork,
    *,
    analysis: str | None = None,
    suggestions: str | None = None,
) -> None:
    """The message stays stored and visible to people; the AI does not answer it."""
    annotate_message(db, work.message_id, analysis, suggestions)
    db.conn.execute(
        "UPDATE journal SET state = 'done', done_at = ? WHERE id = ? AND state = 'pending'",
        (now(), work.journal_id),
    )


def set_conversation_txn(
    db: sqlite_utils.Database,
    conversation_id: int,
    *,
    kind: str,
    actor: str,
    reason: str | None = None,
) -> bool:
    """Hand a conversation to people, give it back to the AI, close it, or switch its AI.

    ``kind``: handoff, release, close, ai_off, ai_on. Recorded in conversation_events.
    Returns False if there is no such conversation.
    """
    changes = {
        "handoff": ("status", "handoff"),
        "release": ("status", "open"),
        "close": ("status", "closed"),
        "ai_off": ("ai_enabled", 0),
        "ai_on": ("ai_enabled", 1),
    }
    column, value = changes[kind]
    cur = db.conn.execute(
        f"UPDATE conversations SET {column} = ? WHERE id = ?", (value, conversation_id)
    )
    if cur.rowcount == 0:
        return False
    db.conn.execute(
        "INSERT INTO conversation_events (conversation_id, at, kind, actor, reason) "
        "VALUES (?, ?, ?, ?, ?)",
        (conversation_id, now(), kind, actor, reason),
    )
    return True


def handoff_txn(
    db: sqlite_utils.Database,
    work: PendingWork,
    text: str,
    sealer: Sealer,
    *,
    reason: str = "asked for a person",
    analysis: str | None = None,
    suggestions: str | None = None,
) -> int | None:
    """Hand the conversation to people and tell the user, atomically."""
    set_conversation_txn(db, work.conversation_id, kind="handoff", actor="ai", reason=reason)
    return commit_reply_txn(
        db, work, text, "notice", sealer, analysis=analysis, suggestions=suggestions
    )


def set_contact_ai_txn(db: sqlite_utils.Database, contact_id: int, enabled: bool) -> bool:
    cur = db.conn.execute(
        "UPDATE contacts SET ai_enabled = ?, updated_at = ? WHERE id = ?",
        (int(enabled), now(), contact_id),
    )
    return cur.rowcount > 0


def conversations_txn(
    db: sqlite_utils.Database, status: str | None = None, limit: int = 50
) -> list[dict[str, object]]:
    """Conversations, newest activity first, without message content (for lists and the CLI)."""
    where, params = ("WHERE c.status = ?", [status]) if status else ("", [])
    rows = db.conn.execute(
        "SELECT c.id, c.channel, c.status, c.ai_enabled, k.ai_enabled, k.restricted, c.contact_id, "
        "c.last_message_at, (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) "
        f"FROM conversations c JOIN contacts k ON k.id = c.contact_id {where} "
        "ORDER BY c.last_message_at DESC LIMIT ?",
        (*params, limit),
    ).fetchall()
    keys = (
        "id",
        "channel",
        "status",
        "ai_enabled",
        "contact_ai_enabled",
        "restricted",
        "contact_id",
        "last_message_at",
        "messages",
    )
    return [dict(zip(keys, row, strict=True)) for row in rows]


def commit_reply_txn(
    db: sqlite_utils.Database,
    work: PendingWork,
    text: str,
    author: str,
    sealer: Sealer,
    *,
    analysis: str | None = None,
    suggestions: str | None = None,
    purpose: str = "reply",
) -> int | None:
    """Store the reply in the outbox and close the journal entry, in one transaction.

    The idempotency key is the journal id: running the same work twice (a crash after the model
    answered, before this commit) cannot create a second reply. Returns the outbox id, or None
    if this work was already done.
    """
    conn = db.conn
    ts = now()
    key = f"reply:{work.journal_id}"
    annotate_message(db, work.message_id, analysis, suggestions)
    if conn.execute("SELECT 1 FROM outbox WHERE idempotency_key = ?", (key,)).fetchone():
        conn.execute(
            "UPDATE journal SET state = 'done', done_at = coalesce(done_at, ?) WHERE id = ?",
            (ts, work.journal_id),
        )
        return None
    contact_id = work.contact_id or contact_of(conn, work.conversation_id)
    body = seal_text(sealer, conn, contact_id, text)
    message_id = conn.execute(
        "INSERT INTO messages (conversation_id, direction, text, body, author, created_at) "
        "VALUES (?, 'out', '', ?, ?, ?)",
        (work.conversation_id, body, author, ts),
    ).lastrowid
    outbox_id = conn.execute(
        "INSERT INTO outbox (idempotency_key, conversation_id, message_id, channel, account, "
        "thread_key, text, body, reply_to_external_id, created_at, updated_at, purpose) "
        "VALUES (?, ?, ?, ?, ?, ?, '', ?, ?, ?, ?, ?)",
        (
            key,
            work.conversation_id,
            message_id,
            work.channel,
            work.account,
            work.thread_key,
            body,
            work.external_id,
            ts,
            ts,
            purpose,
        ),
    ).lastrowid
    conn.execute(
        "UPDATE journal SET state = 'done', done_at = ? WHERE id = ?", (ts, work.journal_id)
    )
    conn.execute(
        "UPDATE conversations SET last_message_at = ? WHERE id = ?", (ts, work.conversation_id)
    )
    return outbox_id


def get_state_txn(db: sqlite_utils.Database, channel: str, key: str) -> str | None:
    row = db.conn.execute(
        "SELECT value FROM channel_state WHERE channel = ? AND key = ?", (channel, key)
    ).fetchone()
    return row[0] if row else None


def set_state_txn(db: sqlite_utils.Database, channel: str, key: str, value: str) -> None:
    db.conn.execute(
        "INSERT INTO channel_state (channel, key, value) VALUES (?, ?, ?) "
        "ON CONFLICT (channel, key) DO UPDATE SET value = excluded.value",
        (channel, key, value),
    )


def history_txn(
    db: sqlite_utils.Database, channel: str, thread_key: str, limit: int, sealer: Sealer
) -> list[tuple[int, str, str, str, str | None]]:
    conn = db.conn
    rows = conn.execute(
        "SELECT m.id, m.direction, m.text, m.body, m.created_at, m.external_id, c.contact_id "
        "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "WHERE c.channel = ? AND c.thread_key = ? ORDER BY m.id DESC LIMIT ?",
        (channel, thread_key, limit),
    ).fetchall()
    return [
        (mid, direction, open_text(sealer, conn, contact, text, body), created, external)
        for mid, direction, text, body, created, external, contact in reversed(rows)
    ]


def contact_of(conn: sqlite3.Connection, conversation_id: int) -> int:
    row = conn.execute(
        "SELECT contact_id FROM conversations WHERE id = ?", (conversation_id,)
    ).fetchone()
    if row is None:
        raise LookupError(f"conversation {conversation_id} does not exist")
    return int(row[0])


def sender_of_conversation_txn(
    db: sqlite_utils.Database, conversation_id: int
) -> tuple[int, int | None]:
    """The contact of a conversation and its identity on the conversation's channel."""
    row = db.conn.execute(
        "SELECT c.contact_id, (SELECT i.id FROM identities i WHERE i.contact_id = c.contact_id "
        "AND i.channel = c.channel ORDER BY i.id LIMIT 1) FROM conversations c WHERE c.id = ?",
        (conversation_id,),
    ).fetchone()
    if row is None:
        raise LookupError(f"conversation {conversation_id} does not exist")
    return int(row[0]), (int(row[1]) if row[1] is not None else None)
