"""local_only, proven: with a remote provider configured first, the remote server receives
nothing at all; the local provider answers and the transfer log shows the refusals."""

from __future__ import annotations

import json

import pytest

from gateway.errors import ConfigError
from gateway.plugin import load_registry
from gateway.testing.daemon import open_gateway
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_openai import open_fake_openai

CONFIG = """
local_only = {local_only}
[gateway]
data_dir = "data"
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
[channels.support]
plugin = "fake"
[agents.default]
provider = "remote"
failover = [{failover}]
[providers.remote]
plugin = "openai"
base_url = "{base_url}"
api_key = "env:OPENAI_API_KEY"
model = "gpt-4o-mini"
region = "US"
legal_basis = "consent"
[providers.local]
plugin = "faq"
"""


def registry():
    registry = load_registry()
    registry.add("channel", "fake", FakeChannel)
    return registry


async def test_local_only_sends_nothing_to_a_remote_server(tmp_path):
    async with open_fake_openai() as remote:
        text = CONFIG.format(local_only="true", failover='"local"', base_url=remote.base_url)
        async with open_gateway(
            text, registry(), tmp_path, environ={"OPENAI_API_KEY": "sk-x"}
        ) as gw:
            channel: FakeChannel = gw.channel("support")
            for n in range(3):
                await channel.deliver(f"chat{n}", f"user{n}", "Where is my data stored?")
            await channel.wait_sent(3)
            await gw.wait_idle()
            rows = await gw.running.store.read(
                "t",
                lambda db: db.conn.execute(
                    "SELECT provider, region, outcome, categories FROM transfers ORDER BY id"
                ).fetchall(),
            )
        assert remote.received == [] and remote.connections == 0  # not even a TCP connection
    assert [o.text for o in channel.sent] == [channel.sent[0].text] * 3
    assert "don't know" not in channel.sent[0].text.lower()
    refused = [r for r in rows if r[0] == "remote"]
    assert len(refused) == 3 and all(r[1:3] == ("US", "refused") for r in refused)
    assert [r[:3] for r in rows if r[0] == "local"] == [("local", "local", "ok")] * 3
    assert all(json.loads(r[3]) == ["message_text"] for r in rows if r[0] == "local")


async def test_without_local_only_the_remote_answers_and_is_logged(tmp_path):
    async with open_fake_openai() as remote:
        text = CONFIG.format(local_only="false", failover='"local"', base_url=remote.base_url)
        async with open_gateway(
            text, registry(), tmp_path, environ={"OPENAI_API_KEY": "sk-x"}
        ) as gw:
            channel: FakeChannel = gw.channel("support")
            await channel.deliver("chat", "user", "hello")
            (reply,) = await channel.wait_sent(1)
            await gw.wait_idle()
            rows = await gw.running.store.read(
                "t",
                lambda db: db.conn.execute(
                    "SELECT provider, region, outcome, legal_basis FROM transfers"
                ).fetchall(),
            )
    assert reply.text == "echo: hello"
    assert rows == [("remote", "US", "ok", "consent")]


async def test_local_only_without_a_local_provider_is_a_config_error(tmp_path):
    text = CONFIG.format(local_only="true", failover="", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(
        ConfigError, match="local_only = true but no provider of this agent is local"
    ):
        async with open_gateway(text, registry(), tmp_path, environ={"OPENAI_API_KEY": "sk-x"}):
            pass


async def test_remote_server_never_sees_the_phone_number_but_the_user_gets_it_back(tmp_path):
    async with open_fake_openai() as remote:
        remote.reply_with(lambda body: "We will call you at <PHONE_1> today.")
        text = CONFIG.format(local_only="false", failover='"local"', base_url=remote.base_url)
        async with open_gateway(
            text, registry(), tmp_path, environ={"OPENAI_API_KEY": "sk-x"}
        ) as gw:
            channel: FakeChannel = gw.channel("support")
            await channel.deliver(
                "chat", "user", "My number is +44 20 7946 0958, where is my parcel?"
            )
            (reply,) = await channel.wait_sent(1)
            await gw.wait_idle()
            logged = await gw.running.store.read(
                "t",
                lambda db: db.conn.execute("SELECT redacted, categories FROM transfers").fetchall(),
            )
    wire = json.dumps(remote.requests)
    assert "7946" not in wire and "<PHONE_1>" in wire
    assert reply.text == "We will call you at +44 20 7946 0958 today."
    assert logged == [(1, '["message_text"]')]
