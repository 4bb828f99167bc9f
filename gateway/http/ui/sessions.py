"""Admin UI sessions and invitations, kept server-side in the encrypted database.

A session id is 256 random bits, given to the browser only; the table keeps its SHA-256, so a
copy of the database (a backup) holds no usable session. A sign-in moves through stages:
``totp`` (password accepted, second factor due), ``enrol`` (password accepted, the account must
set up its authenticator first) and ``active``; every change of stage issues a new id (session
fixation). ``created_at`` is the moment the session became active (the absolute timeout counts
from it); ``last_seen_at`` is bumped at most once a minute (the idle timeout).

``reveals`` holds what this session may see unredacted, until when:
``{"contact:12": "2026-01-01T10:15:00+00:00"}``; each reveal is audited by its caller.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import secrets
import sqlite3
from typing import Any

import sqlite_utils

TOUCH_EVERY = dt.timedelta(seconds=60)
"""``last_seen_at`` is written at most this often (a write per page view would be waste)."""


def m016_create_admin_ui(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        -- Admin UI sessions: only the SHA-256 of the random id is stored.
        CREATE TABLE admin_sessions (
            id_hash TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            stage TEXT NOT NULL CHECK (stage IN ('totp', 'enrol', 'active')),
            created_at TEXT NOT NULL,
            last_seen_at TEXT NOT NULL,
            ip TEXT,
            user_agent TEXT,
            reveals TEXT NOT NULL DEFAULT '{}',
            pending TEXT                 -- enrolment: recovery codes shown until confirmed
        );
        CREATE INDEX admin_sessions_user ON admin_sessions (user_id);
        -- Invitations: a one-time set-password link (only its SHA-256 is stored).
        CREATE TABLE admin_invites (
            token_hash TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT
        );
        -- Who in the team handles a conversation (the inbox's "assigned to").
        ALTER TABLE conversations ADD COLUMN assignee_user_id INTEGER REFERENCES users(id);
        CREATE INDEX conversations_activity ON conversations (last_message_at);
        CREATE INDEX conversations_assignee ON conversations (assignee_user_id, last_message_at);
        """
    )


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds")


def new_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Session:
    id_hash: str
    user_id: int
    email: str
    display_name: str | None
    role: str
    stage: str
    created_at: dt.datetime
    last_seen_at: dt.datetime
    reveals: dict[str, str]
    pending: dict[str, Any] | None
    totp_confirmed: bool
    deactivated: bool

    @property
    def actor(self) -> str:
        return f"admin:{self.email}"

    def expired(self, now: dt.datetime, idle: dt.timedelta, absolute: dt.timedelta) -> bool:
        return now - self.last_seen_at > idle or now - self.created_at > absolute

    def revealed(self, target: str, now: dt.datetime) -> bool:
        until = self.reveals.get(target)
        return until is not None and dt.datetime.fromisoformat(until) > now


def create_session(
    conn: sqlite3.Connection,
    user_id: int,
    stage: str,
    *,
    ip: str | None,
    user_agent: str | None,
    pending: dict[str, Any] | None = None,
) -> str:
    """A new session (in the caller's transaction); returns its id (for the cookie only)."""
    token = new_token()
    ts = iso(utcnow())
    conn.execute(
        "INSERT INTO admin_sessions (id_hash, user_id, stage, created_at, last_seen_at, ip, "
        "user_agent, pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            token_hash(token),
            user_id,
            stage,
            ts,
            ts,
            ip,
            (user_agent or "")[:200],
            json.dumps(pending) if pending else None,
        ),
    )
    return token


def activate_session(conn: sqlite3.Connection, id_hash: str) -> str | None:
    """Finish a sign-in: the session gets a new id (fixation) and starts its absolute timeout.
    Returns the new id, or None if the session is gone."""
    token = new_token()
    ts = iso(utcnow())
    cur = conn.execute(
        "UPDATE admin_sessions SET id_hash = ?, stage = 'active', created_at = ?, "
        "last_seen_at = ?, pending = NULL WHERE id_hash = ?",
        (token_hash(token), ts, ts, id_hash),
    )
    return token if cur.rowcount else None


_SESSION_COLUMNS = (
    "s.id_hash, s.user_id, u.email, u.display_name, u.role, s.stage, s.created_at, "
    "s.last_seen_at, s.reveals, s.pending, u.totp_confirmed_at IS NOT NULL, "
    "u.deactivated_at IS NOT NULL"
)


def load_session_txn(db: sqlite_utils.Database, id_hash: str) -> Session | None:
    row = db.conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM admin_sessions s JOIN users u ON u.id = s.user_id "
        "WHERE s.id_hash = ?",
        (id_hash,),
    ).fetchone()
    if row is None:
        return None
    return Session(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        dt.datetime.fromisoformat(row[6]),
        dt.datetime.fromisoformat(row[7]),
        json.loads(row[8]),
        json.loads(row[9]) if row[9] else None,
        bool(row[10]),
        bool(row[11]),
    )


def touch_session_txn(db: sqlite_utils.Database, id_hash: str) -> None:
    db.conn.execute(
        "UPDATE admin_sessions SET last_seen_at = ? WHERE id_hash = ?", (iso(utcnow()), id_hash)
    )


def delete_session_txn(db: sqlite_utils.Database, id_hash: str) -> None:
    db.conn.execute("DELETE FROM admin_sessions WHERE id_hash = ?", (id_hash,))


def revoke_user_sessions(conn: sqlite3.Connection, user_id: int) -> int:
    """Sign a user out everywhere (deactivated, role changed, 2FA reset, password changed)."""
    return conn.execute("DELETE FROM admin_sessions WHERE user_id = ?", (user_id,)).rowcount


def add_reveal(conn: sqlite3.Connection, id_hash: str, target: str, until: dt.datetime) -> None:
    row = conn.execute(
        "SELECT reveals FROM admin_sessions WHERE id_hash = ?", (id_hash,)
    ).fetchone()
    if row is None:
        raise LookupError("the session ended")
    now = utcnow()
    reveals = {k: v for k, v in json.loads(row[0]).items() if dt.datetime.fromisoformat(v) > now}
    reveals[target] = iso(until)
    conn.execute(
        "UPDATE admin_sessions SET reveals = ? WHERE id_hash = ?", (json.dumps(reveals), id_hash)
    )


def expire_sessions_txn(
    db: sqlite_utils.Database, idle: dt.timedelta, absolute: dt.timedelta
) -> int:
    """Remove sessions past either timeout and invitations past their time (a scheduled job)."""
    now = utcnow()
    removed = db.conn.execute(
        "DELETE FROM admin_sessions WHERE last_seen_at < ? OR created_at < ?",
        (iso(now - idle), iso(now - absolute)),
    ).rowcount
    db.conn.execute("DELETE FROM admin_invites WHERE expires_at < ?", (iso(now),))
    return removed


# Invitations -----------------------------------------------------------------------------------


def create_invite(
    conn: sqlite3.Connection, user_id: int, created_by: str, valid: dt.timedelta
) -> str:
    """A one-time set-password token for a new user (replacing any earlier one); shown once."""
    token = new_token()
    now = utcnow()
    conn.execute("DELETE FROM admin_invites WHERE user_id = ?", (user_id,))
    conn.execute(
        "INSERT INTO admin_invites (token_hash, user_id, created_at, created_by, expires_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (token_hash(token), user_id, iso(now), created_by, iso(now + valid)),
    )
    return token


def invite_email(conn: sqlite3.Connection, token: str) -> str | None:
    """The email of a valid, unused invitation's user, or None."""
    row = conn.execute(
        "SELECT u.email FROM admin_invites i JOIN users u ON u.id = i.user_id "
        "WHERE i.token_hash = ? AND i.used_at IS NULL AND i.expires_at > ? "
        "AND u.deactivated_at IS NULL",
        (token_hash(token), iso(utcnow())),
    ).fetchone()
    return str(row[0]) if row else None


def use_invite(conn: sqlite3.Connection, token: str) -> None:
    conn.execute(
        "UPDATE admin_invites SET used_at = ? WHERE token_hash = ?",
        (iso(utcnow()), token_hash(token)),
    )
