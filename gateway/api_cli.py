"""``gateway api``: the developer API's projects and keys, from a shell.

::

    gateway api projects add acme --title "Acme Shop"    # end users send /start acme
    gateway api projects list
    gateway api keys create acme --scopes notify,otp,forms,subscribers [--rate 10/s] [--label ci]
    gateway api keys list [acme]
    gateway api keys revoke sgw_k3m9x2pq

A new key is printed once; only its keyed hash is stored. Every change is in the audit log.
"""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from gateway.cli_db import open_database
from gateway.config import GatewayConfig
from gateway.devapi import keys
from gateway.errors import GatewayError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("api", help="developer API: projects and API keys")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    what = p.add_subparsers(dest="api_what", required=True, metavar="projects|keys")
    projects = what.add_parser("projects", help="add or list projects")
    projects.add_argument("action", choices=["add", "list"])
    projects.add_argument("name", nargs="?", help="add: the project's name (a-z 0-9 _ -)")
    projects.add_argument("--title", help="add: the name end users see (default: the name)")
    # Also after the subcommand; SUPPRESS keeps an outer --config when this one is not given.
    projects.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS)
    key = what.add_parser("keys", help="create, list or revoke API keys")
    key.add_argument("action", choices=["create", "list", "revoke"])
    key.add_argument(
        "target", nargs="?", help="create/list: the project; revoke: the key or its prefix"
    )
    key.add_argument(
        "--scopes",
        default="",
        help=f"create: comma-separated, from {','.join(keys.SCOPES)}",
    )
    key.add_argument("--rate", help='create: requests allowed, e.g. "10/s" (default [api])')
    key.add_argument("--label", help="create: a note for you, e.g. where the key is used")
    key.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    with open_database(config) as db:
        if args.api_what == "projects":
            return _projects(db, args)
        return _keys(db, args)


def _projects(db: Any, args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = keys.list_projects_txn(db)
        if not rows:
            print("no projects yet: gateway api projects add NAME")
            return 0
        print(f"{'name':<20} {'title':<28} {'keys':>4} {'subscribers':>11}  created")
        for p in rows:
            print(
                f"{p.name:<20} {p.title[:28]:<28} {p.keys:>4} {p.subscribers:>11}  {p.created_at}"
            )
        return 0
    if not args.name:
        raise GatewayError("`gateway api projects add` needs a NAME (a-z 0-9 _ -)")
    with db.conn:
        project = keys.add_project_txn(db, args.name, args.title, _actor())
    print(f"project {project.name} ({project.title}) created")
    print(f"end users subscribe by sending: /start {project.name}")
    print(f"  (a Telegram link does it in one tap: https://t.me/<your bot>?start={project.name})")
    print(f"next: gateway api keys create {project.name} --scopes notify,otp")
    return 0


def _keys(db: Any, args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = keys.list_keys_txn(db, args.target)
        if not rows:
            print("no keys" + (f" for {args.target}" if args.target else ""))
            return 0
        print(f"{'prefix':<14} {'project':<16} {'scopes':<36} {'rate':<8} {'state':<8} last used")
        for k in rows:
            state = "revoked" if k.revoked_at else "active"
            print(
                f"{k.prefix:<14} {k.project:<16} {','.join(k.scopes):<36} {k.rate or '-':<8} "
                f"{state:<8} {k.last_used_at or 'never'}"
            )
        return 0
    if not args.target:
        raise GatewayError(f"`gateway api keys {args.action}` needs a project (or key prefix)")
    if args.action == "revoke":
        with db.conn:
            revoked = keys.revoke_key_txn(db, args.target, _actor())
        print(f"key {revoked.prefix} of {revoked.project} revoked: it is refused from now on")
        return 0
    scopes = [s for s in args.scopes.split(",") if s.strip()]
    with db.conn:
        record, secret = keys.create_key_txn(
            db, args.target, scopes, rate=args.rate, label=args.label, actor=_actor()
        )
    print(f"API key for {record.project} (scopes {','.join(record.scopes)}); shown only now:")
    print(f"  {secret}")
    print("send it as the header  Authorization: Bearer <key>")
    print(f"revoke it with: gateway api keys revoke {record.prefix}")
    return 0
