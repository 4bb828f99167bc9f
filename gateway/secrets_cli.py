"""``gateway secrets set|list|remove``: the vault in the encrypted database (gateway.vault).

A config then names a secret as ``store:NAME``. The value is read from standard input (a pipe)
or typed twice at a prompt, never taken from the command line (it would sit in the shell
history and in ``ps``). A running gateway uses a new value after ``systemctl reload
sovereign-gateway`` (SIGHUP).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from gateway import vault
from gateway.audit_cli import cli_actor
from gateway.cli_db import open_database
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.privacy import audit


def add_parser(sub: Any) -> None:
    p = sub.add_parser("secrets", help="secrets in the encrypted vault (store:NAME in the config)")
    p.add_argument("action", choices=["set", "list", "remove"])
    p.add_argument("name", nargs="?", help="the secret's name, as in store:NAME")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    actor = cli_actor()
    if args.action == "list":
        with open_database(config) as db:
            infos = vault.list_secrets(db.conn)
            used = _references(db)
        if not infos:
            print("the vault is empty")
        for info in infos:
            where = ", ".join(used.get(info.name, [])) or "not referenced by the admin UI"
            print(f"{info.name:<40} updated {info.updated_at} by {info.updated_by} ({where})")
        return 0
    if not args.name:
        raise GatewayError(f"`gateway secrets {args.action}` needs the secret's NAME")
    name = vault.check_name(args.name)
    if args.action == "set":
        value = _read_value(name)
        with open_database(config) as db, db.conn:
            vault.put_secret_txn(db, name, value, actor=actor)
            audit.append_txn(db, actor=actor, action="secret.set", target=f"secret:{name}")
        print(
            f'stored {name}: use it as "store:{name}"; a running gateway needs a reload '
            "(systemctl reload sovereign-gateway)"
        )
        return 0
    with open_database(config) as db:
        users = _references(db).get(name, [])
        if users:
            raise GatewayError(
                f"{name} is used by {', '.join(users)}; change or remove that in the admin UI first"
            )
        with db.conn:
            if not vault.delete_secrets_txn(db, [name]):
                raise GatewayError(f"the vault holds no secret {name!r} (`gateway secrets list`)")
            audit.append_txn(db, actor=actor, action="secret.remove", target=f"secret:{name}")
    print(f"removed {name}")
    return 0


def _references(db: Any) -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for row in vault.managed_rows(db.conn):
        for key, value in row.table.items():
            if isinstance(value, str) and value.startswith("store:"):
                used.setdefault(value.removeprefix("store:"), []).append(
                    f"[{row.kind}.{row.name}] {key}"
                )
    return used


def _read_value(name: str) -> str:
    if not sys.stdin.isatty():
        value = sys.stdin.read().rstrip("\r\n")
    else:
        value = getpass.getpass(f"value for {name}: ")
        if getpass.getpass("again: ") != value:
            raise GatewayError("the two values differ; nothing was stored")
    if not value:
        raise GatewayError("no value given (pipe it in, or type it at the prompt)")
    return value
