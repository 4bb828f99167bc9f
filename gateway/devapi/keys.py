"""Projects and their API keys: created and revoked from the CLI, checked on every request.

A key looks like ``sgw_k3m9x2pq_<43 url-safe characters>``: the prefix (``sgw_k3m9x2pq``) is
its public name, stored as is to find the row; the whole key is stored only as
HMAC-SHA256(server key, key).

Why a fast keyed hash and not Argon2 (as for admin passwords): a key carries 256 random bits,
so nobody can guess it by trying hashes, however fast they are; a slow hash only protects
low-entropy secrets such as passwords, and here it would cost ~50 ms of CPU on every API
request. The server key (in ``store_keys``, inside the encrypted database) makes a copied
``api_keys`` table alone useless even for checking a guess. Comparison is constant-time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
from typing import Any

import sqlite_utils

from gateway.devapi.config import NAME, parse_rate
from gateway.devapi.schema import SERVER_KEY, now
from gateway.errors import GatewayError
from gateway.pipeline.consent import Keywords
from gateway.privacy import audit

SCOPES = ("notify", "otp", "subscribers", "external_ids", "forms", "privacy")
"""notify: send notifications; otp: send and verify one-time codes; subscribers: list the
project's subscribers (platform ids redacted); external_ids: see those ids in full and address
a subscriber by channel + platform id; forms: read the project's form submissions; privacy:
pass on a subscriber's data-subject request (access, erasure...) and follow its clocks."""
_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
KEY_PATTERN = re.compile(r"^(sgw_[2-9a-hjkmnp-z]{8})_[A-Za-z0-9_-]{43}$")


class ApiError(GatewayError):
    """A project or key could not be created or changed; the message says why and the fix."""


@dataclasses.dataclass(frozen=True)
class Project:
    id: int
    name: str
    title: str
    created_at: str
    keys: int = 0
    subscribers: int = 0


@dataclasses.dataclass(frozen=True)
class ApiKey:
    id: int
    project_id: int
    project: str
    """The project's name."""
    project_title: str
    prefix: str
    scopes: tuple[str, ...]
    rate: str | None
    label: str | None
    created_at: str
    last_used_at: str | None
    revoked_at: str | None
    hash: bytes = b""


def server_key(conn: sqlite3.Connection) -> bytes:
    row = conn.execute("SELECT value FROM store_keys WHERE name = ?", (SERVER_KEY,)).fetchone()
    if row is None:
        raise ApiError("the database has no API key secret yet: start the gateway once")
    return bytes(row[0])


def key_hash(key_secret: bytes, key: str) -> bytes:
    return hmac.new(key_secret, key.encode(), hashlib.sha256).digest()


def key_prefix(key: str) -> str | None:
    """The prefix of a well-formed key, None for anything else."""
    match = KEY_PATTERN.match(key)
    return match.group(1) if match else None


def check_scopes(scopes: list[str]) -> tuple[str, ...]:
    cleaned = tuple(dict.fromkeys(s.strip().lower() for s in scopes if s.strip()))
    unknown = [s for s in cleaned if s not in SCOPES]
    if unknown or not cleaned:
        raise ApiError(
            f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}"
            if unknown
            else f"a key needs at least one scope: {', '.join(SCOPES)}"
        )
    return cleaned


# Projects ------------------------------------------------------------------------------------


def add_project_txn(db: sqlite_utils.Database, name: str, title: str | None, actor: str) -> Project:
    name = name.strip().lower()
    if not NAME.match(name):
        raise ApiError(
            f"{name!r} is not a project name: use a-z, 0-9, _ and - (up to 64; it is what users "
            "send as /start NAME)"
        )
    words = Keywords()
    if words.match(name) is not None or words.match(f"/{name}") is not None:
        raise ApiError(f"{name!r} is an opt-out/opt-in word; choose another project name")
    conn = db.conn
    if conn.execute("SELECT 1 FROM api_projects WHERE name = ?", (name,)).fetchone():
        raise ApiError(f"a project {name!r} exists already (gateway api projects list)")
    ts = now()
    project_id = conn.execute(
        "INSERT INTO api_projects (name, title, created_at, created_by) VALUES (?, ?, ?, ?)",
        (name, (title or name).strip(), ts, actor),
    ).lastrowid
    assert project_id is not None
    audit.append_txn(
        db,
        actor=actor,
        action="api.project.add",
        target=f"project:{name}",
        detail={"id": project_id},
    )
    return Project(project_id, name, (title or name).strip(), ts)


def list_projects_txn(db: sqlite_utils.Database) -> list[Project]:
    rows = db.conn.execute(
        "SELECT p.id, p.name, p.title, p.created_at, "
        "(SELECT count(*) FROM api_keys k WHERE k.project_id = p.id AND k.revoked_at IS NULL), "
        "(SELECT count(*) FROM api_subscriptions s WHERE s.project_id = p.id) "
        "FROM api_projects p ORDER BY p.name"
    ).fetchall()
    return [Project(*r) for r in rows]


def project_by_name(conn: sqlite3.Connection, name: str) -> Project | None:
    row = conn.execute(
        "SELECT id, name, title, created_at FROM api_projects WHERE name = ?",
        (name.strip().lower(),),
    ).fetchone()
    return Project(*row) if row else None


def _project(conn: sqlite3.Connection, name: str) -> Project:
    project = project_by_name(conn, name)
    if project is None:
        raise ApiError(f"no project {name!r}: create it with `gateway api projects add {name}`")
    return project


# Keys ----------------------------------------------------------------------------------------

_KEY_COLUMNS = (
    "k.id, k.project_id, p.name, p.title, k.prefix, k.scopes, k.rate, k.label, k.created_at, "
    "k.last_used_at, k.revoked_at, k.hash"
)


def _key(row: tuple[Any, ...]) -> ApiKey:
    (
        key_id,
        project_id,
        project,
        title,
        prefix,
        scopes,
        rate,
        label,
        created,
        used,
        revoked,
        digest,
    ) = row
    return ApiKey(
        key_id,
        project_id,
        project,
        title,
        prefix,
        tuple(json.loads(scopes)),
        rate,
        label,
        created,
        used,
        revoked,
        bytes(digest),
    )


def create_key_txn(
    db: sqlite_utils.Database,
    project: str,
    scopes: list[str],
    *,
    rate: str | None,
    label: str | None,
    actor: str,
) -> tuple[ApiKey, str]:
    """A new key for ``project``: (its record, the key itself, to be shown once)."""
    conn = db.conn
    owner = _project(conn, project)
    granted = check_scopes(scopes)
    if rate is not None:
        try:
            rate = str(parse_rate(rate))
        except ValueError as exc:
            raise ApiError(f"--rate: {exc}") from None
    while True:
        prefix = "sgw_" + "".join(secrets.choice(_ALPHABET) for _ in range(8))
        if not conn.execute("SELECT 1 FROM api_keys WHERE prefix = ?", (prefix,)).fetchone():
            break
    key = f"{prefix}_{secrets.token_urlsafe(32)}"
    ts = now()
    key_id = conn.execute(
        "INSERT INTO api_keys (project_id, prefix, hash, scopes, rate, label, created_at, "
        "created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            owner.id,
            prefix,
            key_hash(server_key(conn), key),
            json.dumps(list(granted)),
            rate,
            label,
            ts,
            actor,
        ),
    ).lastrowid
    assert key_id is not None
    audit.append_txn(
        db,
        actor=actor,
        action="api.key.create",
        target=f"api_key:{prefix}",
        detail={"project": owner.name, "scopes": list(granted), "rate": rate},
    )
    record = ApiKey(
        key_id, owner.id, owner.name, owner.title, prefix, granted, rate, label, ts, None, None
    )
    return record, key


def list_keys_txn(db: sqlite_utils.Database, project: str | None = None) -> list[ApiKey]:
    where, params = ("WHERE p.name = ?", (project,)) if project else ("", ())
    rows = db.conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN api_projects p ON p.id = k.project_id "
        f"{where} ORDER BY p.name, k.id",
        params,
    ).fetchall()
    return [_key(r) for r in rows]


def revoke_key_txn(db: sqlite_utils.Database, prefix: str, actor: str) -> ApiKey:
    conn = db.conn
    prefix = key_prefix(prefix) or prefix.strip()
    row = conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN api_projects p ON p.id = k.project_id "
        "WHERE k.prefix = ?",
        (prefix,),
    ).fetchone()
    if row is None:
        raise ApiError(f"no key {prefix!r}: `gateway api keys list` shows each key's prefix")
    key = _key(row)
    if key.revoked_at is not None:
        raise ApiError(f"key {prefix} was revoked already, at {key.revoked_at}")
    ts = now()
    conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (ts, key.id))
    audit.append_txn(
        db,
        actor=actor,
        action="api.key.revoke",
        target=f"api_key:{prefix}",
        detail={"project": key.project},
    )
    return dataclasses.replace(key, revoked_at=ts)


def key_by_prefix_txn(db: sqlite_utils.Database, prefix: str) -> ApiKey | None:
    row = db.conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN api_projects p ON p.id = k.project_id "
        "WHERE k.prefix = ?",
        (prefix,),
    ).fetchone()
    return _key(row) if row else None


def touch_key_txn(db: sqlite_utils.Database, key_id: int) -> None:
    db.conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now(), key_id))


def key_matches(record: ApiKey, key_secret: bytes, presented: str) -> bool:
    return hmac.compare_digest(record.hash, key_hash(key_secret, presented))
