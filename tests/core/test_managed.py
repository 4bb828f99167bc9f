"""Channels, agents and providers made in the admin UI (gateway.managed, gateway.vault): kept in
the encrypted database with their secrets in the vault, merged with the config file at every
load, checked before they are written, applied live, kept across a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway import managed, vault
from gateway.config import load_config
from gateway.errors import ConfigError, GatewayError
from gateway.keys import DATABASE_FILE, load_master_key
from gateway.plugin import ChannelConfig, ChannelContext, Registry
from gateway.privacy import audit
from gateway.secretref import Secret
from gateway.store.db import connect
from gateway.testing.daemon import GatewayUnderTest, open_gateway
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider

BASE = """
[gateway]
data_dir = "data"
shutdown_grace = 5
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
[channels.support]
plugin = "fake"
[agents.default]
provider = "model"
max_attempts = 1
[providers.model]
plugin = "fake"
"""
TOKEN = "123456:AAE-secret-token-value"


class TokenChannel(FakeChannel):
    """A fake channel with a secret, as a real platform's would have."""

    class Config(ChannelConfig):
        token: Secret
        account: str = "token-bot"
        webhook_secret: Secret | None = None
        ca_file: Path | None = None

    def __init__(self, name: str, config: Any, context: ChannelContext) -> None:
        super().__init__(name, config, context)
        if config.token.reveal() == "refuse":
            raise RuntimeError("the platform refused this token")


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    registry.add("channel", "fake", FakeChannel)
    registry.add("channel", "token", TokenChannel)
    registry.add("llm", "fake", FakeProvider)
    return registry


def open_db(gw: GatewayUnderTest) -> sqlite3.Connection:
    data_dir = gw.config.data_dir
    master = load_master_key(data_dir, environ={}, create=False)
    return connect(data_dir / DATABASE_FILE, master.derive("sqlcipher"), readonly=True).conn


async def test_channel_saved_in_the_ui_runs_live_answers_and_its_secret_is_sealed(
    tmp_path, registry
):
    async with open_gateway(BASE, registry, tmp_path) as gw:
        services = gw.running.services
        changes = await managed.save(
            services,
            "channels",
            "shop",
            {"plugin": "token", "account": "shop-bot"},
            {"token": TOKEN},
            actor="user:1",
            expect_version=None,
        )
        assert changes.channels.added == ("shop",)
        shop: TokenChannel = gw.channel("shop")
        assert shop.config.token.reveal() == TOKEN
        assert shop.config.token.reference == "store:channels.shop.token"
        assert managed.is_managed(services.config, "channels", "shop")
        assert not managed.is_managed(services.config, "channels", "support")
        await shop.deliver("chat1", "alice", "hello")
        (reply,) = await shop.wait_sent(1)
        assert reply.text == "echo: hello"

        row = await managed.get(services, "channels", "shop")
        assert row is not None and row.version == 1 and row.updated_by == "user:1"
        assert row.table == {
            "plugin": "token",
            "account": "shop-bot",
            "token": "store:channels.shop.token",
        }
        conn = open_db(gw)
        try:
            # Sealed under the vault key, with the name as associated data.
            (sealed,) = conn.execute("SELECT sealed FROM vault").fetchone()
            assert TOKEN.encode() not in bytes(sealed)
            entries = list(audit.entries(conn, action_prefix="config.create"))
            assert [(e.actor, e.target) for e in entries] == [("user:1", "channels:shop")]
            assert TOKEN not in repr(entries[0].detail)
        finally:
            conn.close()
        # The database file holds no plaintext token (SQLCipher + vault sealing).
        for suffix in ("", "-wal"):
            path = trio.Path(str(tmp_path / "data" / DATABASE_FILE) + suffix)
            assert TOKEN.encode() not in await path.read_bytes()

    # A restart (a fresh load of the same file) runs the UI's channel with its secret.
    config = load_config(tmp_path / "gateway.toml", registry, environ={})
    assert config.channels["shop"].config.token.reveal() == TOKEN  # type: ignore[attr-defined]
    assert config.managed == frozenset({"channels.shop"})


async def test_edit_keeps_a_secret_left_blank_and_replaces_one_given(tmp_path, registry):
    async with open_gateway(BASE, registry, tmp_path) as gw:
        services = gw.running.services
        table = {"plugin": "token", "account": "a1"}
        await managed.save(
            services, "channels", "shop", table, {"token": TOKEN}, actor="u", expect_version=None
        )
        changes = await managed.save(
            services,
            "channels",
            "shop",
            {"plugin": "token", "account": "a2"},
            {},
            actor="u",
            expect_version=1,
        )
        assert changes.channels.changed == ("shop",)
        shop = gw.channel("shop")
        assert shop.config.account == "a2" and shop.config.token.reveal() == TOKEN
        await managed.save(
            services,
            "channels",
            "shop",
            {"plugin": "token", "account": "a2"},
            {"token": "new-token"},
            actor="u",
            expect_version=2,
        )
        assert gw.channel("shop").config.token.reveal() == "new-token"


async def test_stale_version_is_a_conflict_and_changes_nothing(tmp_path, registry):
    async with open_gateway(BASE, registry, tmp_path) as gw:
        services = gw.running.services
        table = {"plugin": "token"}
        await managed.save(
            services,
            "channels",
            "shop",
            table,
            {"token": TOKEN},
            actor="alice",
            expect_version=None,
        )
        # A second "new channel" form with the same name, and an edit of an old version.
        with pytest.raises(managed.Conflict, match="already exists"):
            await managed.save(
                services,
                "channels",
                "shop",
                table,
                {"token": "x"},
                actor="bob",
                expect_version=None,
            )
        await managed.save(
            services,
            "channels",
            "shop",
            {"plugin": "token", "account": "v2"},
            {},
            actor="alice",
            expect_version=1,
        )
        with pytest.raises(managed.Conflict, match="changed since you opened it.*alice"):
            await managed.save(
                services,
                "channels",
                "shop",
                {"plugin": "token", "account": "v3"},
                {},
                actor="bob",
                expect_version=1,
            )
        row = await managed.get(services, "channels", "shop")
        assert row is not None and row.version == 2 and row.table["account"] == "v2"
        assert gw.channel("shop").config.token.reveal() == TOKEN


async def test_invalid_table_is_refused_naming_the_key_and_nothing_is_written(tmp_path, registry):
    async with open_gateway(BASE, registry, tmp_path) as gw:
        services = gw.running.services
        with pytest.raises(ConfigError) as caught:
            await managed.save(
                services,
                "channels",
                "shop",
                {"plugin": "token", "agent": "nobody"},
                {"token": TOKEN},
                actor="u",
                expect_version=None,
            )
        error = caught.value
        assert error.table == "channels.shop" and error.key == "agent"
        assert "admin UI" in (error.file or "") and "nobody" in error.problem
        with pytest.raises(ConfigError) as missing:
            await managed.save(
                services,
                "channels",
                "shop",
                {"plugin": "token"},
                {},
                actor="u",
                expect_version=None,
            )
        assert missing.value.key == "token" and "required" in missing.value.problem
        # A name the config file already uses is refused.
        with pytest.raises(ConfigError, match="defined in the config file"):
            await managed.save(
                services,
                "channels",
                "support",
                {"plugin": "fake"},
                {},
                actor="u",
                expect_version=None,
            )
        with pytest.raises(ConfigError, match="not a valid name"):
            await managed.save(
                services,
                "channels",
                "a.b",
                {"plugin": "fake"},
                {},
                actor="u",
                expect_version=None,
            )
        conn = open_db(gw)
        try:
            assert conn.execute("SELECT count(*) FROM managed_tables").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM vault").fetchone() == (0,)
        finally:
            conn.close()
        assert list(services.config.channels) == ["support"]


async def test_a_change_the_reload_refuses_is_put_back(tmp_path, registry):
    async with open_gateway(BASE, registry, tmp_path) as gw:
        services = gw.running.services
        await managed.save(
            services,
            "channels",
            "shop",
            {"plugin": "token"},
            {"token": TOKEN},
            actor="u",
            expect_version=None,
        )
        running = gw.channel("shop")
        with pytest.raises(GatewayError, match="could not be created.*refused this token"):
            await managed.save(
                services,
                "channels",
                "shop",
                {"plugin": "token"},
                {"token": "refuse"},
                actor="u",
                expect_version=1,
            )
        assert gw.channel("shop") is running and running.running
        row = await managed.get(services, "channels", "shop")
        assert row is not None and row.table["token"] == "store:channels.shop.token"
        # The previous secret is back too: a restart runs what runs now.
        config = load_config(tmp_path / "gateway.toml", registry, environ={})
        assert config.channels["shop"].config.token.reveal() == TOKEN  # type: ignore[attr-defined]
        conn = open_db(gw)
        try:
            actions = [e.action for e in audit.entries(conn, target="channels:shop")]
        finally:
            conn.close()
        assert sorted(actions) == ["config.create", "config.revert", "config.update"]


async def test_remove_stops_the_channel_deletes_its_secrets_and_keeps_conversations(
    tmp_path, registry
):
    async with open_gateway(BASE, registry, tmp_path) as gw:
        services = gw.running.services
        await managed.save(
            services,
            "channels",
            "shop",
            {"plugin": "token"},
            {"token": TOKEN},
            actor="u",
            expect_version=None,
        )
        shop = gw.channel("shop")
        await shop.deliver("chat1", "alice", "hello")
        await shop.wait_sent(1)
        with pytest.raises(managed.Conflict):
            await managed.remove(services, "channels", "shop", actor="u", expect_version=7)
        changes = await managed.remove(services, "channels", "shop", actor="u", expect_version=1)
        assert changes.channels.removed == ("shop",) and not shop.running
        conn = open_db(gw)
        try:
            assert conn.execute("SELECT count(*) FROM vault").fetchone() == (0,)
            assert conn.execute(
                "SELECT count(*) FROM conversations WHERE channel = 'shop'"
            ).fetchone() == (1,)
        finally:
            conn.close()
        # An agent the file's channel uses cannot be removed; a managed one can be added.
        await managed.save(
            services,
            "agents",
            "sales",
            {"provider": "model", "system_prompt": "Sell."},
            {},
            actor="u",
            expect_version=None,
        )
        assert services.config.agents["sales"].system_prompt == "Sell."
        await managed.save(
            services,
            "channels",
            "shop",
            {"plugin": "fake", "agent": "sales"},
            {},
            actor="u",
            expect_version=None,
        )
        with pytest.raises(ConfigError, match="agent 'sales' is not defined"):
            await managed.remove(services, "agents", "sales", actor="u", expect_version=1)


def test_file_and_ui_defining_the_same_name_is_an_error_naming_both(tmp_path, registry):
    data = tmp_path / "data"
    master = load_master_key(data, environ={})
    db = connect(data / DATABASE_FILE, master.derive("sqlcipher"))
    from gateway.store.migrations import migrations

    migrations.apply(db)
    with db.conn:
        vault.put_row_txn(db, "channels", "support", {"plugin": "fake"}, actor="u")
    db.conn.close()
    (tmp_path / "gateway.toml").write_text(BASE)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "gateway.toml", registry, environ={})
    text = str(caught.value)
    assert "gateway.toml:8" in text and "defined both here and in the admin UI" in text
    assert "remove the one in the admin UI" in text


def test_store_reference_in_the_file_resolves_from_the_vault_or_says_how_to_set_it(
    tmp_path, registry
):
    data = tmp_path / "data"
    master = load_master_key(data, environ={})
    db = connect(data / DATABASE_FILE, master.derive("sqlcipher"))
    from gateway.store.migrations import migrations

    migrations.apply(db)
    db.conn.close()
    text = BASE + '[channels.shop]\nplugin = "token"\ntoken = "store:shop_token"\n'
    (tmp_path / "gateway.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "gateway.toml", registry, environ={})
    assert "gateway secrets set shop_token" in str(caught.value)
    assert caught.value.line == 17
    db = connect(data / DATABASE_FILE, master.derive("sqlcipher"))
    with db.conn:
        vault.put_secret_txn(db, "shop_token", TOKEN, actor="cli:root")
    db.conn.close()
    config = load_config(tmp_path / "gateway.toml", registry, environ={})
    assert config.channels["shop"].config.token.reveal() == TOKEN  # type: ignore[attr-defined]
    # Without the master key the file is still checked ("try"), the vault is not.
    (data / "master.key").rename(tmp_path / "elsewhere.key")
    with pytest.raises(ConfigError, match="cannot read the channels, agents and providers"):
        load_config(tmp_path / "gateway.toml", registry, environ={})
    partial = load_config(tmp_path / "gateway.toml", registry, environ={}, managed="try")
    assert partial.channels["shop"].config.token.deferred  # type: ignore[attr-defined]


def test_vault_values_open_only_under_their_own_name(tmp_path):
    data = tmp_path / "data"
    master = load_master_key(data, environ={})
    db = connect(data / DATABASE_FILE, master.derive("sqlcipher"))
    from gateway.store.migrations import migrations

    migrations.apply(db)
    with db.conn:
        vault.put_secret_txn(db, "a", "alpha", actor="u")
        vault.put_secret_txn(db, "b", "beta", actor="u")
    assert vault.read_secrets(db.conn) == {"a": "alpha", "b": "beta"}
    assert [i.name for i in vault.list_secrets(db.conn)] == ["a", "b"]
    with db.conn:
        sealed = db.conn.execute("SELECT sealed FROM vault WHERE name = 'a'").fetchone()[0]
        db.conn.execute("UPDATE vault SET sealed = ? WHERE name = 'b'", (sealed,))
    with pytest.raises(vault.VaultError, match="'b' does not open"):
        vault.read_secrets(db.conn)
    with pytest.raises(vault.VaultError, match="not a valid secret name"):
        vault.put_secret_txn(db, "../etc", "x", actor="u")
    db.conn.close()


async def test_concurrent_saves_of_one_version_let_exactly_one_win(tmp_path, registry):
    async with open_gateway(BASE, registry, tmp_path) as gw:
        services = gw.running.services
        outcomes: list[str] = []

        async def attempt(account: str) -> None:
            try:
                await managed.save(
                    services,
                    "channels",
                    "shop",
                    {"plugin": "fake", "account": account},
                    {},
                    actor=account,
                    expect_version=None,
                )
                outcomes.append("saved")
            except managed.Conflict:
                outcomes.append("conflict")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, "first")
            nursery.start_soon(attempt, "second")
        assert sorted(outcomes) == ["conflict", "saved"]
        row = await managed.get(services, "channels", "shop")
        assert row is not None and row.version == 1


async def test_an_optional_secret_can_be_cleared_and_its_vault_entry_goes(tmp_path, registry):
    async with open_gateway(BASE, registry, tmp_path) as gw:
        services = gw.running.services
        await managed.save(
            services,
            "channels",
            "shop",
            {"plugin": "token"},
            {"token": TOKEN, "webhook_secret": "hook-secret"},
            actor="u",
            expect_version=None,
        )
        assert gw.channel("shop").config.webhook_secret.reveal() == "hook-secret"
        await managed.save(
            services,
            "channels",
            "shop",
            {"plugin": "token"},
            {},
            actor="u",
            expect_version=1,
            clear=["webhook_secret"],
        )
        shop = gw.channel("shop")
        assert shop.config.webhook_secret is None and shop.config.token.reveal() == TOKEN
        conn = open_db(gw)
        try:
            assert [i.name for i in vault.list_secrets(conn)] == ["channels.shop.token"]
        finally:
            conn.close()


async def test_paths_set_in_the_ui_stay_inside_the_gateways_folders(tmp_path, registry):
    async with open_gateway(BASE, registry, tmp_path) as gw:
        services = gw.running.services
        for outside in ("/etc/passwd", "../../etc/passwd", str(tmp_path / "data/../../x")):
            with pytest.raises(ConfigError) as caught:
                await managed.save(
                    services,
                    "channels",
                    "shop",
                    {"plugin": "token", "ca_file": outside},
                    {"token": TOKEN},
                    actor="u",
                    expect_version=None,
                )
            assert caught.value.key == "ca_file" and "outside" in caught.value.problem
        assert await managed.get(services, "channels", "shop") is None
        inside = tmp_path / "data" / "ca.pem"
        await managed.save(
            services,
            "channels",
            "shop",
            {"plugin": "token", "ca_file": str(inside)},
            {"token": TOKEN},
            actor="u",
            expect_version=None,
        )
        assert gw.channel("shop").config.ca_file == inside
