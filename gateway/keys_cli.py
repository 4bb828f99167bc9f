"""``gateway keys status``, ``init`` and ``rotate``: where the master key lives, creating it in
the best place this machine offers (a systemd encrypted credential, else a 0600 key file), and
replacing it online (gateway.keys_rotate)."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, MasterKeyError
from gateway.keys import (
    CREDENTIAL_NAME,
    DATABASE_FILE,
    KEY_FILE,
    MasterKey,
    generate_key_file,
    load_master_key,
    parse_key,
)
from gateway.store.db import connect

CREDSTORE = Path("/etc/credstore.encrypted")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("keys", help="master key: status, init, rotate")
    p.add_argument("action", choices=["status", "init", "rotate"])
    p.add_argument(
        "--finish",
        action="store_true",
        help="rotate: complete a rotation that was interrupted (uses whichever key opens the "
        "database)",
    )
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    p.add_argument(
        "--to",
        choices=["auto", "credential", "file"],
        default="auto",
        help="init: where to put the new key (auto: a systemd credential when systemd-creds "
        "is available, else a 0600 file in data_dir)",
    )
    p.add_argument(
        "--credstore", type=Path, default=CREDSTORE, help="init: directory of encrypted credentials"
    )


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    if args.action == "status":
        return status(config)
    if args.action == "rotate":
        from gateway import keys_rotate

        if args.finish:
            return keys_rotate.finish(config, args.credstore)
        return keys_rotate.rotate(config, args.credstore)
    return init(config, args.to, args.credstore)


def status(config: GatewayConfig) -> int:
    try:
        master = load_master_key(config.data_dir, reference=config.gateway.master_key, create=False)
    except MasterKeyError as exc:
        print(f"no usable master key: {exc}")
        return 2
    print(f"master key source: {master.source}")
    database = config.data_dir / DATABASE_FILE
    if database.exists():
        connect(database, master.derive("sqlcipher"), readonly=True).conn.close()
        print(f"it opens {database}")
    else:
        print(f"no database yet at {database}")
    return 0


def init(config: GatewayConfig, target: str, credstore: Path) -> int:
    create_master_key(config, target, credstore)
    return 0


def create_master_key(config: GatewayConfig, target: str, credstore: Path) -> MasterKey:
    """Make the master key in the best place (see ``gateway keys init``) and hand it back, so a
    caller such as ``gateway init`` can create the database with it at once."""
    try:
        found = load_master_key(config.data_dir, reference=config.gateway.master_key, create=False)
    except MasterKeyError:
        found = None
    if found is not None:
        raise GatewayError(
            f"a master key already exists ({found.source}); a second one would not open the "
            "database. Keep it, or move it (see the README) instead of making a new one"
        )
    creds = shutil.which("systemd-creds")
    if target == "auto":
        target = "credential" if creds and os.geteuid() == 0 else "file"
    if target == "file":
        path = config.data_dir / KEY_FILE
        key = generate_key_file(path)
        print(
            f"WARNING: the master key is in a file, {path} (mode 0600), next to the data it "
            "protects. Prefer a systemd credential: gateway keys init --to credential",
            file=sys.stderr,
        )
        return MasterKey(key, f"key file {path}", created=True)
    if not creds:
        raise GatewayError("systemd-creds is not installed; use --to file, or install systemd")
    credstore.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = credstore / CREDENTIAL_NAME
    if out.exists():
        raise GatewayError(f"{out} already exists; remove it first if it is really unused")
    text = secrets.token_hex(32)
    # The key goes through stdin: never on a command line (ps) or a temporary file.
    result = subprocess.run(
        [creds, "encrypt", f"--name={CREDENTIAL_NAME}", "-", str(out)],
        input=text.encode(),
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise GatewayError(f"systemd-creds encrypt failed: {result.stderr.decode().strip()}")
    out.chmod(0o600)
    print(f"master key created as an encrypted systemd credential: {out}")
    print(f"the unit needs: LoadCredentialEncrypted={CREDENTIAL_NAME}")
    print("back it up: without it the database cannot be opened")
    return MasterKey(parse_key(text, str(out)), f"systemd credential {out}", created=True)
