"""Sign-in steps as write transactions: password, second factor (TOTP or a recovery code),
authenticator enrolment, invitation acceptance. Each step audits its outcome in its own
transaction (``login.ok``, ``login.failed``, ``login.locked``, ``user.totp_enrolled``...).

Password hashes are verified by the caller off the writer thread (Argon2id takes ~100 ms); an
unknown email is verified against a dummy hash, so both take as long and answer the same.
Failures of either factor count towards the account's lockout (``users.failed_logins`` and
``locked_until``); a success resets the count.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import re
import secrets
import sqlite3
from typing import Any

import sqlite_utils

from gateway import users
from gateway.http.ui import sessions
from gateway.privacy import audit


@dataclasses.dataclass(frozen=True)
class Step:
    ok: bool
    token: str | None = None
    """The new session id (for the cookie) when the step issued one."""
    stage: str | None = None
    locked: bool = False


FAILED = Step(False)


@functools.cache
def dummy_hash() -> str:
    """What an unknown email's password is checked against (same cost as a real one)."""
    return users.hash_password(secrets.token_urlsafe(24))


def credentials_txn(db: sqlite_utils.Database, email: str | None) -> tuple[int, str] | None:
    if email is None:
        return None
    row = db.conn.execute(
        "SELECT id, password_hash FROM users WHERE email = ?", (email,)
    ).fetchone()
    return (int(row[0]), str(row[1])) if row else None


@dataclasses.dataclass(frozen=True)
class Policy:
    lockout_after: int
    lockout_minutes: float


def _failure(
    conn: sqlite3.Connection,
    db: sqlite_utils.Database,
    user_id: int,
    email: str,
    reason: str,
    policy: Policy,
    ip: str | None,
) -> Step:
    (count,) = conn.execute(
        "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = ? RETURNING failed_logins",
        (user_id,),
    ).fetchone()
    if count >= policy.lockout_after:
        until = sessions.utcnow() + dt.timedelta(minutes=policy.lockout_minutes)
        conn.execute(
            "UPDATE users SET locked_until = ?, failed_logins = 0 WHERE id = ?",
            (sessions.iso(until), user_id),
        )
        conn.execute(
            "DELETE FROM admin_sessions WHERE user_id = ? AND stage != 'active'", (user_id,)
        )
        _audit(
            db,
            email,
            "login.locked",
            "denied",
            {"failures": count, "until": sessions.iso(until), "ip": ip, "last": reason},
        )
        return Step(False, locked=True)
    _audit(db, email, "login.failed", "failed", {"reason": reason, "failures": count, "ip": ip})
    return FAILED


def _audit(
    db: sqlite_utils.Database, email: str, action: str, outcome: str, detail: dict[str, Any]
) -> None:
    audit.append_txn(
        db,
        actor=f"admin:{email}",
        action=action,
        target=f"user:{email}",
        outcome=outcome,
        detail=detail,
    )


def _locked(conn: sqlite3.Connection, user_id: int) -> bool:
    row = conn.execute("SELECT locked_until FROM users WHERE id = ?", (user_id,)).fetchone()
    return bool(row and row[0] and dt.datetime.fromisoformat(row[0]) > sessions.utcnow())


def _succeeded(
    db: sqlite_utils.Database, user_id: int, email: str, method: str, ip: str | None
) -> None:
    db.conn.execute(
        "UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = ?", (user_id,)
    )
    _audit(db, email, "login.ok", "ok", {"method": method, "ip": ip})


def password_step_txn(
    db: sqlite_utils.Database,
    email: str | None,
    user_id: int | None,
    password_ok: bool,
    policy: Policy,
    ip: str | None,
    user_agent: str | None,
) -> Step:
    conn = db.conn
    if user_id is None:
        audit.append_txn(
            db,
            actor="anonymous",
            action="login.failed",
            outcome="failed",
            detail={"reason": "unknown email", "ip": ip},
        )
        return FAILED
    row = conn.execute(
        "SELECT email, role, totp_confirmed_at IS NOT NULL, deactivated_at IS NOT NULL "
        "FROM users WHERE id = ?",
        (user_id,),
    ).fetchone()
    email, role, confirmed, deactivated = row
    if deactivated:
        _audit(db, email, "login.failed", "failed", {"reason": "deactivated", "ip": ip})
        return FAILED
    if _locked(conn, user_id):
        _audit(db, email, "login.failed", "denied", {"reason": "locked", "ip": ip})
        return Step(False, locked=True)
    if not password_ok:
        return _failure(conn, db, user_id, email, "wrong password", policy, ip)
    pending: dict[str, Any] | None = None
    if confirmed:
        stage = "totp"
    elif role in users.ROLES_NEEDING_TOTP:
        stage = "enrol"
        fresh = users.reset_totp(conn, email)
        pending = {
            "secret": fresh.totp_secret,
            "uri": fresh.totp_uri,
            "codes": fresh.recovery_codes,
        }
    else:
        stage = "active"
        _succeeded(db, user_id, email, "password", ip)
    token = sessions.create_session(
        conn, user_id, stage, ip=ip, user_agent=user_agent, pending=pending
    )
    return Step(True, token, stage)


RECOVERY = re.compile(r"^[0-9a-z]{4}-?[0-9a-z]{4}-?[0-9a-z]{4}$")


def _code_ok(conn: sqlite3.Connection, user_id: int, code: str) -> tuple[str, bool]:
    """(method, accepted) for a TOTP code (each accepted once) or a recovery code (each usable
    once)."""
    code = code.strip().lower().replace(" ", "")
    if code.isdigit():
        return "totp", users.verify_totp(conn, user_id, code)
    if RECOVERY.match(code):
        return "recovery code", users.use_recovery_code(conn, user_id, code)
    return "totp", False


def second_step_txn(
    db: sqlite_utils.Database,
    stage: str,
    id_hash: str,
    code: str,
    policy: Policy,
    ip: str | None,
) -> Step:
    """Finish a sign-in at ``stage``: 'totp' (a code or a recovery code) or 'enrol' (the first
    code of the authenticator set up during this sign-in, which confirms it)."""
    conn = db.conn
    session = sessions.load_session_txn(db, id_hash)
    if session is None or session.stage != stage:
        return FAILED
    if _locked(conn, session.user_id):
        sessions.delete_session_txn(db, id_hash)
        return Step(False, locked=True)
    if stage == "enrol":
        method, ok = "totp enrolment", users.confirm_totp(conn, session.user_id, code)
    else:
        method, ok = _code_ok(conn, session.user_id, code)
    if not ok:
        return _failure(conn, db, session.user_id, session.email, f"wrong {method}", policy, ip)
    token = sessions.activate_session(conn, id_hash)
    if stage == "enrol":
        audit.append_txn(
            db, actor=session.actor, action="user.totp_enrolled", target=f"user:{session.email}"
        )
    _succeeded(db, session.user_id, session.email, method, ip)
    return Step(True, token, "active")


def accept_invite_txn(db: sqlite_utils.Database, token: str, password: str) -> str:
    """Set the invited user's password; returns their email. UserError says what is wrong."""
    conn = db.conn
    email = sessions.invite_email(conn, token)
    if email is None:
        raise users.UserError(
            "this invitation link is not valid any more (used or expired): ask for a new one"
        )
    users.set_password(conn, email, password)
    sessions.use_invite(conn, token)
    audit.append_txn(
        db, actor=f"admin:{email}", action="user.invite_accepted", target=f"user:{email}"
    )
    return email


def logout_txn(db: sqlite_utils.Database, id_hash: str, actor: str) -> None:
    sessions.delete_session_txn(db, id_hash)
    audit.append_txn(db, actor=actor, action="logout")
