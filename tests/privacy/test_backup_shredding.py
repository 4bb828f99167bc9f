"""Crypto-shredding across a restore: a contact erased (gateway.privacy.erasure) after a backup
was taken stays erased when that backup is restored. Their key is destroyed again in the
restored copy (found in the current database or in the tombstone file), so the copies of their
message bodies and sealed files that the old backup carries do not open with it, while every
other contact's do; the rest of their records is erased again too."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import sqlcipher3

from gateway import backup_cli
from gateway.keys import DATABASE_FILE
from gateway.privacy import restore, shredding
from gateway.privacy.erasure import erase_contact_txn
from gateway.privacy.sealing import KeyDestroyed
from gateway.store.bodies import SHREDDED, open_text, sealer_for
from gateway.store.db import connect
from tests.privacy.test_backup_support import (
    inbound,
    master,
    opened,
    read_contact,
    seed,
    write_config,
)


@dataclasses.dataclass
class OldCopies:
    """A contact's ciphertexts as the old backup holds them."""

    bodies: list[tuple[str, bytes]]
    files: list[tuple[str, Path]]


def old_copies(config, backup_path: Path, contact_id: int) -> OldCopies:
    key = master(config).derive("sqlcipher")
    conn = sqlcipher3.connect(
        (backup_path / DATABASE_FILE).resolve().as_uri() + "?mode=ro", uri=True
    )
    try:
        conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        bodies = conn.execute(
            "SELECT m.text, m.body FROM messages m JOIN conversations c ON "
            "c.id = m.conversation_id WHERE c.contact_id = ? ORDER BY m.id",
            (contact_id,),
        ).fetchall()
        files = conn.execute(
            "SELECT uuid FROM attachments WHERE contact_id = ? AND state = 'sealed'", (contact_id,)
        ).fetchall()
    finally:
        conn.close()
    return OldCopies(
        [(str(text), bytes(body)) for text, body in bodies],
        [(uuid, backup_path / "attachments" / uuid[:2] / f"{uuid}.sealed") for (uuid,) in files],
    )


def open_with_restored(config, contact_id: int, copies: OldCopies) -> tuple[list[str], list[Any]]:
    """Open the old ciphertexts with the restored database's keys, as anyone holding the
    backup and today's database would."""
    db = connect(config.data_dir / DATABASE_FILE, master(config).derive("sqlcipher"))
    try:
        sealer = sealer_for(db.conn, config.data_dir / "attachments")
        texts = [open_text(sealer, db.conn, contact_id, t, b) for t, b in copies.bodies]
        files: list[Any] = []
        for uuid, path in copies.files:
            try:
                files.append(sealer.open(db.conn, contact_id, uuid, path))
            except KeyDestroyed as exc:
                files.append(exc)
        return texts, files
    finally:
        db.conn.close()


async def setup(tmp_path):
    config = write_config(tmp_path)
    async with opened(config) as store:
        contacts = await seed(
            store,
            [
                inbound("ann", 1, "ann's secret", b"ann's passport scan"),
                inbound("ann", 2, "more from ann"),
                inbound("bob", 1, "bob's message", b"bob's file"),
            ],
        )
    info = backup_cli.make(config, tmp_path / "out")
    copies = {name: old_copies(config, info.path, cid) for name, cid in contacts.items()}
    # The backup really does hold both contacts' ciphertexts, openable at this point.
    assert len(copies["ann"].bodies) == 2 and len(copies["ann"].files) == 1
    return config, contacts, info, copies


async def erase(config, contact_id: int) -> None:
    """The erasure feature's own transaction (it writes the tombstone, then destroys the key)."""
    async with opened(config) as store:
        await store.write(
            "erase",
            lambda db: erase_contact_txn(
                db, store.sealer, contact_id, actor="cli:test", basis="request #1"
            ),
        )
    assert contact_id in shredding.read_tombstones(config.data_dir / shredding.TOMBSTONE_FILE)


def assert_ann_gone_bob_kept(config, contacts, copies) -> None:
    ann, bob = contacts["ann"], contacts["bob"]
    texts, files = open_with_restored(config, ann, copies["ann"])
    assert texts == [SHREDDED, SHREDDED]
    assert len(files) == 1 and isinstance(files[0], KeyDestroyed)
    texts, files = open_with_restored(config, bob, copies["bob"])
    assert texts == ["bob's message"] and files == [b"bob's file"]
    # The restored copy itself: ann erased again (no messages, no identity), bob intact.
    assert read_contact(config, ann) == ([], [])
    assert read_contact(config, bob) == (["bob's message"], [b"bob's file"])
    db = connect(config.data_dir / DATABASE_FILE, master(config).derive("sqlcipher"))
    try:
        row = db.conn.execute(
            "SELECT display_name, erased_at FROM contacts WHERE id = ?", (ann,)
        ).fetchone()
        assert row[0] is None and row[1] is not None
        assert db.conn.execute(
            "SELECT count(*) FROM identities WHERE contact_id = ?", (ann,)
        ).fetchone() == (0,)
    finally:
        db.conn.close()
    # Only bob's sealed file is in the restored directory.
    assert len(list((config.data_dir / "attachments").rglob("*.sealed"))) == 1


async def test_erased_after_the_backup_stays_erased_after_restoring_it(tmp_path):
    config, contacts, info, copies = await setup(tmp_path)
    await erase(config, contacts["ann"])
    staged = restore.stage(config, info.path, environ={})
    assert staged.shredded == [contacts["ann"]]
    assert "1 contacts erased after this backup stay erased" in staged.describe()
    restore.commit(staged)
    assert_ann_gone_bob_kept(config, contacts, copies)


async def test_the_current_database_alone_is_enough(tmp_path):
    """Without the tombstone file, the erasure is found in the current contact_keys."""
    config, contacts, info, copies = await setup(tmp_path)
    await erase(config, contacts["ann"])
    (config.data_dir / shredding.TOMBSTONE_FILE).unlink()  # lost, or never written
    restore.commit(restore.stage(config, info.path, environ={}))
    assert_ann_gone_bob_kept(config, contacts, copies)


async def test_the_tombstone_file_alone_is_enough(tmp_path):
    """The current database is lost (the reason to restore): the tombstones still hold."""
    config, contacts, info, copies = await setup(tmp_path)
    await erase(config, contacts["ann"])
    for suffix in ("", "-wal", "-shm"):
        (config.data_dir / f"{DATABASE_FILE}{suffix}").unlink(missing_ok=True)
    staged = restore.stage(config, info.path, environ={})
    assert staged.shredded == [contacts["ann"]]
    restore.commit(staged)
    assert_ann_gone_bob_kept(config, contacts, copies)
    # The tombstones go on into the restored directory, for the next restore.
    assert contacts["ann"] in shredding.read_tombstones(config.data_dir / shredding.TOMBSTONE_FILE)


async def test_without_the_reapply_the_old_backup_would_bring_her_back(tmp_path):
    """The danger is real: the old backup alone still opens ann's data (what the tests above
    prevent). Restoring it with no erasure recorded anywhere gives her data back."""
    config, contacts, info, copies = await setup(tmp_path)
    restore.commit(restore.stage(config, info.path, environ={}))
    texts, files = open_with_restored(config, contacts["ann"], copies["ann"])
    assert texts == ["ann's secret", "more from ann"] and files == [b"ann's passport scan"]


async def test_a_tombstone_for_another_key_shreds_nothing(tmp_path):
    """A contact id named by a tombstone whose key fingerprint differs (another person's key)
    keeps its key."""
    config, contacts, info, copies = await setup(tmp_path)
    shredding.record_shred(config.data_dir, contacts["bob"], fingerprint="0" * 32)
    staged = restore.stage(config, info.path, environ={})
    assert staged.shredded == []
    restore.commit(staged)
    texts, files = open_with_restored(config, contacts["bob"], copies["bob"])
    assert texts == ["bob's message"] and files == [b"bob's file"]


async def test_destroy_contact_key_writes_the_tombstone_then_shreds(tmp_path):
    config, contacts, _, _ = await setup(tmp_path)
    ann = contacts["ann"]
    async with opened(config) as store:
        fp = await store.read(
            "fp", lambda db: shredding.contact_fingerprint(store.sealer, db.conn, ann)
        )
        await store.write(
            "shred",
            lambda db: shredding.destroy_contact_key(store.sealer, db.conn, config.data_dir, ann),
        )
        assert (
            await store.read(
                "fp", lambda db: shredding.contact_fingerprint(store.sealer, db.conn, ann)
            )
            is None
        )
    assert shredding.read_tombstones(config.data_dir / shredding.TOMBSTONE_FILE) == {ann: {fp}}
    assert (
        len(fp) == 32 and (config.data_dir / shredding.TOMBSTONE_FILE).stat().st_mode & 0o077 == 0
    )


async def test_a_backup_after_the_erasure_leaves_the_sealed_files_out(tmp_path):
    config, contacts, _, _ = await setup(tmp_path)
    await erase(config, contacts["ann"])
    info = backup_cli.make(config, tmp_path / "out2")
    sealed = [f["path"] for f in info.manifest["files"] if f["path"].endswith(".sealed")]
    assert len(sealed) == 1  # bob's
    assert any(f["path"] == shredding.TOMBSTONE_FILE for f in info.manifest["files"])


def test_tombstones_survive_a_torn_last_line_but_not_garbage(tmp_path):
    path = tmp_path / shredding.TOMBSTONE_FILE
    shredding.record_shred(tmp_path, 7, fingerprint="ab")
    shredding.record_shred(tmp_path, 8)
    with open(path, "ab") as handle:
        handle.write(b'{"contact_id": 9, "key_')  # a crash mid-append
    assert shredding.read_tombstones(path) == {7: {"ab"}, 8: {None}}
    path.write_bytes(b"garbage\n" + path.read_bytes())
    try:
        shredding.read_tombstones(path)
    except ValueError as exc:
        assert "line 1 is not a tombstone" in str(exc)
    else:
        raise AssertionError("a damaged tombstone file must not be ignored")
