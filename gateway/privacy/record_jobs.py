"""The daemon's jobs for backups and the incident register (registered by gateway.features).

- ``backup``: every ``[backup] interval_hours`` (0: none), an online backup
  (:func:`backup_online`), audited, then all but the newest ``keep`` deleted.
  The interval is read at start-up; the folder and ``keep`` at each run (a reload changes them).
- ``incident reminders``: every 15 minutes, the notification clocks of open incidents
  (gateway.privacy.incidents.remind_txn): a warning in the log and an audit entry per stage.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import trio

from gateway.errors import GatewayError
from gateway.keys import DATABASE_FILE, MasterKey, load_master_key
from gateway.privacy import audit, backup, incidents
from gateway.services import Services

log = logging.getLogger("gateway.privacy")


async def backup_online(services: Services) -> backup.BackupInfo:
    """A backup by the running daemon: the snapshot on one of the store's reader connections,
    file work in a thread; message traffic goes on (the writer is never held)."""
    config = services.config
    out_dir = backup.backup_dir(config)
    started = time.monotonic()
    tmp = await trio.to_thread.run_sync(backup.start, out_dir)
    try:
        snapshot = await services.store.read(
            "backup snapshot", backup.snapshot_txn, tmp / DATABASE_FILE
        )
        fingerprint = await trio.to_thread.run_sync(_daemon_fingerprint, services, snapshot.path)
        return await trio.to_thread.run_sync(
            lambda: backup.finish(tmp, snapshot, config.data_dir, fingerprint, started=started)
        )
    except BaseException:
        backup.abandon(tmp)
        raise


def _daemon_fingerprint(services: Services, snapshot: Path) -> str:
    # The daemon keeps the master key it started with; after `gateway keys rotate` the
    # database (and so the snapshot) is under the new one, which is read again here.
    config = services.config
    candidates: list[Callable[[], MasterKey]] = [
        lambda: services.master,
        lambda: load_master_key(config.data_dir, reference=config.gateway.master_key, create=False),
    ]
    for candidate in candidates:
        try:
            db_key = candidate().derive("sqlcipher")
        except GatewayError:
            continue
        if backup.opens(snapshot, db_key):
            return backup.db_key_fingerprint(db_key)
    raise backup.BackupError(
        "the snapshot opens with neither the master key the daemon started with nor the one "
        "it can find now; restart the gateway after a key rotation"
    )


async def run_backup(services: Services) -> backup.BackupInfo:
    """The scheduled job: a backup, audited (also when it fails), then old ones pruned."""
    try:
        info = await backup_online(services)
    except Exception as exc:
        await services.store.write(
            "audit backup",
            audit.append_txn,
            actor="system",
            action="backup.create",
            outcome="failed",
            detail={"error": f"{type(exc).__name__}: {exc}"},
        )
        raise
    await services.store.write(
        "audit backup",
        audit.append_txn,
        actor="system",
        action="backup.create",
        target=f"backup:{info.path.name}",
        detail={"files": len(info.manifest["files"]), "bytes": info.size},
    )
    log.info("%s", info.summary())
    keep = backup.backup_config(services.config).keep
    removed = await trio.to_thread.run_sync(backup.prune, info.path.parent, keep)
    if removed:
        log.info("backups: removed %d older than the newest %d", len(removed), keep)
    return info


async def run_reminders(services: Services) -> list[incidents.Reminder]:
    now = dt.datetime.now(dt.UTC)
    reminders: list[incidents.Reminder] = await services.store.write(
        "incident reminders", incidents.remind_txn, now
    )
    for reminder in reminders:
        incidents.log.warning("%s", reminder.message())
    return reminders


def install(services: Services) -> None:
    hours = backup.backup_config(services.config).interval_hours
    if hours > 0:
        services.scheduler.every("backup", hours * 3600, functools.partial(run_backup, services))
    services.scheduler.every(
        "incident reminders",
        incidents.REMINDER_INTERVAL,
        functools.partial(run_reminders, services),
        first_after=60.0,
    )
