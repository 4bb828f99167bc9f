"""``gateway backup`` and ``gateway restore``: online encrypted snapshots, verified restores.

::

    gateway backup [--output DIR]            # while the gateway runs, or not
    gateway backup --list [--output DIR]
    gateway restore BACKUP [--yes] [--check] [--backup-key FILE]

A backup is encrypted with the database key: keep the master key (backed up separately) to
restore it. ``restore`` refuses while the gateway runs, verifies everything before touching the
data directory, re-applies later erasures, and keeps the old directory beside the new one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gateway.audit_cli import cli_actor, record
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.keys import DATABASE_FILE, load_master_key
from gateway.privacy import backup, restore
from gateway.store.db import connect


def add_parser(sub: Any) -> None:
    p = sub.add_parser("backup", help="an online, encrypted, consistent snapshot with a manifest")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    p.add_argument(
        "--output", "-o", metavar="DIR", help="where to write it (default: [backup] dir)"
    )
    p.add_argument("--list", action="store_true", help="list the backups in the folder instead")
    p = sub.add_parser("restore", help="verify a backup and put it in place of the data directory")
    p.add_argument("backup", metavar="BACKUP", help="a gateway-backup-* folder")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--check", action="store_true", help="verify the backup completely, change nothing"
    )
    p.add_argument(
        "--backup-key",
        metavar="FILE",
        help="the master key the backup was made with, if not today's (it is re-keyed)",
    )


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    if args.command == "restore":
        return run_restore(config, args)
    out_dir = Path(args.output).expanduser() if args.output else backup.backup_dir(config)
    if args.list:
        return list_backups(out_dir)
    info = make(config, out_dir)
    print(info.summary())
    return 0


def make(config: GatewayConfig, out_dir: Path) -> backup.BackupInfo:
    """A backup from this process (next to a running daemon: WAL lets both read)."""
    master = load_master_key(config.data_dir, reference=config.gateway.master_key, create=False)
    path = config.data_dir / DATABASE_FILE
    if not path.exists():
        raise GatewayError(f"no database at {path}: nothing to back up")
    db_key = master.derive("sqlcipher")
    db = connect(path, db_key)
    try:
        try:
            info = backup.make_backup(db, config.data_dir, out_dir, db_key)
        except Exception as exc:
            record(db, action="backup.create", outcome="failed", detail={"error": str(exc)})
            raise
        record(
            db,
            action="backup.create",
            target=f"backup:{info.path.name}",
            detail={"files": len(info.manifest["files"]), "bytes": info.size},
        )
    finally:
        db.conn.close()
    _give_to_owner(config.data_dir, out_dir, info.path)
    return info


def _give_to_owner(data_dir: Path, out_dir: Path, made: Path) -> None:
    """Run as root, a backup in the data directory's folder goes to the data directory's
    owner, so the daemon's scheduled backups and pruning can still write there."""
    if os.geteuid() != 0 or not out_dir.resolve().is_relative_to(data_dir.resolve()):
        return
    owner = data_dir.stat()
    for path in [out_dir, made, *made.rglob("*")]:
        os.lchown(path, owner.st_uid, owner.st_gid)


def list_backups(out_dir: Path) -> int:
    found = list(backup.list_backups(out_dir))
    if not found:
        print(f"no backups in {out_dir}")
        return 0
    for path in found:
        try:
            m = backup.read_manifest(path)
        except backup.BackupError as exc:
            print(f"{path.name}  DAMAGED: {exc}")
            continue
        size = sum(int(f["size"]) for f in m["files"]) / 1e6
        print(
            f"{path.name}  {m['created_at']}  {size:.1f} MB  {len(m['files'])} files  "
            f"key {m['key_fingerprint']}  gateway {m['gateway_version']}"
        )
    return 0


def run_restore(config: GatewayConfig, args: argparse.Namespace) -> int:
    key = restore.read_backup_key(args.backup_key) if args.backup_key else None
    staged = restore.stage(
        config, Path(args.backup).expanduser(), backup_key=key, actor=cli_actor()
    )
    try:
        print(staged.describe())
        if args.check:
            restore.abandon(staged)
            print("check only: the backup is sound; nothing was changed")
            return 0
        if not args.yes:
            if not sys.stdin.isatty():
                raise GatewayError("no terminal to confirm on: add --yes to restore")
            answer = input(
                f"replace {config.data_dir} with this backup (the current one is kept beside "
                "it)? type yes: "
            )
            if answer.strip().lower() != "yes":
                print("nothing was changed")
                return 1
    except BaseException:
        restore.abandon(staged)
        raise
    try:
        before = restore.commit(staged)
    except BaseException:
        restore.abandon(staged)  # commit puts the old directory back if the swap failed
        raise
    print(f"restored into {config.data_dir}")
    if before is not None:
        print(f"the previous data directory is kept as {before} (delete it once satisfied)")
    print("start the gateway: it applies any migrations the backup predates")
    return 0
