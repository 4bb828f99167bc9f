"""Roles: every decision on the server, refusals audited, no way up from agent or admin."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from gateway.http.ui import security
from tests.ui.conftest import UI, csrf_of, page, post

UI_DIR = Path(__file__).resolve().parents[2] / "gateway" / "http" / "ui"


def test_every_permission_a_view_asks_for_is_in_the_table() -> None:
    asked = set()
    for source in [*UI_DIR.glob("*.py"), *UI_DIR.glob("templates/ui/*.html")]:
        if source.suffix == ".html":
            asked.update(re.findall(r"ui\.can\(\"([a-z_.]+)\"\)", source.read_text()))
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(
                node.func, "id", getattr(node.func, "attr", "")
            ) in ("require", "allowed", "refuse", "can"):
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    asked.add(first.value)
    assert asked and asked <= set(security.PERMISSIONS), asked - set(security.PERMISSIONS)
    agent = {p for p, roles in security.PERMISSIONS.items() if "agent" in roles}
    assert agent == {
        "inbox.view",
        "conversation.reveal",
        "conversation.reply",
        "conversation.manage",
        "attachment.download",
    }
    auditor = {p for p, roles in security.PERMISSIONS.items() if "auditor" in roles}
    assert not {"conversation.reply", "conversation.manage", "users.manage"} & auditor
    assert security.PERMISSIONS["users.manage_owners"] == {"owner"}


async def test_an_agent_cannot_reach_user_admin_and_is_audited(ui: UI) -> None:
    agent = await ui.add_user("agent@example.com", "agent")
    client = await ui.sign_in(agent)
    _status, inbox = await page(client, "/inbox")
    assert 'href="/users"' not in inbox and 'href="/channels"' not in inbox
    for path in ("/users", "/channels", "/agents", "/audit"):
        assert (await client.get(path)).status_code == 403, path
    attempts = [
        ("/users/invite", {"email": "mine@example.com", "role": "owner"}),
        (f"/users/{agent.id}/role", {"role": "owner"}),
        ("/channels/support/check", {}),
    ]
    for path, form in attempts:
        response = await post(client, path, form)
        assert response.status_code == 403, path
    assert await ui.sql("SELECT email, role FROM users") == [("agent@example.com", "agent")]
    denied = await ui.audit("permission.denied")
    assert [(e.actor, e.target, e.outcome) for e in denied] == [
        ("admin:agent@example.com", "users.view", "denied"),
        ("admin:agent@example.com", "channels.view", "denied"),
        ("admin:agent@example.com", "agents.view", "denied"),
        ("admin:agent@example.com", "audit.view", "denied"),
        ("admin:agent@example.com", "users.manage", "denied"),
        ("admin:agent@example.com", "users.manage", "denied"),
        ("admin:agent@example.com", "channels.test", "denied"),
    ]
    assert denied[4].detail == {"method": "POST", "path": "/users/invite", "role": "agent"}


async def test_an_admin_cannot_make_or_change_owners(ui: UI) -> None:
    owner = await ui.add_user("owner@example.com", "owner")
    admin = await ui.add_user("admin@example.com", "admin")
    agent = await ui.add_user("agent@example.com", "agent")
    client = await ui.sign_in(admin)
    refused = [
        await post(
            client,
            "/users/invite",
            {"email": "boss@example.com", "role": "owner"},
            from_page="/users",
        ),
        await post(client, f"/users/{agent.id}/role", {"role": "owner"}, from_page="/users"),
        await post(client, f"/users/{owner.id}/role", {"role": "agent"}, from_page="/users"),
        await post(client, f"/users/{owner.id}/deactivate", {}, from_page="/users"),
        await post(client, f"/users/{owner.id}/reset-2fa", {}, from_page="/users"),
    ]
    assert [r.status_code for r in refused] == [403] * 5
    own = await post(client, f"/users/{admin.id}/role", {"role": "owner"}, from_page="/users")
    assert own.status_code == 400  # nobody changes their own account here
    assert sorted(await ui.sql("SELECT email, role, deactivated_at FROM users")) == [
        ("admin@example.com", "admin", None),
        ("agent@example.com", "agent", None),
        ("owner@example.com", "owner", None),
    ]
    assert [e.target for e in await ui.audit("permission.denied")] == ["users.manage_owners"] * 5


async def test_an_auditor_reads_masked_conversations_but_cannot_act(ui: UI) -> None:
    auditor = await ui.add_user("dpo@example.com", "auditor")
    await ui.channel.deliver("t1", "u1", "write to me at kari@example.org")
    await ui.channel.wait_sent(1)
    [[conversation]] = await ui.sql("SELECT id FROM conversations")
    client = await ui.sign_in(auditor)
    path = f"/conversations/{conversation}"
    status, html = await page(client, path)
    assert status == 200 and "kari@example.org" not in html
    assert 'name="text"' not in html and 'value="takeover"' not in html
    form = {"text": "hello from the DPO", "key": "k" * 20, "csrf": csrf_of(html)}
    assert (await client.post(f"{path}/reply", form=form)).status_code == 403
    assert (
        await post(client, f"{path}/status", {"action": "close"}, from_page=path)
    ).status_code == 403
    assert await ui.sql("SELECT count(*) FROM outbox") == [(1,)]
    assert await ui.sql("SELECT status FROM conversations") == [("open",)]
    assert (await client.get("/audit")).status_code == 303  # to /privacy/audit
    assert (await client.get("/privacy/audit")).status_code == 200
    assert (await client.get("/users")).status_code == 403
    # Revealing is allowed, with a reason, and audited.
    assert (
        await post(
            client, f"{path}/reveal", {"reason": "subject access request 17"}, from_page=path
        )
    ).status_code == 303
    _status, html = await page(client, path)
    assert "kari@example.org" in html


async def test_user_changes_sign_the_user_out_and_are_audited(ui: UI) -> None:
    owner = await ui.add_user("owner@example.com", "owner")
    agent = await ui.add_user("agent@example.com", "agent")
    admin_client = await ui.sign_in(owner)
    agent_client = await ui.sign_in(agent)
    assert (await agent_client.get("/inbox")).status_code == 200
    await post(admin_client, f"/users/{agent.id}/role", {"role": "auditor"}, from_page="/users")
    assert (await agent_client.get("/inbox")).status_code == 302  # signed out
    agent_client = await ui.sign_in(agent, steps_ahead=1)
    await post(admin_client, f"/users/{agent.id}/reset-2fa", {}, from_page="/users")
    assert (await agent_client.get("/inbox")).status_code == 302
    await post(admin_client, f"/users/{agent.id}/deactivate", {}, from_page="/users")
    last = await post(admin_client, f"/users/{owner.id}/deactivate", {}, from_page="/users")
    assert last.status_code == 400  # not oneself
    [[role, confirmed, deactivated]] = await ui.sql(
        "SELECT role, totp_confirmed_at, deactivated_at FROM users WHERE id = ?", agent.id
    )
    assert role == "auditor" and confirmed is None and deactivated is not None
    actions = [(e.action, e.target) for e in await ui.audit("user.")]
    assert actions == [
        ("user.role", "user:agent@example.com"),
        ("user.reset_2fa", "user:agent@example.com"),
        ("user.deactivate", "user:agent@example.com"),
    ]
    _status, html = await page(admin_client, "/users")
    assert "deactivated" in html
