"""gateway backup / restore on real SQLCipher data directories: the manifest, the round trip,
and every bad backup refused with the data directory left exactly as it was."""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import backup_cli, cli
from gateway.keys import DATABASE_FILE
from gateway.privacy import audit, backup, restore
from gateway.privacy.backup import MANIFEST, BackupError
from gateway.store.db import connect
from tests.privacy.test_backup_support import (
    count,
    inbound,
    master,
    opened,
    read_contact,
    seed,
    write_config,
)


async def make_data(tmp_path: Path, extra: str = ""):
    config = write_config(tmp_path, extra)
    async with opened(config) as store:
        contacts = await seed(
            store,
            [
                inbound("ann", 1, "hello from ann", b"ann's invoice"),
                inbound("ann", 2, "second"),
                inbound("bob", 1, "bob here", b"bob's photo"),
            ],
        )
    return config, contacts


def snapshot_of_dir(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes: 'nothing changed' made checkable."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "control.sock"
    }


async def test_backup_holds_a_verified_manifest_and_0600_files(tmp_path):
    config, _ = await make_data(tmp_path)
    info = backup_cli.make(config, tmp_path / "out")
    assert info.path.parent == tmp_path / "out" and info.path.name.startswith("gateway-backup-")
    manifest = json.loads((info.path / MANIFEST).read_text())
    assert manifest == backup.read_manifest(info.path)
    assert manifest["key_fingerprint"] == backup.db_key_fingerprint(
        master(config).derive("sqlcipher")
    )
    assert master(config).key.hex() not in json.dumps(manifest)
    assert "m014_create_incidents" in manifest["migrations"]
    assert manifest["counts"]["contacts"] == 2 and manifest["counts"]["messages"] == 3
    names = sorted(f["path"] for f in manifest["files"])
    assert names[-1] == DATABASE_FILE and len(names) == 3  # two sealed files + the database
    for entry in manifest["files"]:
        path = info.path / entry["path"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.stat().st_size == entry["size"]
    assert stat.S_IMODE(info.path.stat().st_mode) == 0o700
    assert not list((tmp_path / "out").glob(".*partial"))  # the temporary name is gone
    # The copy is encrypted: no plaintext, and no key opens it but ours.
    raw = (info.path / DATABASE_FILE).read_bytes()
    assert b"hello from ann" not in raw and b"SQLite format 3" not in raw
    assert not backup.opens(info.path / DATABASE_FILE, secrets.token_bytes(32))
    # The backup is audited in the live database.
    db = connect(config.data_dir / DATABASE_FILE, master(config).derive("sqlcipher"))
    try:
        (entry,) = list(audit.entries(db.conn, action_prefix="backup."))
        assert entry.target == f"backup:{info.path.name}" and entry.actor.startswith("cli:")
        assert audit.verify(db.conn).ok
    finally:
        db.conn.close()


async def test_restore_round_trip_keeps_the_old_directory(tmp_path):
    config, contacts = await make_data(tmp_path)
    info = backup_cli.make(config, tmp_path / "out")
    async with opened(config) as store:  # life goes on after the backup
        await seed(store, [inbound("cat", 1, "after the backup")])
    assert count(config, "contacts") == 3

    code = cli.main(["restore", str(info.path), "--yes", "-c", str(tmp_path / "gateway.toml")])
    assert code == 0
    assert count(config, "contacts") == 2  # as of the backup
    texts, files = read_contact(config, contacts["ann"])
    assert texts == ["hello from ann", "second"] and files == [b"ann's invoice"]
    (before,) = tmp_path.glob("data.before-restore-*")
    assert (before / "master.key").exists() and (config.data_dir / "master.key").exists()
    assert stat.S_IMODE(config.data_dir.stat().st_mode) == 0o700
    assert not list(tmp_path.glob(".data.restoring-*"))
    # The restored database still opens with the daemon's store and records the restore.
    async with opened(config) as store:
        actions = await store.read("audit", lambda db: [e.action for e in audit.entries(db.conn)])
        assert actions[-1] == "backup.restore"
        assert (await store.read("verify", lambda db: audit.verify(db.conn))).ok


async def test_backups_are_listed_and_pruned_to_keep(tmp_path, capsys):
    config, _ = await make_data(tmp_path)
    cfg = ["-c", str(tmp_path / "gateway.toml")]
    assert cli.main(["backup", "-o", str(tmp_path / "out"), *cfg]) == 0
    assert "backup written:" in capsys.readouterr().out
    made = [p for p in backup.list_backups(tmp_path / "out")]
    made += [backup_cli.make(config, tmp_path / "out").path for _ in range(2)]
    assert cli.main(["backup", "--list", "-o", str(tmp_path / "out"), *cfg]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing] == [p.name for p in sorted(made)]
    assert all("3 files" in line and "key " in line for line in listing)
    assert list(backup.list_backups(tmp_path / "out")) == sorted(made)
    assert backup.prune(tmp_path / "out", 2) == [sorted(made)[0]]
    assert len(list(backup.list_backups(tmp_path / "out"))) == 2


def _restore_fails(config, path: Path, match: str) -> None:
    before = snapshot_of_dir(config.data_dir)
    with pytest.raises(BackupError, match=match):
        restore.stage(config, path, environ={})
    assert snapshot_of_dir(config.data_dir) == before  # nothing changed
    assert not list(config.data_dir.parent.glob(".data.restoring-*"))
    assert not list(config.data_dir.parent.glob("data.before-restore-*"))


async def test_a_truncated_database_is_refused(tmp_path):
    config, _ = await make_data(tmp_path)
    info = backup_cli.make(config, tmp_path / "out")
    db_file = info.path / DATABASE_FILE
    os.truncate(db_file, db_file.stat().st_size // 2)
    _restore_fails(config, info.path, "gateway.db does not match the manifest")


async def test_a_flipped_byte_in_a_sealed_file_is_refused(tmp_path):
    config, _ = await make_data(tmp_path)
    info = backup_cli.make(config, tmp_path / "out")
    (sealed,) = [p for p in info.path.rglob("*.sealed")][:1]
    data = bytearray(sealed.read_bytes())
    data[-1] ^= 1
    sealed.write_bytes(bytes(data))
    _restore_fails(config, info.path, "does not match the manifest")


async def test_an_edited_manifest_is_refused(tmp_path):
    config, _ = await make_data(tmp_path)
    info = backup_cli.make(config, tmp_path / "out")
    manifest = json.loads((info.path / MANIFEST).read_text())
    manifest["counts"]["contacts"] = 1
    (info.path / MANIFEST).write_text(json.dumps(manifest))
    _restore_fails(config, info.path, "does not match its checksum")


async def test_damage_hidden_by_a_recomputed_manifest_is_caught_by_the_cipher(tmp_path):
    """Someone fixes the checksums after damaging the database: SQLCipher's page HMACs still
    refuse it, before anything is touched."""
    config, _ = await make_data(tmp_path)
    info = backup_cli.make(config, tmp_path / "out")
    db_file = info.path / DATABASE_FILE
    data = bytearray(db_file.read_bytes())
    data[4096 + 200] ^= 0xFF  # inside page 2
    db_file.write_bytes(bytes(data))
    manifest = json.loads((info.path / MANIFEST).read_text())
    for entry in manifest["files"]:
        if entry["path"] == DATABASE_FILE:
            entry["sha256"] = backup.hashlib.sha256(bytes(data)).hexdigest()
    (info.path / MANIFEST).write_text(json.dumps(backup.seal_manifest(manifest)))
    _restore_fails(config, info.path, "cipher_integrity_check failed.*HMAC")


async def test_a_backup_made_with_another_key_is_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    foreign, _ = await make_data(other)
    info = backup_cli.make(foreign, tmp_path / "out")
    config, _ = await make_data(tmp_path)
    _restore_fails(config, info.path, "made with another master key")


async def test_a_backup_from_before_a_key_rotation_restores_with_its_key(tmp_path):
    other = tmp_path / "old"
    other.mkdir()
    old_config, contacts = await make_data(other)
    info = backup_cli.make(old_config, tmp_path / "out")
    config, _ = await make_data(tmp_path)
    staged = restore.stage(config, info.path, backup_key=master(old_config).key, environ={})
    restore.commit(staged)
    # Re-keyed to today's key: the daemon's key opens it and the sealed data reads.
    texts, files = read_contact(config, contacts["bob"])
    assert texts == ["bob here"] and files == [b"bob's photo"]


async def test_not_a_backup(tmp_path):
    config, _ = await make_data(tmp_path)
    (tmp_path / "empty").mkdir()
    _restore_fails(config, tmp_path / "empty", "no manifest.json")
    _restore_fails(config, tmp_path / "nowhere", "is not a directory")


async def test_restore_asks_and_refuses_without_a_terminal(tmp_path, capsys):
    config, _ = await make_data(tmp_path)
    info = backup_cli.make(config, tmp_path / "out")
    code = cli.main(["restore", str(info.path), "-c", str(tmp_path / "gateway.toml")])
    assert code == 2
    assert "add --yes" in capsys.readouterr().err
    assert not list(tmp_path.glob("data.before-restore-*"))
    assert (
        cli.main(["restore", str(info.path), "--check", "-c", str(tmp_path / "gateway.toml")]) == 0
    )
    assert "nothing was changed" in capsys.readouterr().out
    assert not list(tmp_path.glob(".data.restoring-*"))


MANIFEST_KEYS = ["kind", "format", "created_at", "migrations", "key_fingerprint", "files", "counts"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.sampled_from(MANIFEST_KEYS),
    value=st.one_of(
        st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=2)
    ),
    fix_checksum=st.booleans(),
)
def test_read_manifest_refuses_any_damage_with_a_clear_error(
    tmp_path_factory, key, value, fix_checksum
):
    folder = tmp_path_factory.mktemp("b")
    good = backup.seal_manifest(
        {
            "kind": backup.KIND,
            "format": backup.FORMAT,
            "created_at": "2026-01-01T00:00:00+00:00",
            "gateway_version": "0",
            "migrations": [],
            "key_fingerprint": "ab",
            "counts": {},
            "files": [{"path": DATABASE_FILE, "size": 1, "sha256": "00"}],
            "missing": [],
        }
    )
    damaged = {**good, key: value}
    if damaged == good:
        return
    if fix_checksum:
        damaged = backup.seal_manifest(damaged)
    (folder / MANIFEST).write_text(json.dumps(damaged))
    try:
        backup.read_manifest(folder)
    except BackupError as exc:
        assert str(folder) in str(exc) or "manifest" in str(exc) or "backup" in str(exc)
    else:  # accepted only if the damage kept it a well-formed manifest of this format
        assert fix_checksum and key in ("created_at", "migrations", "key_fingerprint", "counts")


async def test_restoring_from_the_default_folder_inside_the_data_directory(tmp_path):
    """[backup] dir defaults to data_dir/backups: the backups move with the restored
    directory (the daemon keeps writing there) instead of being copied or left behind."""
    config, contacts = await make_data(tmp_path)
    folder = backup.backup_dir(config)
    assert folder == config.data_dir / "backups"
    first = backup_cli.make(config, folder)
    second = backup_cli.make(config, folder)
    restore.commit(restore.stage(config, first.path, environ={}))
    assert sorted(p.name for p in folder.iterdir()) == sorted([first.path.name, second.path.name])
    (before,) = tmp_path.glob("data.before-restore-*")
    assert not (before / "backups").exists()
    texts, _ = read_contact(config, contacts["bob"])
    assert texts == ["bob here"]


async def test_a_backup_from_a_newer_version_is_refused(tmp_path):
    config, _ = await make_data(tmp_path)
    info = backup_cli.make(config, tmp_path / "out")
    manifest = json.loads((info.path / MANIFEST).read_text())
    manifest["migrations"].append("m999_from_the_future")
    manifest["gateway_version"] = "9.0"
    (info.path / MANIFEST).write_text(json.dumps(backup.seal_manifest(manifest)))
    _restore_fails(config, info.path, r"made by a newer gateway \(9.0; migrations unknown")
