"""``gateway restore``: put a backup back, verified first, with every later erasure re-applied.

1. Nothing is touched until the backup has passed every check: the gateway is not running
   (its control socket does not answer), the manifest's checksum, format and key fingerprint,
   migrations this version knows, and every file's size and SHA-256 while it is copied into a
   staging folder next to the data directory; then the staged database must open with the key
   and pass ``PRAGMA cipher_integrity_check`` and ``integrity_check``.
2. Crypto-shredding is re-applied to the staged copy: every contact key destroyed in the
   current database or named in the tombstone file (gateway.privacy.shredding) is destroyed
   in it too, and those contacts' sealed files are left out, so an erasure made after the
   backup stays an erasure.
3. Only then (and after "yes", unless ``--yes``) the data directory is renamed to
   ``<data_dir>.before-restore-<time>`` and the staged one takes its place; the key file, the
   tombstones and other files of the old directory are carried over, the backups folder moved.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from gateway import control
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, MasterKeyError
from gateway.files import fsync_dir
from gateway.keys import DATABASE_FILE, MasterKey, load_master_key, parse_key
from gateway.privacy import audit, backup, shredding
from gateway.privacy.backup import ATTACHMENTS, BackupError
from gateway.store.db import DatabaseError, connect
from gateway.store.migrations import migrations

log = logging.getLogger("gateway.restore")

LIVE = {DATABASE_FILE, f"{DATABASE_FILE}-wal", f"{DATABASE_FILE}-shm", ATTACHMENTS}
NOT_CARRIED = LIVE | {control.SOCKET_NAME, shredding.TOMBSTONE_FILE}


@dataclasses.dataclass
class Staged:
    """A verified backup, staged next to the data directory and not yet in place."""

    backup: Path
    manifest: dict[str, Any]
    staging: Path
    data_dir: Path
    shredded: list[int]
    warnings: list[str]

    def describe(self) -> str:
        m = self.manifest
        counts = ", ".join(f"{v} {k}" for k, v in m.get("counts", {}).items())
        lines = [
            f"backup {self.backup.name}: made {m['created_at']} by gateway "
            f"{m['gateway_version']}; {counts}",
            f"verified: manifest checksum, {len(m['files'])} files (sizes and SHA-256), "
            "cipher_integrity_check, integrity_check",
        ]
        if self.shredded:
            lines.append(
                f"{len(self.shredded)} contacts erased after this backup stay erased: their "
                f"keys are destroyed in the restored copy (contacts {_ids(self.shredded)})"
            )
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _ids(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:10])
    return shown + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")


def refuse_if_running(data_dir: Path) -> None:
    socket = data_dir / control.SOCKET_NAME
    try:
        control.request(socket, {"op": "status"}, timeout=5.0)
    except control.ControlError as exc:
        if "no gateway is running" in str(exc):
            return
        raise BackupError(
            f"something answers on {socket} ({exc}): stop the gateway before restoring "
            "(systemctl stop sovereign-gateway); nothing was changed"
        ) from None
    except OSError as exc:
        raise BackupError(
            f"cannot tell whether the gateway is running ({socket}: {exc.strerror}); stop it "
            "and run the restore as its user or root; nothing was changed"
        ) from None
    raise BackupError(
        f"the gateway is running (it answered on {socket}): stop it first "
        "(systemctl stop sovereign-gateway), then restore; nothing was changed"
    )


def stage(
    config: GatewayConfig,
    backup_path: Path,
    *,
    backup_key: bytes | None = None,
    actor: str = "cli",
    environ: dict[str, str] | None = None,
) -> Staged:
    """Steps 1 and 2: verify into a staging folder. Raises BackupError with nothing changed."""
    data_dir = config.data_dir
    refuse_if_running(data_dir)
    manifest = backup.read_manifest(backup_path)
    try:
        master = load_master_key(
            data_dir, reference=config.gateway.master_key, environ=environ, create=False
        )
    except MasterKeyError as exc:
        raise BackupError(
            f"{exc}; on a new machine, put the master key back first (the systemd credential, "
            f"$GATEWAY_MASTER_KEY or {data_dir}/master.key); nothing was changed"
        ) from None
    current_key = master.derive("sqlcipher")
    source_key = MasterKey(backup_key, "--backup-key").derive("sqlcipher") if backup_key else None
    key = source_key or current_key
    if manifest["key_fingerprint"] != backup.db_key_fingerprint(key):
        raise BackupError(
            f"{backup_path.name} was made with another master key (fingerprint "
            f"{manifest['key_fingerprint']}; the key given has {backup.db_key_fingerprint(key)}): "
            "pass the key that made it with --backup-key FILE (e.g. from before a key "
            "rotation); nothing was changed"
        )
    known = {m.name for m in migrations._migrations}
    unknown = [name for name in manifest["migrations"] if name not in known]
    if unknown:
        raise BackupError(
            f"{backup_path.name} was made by a newer gateway ({manifest['gateway_version']}; "
            f"migrations unknown here: {', '.join(unknown)}): upgrade this gateway first"
        )
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    staging = data_dir.parent / f".{data_dir.name}.restoring-{stamp}-{os.getpid()}"
    try:
        staging.mkdir(mode=0o700)
    except OSError as exc:
        raise BackupError(
            f"cannot create {staging}: {exc.strerror}; run the restore as root (the restored "
            "files get the data directory's owner); nothing was changed"
        ) from None
    try:
        _copy_verified(backup_path, manifest, staging)
        staged = Staged(backup_path, manifest, staging, data_dir, [], [])
        _prepare_database(staged, key, current_key, actor)
        _carry_over(staged)
        backup.sync_tree(staging)  # durable before it can take the data directory's place
        return staged
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _copy_verified(source: Path, manifest: dict[str, Any], staging: Path) -> None:
    for entry in manifest["files"]:
        rel = entry["path"]
        src = source / rel
        if not src.is_file():
            raise BackupError(f"{source.name}: {rel} is missing: the backup is incomplete")
        try:
            got = backup.copy_file(src, staging / rel, staging)
        except OSError as exc:
            raise BackupError(
                f"{source.name}: cannot copy {rel} ({exc.strerror}); nothing was changed"
            ) from None
        if got["size"] != entry["size"] or got["sha256"] != entry["sha256"]:
            raise BackupError(
                f"{source.name}: {rel} does not match the manifest (size {got['size']} of "
                f"{entry['size']}, SHA-256 differs: {got['sha256'] != entry['sha256']}): the "
                "backup is damaged or truncated; nothing was changed"
            )


def _prepare_database(staged: Staged, key: bytes, current_key: bytes, actor: str) -> None:
    path = staged.staging / DATABASE_FILE
    try:
        db = connect(path, key)
    except MasterKeyError:
        raise BackupError(
            f"{staged.backup.name}: the database does not open with the key (damaged, or made "
            "with another key than its manifest says); nothing was changed"
        ) from None
    conn = db.conn
    try:
        problems = [r[0] for r in conn.execute("PRAGMA cipher_integrity_check")]
        if problems:
            raise BackupError(
                f"{staged.backup.name}: cipher_integrity_check failed ({'; '.join(problems[:3])}): "
                "the database file is damaged; nothing was changed"
            )
        try:
            check = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        except DatabaseError as exc:
            check = [str(exc)]
        if check != ["ok"]:
            raise BackupError(
                f"{staged.backup.name}: integrity_check failed ({'; '.join(check[:3])}); "
                "nothing was changed"
            )
        if key != current_key:  # a backup from before a key rotation: under today's key now
            conn.execute(f"PRAGMA rekey = \"x'{current_key.hex()}'\"")
        destroyed, tombstones = _erasures(staged, current_key)
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            staged.shredded = shredding.reapply_txn(
                conn, destroyed=destroyed, tombstones=tombstones
            )
            # Paths at the staged files first: the erasure deletes files only under its root.
            _point_attachments(conn, staged.staging)
            _erase_rows(db, staged, actor)
            dead = shredding.sealed_files_of(conn, _all_destroyed(conn))
            _point_attachments(conn, staged.data_dir)
            audit.append_txn(
                db,
                actor=actor,
                action="backup.restore",
                target=f"backup:{staged.backup.name}",
                detail={
                    "backup_created_at": staged.manifest["created_at"],
                    "shredded_again": len(staged.shredded),
                    "rekeyed": key != current_key,
                },
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for uuid in dead:
        (staged.staging / ATTACHMENTS / uuid[:2] / f"{uuid}.sealed").unlink(missing_ok=True)


def _erasures(
    staged: Staged, current_key: bytes
) -> tuple[dict[int, str], dict[int, set[str | None]]]:
    destroyed: dict[int, str] = {}
    current = staged.data_dir / DATABASE_FILE
    if current.exists():
        try:
            db = connect(current, current_key, readonly=True)
            try:
                destroyed = shredding.destroyed_in(db.conn)
            finally:
                db.conn.close()
        except (GatewayError, DatabaseError) as exc:
            staged.warnings.append(
                f"the current database could not be read ({exc}); erasures are re-applied "
                f"from {shredding.TOMBSTONE_FILE} alone"
            )
    tombstones: dict[int, set[str | None]] = {}
    for path in (
        staged.data_dir / shredding.TOMBSTONE_FILE,
        staged.staging / shredding.TOMBSTONE_FILE,
    ):
        try:
            for cid, fps in shredding.read_tombstones(path).items():
                tombstones.setdefault(cid, set()).update(fps)
        except ValueError as exc:
            raise BackupError(f"{exc}; nothing was changed") from None
    return destroyed, tombstones


def _all_destroyed(conn: Any) -> list[int]:
    return list(shredding.destroyed_in(conn))


def _erase_rows(db: Any, staged: Staged, actor: str) -> None:
    """Erase again, in the restored copy, what else it holds of the contacts shredded now
    (identities, names, conversations: gateway.privacy.erasure), with its receipt audited."""
    from gateway.privacy.erasure import erase_contact_txn
    from gateway.privacy.requests import RequestError
    from gateway.store.bodies import sealer_for

    sealer = sealer_for(db.conn, staged.staging / ATTACHMENTS)
    for contact_id in staged.shredded:
        db.conn.execute("SAVEPOINT erase_again")
        try:
            erase_contact_txn(
                db,
                sealer,
                contact_id,
                actor=actor,
                basis=f"restore of {staged.backup.name}: erased after that backup was made",
            )
        except RequestError as exc:  # e.g. a legal hold in the restored copy
            db.conn.execute("ROLLBACK TO erase_again")
            staged.warnings.append(
                f"contact {contact_id}: key destroyed, but the rest was not erased again "
                f"({exc}); run `gateway erase` for them"
            )
        db.conn.execute("RELEASE erase_again")


def _point_attachments(conn: Any, data_dir: Path) -> None:
    root = str(data_dir / ATTACHMENTS)
    conn.execute(
        "UPDATE attachments SET path = ? || '/' || substr(uuid, 1, 2) || '/' || uuid || '.sealed' "
        "WHERE state = 'sealed' AND path IS NOT NULL",
        (root,),
    )


def _carry_over(staged: Staged) -> None:
    """The key file, tombstones (current ones plus the backup's) and other files of the
    current data directory go with the restored database."""
    old, new = staged.data_dir, staged.staging
    lines: list[bytes] = []
    for path in (old / shredding.TOMBSTONE_FILE, new / shredding.TOMBSTONE_FILE):
        if path.exists():
            lines += [ln for ln in path.read_bytes().split(b"\n") if ln.strip() and ln not in lines]
    (new / shredding.TOMBSTONE_FILE).unlink(missing_ok=True)
    if lines:
        backup.write_file(new / shredding.TOMBSTONE_FILE, b"\n".join(lines) + b"\n")
    if not old.is_dir():
        return
    skip = NOT_CARRIED | {_inside(old, staged)}
    for item in old.iterdir():
        if item.name in skip:
            continue
        target = new / item.name
        if item.is_dir() and not item.is_symlink():
            shutil.copytree(item, target, symlinks=True)
        else:
            shutil.copy2(item, target, follow_symlinks=False)


def _inside(data_dir: Path, staged: Staged) -> str:
    """The name of the backups folder when it lives in the data directory (moved, not copied)."""
    folder = staged.backup.resolve().parent
    return folder.name if folder.parent == data_dir.resolve() else "\0"


def commit(staged: Staged) -> Path | None:
    """Step 3: swap the staged directory in. Returns where the old one went (None: no old one)."""
    data_dir, staging = staged.data_dir, staged.staging
    refuse_if_running(data_dir)
    before = None
    moved_backups = _inside(data_dir, staged)
    if data_dir.exists():
        info = data_dir.stat()
        if os.geteuid() == 0:
            for root, dirs, files in os.walk(staging):
                for name in [*dirs, *files]:
                    os.lchown(os.path.join(root, name), info.st_uid, info.st_gid)
            os.chown(staging, info.st_uid, info.st_gid)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        before = data_dir.with_name(f"{data_dir.name}.before-restore-{stamp}")
        os.replace(data_dir, before)
    try:
        os.replace(staging, data_dir)
    except OSError:
        if before is not None:
            os.replace(before, data_dir)  # as it was
        raise
    fsync_dir(data_dir.parent)
    if before is not None and (before / moved_backups).is_dir():
        os.replace(before / moved_backups, data_dir / moved_backups)
    log.info("restored %s into %s (previous: %s)", staged.backup, data_dir, before)
    return before


def abandon(staged: Staged) -> None:
    shutil.rmtree(staged.staging, ignore_errors=True)


def read_backup_key(path: str) -> bytes:
    try:
        return parse_key(Path(path).read_text(), path)
    except OSError as exc:
        raise BackupError(f"--backup-key {path}: {exc.strerror}") from None
