"""The vault: secrets and admin-UI-managed config tables, kept in the encrypted database.

Two tables (migration m017):

``vault``
    Secrets by name (``channels.support.token``, or any name ``gateway secrets set`` is given).
    Each value is sealed with AES-256-GCM under a random key kept in ``store_keys`` (so it
    survives master-key rotation, which rekeys the database around it), with the name as
    associated data: a value copied to another name does not open. The database itself is
    SQLCipher, so a value is encrypted twice at rest; the extra layer keeps secrets out of
    anything that reads rows without meaning to (a debugging ``SELECT *``, an export).
    A config names one as ``store:NAME`` (gateway.secretref).

``managed_tables``
    ``[channels.NAME]``, ``[agents.NAME]`` and ``[providers.NAME]`` tables made in the admin UI,
    as JSON with the same keys a TOML file would hold (secrets as ``store:`` references). The
    config loader merges them with the config file (gateway.managed); ``version`` counts saves
    so two people editing the same table cannot overwrite each other unknowingly.

Values are opened only by :func:`read_secrets` (the config loader); listings show names and
dates, never values.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets as _secrets
import sqlite3
from typing import Any

import sqlite_utils
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import GatewayError, StoreError

KINDS = ("channels", "agents", "providers")
KEY_NAME = "vault"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ')"


class VaultError(GatewayError):
    """A secret name is not valid, or a value cannot be opened."""


def m017_create_vault(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE vault (name TEXT PRIMARY KEY, sealed BLOB NOT NULL, "
        "created_at TEXT NOT NULL, updated_at TEXT NOT NULL, updated_by TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE managed_tables (kind TEXT NOT NULL "
        "CHECK (kind IN ('channels', 'agents', 'providers')), name TEXT NOT NULL, "
        "body TEXT NOT NULL, version INTEGER NOT NULL, updated_at TEXT NOT NULL, "
        "updated_by TEXT NOT NULL, PRIMARY KEY (kind, name))"
    )


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise VaultError(
            f"{name[:60]!r} is not a valid secret name: use letters, digits, '.', '_' and '-' "
            "(at most 128, starting with a letter or digit)"
        )
    return name


def _key(conn: sqlite3.Connection, *, create: bool) -> bytes | None:
    row = conn.execute("SELECT value FROM store_keys WHERE name = ?", (KEY_NAME,)).fetchone()
    if row is not None:
        return bytes(row[0])
    if not create:
        return None
    key = _secrets.token_bytes(32)
    conn.execute(
        f"INSERT INTO store_keys (name, value, created_at) VALUES (?, ?, {_NOW})", (KEY_NAME, key)
    )
    return key


def _seal(key: bytes, name: str, value: str) -> bytes:
    nonce = _secrets.token_bytes(12)
    return nonce + AESGCM(key).encrypt(nonce, value.encode(), b"vault:" + name.encode())


def _open(key: bytes, name: str, sealed: bytes) -> str:
    try:
        plain = AESGCM(key).decrypt(sealed[:12], sealed[12:], b"vault:" + name.encode())
    except InvalidTag:
        raise VaultError(
            f"vault entry {name!r} does not open (damaged, or copied from another name); "
            f"set it again with `gateway secrets set {name}`"
        ) from None
    return plain.decode()


def put_secret_txn(db: sqlite_utils.Database, name: str, value: str, *, actor: str) -> None:
    """Store (or replace) a secret. Call inside a write job; audit it in the same job."""
    check_name(name)
    if not value:
        raise VaultError(f"the value for {name!r} is empty")
    conn = db.conn
    key = _key(conn, create=True)
    assert key is not None
    conn.execute(
        f"INSERT INTO vault (name, sealed, created_at, updated_at, updated_by) "
        f"VALUES (?, ?, {_NOW}, {_NOW}, ?) ON CONFLICT (name) DO UPDATE SET "
        "sealed = excluded.sealed, updated_at = excluded.updated_at, "
        "updated_by = excluded.updated_by",
        (name, _seal(key, name, value), actor),
    )


def delete_secrets_txn(db: sqlite_utils.Database, names: list[str]) -> int:
    """Delete secrets by name; returns how many there were."""
    deleted = 0
    for name in names:
        deleted += db.conn.execute("DELETE FROM vault WHERE name = ?", (name,)).rowcount
    return deleted


@dataclasses.dataclass(frozen=True)
class SecretInfo:
    name: str
    created_at: str
    updated_at: str
    updated_by: str


def list_secrets(conn: sqlite3.Connection) -> list[SecretInfo]:
    rows = conn.execute(
        "SELECT name, created_at, updated_at, updated_by FROM vault ORDER BY name"
    ).fetchall()
    return [SecretInfo(*row) for row in rows]


def read_secrets(conn: sqlite3.Connection) -> dict[str, str]:
    """Every secret, opened (for the config loader only)."""
    if not _has_tables(conn):
        return {}
    key = _key(conn, create=False)
    rows = conn.execute("SELECT name, sealed FROM vault").fetchall()
    if rows and key is None:
        raise StoreError("the vault has entries but its key is missing from store_keys")
    return {name: _open(key, name, bytes(sealed)) for name, sealed in rows if key is not None}


@dataclasses.dataclass(frozen=True)
class ManagedRow:
    kind: str
    name: str
    table: dict[str, Any]
    """Raw TOML-style values as saved (secret fields hold ``store:<secret name>``)."""
    version: int
    updated_at: str
    updated_by: str


def _row(values: tuple[Any, ...]) -> ManagedRow:
    kind, name, body, version, updated_at, updated_by = values
    return ManagedRow(kind, name, json.loads(body), version, updated_at, updated_by)


_COLUMNS = "kind, name, body, version, updated_at, updated_by"


def managed_rows(conn: sqlite3.Connection) -> list[ManagedRow]:
    if not _has_tables(conn):
        return []
    rows = conn.execute(f"SELECT {_COLUMNS} FROM managed_tables ORDER BY kind, name").fetchall()
    return [_row(r) for r in rows]


def managed_row(conn: sqlite3.Connection, kind: str, name: str) -> ManagedRow | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM managed_tables WHERE kind = ? AND name = ?", (kind, name)
    ).fetchone()
    return None if row is None else _row(row)


def put_row_txn(
    db: sqlite_utils.Database, kind: str, name: str, table: dict[str, Any], *, actor: str
) -> int:
    """Insert or replace a managed table; returns its new version."""
    conn = db.conn
    current = managed_row(conn, kind, name)
    version = 1 if current is None else current.version + 1
    conn.execute(
        f"INSERT INTO managed_tables (kind, name, body, version, updated_at, updated_by) "
        f"VALUES (?, ?, ?, ?, {_NOW}, ?) ON CONFLICT (kind, name) DO UPDATE SET "
        "body = excluded.body, version = excluded.version, updated_at = excluded.updated_at, "
        "updated_by = excluded.updated_by",
        (kind, name, json.dumps(table, sort_keys=True), version, actor),
    )
    return version


def delete_row_txn(db: sqlite_utils.Database, kind: str, name: str) -> bool:
    cursor = db.conn.execute("DELETE FROM managed_tables WHERE kind = ? AND name = ?", (kind, name))
    return cursor.rowcount > 0


def _has_tables(conn: sqlite3.Connection) -> bool:
    """False on a database older than m017 (an offline command before the daemon migrated)."""
    row = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'managed_tables'"
    ).fetchone()
    return bool(row[0])
