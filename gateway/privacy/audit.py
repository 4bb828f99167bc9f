"""The audit log: append-only and hash-chained, so an edit or a deletion is detectable.

Every admin action, privacy action, sign-in, permission decision and reveal of redacted data
is one row. Each row commits to the previous one::

    hash = sha256(prev_hash || canonical JSON of (id, at, actor, action, target, outcome, detail))

so changing any field of any row, deleting a row, or inserting one breaks the chain from there
on; ``verify`` says where. ``prev_hash`` is UNIQUE: two writers (the daemon and a CLI command)
cannot fork the chain, the second one's transaction fails and is retried by its caller.

What the chain cannot show by itself is the *newest* rows being cut off (the remaining chain is
still valid). Against that, the daemon writes the head (id and hash) to the system log once a day
and ``gateway audit verify`` prints it; compare it with a head noted earlier.

Retention (the audit category, default one year) removes the oldest rows with
``truncate_before_txn``: the hash of the last removed row is kept in ``audit_anchor`` and the
removal itself is audited, so the chain still verifies from the anchor.

Use inside a write job (``Store.write``), in the same transaction as the action it records::

    def erase_txn(db, contact_id, actor):
        ...
        audit.append_txn(db, actor=actor, action="privacy.erase", target=f"contact:{contact_id}",
                         detail={"messages": n})

Actors: ``admin:<email>``, ``cli:<os user>``, ``api:<key id>``, ``contact:<id>``, ``system``.
Actions are dotted verbs: ``login.ok``, ``login.failed``, ``permission.denied``,
``conversation.reveal``, ``privacy.export``, ``privacy.erase``, ``retention.sweep``...
``detail`` is JSON: ids, counts, reasons; never message content or secrets.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any

import sqlite_utils

GENESIS = "0" * 64
OUTCOMES = ("ok", "denied", "failed")


def m010_create_audit_log(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            outcome TEXT NOT NULL,
            detail TEXT,
            prev_hash TEXT NOT NULL UNIQUE,
            hash TEXT NOT NULL
        );
        CREATE INDEX audit_log_target ON audit_log (target, id);
        -- Where the chain starts after retention removed older rows: the removed rows' last
        -- id and hash (one row).
        CREATE TABLE audit_anchor (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            last_removed_id INTEGER NOT NULL,
            hash TEXT NOT NULL,
            at TEXT NOT NULL
        );
        """
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def entry_hash(
    prev_hash: str,
    id: int,
    at: str,
    actor: str,
    action: str,
    target: str | None,
    outcome: str,
    detail: str | None,
) -> str:
    body = json.dumps(
        [id, at, actor, action, target, outcome, detail], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _head(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
    if row is not None:
        return int(row[0]), str(row[1])
    anchor = conn.execute("SELECT last_removed_id, hash FROM audit_anchor").fetchone()
    if anchor is not None:
        return int(anchor[0]), str(anchor[1])
    return 0, GENESIS


def append_txn(
    db: sqlite_utils.Database,
    *,
    actor: str,
    action: str,
    target: str | None = None,
    outcome: str = "ok",
    detail: Mapping[str, Any] | None = None,
) -> int:
    """Append one entry (inside the caller's transaction); returns its id."""
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome must be one of {OUTCOMES}, not {outcome!r}")
    if not actor or not action:
        raise ValueError("an audit entry needs an actor and an action")
    conn = db.conn
    last_id, prev = _head(conn)
    entry_id = last_id + 1
    at = _now()
    detail_json = (
        json.dumps(dict(detail), ensure_ascii=False, sort_keys=True, default=str)
        if detail
        else None
    )
    digest = entry_hash(prev, entry_id, at, actor, action, target, outcome, detail_json)
    conn.execute(
        "INSERT INTO audit_log (id, at, actor, action, target, outcome, detail, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (entry_id, at, actor, action, target, outcome, detail_json, prev, digest),
    )
    return entry_id


@dataclasses.dataclass(frozen=True)
class Entry:
    id: int
    at: str
    actor: str
    action: str
    target: str | None
    outcome: str
    detail: dict[str, Any] | None
    hash: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def entries(
    conn: sqlite3.Connection,
    *,
    after_id: int = 0,
    before_id: int | None = None,
    target: str | None = None,
    actor: str | None = None,
    action_prefix: str | None = None,
    since: str | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> Iterator[Entry]:
    """Entries, filtered (for viewers and exports): ids above ``after_id`` (paging oldest first)
    and below ``before_id`` (paging ``newest_first``)."""
    where, args = ["id > ?"], [after_id]
    if before_id is not None:
        where.append("id < ?")
        args.append(before_id)
    if target is not None:
        where.append("target = ?")
        args.append(target)  # type: ignore[arg-type]
    if actor is not None:
        where.append("actor = ?")
        args.append(actor)  # type: ignore[arg-type]
    if action_prefix is not None:
        where.append("action LIKE ? ESCAPE '\\'")
        escaped = action_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        args.append(escaped + "%")  # type: ignore[arg-type]
    if since is not None:
        where.append("at >= ?")
        args.append(since)  # type: ignore[arg-type]
    sql = (
        "SELECT id, at, actor, action, target, outcome, detail, hash FROM audit_log WHERE "
        + " AND ".join(where)
        + (" ORDER BY id DESC" if newest_first else " ORDER BY id")
        + (f" LIMIT {int(limit)}" if limit is not None else "")
    )
    for row in conn.execute(sql, args):
        yield Entry(
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            json.loads(row[6]) if row[6] else None,
            row[7],
        )


@dataclasses.dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    head_id: int
    head_hash: str
    first_bad_id: int | None = None
    problem: str = ""

    def summary(self) -> str:
        if self.ok:
            return (
                f"audit log intact: {self.checked} entries checked; head id {self.head_id} "
                f"hash {self.head_hash}"
            )
        if self.first_bad_id is None:  # the chain holds, but the expected head is gone
            return f"audit log BROKEN: {self.problem}"
        return f"audit log BROKEN at entry {self.first_bad_id}: {self.problem}"


def verify(conn: sqlite3.Connection, *, expect_head: str | None = None) -> Verification:
    """Recompute the chain from the anchor (or the start). ``expect_head``: a head hash noted
    earlier (from the system log); its entry must still be there and unchanged."""
    anchor = conn.execute("SELECT last_removed_id, hash FROM audit_anchor").fetchone()
    expected_id, prev = (int(anchor[0]), str(anchor[1])) if anchor else (0, GENESIS)
    checked = 0
    # A head noted before retention truncated up to it survives as the anchor.
    seen_expected = expect_head is None or (anchor is not None and expect_head == prev)
    for row in conn.execute(
        "SELECT id, at, actor, action, target, outcome, detail, prev_hash, hash "
        "FROM audit_log ORDER BY id"
    ):
        entry_id, at, actor, action, target, outcome, detail, prev_hash, digest = row
        expected_id += 1
        if entry_id != expected_id:
            return Verification(
                False,
                checked,
                expected_id - 1,
                prev,
                expected_id,
                f"entries {expected_id}..{entry_id - 1} are missing (deleted)",
            )
        if prev_hash != prev:
            return Verification(
                False,
                checked,
                entry_id - 1,
                prev,
                entry_id,
                "it does not follow the previous entry (prev_hash differs: an entry was "
                "changed, removed or inserted before it)",
            )
        if entry_hash(prev, entry_id, at, actor, action, target, outcome, detail) != digest:
            return Verification(
                False, checked, entry_id - 1, prev, entry_id, "its content was changed"
            )
        if digest == expect_head:
            seen_expected = True
        prev = digest
        checked += 1
    if not seen_expected:
        return Verification(
            False,
            checked,
            expected_id,
            prev,
            None,
            f"the expected head {expect_head} is not in the log (newer entries were removed or "
            "the log was replaced)",
        )
    return Verification(True, checked, expected_id, prev)


def truncate_before_txn(db: sqlite_utils.Database, before: str, *, actor: str = "system") -> int:
    """Remove entries older than ``before`` (ISO time; audit retention), keep the anchor and
    audit the removal. Returns the number removed."""
    conn = db.conn
    row = conn.execute(
        "SELECT id, hash FROM audit_log WHERE at < ? ORDER BY id DESC LIMIT 1", (before,)
    ).fetchone()
    if row is None:
        return 0
    last_id, last_hash = int(row[0]), str(row[1])
    removed = conn.execute("DELETE FROM audit_log WHERE id <= ?", (last_id,)).rowcount
    conn.execute(
        "INSERT INTO audit_anchor (id, last_removed_id, hash, at) VALUES (1, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET last_removed_id = excluded.last_removed_id, "
        "hash = excluded.hash, at = excluded.at",
        (last_id, last_hash, _now()),
    )
    append_txn(
        db,
        actor=actor,
        action="audit.truncate",
        detail={"removed": removed, "before": before, "anchor_id": last_id, "anchor": last_hash},
    )
    return removed


def head_txn(db: sqlite_utils.Database) -> tuple[int, str]:
    """The newest entry's id and hash (what the daemon logs daily)."""
    return _head(db.conn)
