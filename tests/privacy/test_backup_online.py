"""Online backups of a running daemon (gateway.testing.daemon.open_gateway): consistent while
the daemon commits messages in the middle of the snapshot, taken by the daemon's own scheduled
job while traffic flows, and restores refused while it runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import sqlcipher3
import trio

from gateway.keys import DATABASE_FILE
from gateway.messages import Attachment
from gateway.privacy import audit, backup, record_jobs, restore
from gateway.store.bodies import contact_messages
from gateway.store.db import connect
from gateway.testing.daemon import open_gateway
from tests.privacy.test_backup_support import config_text, registry

CONFIG = config_text("fake", "fake", '[backup]\ndir = "backups"\nkeep = 2\n')


def read_only(path: Path, key: bytes) -> Any:
    conn = sqlcipher3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    return conn


def invariants(conn: Any) -> dict[str, int]:
    """What holds in every committed state: each journaled message has its row, each message
    belongs to a conversation, each sealed attachment to a message."""
    orphans = conn.execute(
        "SELECT count(*) FROM journal j LEFT JOIN messages m ON m.id = j.message_id "
        "WHERE j.message_id IS NOT NULL AND m.id IS NULL"
    ).fetchone()[0]
    inbound = conn.execute("SELECT count(*) FROM messages WHERE direction = 'in'").fetchone()[0]
    journal = conn.execute("SELECT count(*) FROM journal").fetchone()[0]
    assert orphans == 0 and inbound == journal
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    return {
        "inbound": inbound,
        "attachments": conn.execute("SELECT count(*) FROM attachments").fetchone()[0],
    }


async def test_a_snapshot_is_consistent_while_the_daemon_commits_during_it(tmp_path):
    async with open_gateway(CONFIG, registry(), tmp_path) as gw:
        channel = gw.channel("support")
        for n in range(40):
            await channel.deliver(
                f"chat{n % 5}",
                f"user{n % 5}",
                f"message {n}",
                attachments=(Attachment("document", "text/plain", "a.txt", b"x" * 500),),
            )
        await gw.wait_idle()
        data_dir = gw.config.data_dir
        key = gw.running.master_key.derive("sqlcipher")
        committed_during: list[int] = []
        token = trio.lowlevel.current_trio_token()

        def during_snapshot() -> int:
            # Called by SQLite inside VACUUM INTO: the daemon commits a message (with its
            # attachment) and we wait until it has, while the snapshot is half written.
            if len(committed_during) < 3:
                accepted = trio.from_thread.run(
                    lambda: channel.deliver(
                        "late",
                        "late-user",
                        f"late {len(committed_during)}",
                        attachments=(Attachment("image", "image/png", "b.png", b"y" * 100),),
                    ),
                    trio_token=token,
                )
                committed_during.append(accepted.message_id)
            return 0

        def take() -> backup.BackupInfo:
            db = connect(data_dir / DATABASE_FILE, key)  # what `gateway backup` opens
            db.conn.set_progress_handler(during_snapshot, 50)
            try:
                return backup.make_backup(db, data_dir, tmp_path / "out", key)
            finally:
                db.conn.close()

        info = await trio.to_thread.run_sync(take)
        await gw.wait_idle()
        live = await gw.running.store.read("live", lambda db: invariants(db.conn))
    assert len(committed_during) == 3 and all(committed_during)
    snap = read_only(info.path / DATABASE_FILE, key)
    try:
        got = invariants(snap)
        late = snap.execute(
            "SELECT count(*) FROM messages WHERE id IN (?, ?, ?)", committed_during
        ).fetchone()[0]
    finally:
        snap.close()
    # The snapshot is the state before the first commit made during it: all 40 messages and
    # their files, none of the 3 committed while it was written; the live database has all.
    assert got == {"inbound": 40, "attachments": 40} and late == 0
    assert live == {"inbound": 43, "attachments": 43}
    assert len([f for f in info.manifest["files"] if f["path"].endswith(".sealed")]) == 40


async def test_the_daemons_backup_job_runs_while_messages_flow(tmp_path):
    async with open_gateway(CONFIG, registry(), tmp_path) as gw:
        channel = gw.channel("support")
        services = gw.running.services
        assert services.scheduler.jobs["backup"].interval == 24 * 3600
        for n in range(30):
            await channel.deliver(f"chat{n}", f"user{n}", f"before {n}")
        sent_before = len(channel.sent)
        stop = trio.Event()
        delivered_during: list[float] = []

        async def traffic() -> None:
            n = 0
            while not stop.is_set():
                await channel.deliver("busy", "busy-user", f"during {n}")
                delivered_during.append(time.monotonic())
                n += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic)
            started = time.monotonic()
            infos = [await record_jobs.run_backup(services) for _ in range(3)]
            finished = time.monotonic()
            stop.set()
        await gw.wait_idle()
        entries = await services.store.read(
            "audit", lambda db: list(audit.entries(db.conn, action_prefix="backup."))
        )
        assert len(channel.sent) > sent_before  # replies went on being sent
    assert any(started <= t <= finished for t in delivered_during)
    assert [e.actor for e in entries] == ["system"] * 3
    assert all(e.outcome == "ok" for e in entries)
    # keep = 2: the oldest of the three is gone; the two newest are complete and verify.
    kept = list(backup.list_backups(tmp_path / "backups"))
    assert kept == [infos[1].path, infos[2].path]
    key = gw.running.master_key.derive("sqlcipher")
    for path in kept:
        manifest = backup.read_manifest(path)
        assert manifest["key_fingerprint"] == backup.db_key_fingerprint(key)
        snap = read_only(path / DATABASE_FILE, key)
        try:
            assert invariants(snap)["inbound"] >= 30
        finally:
            snap.close()


async def test_restore_is_refused_while_the_daemon_runs(tmp_path):
    async with open_gateway(CONFIG, registry(), tmp_path) as gw:
        await gw.channel("support").deliver("c", "u", "hello")
        services = gw.running.services
        info = await record_jobs.run_backup(services)
        before = sorted(p.name for p in gw.config.data_dir.iterdir())
        with pytest.raises(backup.BackupError, match="the gateway is running.*stop it first"):
            # In a thread: the command blocks on the control socket this event loop serves.
            await trio.to_thread.run_sync(lambda: restore.stage(gw.config, info.path, environ={}))
        assert sorted(p.name for p in gw.config.data_dir.iterdir()) == before
        assert not list(tmp_path.glob(".data.restoring-*"))


async def test_the_daemon_starts_on_a_restored_directory_and_carries_on(tmp_path):
    async with open_gateway(CONFIG, registry(), tmp_path) as gw:
        channel = gw.channel("support")
        await channel.deliver("chat", "user", "before the backup")
        await channel.wait_sent(1)
        info = await record_jobs.run_backup(gw.running.services)
        await channel.deliver("chat", "user", "after the backup")
        await channel.wait_sent(2)
        await gw.wait_idle()
    staged = restore.stage(gw.config, info.path, environ={})
    restore.commit(staged)
    async with open_gateway(CONFIG, registry(), tmp_path) as gw:
        channel = gw.channel("support")
        # A new platform message id: the fake channel's counter restarts at m1, which the
        # restored journal knows (a platform retry of it would rightly be a duplicate).
        await channel.deliver("chat", "user", "after the restore", external_id="new-1")
        with trio.fail_after(30):
            (reply,) = await channel.wait_sent(1)
        await gw.wait_idle()
        history = await gw.running.store.read(
            "history",
            lambda db: [
                m.text
                for m in contact_messages(gw.running.store.sealer, db.conn, 1)
                if m.direction == "in"
            ],
        )
        restored = await gw.running.store.read(
            "audit", lambda db: [e.action for e in audit.entries(db.conn)]
        )
    assert history == ["before the backup", "after the restore"]
    assert reply.text.endswith("after the restore")
    assert "backup.restore" in restored
