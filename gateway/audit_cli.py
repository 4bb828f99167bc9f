"""``gateway audit``: check, read and export the hash-chained audit log (gateway.privacy.audit).

::

    gateway audit verify [--expect-head HASH]     # exit 0 intact, 1 broken (says where)
    gateway audit show [--actor A] [--action PREFIX] [--target T] [--since TIME] [--limit N]
    gateway audit export --format jsonl|csv --output FILE

An export is for a DPO or an auditor: the entries, and beside them ``FILE.verification.json``
with the result of ``verify`` at export time and the head (id and hash) the export ends at.
Exports are themselves audited.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
from pathlib import Path
from typing import Any

import sqlite_utils

from gateway.cli_db import open_database
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.privacy import audit


def cli_actor() -> str:
    """The audit actor for a command run from a shell: ``cli:<os user>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a bare container)
        user = str(os.getuid())
    return f"cli:{user}"


def record(
    db: sqlite_utils.Database,
    *,
    action: str,
    target: str | None = None,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
    actor: str | None = None,
) -> int:
    """Append one audit entry from a command's own connection, next to a running daemon:
    BEGIN IMMEDIATE holds the write lock from reading the head to the insert, so the two
    writers never race for the same place in the chain."""
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        entry = audit.append_txn(
            db,
            actor=actor or cli_actor(),
            action=action,
            target=target,
            outcome=outcome,
            detail=detail,
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return entry


def add_parser(sub: Any) -> None:
    p = sub.add_parser("audit", help="verify, show and export the hash-chained audit log")
    p.add_argument("action", choices=["verify", "show", "export"])
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    p.add_argument(
        "--expect-head",
        metavar="HASH",
        help="verify: a head hash noted earlier (the daemon logs it daily); its entry must "
        "still be there",
    )
    p.add_argument("--actor", help="show: only this actor (e.g. cli:root, admin:ann@example.com)")
    p.add_argument("--action", dest="action_prefix", metavar="PREFIX", help="show: e.g. privacy.")
    p.add_argument("--target", help="show: e.g. contact:42")
    p.add_argument("--since", metavar="TIME", help="show: ISO date or time (UTC), e.g. 2026-01-31")
    p.add_argument("--limit", type=int, default=50, help="show: newest N entries (default 50)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="export format")
    p.add_argument("--output", "-o", metavar="FILE", help="export: the file to write")


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    with open_database(config, migrate=True) as db:
        if args.action == "verify":
            result = audit.verify(db.conn, expect_head=args.expect_head)
            print(result.summary())
            if not result.ok:
                print(f"last good entry: id {result.head_id} hash {result.head_hash}")
            return 0 if result.ok else 1
        if args.action == "show":
            return show(db, args)
        return export(db, args)


def show(db: sqlite_utils.Database, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise GatewayError("--limit must be 1 or more")
    rows = list(
        audit.entries(
            db.conn,
            actor=args.actor,
            action_prefix=args.action_prefix,
            target=args.target,
            since=args.since,
            limit=args.limit,
            newest_first=True,
        )
    )
    if not rows:
        print("no audit entries match")
        return 0
    for entry in reversed(rows):
        detail = json.dumps(entry.detail, ensure_ascii=False) if entry.detail else ""
        print(
            f"{entry.id:>7}  {entry.at[:19]}  {entry.actor:<24} {entry.action:<24} "
            f"{entry.target or '-':<20} {entry.outcome:<6} {detail}"
        )
    return 0


FIELDS = ("id", "at", "actor", "action", "target", "outcome", "detail", "hash")


def export(db: sqlite_utils.Database, args: argparse.Namespace) -> int:
    if not args.output:
        raise GatewayError("`gateway audit export` needs --output FILE")
    out = Path(args.output).expanduser()
    # One read transaction: the entries and the verification describe the same log.
    conn = db.conn
    conn.execute("BEGIN")
    try:
        result = audit.verify(conn)
        count, last = write_export(conn, out, args.format)
    finally:
        conn.execute("COMMIT")
    side = out.with_name(out.name + ".verification.json")
    side.write_text(
        json.dumps(
            {
                "ok": result.ok,
                "summary": result.summary(),
                "checked": result.checked,
                "entries_exported": count,
                "last_entry": {"id": last[0], "hash": last[1]} if last else None,
                "verified_head_id": result.head_id,
                "verified_head_hash": result.head_hash,
                "first_bad_id": result.first_bad_id,
                "problem": result.problem or None,
                "hash": "sha256(prev_hash || JSON [id, at, actor, action, target, outcome, "
                "detail]); see gateway.privacy.audit",
            },
            indent=2,
        )
        + "\n"
    )
    record(
        db,
        action="audit.export",
        target=f"file:{out.name}",
        detail={"format": args.format, "entries": count, "intact": result.ok},
    )
    print(f"{count} entries written to {out}; verification in {side}")
    print(result.summary())
    return 0 if result.ok else 1


def write_export(conn: Any, out: Path, fmt: str) -> tuple[int, tuple[int, str] | None]:
    """Every entry, oldest first; returns how many and the last one's id and hash."""
    count = 0
    last = None
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle) if fmt == "csv" else None
        if writer is not None:
            writer.writerow(FIELDS)
        for entry in audit.entries(conn):
            row = entry.to_json()
            if writer is not None:
                detail = json.dumps(row["detail"], ensure_ascii=False) if row["detail"] else ""
                writer.writerow([row[f] if f != "detail" else detail for f in FIELDS])
            else:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
            last = (entry.id, entry.hash)
    return count, last
