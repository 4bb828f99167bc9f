"""What the inbox reads and changes: conversation lists with filters, one conversation with its
messages (text through gateway.store.bodies), attachments, events and delivery states;
assignment and status changes, each audited in its own transaction."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import sqlite_utils

from gateway.privacy import audit
from gateway.privacy.sealing import Sealer
from gateway.store.bodies import StoredMessage, conversation_messages
from gateway.store.journal import now, set_conversation_txn
from gateway.store.records import StoredAttachment, attachments_txn, events_txn

STATUSES = ("open", "handoff", "closed")
PAGE = 50


@dataclasses.dataclass(frozen=True)
class Filters:
    channel: str | None = None
    status: str | None = None
    assignee: str | None = None
    """'me', 'none', or a user id as text."""
    ids: tuple[int, ...] | None = None
    """Only these conversations (search results), in this order."""
    before: str | None = None
    """Only conversations last active before this time (the next page)."""


@dataclasses.dataclass(frozen=True)
class ConversationRow:
    id: int
    channel: str
    status: str
    ai_enabled: bool
    assignee_id: int | None
    assignee: str | None
    contact_id: int
    contact_name: str | None
    identity: str | None
    last_message_at: str
    messages: int
    labels: dict[str, Any]
    """The newest inbound message's analysis (intent, category, sentiment...): labels only."""


_ROW = (
    "c.id, c.channel, c.status, c.ai_enabled AND k.ai_enabled AND NOT k.restricted, "
    "c.assignee_user_id, u.email, c.contact_id, k.display_name, "
    "(SELECT i.external_id FROM identities i WHERE i.contact_id = c.contact_id "
    " AND i.channel = c.channel ORDER BY i.id LIMIT 1), "
    "c.last_message_at, (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id), "
    "(SELECT m.analysis FROM messages m WHERE m.conversation_id = c.id AND m.direction = 'in' "
    " AND m.analysis IS NOT NULL ORDER BY m.id DESC LIMIT 1)"
)
_FROM = (
    "FROM conversations c JOIN contacts k ON k.id = c.contact_id "
    "LEFT JOIN users u ON u.id = c.assignee_user_id"
)


def _row(r: Sequence[Any]) -> ConversationRow:
    labels = json.loads(r[11]) if r[11] else {}
    return ConversationRow(
        r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], r[10], labels
    )


def inbox_txn(
    db: sqlite_utils.Database, filters: Filters, user_id: int, limit: int = PAGE
) -> list[ConversationRow]:
    where: list[str] = []
    args: list[Any] = []
    if filters.channel:
        where.append("c.channel = ?")
        args.append(filters.channel)
    if filters.status in STATUSES:
        where.append("c.status = ?")
        args.append(filters.status)
    if filters.assignee == "me":
        where.append("c.assignee_user_id = ?")
        args.append(user_id)
    elif filters.assignee == "none":
        where.append("c.assignee_user_id IS NULL")
    elif filters.assignee and filters.assignee.isdigit():
        where.append("c.assignee_user_id = ?")
        args.append(int(filters.assignee))
    if filters.before:
        where.append("c.last_message_at < ?")
        args.append(filters.before)
    if filters.ids is not None:
        if not filters.ids:
            return []
        where.append(f"c.id IN ({', '.join('?' * len(filters.ids))})")
        args.extend(filters.ids)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = db.conn.execute(
        f"SELECT {_ROW} {_FROM} {clause} ORDER BY c.last_message_at DESC LIMIT ?",
        (*args, limit),
    ).fetchall()
    result = [_row(r) for r in rows]
    if filters.ids is not None:
        order = {cid: n for n, cid in enumerate(filters.ids)}
        result.sort(key=lambda row: order.get(row.id, len(order)))
    return result


def channels_txn(db: sqlite_utils.Database) -> list[str]:
    return [r[0] for r in db.conn.execute("SELECT DISTINCT channel FROM conversations ORDER BY 1")]


def team_txn(db: sqlite_utils.Database) -> list[tuple[int, str, str]]:
    """(id, email, role) of active users who can take conversations."""
    return [
        (r[0], r[1], r[2])
        for r in db.conn.execute(
            "SELECT id, email, role FROM users WHERE deactivated_at IS NULL "
            "AND role IN ('owner', 'admin', 'agent') ORDER BY email"
        )
    ]


@dataclasses.dataclass(frozen=True)
class Delivery:
    state: str
    platform_status: str | None
    last_error: str | None


@dataclasses.dataclass(frozen=True)
class ConversationView:
    row: ConversationRow
    agent: str
    messages: list[StoredMessage]
    attachments: dict[int | None, list[StoredAttachment]]
    """By message id (None: attached to an event)."""
    events: list[dict[str, Any]]
    deliveries: dict[int, Delivery]
    """Outgoing messages' outbox state, by message id."""
    suggestions: list[str]

    @property
    def last_message_id(self) -> int:
        return self.messages[-1].id if self.messages else 0


def conversation_txn(
    db: sqlite_utils.Database, sealer: Sealer, conversation_id: int
) -> ConversationView | None:
    conn = db.conn
    row = conn.execute(
        f"SELECT {_ROW}, c.agent {_FROM} WHERE c.id = ?", (conversation_id,)
    ).fetchone()
    if row is None:
        return None
    messages = conversation_messages(sealer, conn, conversation_id, limit=200)
    attachments: dict[int | None, list[StoredAttachment]] = {}
    for att in attachments_txn(db, conversation_id):
        attachments.setdefault(att.message_id, []).append(att)
    deliveries = {
        r[0]: Delivery(r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT message_id, state, platform_status, last_error FROM outbox "
            "WHERE conversation_id = ? AND message_id IS NOT NULL",
            (conversation_id,),
        )
    }
    suggestions: list[str] = []
    for message in reversed(messages):
        if message.direction == "in":
            if message.suggestions:
                loaded = json.loads(message.suggestions)
                suggestions = [str(s) for s in loaded] if isinstance(loaded, list) else []
            break
    return ConversationView(
        _row(row),
        row[12],
        messages,
        attachments,
        events_txn(db, conversation_id),
        deliveries,
        suggestions,
    )


def conversation_contact_txn(db: sqlite_utils.Database, conversation_id: int) -> int | None:
    row = db.conn.execute(
        "SELECT contact_id FROM conversations WHERE id = ?", (conversation_id,)
    ).fetchone()
    return int(row[0]) if row else None


def attachment_owner_txn(
    db: sqlite_utils.Database, attachment_id: int
) -> tuple[int, int, str | None, str | None] | None:
    """(conversation id, contact id, filename, mime type) of an attachment."""
    row = db.conn.execute(
        "SELECT conversation_id, contact_id, filename, mime_type FROM attachments WHERE id = ?",
        (attachment_id,),
    ).fetchone()
    return (row[0], row[1], row[2], row[3]) if row else None


# -- changes (each audited in its own transaction) ----------------------------------------------

ACTIONS = {
    "takeover": ("handoff", "conversation.takeover"),
    "release": ("release", "conversation.release"),
    "close": ("close", "conversation.close"),
    "reopen": ("release", "conversation.reopen"),
}


def change_status_txn(
    db: sqlite_utils.Database, conversation_id: int, action: str, actor: str, user_id: int
) -> bool:
    """Take over (and assign to oneself), hand back to the AI, close or reopen."""
    kind, audited = ACTIONS[action]
    reason = {
        "takeover": "taken over in the admin UI",
        "release": "handed back to the AI in the admin UI",
        "close": "closed in the admin UI",
        "reopen": "reopened in the admin UI",
    }[action]
    if not set_conversation_txn(db, conversation_id, kind=kind, actor=actor, reason=reason):
        return False
    if action == "takeover":
        db.conn.execute(
            "UPDATE conversations SET assignee_user_id = ? WHERE id = ?", (user_id, conversation_id)
        )
    audit.append_txn(db, actor=actor, action=audited, target=f"conversation:{conversation_id}")
    return True


def assign_txn(
    db: sqlite_utils.Database, conversation_id: int, assignee_id: int | None, actor: str
) -> bool:
    conn = db.conn
    email = None
    if assignee_id is not None:
        row = conn.execute(
            "SELECT email FROM users WHERE id = ? AND deactivated_at IS NULL "
            "AND role IN ('owner', 'admin', 'agent')",
            (assignee_id,),
        ).fetchone()
        if row is None:
            raise ValueError(f"user {assignee_id} cannot take conversations")
        email = row[0]
    cur = conn.execute(
        "UPDATE conversations SET assignee_user_id = ? WHERE id = ?", (assignee_id, conversation_id)
    )
    if cur.rowcount == 0:
        return False
    conn.execute(
        "INSERT INTO conversation_events (conversation_id, at, kind, actor, reason) "
        "VALUES (?, ?, 'assign', ?, ?)",
        (conversation_id, now(), actor, f"assigned to {email}" if email else "unassigned"),
    )
    audit.append_txn(
        db,
        actor=actor,
        action="conversation.assign",
        target=f"conversation:{conversation_id}",
        detail={"assignee": email},
    )
    return True
