"""Idempotency-Key on the send endpoints (draft-ietf-httpapi-idempotency-key-header).

A request with a key is first *reserved* (one transaction: a new key gets a row with no answer
yet); the answer is stored when done, and a repeat with the same key and the same request gets
that answer again, marked ``Idempotent-Replayed: true``. The same key with a different request
is refused (422); a repeat while the first is still running gets 409 (retry shortly). A request
that failed on our side (5xx) releases its key, so the client's retry runs it afresh; a
reservation left by a crash is taken over after ``STALE_AFTER`` seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import sqlite_utils

from gateway.devapi.schema import at, now

STALE_AFTER = 60.0


def request_hash(method: str, path: str, body: Any) -> str:
    canonical = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Reserved:
    """The key is ours: do the work, then ``finish_txn`` (or ``release_txn`` on failure)."""


@dataclasses.dataclass(frozen=True)
class Replay:
    status: int
    body: str


@dataclasses.dataclass(frozen=True)
class Conflict:
    in_progress: bool
    """True: the same request is still running; False: the key was used for another request."""


def reserve_txn(
    db: sqlite_utils.Database, project_id: int, key: str, digest: str
) -> Reserved | Replay | Conflict:
    conn = db.conn
    row = conn.execute(
        "SELECT request_hash, status, response, created_at FROM api_idempotency "
        "WHERE project_id = ? AND key = ?",
        (project_id, key),
    ).fetchone()
    if row is not None:
        stored_hash, status, response, created_at = row
        if stored_hash != digest:
            return Conflict(in_progress=False)
        if status is not None:
            return Replay(status, response)
        if created_at > at(-STALE_AFTER):
            return Conflict(in_progress=True)
        conn.execute(
            "UPDATE api_idempotency SET created_at = ? WHERE project_id = ? AND key = ?",
            (now(), project_id, key),
        )
        return Reserved()
    conn.execute(
        "INSERT INTO api_idempotency (project_id, key, request_hash, created_at) "
        "VALUES (?, ?, ?, ?)",
        (project_id, key, digest, now()),
    )
    return Reserved()


def finish_txn(
    db: sqlite_utils.Database, project_id: int, key: str, status: int, response: str
) -> None:
    db.conn.execute(
        "UPDATE api_idempotency SET status = ?, response = ? WHERE project_id = ? AND key = ?",
        (status, response, project_id, key),
    )


def release_txn(db: sqlite_utils.Database, project_id: int, key: str) -> None:
    db.conn.execute(
        "DELETE FROM api_idempotency WHERE project_id = ? AND key = ? AND status IS NULL",
        (project_id, key),
    )


def expire_txn(db: sqlite_utils.Database, hours: float) -> int:
    cur = db.conn.execute("DELETE FROM api_idempotency WHERE created_at < ?", (at(-hours * 3600),))
    return cur.rowcount
