"""A real daemon (config loader, SQLCipher store, pipeline) with fake chat channels and a fake
model, and the developer API's blueprint on a QuartTrio app for Quart's test client."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from quart.typing import TestClientProtocol

from gateway.devapi import keys
from gateway.http.mounts import public_blueprints
from gateway.http.public import make_public_app
from gateway.plugin import Registry
from gateway.services import Services
from gateway.testing.daemon import GatewayUnderTest, open_gateway
from gateway.testing.fake_channel import FakeChannel

ORIGIN = "https://www.acme.example"
CONFIG = """
[gateway]
data_dir = "data"
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
[channels.chat]
plugin = "fake"
subscription_menu = true
[channels.plain]
plugin = "fake"
account = "plain-bot"
[agents.default]
provider = "model"
system_prompt = "Be brief."
[providers.model]
plugin = "fake"
[api]
default_rate = "1000/s"
trusted_proxies = ["<local>"]   # Quart's test client: X-Forwarded-For names the client
[api.forms.contact]
project = "acme"
allowed_origins = ["https://www.acme.example"]
honeypot = "website"
rate = "3/min"
fields = { name = { type = "string", required = true, max_length = 50 }, email = { type = "email", required = true }, message = { type = "text", max_length = 500 }, newsletter = { type = "boolean" }, age = { type = "integer" } }
[api.forms.signup]
project = "acme"
allowed_origins = ["https://www.acme.example", "http://localhost:8000"]
redirect_to = "https://www.acme.example/thanks"
fields = { email = { type = "email", required = true } }
"""


@pytest.fixture
def registry(fake_registry: Registry) -> Registry:
    return fake_registry  # tests/conftest.py


@dataclasses.dataclass
class Api:
    """The daemon, its services, a test client for the public app, and helpers."""

    gw: GatewayUnderTest
    services: Services
    client: TestClientProtocol

    def channel(self, name: str = "chat") -> FakeChannel:
        channel: FakeChannel = self.gw.channel(name)
        return channel

    async def project(self, name: str, title: str) -> None:
        def add(db: Any) -> None:
            keys.add_project_txn(db, name, title, "test")

        await self.services.store.write("test project", add)

    async def key(
        self, project: str = "acme", scopes: Sequence[str] = keys.SCOPES, rate: str | None = None
    ) -> str:
        def create(db: Any) -> str:
            _record, secret = keys.create_key_txn(
                db, project, list(scopes), rate=rate, label=None, actor="test"
            )
            return secret

        secret: str = await self.services.store.write("test key", create)
        return secret

    async def say(self, thread: str, sender: str, text: str, channel: str = "chat") -> str:
        """A user writes; returns what the gateway answered them."""
        fake = self.channel(channel)
        before = len(fake.sent)
        await fake.deliver(thread, sender, text)
        sent = await fake.wait_sent(before + 1)
        return sent[before].text

    async def subscribe(self, sender: str, project: str = "acme", channel: str = "chat") -> str:
        """``/start project`` from ``sender``; returns their subscriber id."""
        reply = await self.say(sender, sender, f"/start {project}", channel)
        assert "You are subscribed" in reply, reply
        rows = await self.sql(
            "SELECT s.public_id FROM api_subscriptions s JOIN identities i "
            "ON i.id = s.identity_id JOIN api_projects p ON p.id = s.project_id "
            "WHERE i.external_id = ? AND i.channel = ? AND p.name = ?",
            sender,
            channel,
            project,
        )
        return str(rows[0][0])

    async def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = await self.services.store.read(
            "test query", lambda db: db.conn.execute(query, args).fetchall()
        )
        return rows


def bearer(key: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **more}


def code_in(text: str) -> str:
    match = re.search(r"\b(\d{4,10})\b", text)
    assert match, text
    return match.group(1)


@pytest.fixture
async def api(tmp_path: Path, registry: Registry) -> AsyncIterator[Api]:
    async with open_gateway(CONFIG, registry, tmp_path) as gw:
        services = gw.running.services
        app = make_public_app({}, public_blueprints(services))
        harness = Api(gw, services, app.quart.test_client())
        await harness.project("acme", "Acme Shop")
        yield harness
