"""``gateway incidents``: the register of personal-data breaches and its notification clocks.

::

    gateway incidents add --title T --description D [--detected-at TIME] [--laws gdpr,152-fz]
                          [--data-categories a,b] [--subject-categories a,b] [--subjects N]
                          [--records N] [--consequences C] [--measures M] [--cross-border]
                          [--countries DE,US] [--occurred-at TIME]
    gateway incidents list [--open]
    gateway incidents show ID [--json]
    gateway incidents notify ID --authority gdpr|rkn-24h|rkn-72h|subjects [--at TIME] [--note N]
    gateway incidents close ID [--note N]

TIME is ISO 8601 (``2026-11-24T09:30+03:00``; without an offset, this machine's local time)
or ``now``. Every change is audited.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from gateway.audit_cli import cli_actor
from gateway.cli_db import open_database
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.privacy import incidents
from gateway.privacy.incidents import CLOCKS, IncidentError, NewIncident, parse_time
from gateway.privacy.processing import record_config


def add_parser(sub: Any) -> None:
    p = sub.add_parser("incidents", help="personal-data breaches and their notification clocks")
    p.add_argument("action", choices=["add", "list", "show", "notify", "close"])
    p.add_argument("id", nargs="?", type=int, help="show/notify/close: the incident number")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    p.add_argument("--title", help="add: a short name")
    p.add_argument("--description", help="add: what happened")
    p.add_argument("--detected-at", default="now", metavar="TIME", help="add: when we learnt")
    p.add_argument("--occurred-at", metavar="TIME", help="add: when it happened, if known")
    p.add_argument("--laws", help="add: gdpr,152-fz (default: [privacy_record] laws)")
    p.add_argument("--data-categories", default="", help="add: e.g. message_text,contact_details")
    p.add_argument("--subject-categories", default="", help="add: e.g. customers")
    p.add_argument("--subjects", type=int, help="add: approximate number of people concerned")
    p.add_argument("--records", type=int, help="add: approximate number of records concerned")
    p.add_argument("--consequences", help="add: likely consequences")
    p.add_argument("--measures", help="add: measures taken or proposed")
    p.add_argument("--cross-border", action="store_true", help="add: other countries concerned")
    p.add_argument("--countries", default="", help="add: with --cross-border, e.g. DE,FR")
    p.add_argument("--authority", choices=list(CLOCKS), help="notify: which clock")
    p.add_argument("--at", default="now", metavar="TIME", help="notify: when it was notified")
    p.add_argument("--note", help="notify/close: reference number, channel used...")
    p.add_argument("--open", action="store_true", help="list: open incidents only")
    p.add_argument("--json", action="store_true", help="list/show: JSON")


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _in_txn(db: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(db, *args, **kwargs)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC)
    if args.action in ("show", "notify", "close") and args.id is None:
        raise GatewayError(f"`gateway incidents {args.action}` needs the incident number")
    with open_database(config, migrate=True) as db:
        try:
            if args.action == "add":
                new = _new_incident(config, args, now)
                number = _in_txn(db, incidents.add_incident_txn, new, actor=cli_actor())
                print(f"incident {number} recorded")
                _print(incidents.get_incident(db.conn, number), now)
            elif args.action == "notify":
                if not args.authority:
                    raise GatewayError("notify needs --authority " + "|".join(CLOCKS))
                at = parse_time(args.at, what="--at", now=now)
                _in_txn(
                    db,
                    incidents.notify_txn,
                    args.id,
                    args.authority,
                    at,
                    args.note,
                    actor=cli_actor(),
                )
                _print(incidents.get_incident(db.conn, args.id), now)
            elif args.action == "close":
                _in_txn(db, incidents.close_txn, args.id, args.note, actor=cli_actor())
                print(f"incident {args.id} closed")
            elif args.action == "show":
                incident = incidents.get_incident(db.conn, args.id)
                if args.json:
                    print(json.dumps(incident.to_json(now), indent=2, ensure_ascii=False))
                else:
                    _print(incident, now)
            else:
                return _list(db.conn, args, now)
        except IncidentError as exc:
            raise GatewayError(f"{exc}; nothing was changed") from None
    return 0


def _new_incident(config: GatewayConfig, args: argparse.Namespace, now: dt.datetime) -> NewIncident:
    if not args.title or not args.description:
        raise GatewayError("`gateway incidents add` needs --title and --description")
    return NewIncident(
        title=args.title,
        description=args.description,
        detected_at=parse_time(args.detected_at, what="--detected-at", now=now),
        occurred_at=(
            parse_time(args.occurred_at, what="--occurred-at", now=now)
            if args.occurred_at
            else None
        ),
        laws=_split(args.laws) if args.laws else list(record_config(config).laws),
        data_categories=_split(args.data_categories),
        subject_categories=_split(args.subject_categories),
        subjects_approx=args.subjects,
        records_approx=args.records,
        consequences=args.consequences,
        measures=args.measures,
        cross_border=args.cross_border,
        countries=[c.upper() for c in _split(args.countries)],
    )


def _list(conn: Any, args: argparse.Namespace, now: dt.datetime) -> int:
    found = incidents.list_incidents(conn, open_only=args.open)
    if args.json:
        print(json.dumps([i.to_json(now) for i in found], indent=2, ensure_ascii=False))
        return 0
    if not found:
        print("no incidents recorded")
        return 0
    for incident in found:
        clocks = ", ".join(f"{c.clock.name}: {c.state}" for c in incident.clocks(now))
        print(
            f"{incident.id:>4}  {incident.status:<6}  detected {incidents.iso(incident.detected_at)}"
            f"  {incident.title}  [{clocks}]"
        )
    return 0


def _print(incident: incidents.Incident, now: dt.datetime) -> None:
    print(f"incident {incident.id}: {incident.title} ({incident.status})")
    print(f"  detected:     {incidents.iso(incident.detected_at)}")
    if incident.occurred_at:
        print(f"  occurred:     {incidents.iso(incident.occurred_at)}")
    print(f"  what:         {incident.description}")
    print(f"  data:         {', '.join(incident.data_categories) or '-'}")
    subjects = "?" if incident.subjects_approx is None else f"~{incident.subjects_approx}"
    records = "?" if incident.records_approx is None else f"~{incident.records_approx}"
    print(
        f"  subjects:     {subjects} ({', '.join(incident.subject_categories) or '-'}); "
        f"records {records}"
    )
    print(f"  consequences: {incident.consequences or '-'}")
    print(f"  measures:     {incident.measures or '-'}")
    border = f"yes ({', '.join(incident.countries) or '-'})" if incident.cross_border else "no"
    print(f"  cross-border: {border}; laws: {', '.join(incident.laws)}")
    print("  clocks:")
    for clock in incident.clocks(now):
        print(f"    {clock.clock.name:<9} to {clock.clock.recipient}: {clock.describe(now)}")
    for note in incident.notifications:
        print(
            f"    notified {note['clock']} at {note['notified_at']} by {note['recorded_by']}"
            + (f": {note['note']}" if note["note"] else "")
        )
