"""Data-subject requests from a shell (works beside a running daemon: each write is one
``BEGIN IMMEDIATE`` transaction, ordered with the daemon's writer by SQLite's lock)::

    gateway requests add --type access --contact 12      # or --requester "Ann, ann@example.com"
    gateway requests list [--all] [--due] [--contact 12] [--json]
    gateway requests show 7 [--json] [--receipt]
    gateway requests verify 7 --method "id document" [--note ...] [--failed]
    gateway requests extend 7 --gdpr-months 2 --reason "..." | --ru --notice "..."
    gateway requests close 7 --status refused|withdrawn|completed [--note ...]
    gateway export 12 --output ann.zip [--request 7]
    gateway erase 12 [--request 7] [--yes] [--receipt receipt.json] [--vacuum]
    gateway rectify 12 [--name ...] [--language ru] [--identity-name ID=NAME] [--request 7]
    gateway restrict 12 [--lift] [--request 7]
    gateway object 12 [--request 7]
    gateway consent show|withdraw|grant 12 [--purpose marketing] [--evidence ...]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlite_utils

from gateway.audit_cli import cli_actor
from gateway.cli_db import open_database, store_sealer
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.privacy import requests as reg
from gateway.privacy.consent_ledger import (
    PURPOSES,
    consent_status,
    grant_consent_txn,
    withdraw_consent_txn,
)
from gateway.privacy.dsr_schema import privacy_config
from gateway.privacy.erasure import ErasureReceipt, erase_contact_txn
from gateway.privacy.export import record_export_txn, write_export
from gateway.privacy.rights import check_request, object_txn, rectify_txn, restrict_txn

COMMANDS = ("requests", "export", "erase", "rectify", "restrict", "object", "consent")


def add_parser(sub: Any) -> None:
    def command(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
        return p

    p = command("requests", "data-subject requests: add, list, show, verify, extend, close")
    p.add_argument("action", choices=["add", "list", "show", "verify", "extend", "close"])
    p.add_argument("id", nargs="?", type=int, help="the request number")
    p.add_argument("--type", choices=reg.KINDS, help="add: which right")
    p.add_argument("--contact", type=int, help="add: the contact; list: only theirs")
    p.add_argument("--identity", type=int, help="add: the channel identity that asked")
    p.add_argument("--requester", help="add: who asked, as they gave it (name, e-mail)")
    p.add_argument("--channel", choices=reg.CHANNELS, default="cli", help="add: how it came")
    p.add_argument("--received", help="add: when (ISO date or time; default now)")
    p.add_argument("--details", help="add: what was asked, in words")
    p.add_argument("--all", action="store_true", help="list: closed ones too")
    p.add_argument("--due", action="store_true", help="list: due soon or overdue, nearest first")
    p.add_argument("--json", action="store_true", help="list/show: as JSON")
    p.add_argument("--receipt", action="store_true", help="show: the erasure receipt")
    p.add_argument("--method", help="verify: how the identity was checked")
    p.add_argument("--failed", action="store_true", help="verify: the check failed")
    p.add_argument("--note", help="verify/close: a note")
    p.add_argument("--gdpr-months", type=int, help="extend: GDPR deadline by 1 or 2 months")
    p.add_argument("--reason", help="extend: the reason (GDPR)")
    p.add_argument("--ru", action="store_true", help="extend: 152-FZ deadline by 5 working days")
    p.add_argument("--notice", help="extend: the notice sent to the subject (152-FZ)")
    p.add_argument("--status", choices=["completed", "refused", "withdrawn"], help="close: how")

    p = command("export", "export everything about a contact as one ZIP (access, portability)")
    p.add_argument("contact", type=int)
    p.add_argument("--output", "-o", required=True, metavar="FILE.zip")
    p.add_argument("--request", type=int, help="the access/portability request it answers")

    p = command("erase", "erase a contact: every table, files, key destroyed; prints a receipt")
    p.add_argument("contact", type=int)
    p.add_argument("--request", type=int, help="the erasure request it answers")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--receipt", metavar="FILE.json", help="also write the receipt (+ .txt)")
    p.add_argument("--basis", help="why, without a request (e.g. 'retention policy')")
    p.add_argument("--vacuum", action="store_true", help="then rewrite the database file (VACUUM)")

    p = command("rectify", "correct a contact's name, language or identity names (history kept)")
    p.add_argument("contact", type=int)
    p.add_argument("--name", help="display name ('' clears)")
    p.add_argument("--language", help="language code, e.g. ru ('' clears)")
    p.add_argument(
        "--identity-name", action="append", default=[], metavar="ID=NAME", help="repeatable"
    )
    p.add_argument("--request", type=int, help="the rectification request it answers")

    p = command("restrict", "restrict processing of a contact (no AI, no notifications)")
    p.add_argument("contact", type=int)
    p.add_argument("--lift", action="store_true", help="lift the restriction")
    p.add_argument("--reason", help="why")
    p.add_argument("--request", type=int, help="the restriction request it answers")

    p = command("object", "a contact objects: AI off and marketing withdrawn on every channel")
    p.add_argument("contact", type=int)
    p.add_argument("--request", type=int, help="the objection request it answers")
    p.add_argument("--evidence", help="what proves it")

    p = command("consent", "a contact's consent per purpose: show, withdraw, grant")
    p.add_argument("action", choices=["show", "withdraw", "grant"])
    p.add_argument("contact", type=int)
    p.add_argument("--purpose", choices=PURPOSES, help="withdraw/grant: which purpose")
    p.add_argument("--source", default="cli", help="keyword, widget, gpc, api, admin, cli[:detail]")
    p.add_argument("--evidence", help="what proves it (a signed form, a message number...)")
    p.add_argument("--json", action="store_true", help="show: as JSON")


@contextlib.contextmanager
def write(db: sqlite_utils.Database) -> Iterator[None]:
    """One immediate transaction: checks and changes see the same database."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    with open_database(config) as db:
        try:
            if args.command == "requests":
                return _requests(db, config, args)
            if args.command == "export":
                return _export(db, config, args)
            if args.command == "erase":
                return _erase(db, config, args)
            if args.command == "consent":
                return _consent(db, args)
            with write(db):
                return _right(db, args)
        except LookupError as exc:
            raise GatewayError(str(exc).strip("'\"")) from None


def _right(db: sqlite_utils.Database, args: argparse.Namespace) -> int:
    actor = cli_actor()
    if args.command == "rectify":
        names = {}
        for item in args.identity_name:
            ident, sep, name = item.partition("=")
            if not sep or not ident.isdigit():
                raise GatewayError(f"--identity-name takes ID=NAME, not {item!r}")
            names[int(ident)] = name
        changes = rectify_txn(
            db,
            args.contact,
            actor=actor,
            display_name=args.name,
            language=args.language,
            identity_names=names,
            request_id=args.request,
        )
        for c in changes:
            where = f" (identity {c['identity_id']})" if c["identity_id"] else ""
            print(f"{c['field']}{where}: {c['old']!r} -> {c['new']!r}")
        print(f"contact {args.contact}: {len(changes)} correction(s); the old values are kept")
    elif args.command == "restrict":
        changed = restrict_txn(
            db,
            args.contact,
            actor=actor,
            lift=args.lift,
            reason=args.reason,
            request_id=args.request,
        )
        state = "lifted" if args.lift else "restricted (no AI, no notifications)"
        print(f"contact {args.contact}: {state}" + ("" if changed else " (already so)"))
    else:
        outcome = object_txn(
            db, args.contact, actor=actor, evidence=args.evidence, request_id=args.request
        )
        print(
            f"contact {args.contact}: AI off and marketing withdrawn on "
            f"{outcome['identities']} identit(ies)"
        )
    return 0


def _received(text: str | None, tz: str) -> dt.datetime | None:
    if not text:
        return None
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            from zoneinfo import ZoneInfo

            return dt.datetime.combine(day, dt.time(12), ZoneInfo(tz))
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise GatewayError(f"--received {text!r}: give an ISO date or time (2026-12-28)") from None
    if value.tzinfo is None:
        raise GatewayError(f"--received {text!r}: add the time zone (2026-12-28T10:00+03:00)")
    return value


def _line(r: reg.Request, today: dt.date) -> str:
    left = r.days_left(today)
    when = f"{-left}d OVERDUE" if left < 0 else f"{left}d left"
    who = f"contact {r.contact_id}" if r.contact_id is not None else (r.requester or "?")
    mark = "*" if r.provisional else ""
    return (
        f"#{r.id:<5} {r.kind:<13} {r.status:<11} {r.verification:<10} {r.channel:<5} "
        f"{r.received_on}  gdpr {r.gdpr_due}  152fz {r.ru_due}{mark}  {when:<12} {who}"
    )


def _requests(db: sqlite_utils.Database, config: GatewayConfig, args: argparse.Namespace) -> int:
    settings = privacy_config(config)
    tz = settings.timezone
    today = reg.local_date(dt.datetime.now(dt.UTC), tz)
    conn = db.conn
    actor = cli_actor()
    if args.action == "list":
        if args.due:
            rows = reg.due_requests(conn, today, settings.remind_days)
        else:
            rows = reg.list_requests(conn, open_only=not args.all, contact_id=args.contact)
        if args.json:
            print(json.dumps([r.to_json() for r in rows], ensure_ascii=False, indent=2))
            return 0
        for r in rows:
            print(_line(r, today))
        if any(r.provisional for r in rows):
            print("* provisional: the Government's day transfers for that year are not encoded")
        if not rows:
            print("no requests" + (" due" if args.due else ""))
        return 0
    if args.action == "add":
        if not args.type:
            raise GatewayError("requests add needs --type (" + ", ".join(reg.KINDS) + ")")
        with write(db):
            request = reg.create_request_txn(
                db,
                kind=args.type,
                channel=args.channel,
                actor=actor,
                contact_id=args.contact,
                identity_id=args.identity,
                requester=args.requester,
                details={"note": args.details} if args.details else None,
                received_at=_received(args.received, tz),
                tz=tz,
            )
        print(f"request #{request.id} registered: {_line(request, today)}")
        return 0
    if args.id is None:
        raise GatewayError(f"`gateway requests {args.action}` needs the request number")
    if args.action == "show":
        request = reg.get_request(conn, args.id)
        if args.receipt:
            if request.kind != "erasure" or request.status != "completed" or not request.outcome:
                raise GatewayError(f"request #{args.id} has no erasure receipt")
            print(ErasureReceipt(**request.outcome).to_text(), end="")
            return 0
        events = reg.request_events(conn, args.id)
        if args.json:
            print(json.dumps({**request.to_json(), "events": events}, indent=2, default=str))
            return 0
        print(_line(request, today))
        for key in ("requester", "verification_method", "verification_note", "details"):
            if getattr(request, key):
                print(f"  {key}: {getattr(request, key)}")
        if request.gdpr_extension_reason:
            print(f"  GDPR extended by {request.gdpr_extension_months} month(s): "
                  f"{request.gdpr_extension_reason}")  # fmt: skip
        if request.ru_extension_notice:
            print(f"  152-FZ extended by 5 working days: {request.ru_extension_notice}")
        for e in events:
            change = f" {e['from_status']} -> {e['to_status']}" if e["event"] == "status" else ""
            note = f": {e['note']}" if e["note"] else ""
            print(f"  [{e['at'][:19]}] {e['event']}{change} by {e['actor']}{note}")
        return 0
    with write(db):
        if args.action == "verify":
            if not args.method:
                raise GatewayError('verify needs --method (e.g. "id document", "e-mail link")')
            request = reg.verify_request_txn(
                db,
                args.id,
                verified=not args.failed,
                method=args.method,
                note=args.note,
                actor=actor,
            )
        elif args.action == "extend":
            if args.gdpr_months is not None:
                request = reg.extend_gdpr_txn(
                    db, args.id, months=args.gdpr_months, reason=args.reason or "",
                    actor=actor, tz=tz,
                )  # fmt: skip
            elif args.ru:
                request = reg.extend_ru_txn(
                    db, args.id, notice=args.notice or "", actor=actor, tz=tz
                )
            else:
                raise GatewayError("extend needs --gdpr-months N --reason ... or --ru --notice ...")
        else:
            if not args.status:
                raise GatewayError("close needs --status completed|refused|withdrawn")
            request = reg.set_status_txn(db, args.id, args.status, actor=actor, note=args.note)
    print(f"request #{request.id}: {_line(request, today)}")
    return 0


def _export(db: sqlite_utils.Database, config: GatewayConfig, args: argparse.Namespace) -> int:
    summary = write_export(
        db.conn,
        store_sealer(db, config),
        args.contact,
        Path(args.output),
        config=config,
        request_id=args.request,
    )
    with write(db):
        record_export_txn(db, summary, actor=cli_actor(), request_id=args.request)
    counts = ", ".join(f"{n} {k}" for k, n in summary.counts.items() if n)
    print(f"exported contact {args.contact} to {summary.path} ({summary.bytes} bytes): {counts}")
    print(f"sha256 {summary.sha256}")
    return 0


def _erase(db: sqlite_utils.Database, config: GatewayConfig, args: argparse.Namespace) -> int:
    conn = db.conn
    reg.check_contact(conn, args.contact)
    if args.request is None and not args.basis:
        raise GatewayError("say why: --request ID (an erasure request) or --basis TEXT")
    if not args.yes:
        if not sys.stdin.isatty():
            raise GatewayError("erasure cannot be undone: add --yes (no terminal to ask on)")
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM conversations WHERE contact_id = :c), "
            "(SELECT count(*) FROM messages m JOIN conversations v ON v.id = m.conversation_id "
            " WHERE v.contact_id = :c), (SELECT count(*) FROM attachments WHERE contact_id = :c)",
            {"c": args.contact},
        ).fetchone()
        print(
            f"contact {args.contact}: {counts[0]} conversation(s), {counts[1]} message(s), "
            f"{counts[2]} file(s) will be erased for good."
        )
        if input(f"type {args.contact} to erase: ").strip() != str(args.contact):
            print("not erased")
            return 1
    sealer = store_sealer(db, config)
    basis = args.basis or f"erasure request #{args.request} (GDPR art. 17; 152-FZ art. 21)"
    with write(db):
        check_request(conn, args.request, args.contact, ("erasure",))
        receipt = erase_contact_txn(
            db, sealer, args.contact, actor=cli_actor(), basis=basis, request_id=args.request
        )
    forget_in_search_index(config, args.contact)
    if args.receipt:
        path = Path(args.receipt)
        path.write_text(json.dumps(receipt.to_json(), indent=2, ensure_ascii=False) + "\n")
        path.with_suffix(".txt").write_text(receipt.to_text())
    print(receipt.to_text(), end="")
    if args.vacuum:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        print("database rewritten (VACUUM); the write-ahead log truncated")
    return 0


def _consent(db: sqlite_utils.Database, args: argparse.Namespace) -> int:
    if args.action == "show":
        status = consent_status(db.conn, args.contact)
        reg.check_contact(db.conn, args.contact, allow_erased=True)
        if args.json:
            print(json.dumps({p: s.to_json() for p, s in status.items()}, indent=2))
            return 0
        for purpose, s in status.items():
            since = f" since {s.at[:19]} ({s.source})" if s.at else ""
            print(f"{purpose:<14} {s.state or 'not recorded'}{since}")
        return 0
    if not args.purpose:
        raise GatewayError(f"consent {args.action} needs --purpose ({', '.join(PURPOSES)})")
    fn = withdraw_consent_txn if args.action == "withdraw" else grant_consent_txn
    source = args.source if ":" in args.source or args.source != "cli" else cli_actor()
    with write(db):
        count = fn(db, args.contact, args.purpose, source, args.evidence, actor=cli_actor())
    done = "withdrawn" if args.action == "withdraw" else "granted"
    print(f"contact {args.contact}: {args.purpose} {done} on {count} identit(ies)")
    return 0


def forget_in_search_index(config: GatewayConfig, contact_id: int) -> None:
    """Drop an erased contact from the admin UI's search index (a separate file, never in
    backups). The running daemon's indexer skips them from then on too (the file records it)."""
    from gateway.keys import load_master_key
    from gateway.store.search import SearchIndex

    master = load_master_key(config.data_dir, reference=config.gateway.master_key, create=False)
    SearchIndex(config.data_dir, master.derive("search")).forget_contact_sync(contact_id)
