"""The database as command-line tools open it: next to a running daemon (WAL allows it), with
the same master key, refusing a database that still needs migrations (the daemon applies them)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlite_utils

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.keys import DATABASE_FILE, load_master_key
from gateway.privacy.sealing import Sealer
from gateway.store import ATTACHMENTS_DIR
from gateway.store.bodies import sealer_for
from gateway.store.db import connect
from gateway.store.migrations import migrations


@contextlib.contextmanager
def open_database(
    config: GatewayConfig, *, migrate: bool = False
) -> Iterator[sqlite_utils.Database]:
    master = load_master_key(config.data_dir, reference=config.gateway.master_key, create=False)
    path = config.data_dir / DATABASE_FILE
    if not path.exists():
        raise GatewayError(
            f"no database at {path}: run `gateway init` (or start the gateway) first"
        )
    db = connect(path, master.derive("sqlcipher"))
    try:
        if migrations.pending(db):
            if not migrate:
                raise GatewayError(
                    "the database needs migrations: start the gateway once (or `gateway init`)"
                )
            migrations.apply(db)
        yield db
    finally:
        db.conn.close()


def store_sealer(db: sqlite_utils.Database, config: GatewayConfig) -> Sealer:
    """The Sealer the daemon uses, for commands that read or write sealed message bodies and
    attachments."""
    return sealer_for(db.conn, config.data_dir / ATTACHMENTS_DIR)
