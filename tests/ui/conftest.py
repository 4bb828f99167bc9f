"""Admin UI tests: a real daemon (fake channel, fake model) and its admin app's test client.

``ui`` gives a :class:`UI`: the running gateway, its admin app, helpers to create users (real
Argon2id hashes and TOTP seeds in the SQLCipher store) and to sign in through the real forms.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from gateway import users
from gateway.plugin import Registry
from gateway.privacy import audit
from gateway.testing.daemon import GatewayUnderTest, http_config, open_gateway, sql
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider

PASSWORD = "correct horse battery staple"

CONFIG = (
    http_config(0, public_url=False)
    + """
[channels.support]
plugin = "fake"
[agents.default]
provider = "model"
redact_patterns = { ORDER_REF = "ORD-[0-9]{6}" }
[providers.model]
plugin = "fake"
[admin_ui]
live_poll_seconds = 0.02
lockout_after = 3
"""
)

CSRF = re.compile(r'name="csrf" value="([^"]*)"')


@dataclasses.dataclass
class Account:
    id: int
    email: str
    role: str
    secret: str
    recovery_codes: list[str]

    def code(self, steps_ahead: int = 0) -> str:
        """The TOTP code of the current time step (or a later one: each code works once)."""
        return pyotp.TOTP(self.secret).at(time.time() + 30 * steps_ahead)


@dataclasses.dataclass
class UI:
    gw: GatewayUnderTest

    @property
    def app(self) -> Any:
        return self.gw.running.reloader.admin_app.current

    @property
    def channel(self) -> FakeChannel:
        channel: FakeChannel = self.gw.channel("support")
        return channel

    def client(self) -> Any:
        return self.app.test_client()

    async def add_user(
        self, email: str, role: str, *, totp: bool = True, password: str = PASSWORD
    ) -> Account:
        def create(db: Any) -> users.NewUser:
            created = users.add_user(db.conn, email, password, role, created_by="test")
            if totp:
                db.conn.execute(
                    "UPDATE users SET totp_confirmed_at = ? WHERE id = ?",
                    (users.now(), created.user_id),
                )
            return created

        made = await self.gw.running.store.write("test user", create)
        assert made.totp_secret is not None
        return Account(made.user_id, email, role, made.totp_secret, made.recovery_codes)

    async def sign_in(self, account: Account, client: Any = None, *, steps_ahead: int = 0) -> Any:
        """Sign in through the forms (password, then the TOTP code when the account has one);
        returns the client, whose cookie jar now holds the session."""
        client = client or self.client()
        page = await client.get("/login")
        response = await client.post(
            "/login",
            form={
                "email": account.email,
                "password": PASSWORD,
                "csrf": csrf_of(await page.get_data(as_text=True)),
            },
        )
        assert response.status_code == 303, await response.get_data(as_text=True)
        if response.location.startswith("/login/code"):
            page = await client.get("/login/code")
            response = await client.post(
                "/login/code",
                form={
                    "code": account.code(steps_ahead),
                    "csrf": csrf_of(await page.get_data(as_text=True)),
                },
            )
            assert response.status_code == 303, await response.get_data(as_text=True)
        return client

    async def audit(self, action: str | None = None) -> list[audit.Entry]:
        entries: list[audit.Entry] = await self.gw.running.store.read(
            "test audit", lambda db: list(audit.entries(db.conn, action_prefix=action))
        )
        return entries

    async def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        return await sql(self.gw, query, *args)


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


async def page(client: Any, path: str) -> tuple[int, str]:
    response = await client.get(path)
    return response.status_code, await response.get_data(as_text=True)


async def post(
    client: Any, path: str, form: dict[str, str], *, from_page: str | None = None
) -> Any:
    """POST ``form`` with the CSRF token of ``from_page`` (default: the inbox)."""
    _status, html = await page(client, from_page or "/inbox")
    return await client.post(path, form={**form, "csrf": csrf_of(html)})


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    registry.add("channel", "fake", FakeChannel)
    registry.add("llm", "fake", FakeProvider)
    return registry


@pytest.fixture
async def ui(tmp_path: Path, registry: Registry) -> AsyncIterator[UI]:
    async with open_gateway(CONFIG, registry, tmp_path) as gw:
        yield UI(gw)
