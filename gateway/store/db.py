"""SQLCipher connections.

sqlite-utils catches the stdlib ``sqlite3.OperationalError``; with sqlcipher3 that breaks
``drop(ignore=True)`` and ``alter=True`` unless sqlcipher3 stands in for ``pysqlite3`` before
sqlite_utils is first imported (ARCHITECTURE.md, verified). ``use_sqlcipher()`` does that; every
module that imports sqlite_utils imports this one first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import sqlcipher3

sys.modules.setdefault("pysqlite3", sqlcipher3)
if "sqlite_utils" in sys.modules and sys.modules["pysqlite3"] is not sqlcipher3:  # pragma: no cover
    raise ImportError("sqlite_utils was imported with another pysqlite3 before gateway.store.db")

import sqlite_utils  # noqa: E402

from gateway.errors import MasterKeyError, StoreError  # noqa: E402

# How long a write waits for another connection's write lock (a `gateway` command writing while
# the daemon runs) before it fails with "database is locked": the daemon then refuses the
# inbound message with 503 and the platform retries. GATEWAY_DB_BUSY_TIMEOUT (seconds) changes
# it; the fault tests use it to see that refusal within a second rather than 30.
BUSY_TIMEOUT_ENV = "GATEWAY_DB_BUSY_TIMEOUT"
DEFAULT_BUSY_TIMEOUT = 30.0

# Page caches, per connection. SQLCipher's default is 8,000 KiB (SQLite's own is 2,000): with the
# writer and up to four readers that is 40 MB of heap once the database outgrows them, the
# largest part of the daemon's memory growth in bench/soak.py. A page missed costs a read from
# the OS's file cache and a decryption, microseconds; the writer keeps more for the journal's
# indexes, which every group commit touches.
WRITER_CACHE_KIB = 2048
READER_CACHE_KIB = 512

Connection = sqlcipher3.Connection
DatabaseError = sqlcipher3.DatabaseError
IntegrityError = sqlcipher3.IntegrityError


def connect(path: Path, key: bytes, *, readonly: bool = False) -> sqlite_utils.Database:
    """Open the encrypted database with a raw 32-byte key (no PBKDF2: opens in ~0.2 ms)."""
    busy_timeout = busy_timeout_seconds()
    try:
        conn = sqlcipher3.connect(str(path), check_same_thread=False, timeout=busy_timeout)
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
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB if readonly else WRITER_CACHE_KIB}")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    return sqlite_utils.Database(conn, execute_plugins=False)


def busy_timeout_seconds() -> float:
    """The busy timeout: ``$GATEWAY_DB_BUSY_TIMEOUT`` seconds if set, else 30."""
    value = os.environ.get(BUSY_TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_BUSY_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise StoreError(f"{BUSY_TIMEOUT_ENV}={value!r} is not a number of seconds") from None
    if not 0 <= seconds <= 3600:
        raise StoreError(f"{BUSY_TIMEOUT_ENV}={value!r} must be between 0 and 3600 seconds")
    return seconds
