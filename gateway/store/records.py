"""What channels record besides messages: sealed attachments, the consent ledger, delivery
statuses from the platform, and conversation events such as calls."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import uuid as uuidlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlite_utils

from gateway.messages import Attachment, Event
from gateway.privacy.sealing import Sealer
from gateway.store.journal import now

CONSENT_PURPOSE = "messages"
"""The purpose STOP / /unsubscribe withdraws: messages we initiate (notifications, marketing)."""


# Attachments -------------------------------------------------------------------------------


def store_attachments(
    conn: sqlite3.Connection,
    sealer: Sealer | None,
    attachments: tuple[Attachment, ...],
    *,
    conversation_id: int,
    contact_id: int,
    message_id: int | None = None,
    event_id: int | None = None,
    category: str = "attachments",
) -> list[int]:
    """Seal each attachment's bytes for the contact and record it; one without bytes is recorded
    as 'unavailable' with where it was (``url``), so nothing about it is silently lost."""
    ids = []
    for att in attachments:
        uid = uuidlib.uuid4().hex
        path: Path | None = None
        if att.data is not None:
            if sealer is None:
                raise RuntimeError("store_attachments: attachment bytes but no sealer")
            path = sealer.seal(conn, contact_id, uid, att.data)
        row_id = conn.execute(
            "INSERT INTO attachments (uuid, message_id, event_id, conversation_id, contact_id, "
            "category, kind, mime_type, filename, size, sha256, path, source_ref, state, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                uid,
                message_id,
                event_id,
                conversation_id,
                contact_id,
                category,
                att.kind,
                att.mime_type,
                att.filename,
                len(att.data) if att.data is not None else None,
                hashlib.sha256(att.data).hexdigest() if att.data is not None else None,
                str(path) if path else None,
                att.url,
                "sealed" if path else "unavailable",
                now(),
            ),
        ).lastrowid
        assert row_id is not None
        ids.append(row_id)
    return ids


@dataclasses.dataclass(frozen=True)
class StoredAttachment:
    id: int
    message_id: int | None
    event_id: int | None
    category: str
    kind: str
    mime_type: str | None
    filename: str | None
    size: int | None
    sha256: str | None
    state: str
    source_ref: str | None


_ATT_COLUMNS = (
    "id, message_id, event_id, category, kind, mime_type, filename, size, sha256, state, source_ref"
)


def attachments_txn(db: sqlite_utils.Database, conversation_id: int) -> list[StoredAttachment]:
    rows = db.conn.execute(
        f"SELECT {_ATT_COLUMNS} FROM attachments WHERE conversation_id = ? ORDER BY id",
        (conversation_id,),
    ).fetchall()
    return [StoredAttachment(*r) for r in rows]


def open_attachment_txn(db: sqlite_utils.Database, sealer: Sealer, attachment_id: int) -> bytes:
    """The plaintext of a sealed attachment (raises KeyDestroyed after crypto-shredding)."""
    row = db.conn.execute(
        "SELECT contact_id, uuid, path, state FROM attachments WHERE id = ?", (attachment_id,)
    ).fetchone()
    if row is None or row[3] != "sealed":
        raise LookupError(f"attachment {attachment_id} has no stored file")
    return sealer.open(db.conn, row[0], row[1], Path(row[2]))


# Consent -------------------------------------------------------------------------------------


def record_consent(
    conn: sqlite3.Connection,
    identity_id: int,
    state: str,
    source: str,
    *,
    purpose: str = CONSENT_PURPOSE,
    detail: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO consents (identity_id, purpose, state, at, source, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (identity_id, purpose, state, now(), source, detail),
    )


def record_consent_keyword(
    conn: sqlite3.Connection, identity_id: int, state: str, text: str, message_id: int | None
) -> None:
    """A keyword message: a withdrawal is always recorded (the contact said it, again or not);
    an opt-in word only counts after a withdrawal by the same contact on any of their channels
    (a first "/start" is no consent event)."""
    if state == "granted" and contact_consent_state(conn, identity_id) != "withdrawn":
        return
    record_consent(
        conn,
        identity_id,
        state,
        f"keyword:{' '.join(text.split())[:40]}",
        detail=f"message:{message_id}",
    )


def record_consent_signal_txn(
    db: sqlite_utils.Database,
    channel: str,
    sender_id: str,
    purpose: str,
    state: str,
    source: str,
    detail: str | None = None,
) -> bool:
    """Record ``state`` for ``purpose`` of the identity ``(channel, sender_id)`` unless the
    ledger's latest entry for that purpose already says it (a signal repeated on every request
    is one ledger entry). Returns False when the store has no such identity: nothing is written,
    and no contact is created for someone who never wrote."""
    if state not in ("granted", "withdrawn"):
        raise ValueError(f"consent state must be 'granted' or 'withdrawn', not {state!r}")
    row = db.conn.execute(
        "SELECT id FROM identities WHERE channel = ? AND external_id = ?", (channel, sender_id)
    ).fetchone()
    if row is None:
        return False
    if consent_state(db.conn, row[0], purpose) != state:
        record_consent(db.conn, row[0], state, source, purpose=purpose, detail=detail)
    return True


def consent_changed_by_txn(db: sqlite_utils.Database, message_id: int) -> str | None:
    """The consent state a message recorded ('granted', 'withdrawn'), if it recorded one."""
    row = db.conn.execute(
        "SELECT state FROM consents WHERE detail = ?", (f"message:{message_id}",)
    ).fetchone()
    return row[0] if row else None


def consent_state(
    conn: sqlite3.Connection, identity_id: int, purpose: str = CONSENT_PURPOSE
) -> str | None:
    """'granted', 'withdrawn', or None when the identity never said either."""
    row = conn.execute(
        "SELECT state FROM consents WHERE identity_id = ? AND purpose = ? ORDER BY id DESC LIMIT 1",
        (identity_id, purpose),
    ).fetchone()
    return row[0] if row else None


def contact_consent_state(
    conn: sqlite3.Connection, identity_id: int, purpose: str = CONSENT_PURPOSE
) -> str | None:
    """The latest word on ``purpose`` from any identity of ``identity_id``'s contact."""
    row = conn.execute(
        "SELECT s.state FROM consents s JOIN identities i ON i.id = s.identity_id "
        "WHERE i.contact_id = (SELECT contact_id FROM identities WHERE id = ?) "
        "AND s.purpose = ? ORDER BY s.id DESC LIMIT 1",
        (identity_id, purpose),
    ).fetchone()
    return row[0] if row else None


def notification_refusal(conn: sqlite3.Connection, conversation_id: int) -> str | None:
    """Why a notification (a message we initiate) may not go to a conversation's contact, or
    None. Contact-wide, across channels: the contact's processing is restricted (GDPR Art. 18),
    or the latest word on messages from any of the contact's identities is a withdrawal (STOP
    on SMS also stops notifications on Telegram; START anywhere re-subscribes)."""
    row = conn.execute(
        "SELECT k.id, k.restricted FROM conversations c JOIN contacts k ON k.id = c.contact_id "
        "WHERE c.id = ?",
        (conversation_id,),
    ).fetchone()
    if row is None:
        return None
    contact_id, restricted = row
    if restricted:
        return "the contact's processing is restricted (GDPR Art. 18): only replies go to them"
    latest = conn.execute(
        "SELECT s.state FROM consents s JOIN identities i ON i.id = s.identity_id "
        "WHERE i.contact_id = ? AND s.purpose = ? ORDER BY s.id DESC LIMIT 1",
        (contact_id, CONSENT_PURPOSE),
    ).fetchone()
    if latest is not None and latest[0] == "withdrawn":
        return "the contact unsubscribed"
    return None


def thread_identity(conn: sqlite3.Connection, conversation_id: int) -> int | None:
    """The identity a conversation talks to: its contact's identity on the conversation's channel."""
    row = conn.execute(
        "SELECT i.id FROM conversations c JOIN identities i "
        "ON i.contact_id = c.contact_id AND i.channel = c.channel WHERE c.id = ? "
        "ORDER BY i.id LIMIT 1",
        (conversation_id,),
    ).fetchone()
    return row[0] if row else None


def consent_ledger_txn(
    db: sqlite_utils.Database, channel: str | None = None
) -> list[dict[str, Any]]:
    """The ledger, oldest first, with each row's channel identity (for the CLI and exports)."""
    where, params = ("WHERE i.channel = ?", (channel,)) if channel else ("", ())
    rows = db.conn.execute(
        "SELECT s.id, i.channel, i.external_id, i.contact_id, s.purpose, s.state, s.at, s.source "
        f"FROM consents s JOIN identities i ON i.id = s.identity_id {where} ORDER BY s.id",
        params,
    ).fetchall()
    keys = ("id", "channel", "sender_id", "contact_id", "purpose", "state", "at", "source")
    return [dict(zip(keys, r, strict=True)) for r in rows]


# Delivery statuses -----------------------------------------------------------------------------

STATUS_RANK = {"sent": 1, "delivered": 2, "read": 3, "failed": 4}


def update_delivery_txn(
    db: sqlite_utils.Database,
    channel: str,
    external_id: str,
    status: str,
    at: str | None,
    detail: str | None,
) -> bool:
    return update_delivery(db.conn, channel, external_id, status, at, detail)


def update_delivery(
    conn: sqlite3.Connection,
    channel: str,
    external_id: str,
    status: str,
    at: str | None,
    detail: str | None,
) -> bool:
    """Record a platform status callback for one of our sent messages.

    Statuses arrive out of order and repeatedly; the stored status only moves forward
    (sent < delivered < read; failed wins), and every callback is kept in ``deliveries``.
    Returns False when no sent message of this channel has that id.
    """
    row = conn.execute(
        "SELECT id, platform_status, attempts, conversation_id FROM outbox "
        "WHERE channel = ? AND external_id = ?",
        (channel, external_id),
    ).fetchone()
    if row is None:
        # Perhaps ours, but the send has not returned yet: keep it for record_attempt_txn.
        conn.execute(
            "DELETE FROM early_statuses WHERE received_at < strftime('%Y-%m-%dT%H:%M:%f', "
            "'now', '-1 day')"
        )
        conn.execute(
            "INSERT INTO early_statuses (channel, external_id, status, at, detail, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (channel, external_id, status, at, detail, now()),
        )
        return False
    outbox_id, current, attempts, conversation_id = row
    if STATUS_RANK.get(status, 0) > STATUS_RANK.get(current or "", 0):
        conn.execute(
            "UPDATE outbox SET platform_status = ?, platform_status_at = ? WHERE id = ?",
            (status, at or now(), outbox_id),
        )
        if status == "failed":
            record_event(
                conn,
                conversation_id,
                "delivery_failed",
                actor="platform",
                reason=detail or "the platform reported the message as not delivered",
            )
    conn.execute(
        "INSERT INTO deliveries (outbox_id, attempt, at, outcome, detail) VALUES (?, ?, ?, ?, ?)",
        (outbox_id, attempts, at or now(), f"platform:{status}", detail),
    )
    return True


def apply_early_statuses(conn: sqlite3.Connection, outbox_id: int, external_id: str) -> None:
    """Apply the statuses that arrived before this send's id was known (then forget them)."""
    (channel,) = conn.execute("SELECT channel FROM outbox WHERE id = ?", (outbox_id,)).fetchone()
    rows = conn.execute(
        "SELECT id, status, at, detail FROM early_statuses WHERE channel = ? AND external_id = ? "
        "ORDER BY id",
        (channel, external_id),
    ).fetchall()
    for row_id, status, at, detail in rows:
        conn.execute("DELETE FROM early_statuses WHERE id = ?", (row_id,))
        update_delivery(conn, channel, external_id, status, at, detail)


# Conversation events ---------------------------------------------------------------------------


def record_event(
    conn: sqlite3.Connection,
    conversation_id: int,
    kind: str,
    *,
    actor: str,
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
    event_key: str | None = None,
) -> int:
    """Insert an event, or (same ``event_key``) merge ``detail`` into the existing one."""
    blob = json.dumps(dict(detail), ensure_ascii=False, sort_keys=True) if detail else None
    if event_key is not None:
        row = conn.execute(
            "SELECT id, detail FROM conversation_events WHERE event_key = ?", (event_key,)
        ).fetchone()
        if row is not None:
            merged = {**json.loads(row[1] or "{}"), **(detail or {})}
            conn.execute(
                "UPDATE conversation_events SET detail = ?, reason = coalesce(?, reason) "
                "WHERE id = ?",
                (json.dumps(merged, ensure_ascii=False, sort_keys=True), reason, row[0]),
            )
            return int(row[0])
    event_id = conn.execute(
        "INSERT INTO conversation_events (conversation_id, at, kind, actor, reason, detail, "
        "event_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (conversation_id, now(), kind, actor, reason, blob, event_key),
    ).lastrowid
    assert event_id is not None
    return event_id


def events_txn(db: sqlite_utils.Database, conversation_id: int) -> list[dict[str, Any]]:
    rows = db.conn.execute(
        "SELECT id, at, kind, actor, reason, detail FROM conversation_events "
        "WHERE conversation_id = ? ORDER BY id",
        (conversation_id,),
    ).fetchall()
    return [
        {
            "id": r[0],
            "at": r[1],
            "kind": r[2],
            "actor": r[3],
            "reason": r[4],
            "detail": json.loads(r[5]) if r[5] else {},
        }
        for r in rows
    ]


def record_event_txn(
    db: sqlite_utils.Database, channel: str, agent: str, event: Event, sealer: Sealer | None
) -> int:
    """Store a channel event in its thread's conversation (created if needed); a repeat of the
    same ``event_key`` merges into the stored event, and its attachments are only stored once."""
    from gateway.store.journal import thread_txn_part

    conn = db.conn
    key = f"{channel}:{event.account}:{event.event_key}"
    existing = conn.execute(
        "SELECT id FROM conversation_events WHERE event_key = ?", (key,)
    ).fetchone()
    contact_id, _identity, conversation_id = thread_txn_part(
        conn,
        channel,
        agent,
        event.account,
        event.thread_key,
        event.sender_id,
        event.sender_name,
        None,
        now(),
    )
    event_id = record_event(
        conn, conversation_id, event.kind, actor="contact", detail=event.detail, event_key=key
    )
    if event.attachments:
        stored = conn.execute(
            "SELECT count(*) FROM attachments WHERE event_id = ?", (event_id,)
        ).fetchone()[0]
        if existing is None or not stored:
            store_attachments(
                conn,
                sealer,
                event.attachments,
                conversation_id=conversation_id,
                contact_id=contact_id,
                event_id=event_id,
                category=event.category,
            )
    return event_id
