"""SQLCipher connections.

sqlite-utils catches the stdlib ``sqlite3.OperationalError``; with sqlcipher3 that breaks
``drop(ignore=True)`` and ``alter=True`` unless sqlcipher3 stands in for ``pysqlite3`` before
sqlite_utils is first imported (ARCHITECTURE.md, verified). ``use_sqlcipher()`` does that; every
module that imports sqlite_utils imports this one first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import sqlcipher3

sys.modules.setdefault("pysqlite3", sqlcipher3)
if "sqlite_utils" in sys.modules and sys.modules["pysqlite3"] is not sqlcipher3:  # pragma: no cover
    raise ImportError("sqlite_utils was imported with another pysqlite3 before gateway.store.db")

import sqlite_utils  # noqa: E402

from gateway.errors import MasterKeyError, StoreError  # noqa: E402

Connection = sqlcipher3.Connection
DatabaseError = sqlcipher3.DatabaseError
IntegrityError = sqlcipher3.IntegrityError


def connect(path: Path, key: bytes, *, readonly: bool = False) -> sqlite_utils.Database:
    """Open the encrypted database with a raw 32-byte key (no PBKDF2: opens in ~0.2 ms)."""
    try:
        conn = sqlcipher3.connect(str(path), check_same_thread=False, timeout=30.0)
    except sqlcipher3.OperationalError as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
    # A wrong key is reported by us (MasterKeyError below), not by SQLCipher's stderr logging.
    conn.execute("PRAGMA cipher_log_level = NONE")
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlcipher3.DatabaseError:
        conn.close()
        hint = ""
        if (path.parent / "master.key.next").exists() or Path(
            "/etc/credstore.encrypted/gateway-master-key.next"
        ).exists():
            hint = "; a key rotation was interrupted: run `gateway keys rotate --finish`"
        raise MasterKeyError(
            f"the master key does not open {path}: wrong key, or not a gateway database{hint}"
        ) from None
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL under WAL: a commit survives a process crash (kill -9); only power loss can
    # take the last transactions, and FULL costs an fsync per group commit.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 30000")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    return sqlite_utils.Database(conn, execute_plugins=False)
