"""Channels, agents and the audit log pages: what the running config says, secrets never."""

from __future__ import annotations

from gateway.http.ui.setup_views import shown_value
from gateway.secretref import Secret
from tests.ui.conftest import UI, page, post


def test_secrets_show_only_where_they_are_kept() -> None:
    secret = Secret("sk-live-very-secret", "env:OPENAI_API_KEY")
    assert shown_value(secret) == "(secret: env:OPENAI_API_KEY)"
    assert "very-secret" not in shown_value({"nested": [secret]})


async def test_channels_page_and_test_connection(ui: UI) -> None:
    owner = await ui.add_user("owner@example.com", "owner")
    client = await ui.sign_in(owner)
    status, html = await page(client, "/channels")
    assert status == 200 and 'id="channel-support"' in html and "running" in html
    response = await post(client, "/channels/support/check", {}, from_page="/channels")
    html = await response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'id="check-result"' in html and "no remote check offered" in html
    [entry] = await ui.audit("channel.check")
    assert entry.target == "channel:support" and entry.actor == "admin:owner@example.com"
    missing = await post(client, "/channels/nope/check", {}, from_page="/channels")
    assert missing.status_code == 404


async def test_agents_page_shows_the_failover_chain(ui: UI) -> None:
    owner = await ui.add_user("owner@example.com", "owner")
    client = await ui.sign_in(owner)
    status, html = await page(client, "/agents")
    assert status == 200 and 'id="agent-default"' in html and 'id="provider-model"' in html
    assert "ORDER_REF" in html  # the agent's redaction pattern


async def test_audit_page_lists_and_verifies(ui: UI) -> None:
    owner = await ui.add_user("owner@example.com", "owner")
    client = await ui.sign_in(owner)
    moved = await client.get("/audit?action=login.")  # one viewer: the privacy desk's
    assert moved.status_code == 303
    assert moved.headers["Location"] == "/privacy/audit?action=login."
    status, html = await page(client, "/privacy/audit?action=login.")
    assert status == 200 and "login.ok" in html
    verified = await post(client, "/privacy/audit/verify", {}, from_page="/privacy/audit")
    assert "audit log intact" in await verified.get_data(as_text=True)
    await ui.gw.running.store.write(
        "tamper", lambda db: db.conn.execute("UPDATE audit_log SET actor = 'someone' WHERE id = 1")
    )
    verified = await post(client, "/privacy/audit/verify", {}, from_page="/privacy/audit")
    assert "BROKEN at entry 1" in await verified.get_data(as_text=True)
