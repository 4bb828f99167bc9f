"""Master key rotation: the database is re-keyed (old key no longer opens it), every contact
key re-wrapped, the dedupe key kept (a retry from before is still a duplicate), writes during
an online re-key all land, and an interrupted rotation finishes with --finish."""

from __future__ import annotations

import pytest
import trio

from gateway.config import load_config
from gateway.errors import MasterKeyError
from gateway.keys import MasterKey, load_master_key
from gateway.keys_rotate import finish, rotate
from gateway.messages import Attachment
from gateway.store import open_store
from gateway.store.db import connect
from gateway.store.records import attachments_txn, open_attachment_txn
from gateway.testing.daemon import http_config, open_gateway
from gateway.testing.fake_channel import FakeChannel

CONFIG = (
    http_config(0, public_url=False)
    + """
[channels.support]
plugin = "fake"
[agents.default]
provider = "model"
system_prompt = "Be brief."
[providers.model]
plugin = "fake"
"""
)


def key_opens(data_dir, key: bytes) -> bool:
    try:
        connect(data_dir / "gateway.db", MasterKey(key, "t").derive("sqlcipher")).conn.close()
    except MasterKeyError:
        return False
    return True


async def test_offline_rotation_rekeys_rewraps_and_keeps_dedupe(tmp_path, fake_registry, capsys):
    scan = b"\x89PNG scan of a passport"
    async with open_gateway(CONFIG, fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        await channel.deliver(
            "chat1", "alice", "hi", external_id="42", attachments=(Attachment("image", data=scan),)
        )
        await channel.wait_sent(1)
        await gw.wait_idle()
    data = tmp_path / "data"
    old = load_master_key(data, create=False).key
    config = load_config(tmp_path / "gateway.toml", fake_registry)

    assert await trio.to_thread.run_sync(rotate, config, tmp_path / "credstore") == 0
    out = capsys.readouterr().out
    assert "no gateway running: re-keyed the database here (1 contact keys)" in out
    new = load_master_key(data, create=False).key
    assert new != old and not (data / "master.key.next").exists()
    assert not key_opens(data, old) and key_opens(data, new)

    async with open_gateway(CONFIG, fake_registry, tmp_path) as gw:
        channel = gw.channel("support")
        again = await channel.deliver("chat1", "alice", "hi", external_id="42")
        assert again.duplicate, "a platform retry from before the rotation is still a duplicate"
        store = gw.running.store
        (stored,) = await store.read("att", attachments_txn, again.conversation_id)
        assert await store.read("open", open_attachment_txn, store.sealer, stored.id) == scan


async def test_online_rekey_lets_every_concurrent_write_land(tmp_path):
    path = tmp_path / "gateway.db"
    old, new = b"\x01" * 32, b"\x02" * 32

    def insert(db, n):
        db.conn.execute("INSERT INTO channel_state VALUES ('c', ?, 'v')", (str(n),))

    def count(db):
        return db.conn.execute("SELECT count(*) FROM channel_state").fetchone()[0]

    async with open_store(path, old) as store:
        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(store.write, "insert", insert, n)
            nursery.start_soon(store.rekey, new)
            for n in range(200, 400):
                nursery.start_soon(store.write, "insert", insert, n)
        assert await store.read("count", count) == 400  # readers reopened with the new key
    with pytest.raises(MasterKeyError):
        connect(path, old)
    assert count(connect(path, new)) == 400


def test_an_interrupted_rotation_is_finished_or_undone(tmp_path, fake_registry, capsys):
    data = tmp_path / "data"
    (tmp_path / "gateway.toml").write_text(CONFIG)
    config = load_config(tmp_path / "gateway.toml", fake_registry)
    first = load_master_key(data).key  # creates master.key

    async def create():
        async with open_store(data / "gateway.db", MasterKey(first, "t").derive("sqlcipher")):
            pass

    trio.run(create)
    # Staged but never applied: --finish removes the staged key, the old one stays.
    (data / "master.key.next").write_text("ab" * 32 + "\n")
    (data / "master.key.next").chmod(0o600)
    assert finish(config, tmp_path / "credstore") == 0
    assert "never re-keyed" in capsys.readouterr().out
    assert not (data / "master.key.next").exists() and key_opens(data, first)

    # Applied but not promoted (a crash right after the re-key): --finish promotes it, and
    # until then the error at start-up says what to do.
    second = bytes(range(32))

    async def rekey():
        async with open_store(
            data / "gateway.db", MasterKey(first, "t").derive("sqlcipher")
        ) as store:
            await store.rekey(MasterKey(second, "t").derive("sqlcipher"))

    (data / "master.key.next").write_text(second.hex() + "\n")
    (data / "master.key.next").chmod(0o600)
    trio.run(rekey)
    with pytest.raises(MasterKeyError, match="rotate --finish"):
        connect(data / "gateway.db", MasterKey(first, "t").derive("sqlcipher"))
    assert finish(config, tmp_path / "credstore") == 0
    assert load_master_key(data, create=False).key == second and key_opens(data, second)
