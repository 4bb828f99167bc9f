"""One-time codes: generated here, sent through the subscriber's channel, kept only as a hash.

Stored: HMAC-SHA256(pepper, salt || code id || code) with a random 16-byte salt per code. The
pepper is derived from the master key and never stored, so the database alone (a backup, a
copied file) does not allow trying the 10^6 possible codes offline. A code has an expiry, an
attempt limit, and only the newest code of a subscriber works; sending is throttled per
subscriber (one per ``otp_resend_after`` seconds, ``otp_max_per_hour`` per hour). Every check
of a code counts an attempt and compares in constant time, in one transaction on the writer,
so two parallel guesses cannot both slip under the limit.

The code is also inside the sent message (the channel needs its text). Once a code is no longer
usable and its message has left the outbox, the housekeeping job replaces that text, sealed,
with a placeholder (``scrub_codes_txn``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import secrets
from typing import Literal

import sqlite_utils

from gateway.devapi.schema import at, now, public_id
from gateway.privacy.sealing import Sealer
from gateway.store.bodies import seal_text

SCRUBBED = "[one-time code removed after use]"

Verdict = Literal["verified", "mismatch", "expired", "used", "superseded", "locked", "unknown"]


def new_code(length: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(length))


def code_hash(pepper: bytes, salt: bytes, code_id: str, code: str) -> bytes:
    return hmac.new(
        pepper, salt + code_id.encode() + b"\0" + code.encode(), hashlib.sha256
    ).digest()


@dataclasses.dataclass(frozen=True)
class Throttled:
    retry_after: float
    reason: str


@dataclasses.dataclass(frozen=True)
class NewCode:
    id: int
    public_id: str
    expires_at: str


def _seconds_between(earlier: str, later: str) -> float:
    return (dt.datetime.fromisoformat(later) - dt.datetime.fromisoformat(earlier)).total_seconds()


def create_code_txn(
    db: sqlite_utils.Database,
    pepper: bytes,
    code: str,
    *,
    project_id: int,
    subscription_id: int,
    subscription_public_id: str,
    ttl: int,
    max_attempts: int,
    resend_after: int,
    max_per_hour: int,
) -> NewCode | Throttled:
    """Store a new code for a subscriber (older ones stop working), unless throttled."""
    conn = db.conn
    ts = now()
    hour_ago = at(-3600)
    recent = [
        r[0]
        for r in conn.execute(
            "SELECT created_at FROM api_otp_codes WHERE project_id = ? AND "
            "subscription_public_id = ? AND created_at > ? ORDER BY id",
            (project_id, subscription_public_id, hour_ago),
        )
    ]
    if recent:
        since_last = _seconds_between(recent[-1], ts)
        if since_last < resend_after:
            return Throttled(
                resend_after - since_last,
                f"a code was sent to this subscriber {since_last:.0f} s ago; the next may go "
                f"after {resend_after} s",
            )
        if len(recent) >= max_per_hour:
            return Throttled(
                3600 - _seconds_between(recent[0], ts),
                f"{max_per_hour} codes were sent to this subscriber in the last hour, the most "
                "allowed ([api] otp_max_per_hour)",
            )
    conn.execute(
        "UPDATE api_otp_codes SET state = 'superseded' WHERE project_id = ? AND "
        "subscription_public_id = ? AND state = 'active'",
        (project_id, subscription_public_id),
    )
    code_public = public_id("otp")
    salt = secrets.token_bytes(16)
    expires = at(ttl)
    code_id = conn.execute(
        "INSERT INTO api_otp_codes (public_id, project_id, subscription_id, "
        "subscription_public_id, salt, hash, max_attempts, created_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            code_public,
            project_id,
            subscription_id,
            subscription_public_id,
            salt,
            code_hash(pepper, salt, code_public, code),
            max_attempts,
            ts,
            expires,
        ),
    ).lastrowid
    assert code_id is not None
    return NewCode(code_id, code_public, expires)


def attach_outbox_txn(db: sqlite_utils.Database, code_id: int, outbox_id: int | None) -> None:
    """Record the message that carries the code, or (None) forget a code that was not sent."""
    if outbox_id is None:
        db.conn.execute("DELETE FROM api_otp_codes WHERE id = ?", (code_id,))
    else:
        db.conn.execute("UPDATE api_otp_codes SET outbox_id = ? WHERE id = ?", (outbox_id, code_id))


@dataclasses.dataclass(frozen=True)
class Checked:
    verdict: Verdict
    attempts_left: int = 0
    subscriber: str = ""


def verify_code_txn(
    db: sqlite_utils.Database, pepper: bytes, project_id: int, code_public: str, code: str
) -> Checked:
    conn = db.conn
    row = conn.execute(
        "SELECT id, salt, hash, state, attempts, max_attempts, expires_at, "
        "subscription_public_id FROM api_otp_codes WHERE project_id = ? AND public_id = ?",
        (project_id, code_public),
    ).fetchone()
    if row is None:
        return Checked("unknown")
    code_id, salt, stored, state, attempts, max_attempts, expires_at, subscriber = row
    if state == "verified":
        return Checked("used", subscriber=subscriber)
    if state in ("superseded", "locked"):
        return Checked(state, subscriber=subscriber)
    if expires_at <= now():
        return Checked("expired", subscriber=subscriber)
    attempts += 1
    matches = hmac.compare_digest(bytes(stored), code_hash(pepper, bytes(salt), code_public, code))
    if matches:
        conn.execute(
            "UPDATE api_otp_codes SET state = 'verified', attempts = ?, verified_at = ? "
            "WHERE id = ?",
            (attempts, now(), code_id),
        )
        return Checked("verified", subscriber=subscriber)
    locked = attempts >= max_attempts
    conn.execute(
        "UPDATE api_otp_codes SET attempts = ?, state = ? WHERE id = ?",
        (attempts, "locked" if locked else "active", code_id),
    )
    return Checked("locked" if locked else "mismatch", max_attempts - attempts, subscriber)


def scrub_codes_txn(db: sqlite_utils.Database, sealer: Sealer, limit: int = 500) -> int:
    """Replace the text of sent code messages whose code can no longer be used. Returns how many."""
    conn = db.conn
    ts = now()
    rows = conn.execute(
        "SELECT a.id, o.id, o.message_id, c.contact_id FROM api_otp_codes a "
        "JOIN outbox o ON o.id = a.outbox_id JOIN conversations c ON c.id = o.conversation_id "
        "WHERE a.scrubbed = 0 AND (a.state != 'active' OR a.expires_at <= ?) "
        "AND o.state NOT IN ('pending', 'sending') LIMIT ?",
        (ts, limit),
    ).fetchall()
    for code_id, outbox_id, message_id, contact_id in rows:
        body = seal_text(sealer, conn, contact_id, SCRUBBED)
        conn.execute("UPDATE outbox SET text = '', body = ? WHERE id = ?", (body, outbox_id))
        if message_id is not None:
            conn.execute("UPDATE messages SET text = '', body = ? WHERE id = ?", (body, message_id))
        conn.execute("UPDATE api_otp_codes SET scrubbed = 1 WHERE id = ?", (code_id,))
    # Codes whose message is gone (retention, erasure) have nothing left to scrub.
    conn.execute(
        "UPDATE api_otp_codes SET scrubbed = 1 WHERE scrubbed = 0 AND outbox_id IS NOT NULL "
        "AND outbox_id NOT IN (SELECT id FROM outbox)"
    )
    return len(rows)


def forget_codes_txn(db: sqlite_utils.Database, older_than_hours: float = 24.0) -> int:
    """Drop codes long past use (their hash has no purpose left)."""
    cur = db.conn.execute(
        "DELETE FROM api_otp_codes WHERE expires_at < ? AND scrubbed = 1",
        (at(-older_than_hours * 3600),),
    )
    return cur.rowcount
