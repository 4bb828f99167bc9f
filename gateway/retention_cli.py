"""``gateway retention`` and ``gateway holds``: sweeps, destruction acts and legal holds from a
shell, safe while the daemon runs (each batch is a short transaction of its own).

::

    gateway retention run --dry-run                 # what would go, per category
    gateway retention run [--category message_content]
    gateway retention acts                          # the latest acts
    gateway retention acts --show 12 --format html --output act-12.html
    gateway holds add --contact 42 --reason "claim 2024-17: keep everything"
    gateway holds add --conversation 7 --reason "..."
    gateway holds list [--all]
    gateway holds release 3 --reason "claim settled"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import trio

from gateway.audit_cli import cli_actor
from gateway.cli_db import open_database
from gateway.config import GatewayConfig
from gateway.privacy import acts, holds
from gateway.privacy.retention_categories import categories


def add_parser(sub: Any) -> None:
    p = sub.add_parser("retention", help="retention sweeps and their destruction acts")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    actions = p.add_subparsers(dest="retention_action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="delete/anonymise expired data now")
    run.add_argument("--dry-run", action="store_true", help="only count what would go")
    run.add_argument(
        "--category",
        action="append",
        metavar="NAME",
        help="only this category (repeatable): " + ", ".join(categories()),
    )
    _config_option(run)
    shown = actions.add_parser("acts", help="list destruction acts, or export one")
    shown.add_argument("--show", type=int, metavar="ID", help="export act ID")
    shown.add_argument("--format", choices=["json", "html"], default="json")
    shown.add_argument("--output", "-o", metavar="FILE", help="write to FILE (default: stdout)")
    shown.add_argument("--limit", type=int, default=20, help="how many acts to list")
    _config_option(shown)

    p = sub.add_parser("holds", help="legal holds: data no retention sweep may touch")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    actions = p.add_subparsers(dest="holds_action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="hold a contact's or a conversation's data")
    target = add.add_mutually_exclusive_group(required=True)
    target.add_argument("--contact", type=int, metavar="ID")
    target.add_argument("--conversation", type=int, metavar="ID")
    add.add_argument("--reason", required=True, help="why (a case, an order)")
    _config_option(add)
    listing = actions.add_parser("list", help="holds in force (--all: released ones too)")
    listing.add_argument("--all", action="store_true")
    _config_option(listing)
    release = actions.add_parser("release", help="release a hold")
    release.add_argument("id", type=int)
    release.add_argument("--reason", required=True, help="why it is released")
    _config_option(release)


def _config_option(parser: Any) -> None:
    # SUPPRESS: an action's own --config must not reset one given before the action.
    parser.add_argument(
        "--config", "-c", metavar="FILE", default=argparse.SUPPRESS, help="TOML config file"
    )


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    if args.command == "holds":
        return run_holds(config, args)
    if args.retention_action == "acts":
        return run_acts(config, args)
    return run_sweep(config, args)


def run_sweep(config: GatewayConfig, args: argparse.Namespace) -> int:
    # rich here, not at the top: `gateway run` imports this module, and the daemon has no
    # terminal to draw on (~2 MiB of memory it would keep).
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from gateway.cli_db import store_sealer
    from gateway.privacy.retention_sweep import ConnectionRunner, select_categories, sweep

    select_categories(args.category)  # an unknown name fails before the database is opened
    console = Console(stderr=True)
    with open_database(config) as db:
        sealer = store_sealer(db, config)
        with Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(name: str, done: int, total: int | None) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.update(tasks[name], completed=done, total=total)

            result = trio.run(
                lambda: sweep(
                    ConnectionRunner(db),
                    config,
                    sealer=sealer,
                    actor=cli_actor(),
                    dry_run=args.dry_run,
                    only=args.category,
                    progress=progress,
                )
            )
    table = Table(
        title=f"retention act #{result.act_id}"
        + (" (dry run: nothing changed)" if args.dry_run else "")
    )
    for column in ("category", "action", "days", "would go" if args.dry_run else "records"):
        table.add_column(column, justify="right" if column != "category" else "left")
    table.add_column("held", justify="right")
    table.add_column("status")
    for c in result.categories:
        status = c.status + (f": {c.reason}" if c.reason else "")
        status += "".join(f"; kept {n}: {why}" for why, n in c.kept.items())
        days = str(c.days) + "".join(f" ({ch}: {d})" for ch, d in c.channel_days.items())
        table.add_row(c.name, c.action, days, str(c.records), str(c.held), status)
    Console().print(table)
    for path in result.files:
        print(f"act written to {path}")
    return 1 if result.failed else 0


def run_acts(config: GatewayConfig, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    with open_database(config) as db:
        if args.show is None:
            table = Table(title="retention acts (newest first)")
            for column in ("id", "started", "state", "dry run", "records", "held", "policy", "by"):
                table.add_column(column)
            for a in acts.list_acts(db, args.limit):
                table.add_row(
                    str(a.id),
                    a.started_at,
                    a.state,
                    "yes" if a.dry_run else "",
                    str(a.records),
                    str(a.held),
                    a.policy_version,
                    a.actor,
                )
            Console().print(table)
            return 0
        document = acts.load_act(db, args.show)
    text = acts.render(document, args.format)
    if args.output:
        acts.write_private(Path(args.output), text)
        print(f"act #{args.show} written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def run_holds(config: GatewayConfig, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    with open_database(config) as db:
        conn = db.conn
        if args.holds_action == "list":
            table = Table(title="legal holds" + (" (all)" if args.all else " in force"))
            for column in ("id", "on", "reason", "by", "since", "released"):
                table.add_column(column)
            for h in holds.list_holds(conn, include_released=args.all):
                released = (
                    f"{h.released_at} by {h.released_by}: {h.release_reason}"
                    if h.released_at
                    else ""
                )
                table.add_row(str(h.id), h.target, h.reason, h.author, h.created_at, released)
            Console().print(table)
            return 0
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if args.holds_action == "add":
                hold = holds.add_hold_txn(
                    db,
                    contact_id=args.contact,
                    conversation_id=args.conversation,
                    reason=args.reason,
                    author=cli_actor(),
                )
                message = f"legal hold {hold.id} placed on {hold.target}"
            else:
                hold = holds.release_hold_txn(db, args.id, reason=args.reason, author=cli_actor())
                message = f"legal hold {hold.id} on {hold.target} released"
        print(message)
        return 0
