"""Admin users: Argon2id passwords, TOTP second factor (RFC 6238) with recovery codes, roles.

The admin UI signs people in with these; the CLI (``gateway users``, ``gateway init``) creates
the first owner. Policy (OWASP ASVS level 2):
- passwords of at least 12 characters (up to 128), any characters, not a common password nor
  the email itself; hashed with Argon2id (argon2-cffi defaults: 64 MiB, 3 iterations, 4 lanes);
- owner and admin roles must have a confirmed TOTP factor before they may do anything else;
  a TOTP code is accepted once (the last used time step is kept); ten one-time recovery codes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import secrets
import sqlite3
from typing import Literal

import argon2
import pyotp

from gateway.errors import GatewayError

Role = Literal["owner", "admin", "agent", "auditor"]
ROLES: tuple[Role, ...] = ("owner", "admin", "agent", "auditor")
ROLES_NEEDING_TOTP = frozenset({"owner", "admin"})
MIN_PASSWORD = 12
MAX_PASSWORD = 128
RECOVERY_CODES = 10
ISSUER = "Sovereign Gateway"

_hasher = argon2.PasswordHasher()  # Argon2id, m=64 MiB, t=3, p=4 (RFC 9106 second profile)

# The most common passwords of public breach corpora that pass the length rule.
_COMMON = frozenset(
    {
        "123456789012",
        "password1234",
        "qwertyuiop12",
        "1234567890123",
        "passwordpassword",
        "administrator",
        "qwertyqwerty",
        "letmeinletmein",
        "iloveyou1234",
        "changemechangeme",
        "welcome12345",
        "password123!",
        "p@ssw0rd1234",
        "111111111111",
        "000000000000",
        "abc123abc123",
        "qwerty123456",
        "1q2w3e4r5t6y",
    }
)


class UserError(GatewayError):
    """A user could not be created or changed; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class User:
    id: int
    email: str
    display_name: str | None
    role: str
    totp_confirmed: bool
    deactivated: bool
    created_at: str


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def normalise_email(email: str) -> str:
    email = email.strip()
    local, at, domain = email.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in email):
        raise UserError(f"{email!r} is not an email address (name@example.com)")
    # Compared case-insensitively everywhere: nobody expects Ann@ and ann@ to be two people.
    return f"{local}@{domain}".casefold()


def check_password(password: str, email: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password is too short: use at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"the password is too long: at most {MAX_PASSWORD} characters")
    folded = password.casefold()
    if folded in _COMMON or len(set(folded)) < 4 or folded == email.casefold():
        raise UserError("the password is too easy to guess: choose a longer, less common one")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (argon2.exceptions.VerifyMismatchError, argon2.exceptions.InvalidHashError):
        return False


def _hash_code(code: str) -> str:
    return hashlib.sha256(code.replace("-", "").lower().encode()).hexdigest()


def new_recovery_codes() -> list[str]:
    """Ten codes like ``k3m9-x2pq-7w4z`` (60 bits each), shown once."""
    alphabet = "23456789abcdefghjkmnpqrstuvwxyz"
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(alphabet) for _ in range(12))
        codes.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:]}")
    return codes


@dataclasses.dataclass(frozen=True)
class NewUser:
    """What creating a user hands back once: the TOTP enrolment and the recovery codes."""

    user_id: int
    totp_secret: str | None
    totp_uri: str | None
    recovery_codes: list[str]


def add_user(
    conn: sqlite3.Connection,
    email: str,
    password: str,
    role: str,
    *,
    display_name: str | None = None,
    created_by: str = "cli",
) -> NewUser:
    """Create a user (in the caller's transaction). Every role gets a TOTP seed; admin roles
    must confirm it (``confirm_totp``) before the admin UI lets them in."""
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    email = normalise_email(email)
    check_password(password, email)
    if conn.execute("SELECT 1 FROM users WHERE email = ?", (email,)).fetchone():
        raise UserError(f"a user {email} already exists (gateway users list)")
    seed = pyotp.random_base32()
    codes = new_recovery_codes()
    ts = now()
    user_id = conn.execute(
        "INSERT INTO users (email, display_name, role, password_hash, password_changed_at, "
        "totp_secret, recovery_codes, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            email,
            display_name,
            role,
            hash_password(password),
            ts,
            seed,
            json.dumps([_hash_code(c) for c in codes]),
            ts,
            created_by,
        ),
    ).lastrowid
    assert user_id is not None
    uri = pyotp.TOTP(seed).provisioning_uri(name=email, issuer_name=ISSUER)
    return NewUser(user_id, seed, uri, codes)


def verify_totp(
    conn: sqlite3.Connection, user_id: int, code: str, *, at: float | None = None
) -> bool:
    """Accept a 6-digit code for the current time step (±1 step of clock drift), once."""
    row = conn.execute(
        "SELECT totp_secret, totp_last_step FROM users WHERE id = ?", (user_id,)
    ).fetchone()
    if row is None or not row[0]:
        return False
    code = code.strip().replace(" ", "")
    if not (len(code) == 6 and code.isdigit()):
        return False
    totp = pyotp.TOTP(row[0])
    moment = dt.datetime.now(dt.UTC).timestamp() if at is None else at
    step = int(moment // totp.interval)
    for candidate in (step - 1, step, step + 1):
        if row[1] is not None and candidate <= row[1]:
            continue  # this step (or an earlier one) was already used: no replays
        if secrets.compare_digest(totp.at(candidate * totp.interval), code):
            conn.execute("UPDATE users SET totp_last_step = ? WHERE id = ?", (candidate, user_id))
            return True
    return False


def confirm_totp(
    conn: sqlite3.Connection, user_id: int, code: str, *, at: float | None = None
) -> bool:
    if not verify_totp(conn, user_id, code, at=at):
        return False
    conn.execute(
        "UPDATE users SET totp_confirmed_at = coalesce(totp_confirmed_at, ?) WHERE id = ?",
        (now(), user_id),
    )
    return True


def use_recovery_code(conn: sqlite3.Connection, user_id: int, code: str) -> bool:
    row = conn.execute("SELECT recovery_codes FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        return False
    hashes: list[str] = json.loads(row[0])
    wanted = _hash_code(code.strip())
    for stored in hashes:
        if secrets.compare_digest(stored, wanted):
            hashes.remove(stored)
            conn.execute(
                "UPDATE users SET recovery_codes = ? WHERE id = ?", (json.dumps(hashes), user_id)
            )
            return True
    return False


def reset_totp(conn: sqlite3.Connection, email: str) -> NewUser:
    """A new seed and new recovery codes; the user enrols again at next sign-in."""
    user = get_user(conn, email)
    seed = pyotp.random_base32()
    codes = new_recovery_codes()
    conn.execute(
        "UPDATE users SET totp_secret = ?, totp_confirmed_at = NULL, totp_last_step = NULL, "
        "recovery_codes = ? WHERE id = ?",
        (seed, json.dumps([_hash_code(c) for c in codes]), user.id),
    )
    uri = pyotp.TOTP(seed).provisioning_uri(name=user.email, issuer_name=ISSUER)
    return NewUser(user.id, seed, uri, codes)


def set_password(conn: sqlite3.Connection, email: str, password: str) -> None:
    user = get_user(conn, email)
    check_password(password, user.email)
    conn.execute(
        "UPDATE users SET password_hash = ?, password_changed_at = ?, failed_logins = 0, "
        "locked_until = NULL WHERE id = ?",
        (hash_password(password), now(), user.id),
    )


def deactivate(conn: sqlite3.Connection, email: str) -> None:
    user = get_user(conn, email)
    if user.role == "owner":
        owners = conn.execute(
            "SELECT count(*) FROM users WHERE role = 'owner' AND deactivated_at IS NULL"
        ).fetchone()[0]
        if owners <= 1:
            raise UserError(f"{user.email} is the last owner: add another owner first")
    conn.execute("UPDATE users SET deactivated_at = ? WHERE id = ?", (now(), user.id))


_USER_COLUMNS = (
    "id, email, display_name, role, totp_confirmed_at IS NOT NULL, deactivated_at IS NOT NULL, "
    "created_at"
)


def get_user(conn: sqlite3.Connection, email: str) -> User:
    row = conn.execute(
        f"SELECT {_USER_COLUMNS} FROM users WHERE email = ?", (normalise_email(email),)
    ).fetchone()
    if row is None:
        raise UserError(f"no user {email} (gateway users list)")
    return User(row[0], row[1], row[2], row[3], bool(row[4]), bool(row[5]), row[6])


def list_users(conn: sqlite3.Connection) -> list[User]:
    rows = conn.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY id").fetchall()
    return [User(r[0], r[1], r[2], r[3], bool(r[4]), bool(r[5]), r[6]) for r in rows]
