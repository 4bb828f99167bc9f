"""Adding, editing and removing channels and providers from the admin UI against a real daemon:
every plugin's form, a Telegram channel against the fake Bot API that then answers, problems
shown by field, secrets never shown again (pages, audit, logs), file tables read-only,
two admins editing at once."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
import trio

from gateway import managed
from gateway.plugin import Registry, load_registry
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider
from gateway.testing.fake_telegram import open_fake_telegram
from tests.ui.conftest import UI, Account, page, post

TOKEN = "777001:Form-Typed_token-never-shown"
API_KEY = "sk-typed-into-the-form-0123456789"


@pytest.fixture
def registry() -> Registry:
    """The installed plugins (the forms offer them) plus the fakes the base config uses."""
    registry = load_registry()
    registry.add("channel", "fake", FakeChannel)
    registry.add("llm", "fake", FakeProvider)
    return registry


def names_in(html: str) -> set[str]:
    return set(re.findall(r'name="([a-z_]+)"', html))


def telegram_form(api_base: str, **more: str) -> dict[str, str]:
    return {
        "name": "tg",
        "plugin": "telegram",
        "agent": "default",
        "enabled": "on",
        "token": TOKEN,
        "mode": "polling",
        "api_base": api_base,
        "poll_timeout": "1",
        **more,
    }


async def owner(ui: UI) -> tuple[Account, Any]:
    account = await ui.add_user("owner@example.com", "owner")
    return account, await ui.sign_in(account)


async def test_every_built_in_plugin_has_a_form(ui: UI) -> None:
    _account, client = await owner(ui)
    status, chooser = await page(client, "/channels/new")
    installed = load_registry()
    assert status == 200
    for plugin in installed.channels:
        assert f'id="plugin-{plugin}"' in chooser
    for kind, plugins in (("channels", installed.channels), ("providers", installed.providers)):
        for plugin, info in plugins.items():
            status, html = await page(client, f"/{kind}/new?plugin={plugin}")
            assert status == 200, (kind, plugin)
            fields = set(info.cls.Config.model_fields) - {"plugin"}
            assert fields <= names_in(html), (plugin, fields - names_in(html))
            for name, field in info.cls.Config.model_fields.items():
                if "Secret" in str(field.annotation):
                    assert re.search(rf'type="password" id="f-{name}" name="{name}" value=""', html)
    status, html = await page(client, "/agents/new")
    assert status == 200 and 'name="system_prompt"' in html and 'name="failover"' in html
    assert '<option value="model">1. model</option>' in html  # the defined providers
    assert "knowledge_dir" not in names_in(html)


async def test_add_a_telegram_channel_that_answers_then_edit_and_remove_it(
    ui: UI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    account, client = await owner(ui)
    async with open_fake_telegram(TOKEN) as tg:
        form = telegram_form(tg.api_base)
        response = await post(client, "/channels/new", form, from_page="/channels/new")
        assert response.status_code == 303, await response.get_data(as_text=True)
        assert response.location == "/channels?saved=channel+tg#channel-tg"
        status, html = await page(client, response.location.split("#")[0])
        assert 'id="channel-tg"' in html and "Channel tg saved: the gateway applied it" in html
        assert TOKEN not in html
        # It runs: a message on the fake platform is answered by the agent.
        tg.push_message(4242, "hello from Telegram")
        with trio.fail_after(10):
            [reply] = await tg.wait_sent(1)
        assert reply.text == "echo: hello from Telegram"
        row = await managed.get(ui.gw.running.services, "channels", "tg")
        assert row is not None and row.version == 1 and row.updated_by == account_actor(account)
        assert row.table == {
            "plugin": "telegram",
            "token": "store:channels.tg.token",
            "api_base": tg.api_base,
            "poll_timeout": 1,
        }  # defaults (mode, agent, enabled...) are not written
        # Edit: the token is not shown; left blank it is kept.
        status, html = await page(client, "/channels/tg/edit")
        assert status == 200 and TOKEN not in html
        assert 'placeholder="stored; leave blank to keep"' in html
        assert 'name="version" value="1"' in html
        edited = {**form, "token": "", "poll_timeout": "2", "version": "1"}
        del edited["name"]
        response = await post(client, "/channels/tg/edit", edited, from_page="/channels/tg/edit")
        assert response.status_code == 303, await response.get_data(as_text=True)
        config = ui.gw.running.services.config
        assert config.channels["tg"].config.token.reveal() == TOKEN  # type: ignore[attr-defined]
        assert config.channels["tg"].config.poll_timeout == 2  # type: ignore[attr-defined]
        tg.push_message(4242, "still there?")
        with trio.fail_after(10):
            await tg.wait_sent(2)
        # Disable it: it stops, its table stays; then remove it: its conversation stays.
        disabled = {**edited, "version": "2"}
        del disabled["enabled"]  # an unticked checkbox is not sent
        response = await post(client, "/channels/tg/edit", disabled, from_page="/channels")
        assert response.status_code == 303, await response.get_data(as_text=True)
        assert "tg" not in ui.gw.running.pipeline.channels
        _status, html = await page(client, "/channels")
        assert re.search(r'id="channel-tg">.*?<dd>disabled', html, re.S)
        response = await post(
            client, "/channels/tg/remove", {"version": "3"}, from_page="/channels/tg/edit"
        )
        assert response.status_code == 303 and response.location.startswith("/channels?removed=")
        assert "tg" not in ui.gw.running.services.config.channels
        assert await managed.get(ui.gw.running.services, "channels", "tg") is None
        assert await ui.sql("SELECT count(*) FROM conversations WHERE channel = 'tg'") == [(1,)]
    entries = await ui.audit("config.")
    assert [(e.action, e.target) for e in entries] == [
        ("config.create", "channels:tg"),
        ("config.update", "channels:tg"),
        ("config.update", "channels:tg"),
        ("config.remove", "channels:tg"),
    ]
    assert entries[0].detail is not None and entries[0].detail["secrets_set"] == ["token"]
    assert TOKEN not in json.dumps([e.detail for e in entries])
    assert await ui.sql("SELECT count(*) FROM vault") == [(0,)]  # its secrets went with it
    assert not [r for r in caplog.records if TOKEN in r.getMessage()]
    assert any("saved channels.tg" in r.getMessage() for r in caplog.records)


def account_actor(account: Account) -> str:
    return f"admin:{account.email}"


async def test_problems_show_by_field_and_nothing_is_saved(ui: UI) -> None:
    _account, client = await owner(ui)
    form = telegram_form("ftp://nowhere", poll_timeout="99", residency="residency = [")
    response = await post(client, "/channels/new", form, from_page="/channels/new")
    html = await response.get_data(as_text=True)
    assert response.status_code == 400
    assert 'id="form-errors"' in html and "Not saved." in html
    poll = re.search(r'id="err-poll_timeout"><strong>([^<]*)</strong><br>Fix: ([^<]*)<', html)
    assert poll is not None and poll.groups() == (
        "Input should be less than or equal to 50",
        "enter a whole number (at least 1, at most 50), or leave it blank for the default",
    )
    assert 'aria-invalid="true"' in html and 'href="#f-api_base"' in html
    assert "api_base must be an http(s) URL such as https://api.telegram.org" in html
    assert 'id="err-residency"><strong>not valid TOML at line 1' in html
    assert "secrets you typed were not kept" in html
    assert TOKEN not in html  # not echoed back, even though it was valid
    assert 'value="ftp://nowhere"' in html  # everything else is
    # A bad name, and a name the config file already has.
    for name, problem in (("no spaces", "not a valid name"), ("support", "exists already")):
        response = await post(
            client,
            "/channels/new",
            telegram_form("https://api.telegram.org", name=name),
            from_page="/channels/new",
        )
        assert response.status_code == 400 and problem in await response.get_data(as_text=True)
    # The whole config is checked too: a provider the agent's failover cannot be the same...
    response = await post(
        client,
        "/agents/new",
        {"name": "sales", "provider": "model", "handoff_categories": "billing"},
        from_page="/agents/new",
    )
    html = await response.get_data(as_text=True)
    assert response.status_code == 400
    assert re.search(
        r'id="err-handoff_categories"><strong>handoff_categories names categories that are '
        r"not defined: \[&#39;billing&#39;\]</strong><br>Fix: define them in categories",
        html,
    ), html
    assert await ui.sql("SELECT count(*) FROM managed_tables") == [(0,)]
    assert await ui.audit("config.") == []


async def test_a_provider_keeps_its_key_in_the_vault(
    ui: UI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _account, client = await owner(ui)
    form = {
        "name": "cloud",
        "plugin": "openai",
        "api_key": API_KEY,
        "model": "gpt-4o-mini",
        "base_url": "http://127.0.0.1:9/v1",
        "region": "EU",
        "legal_basis": "contract",
    }
    response = await post(client, "/providers/new", form, from_page="/providers/new?plugin=openai")
    assert response.status_code == 303, await response.get_data(as_text=True)
    assert response.location == "/agents?saved=provider+cloud#provider-cloud"
    provider = ui.gw.running.services.config.providers["cloud"]
    assert provider.config.api_key.reveal() == API_KEY  # type: ignore[attr-defined]
    for path in ("/agents", "/providers/cloud/edit"):
        status, html = await page(client, path)
        assert status == 200 and API_KEY not in html, path
    _status, html = await page(client, "/agents")
    assert 'id="edit-provider-cloud"' in html and "store:providers.cloud.api_key" in html
    [[sealed]] = await ui.sql("SELECT sealed FROM vault WHERE name = 'providers.cloud.api_key'")
    assert API_KEY.encode() not in sealed
    # Edited with the key left blank: the model changes, the key stays.
    edited = {**form, "api_key": "", "model": "gpt-4.1-mini", "version": "1"}
    response = await post(client, "/providers/cloud/edit", edited, from_page="/agents")
    assert response.status_code == 303, await response.get_data(as_text=True)
    provider = ui.gw.running.services.config.providers["cloud"]
    assert provider.config.model == "gpt-4.1-mini"  # type: ignore[attr-defined]
    assert provider.config.api_key.reveal() == API_KEY  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if API_KEY in r.getMessage()]
    # In use by an agent, it cannot be removed: the page says which table needs it.
    response = await post(
        client,
        "/agents/new",
        {"name": "sales", "provider": "model", "failover": "cloud"},
        from_page="/agents/new",
    )
    assert response.status_code == 303, await response.get_data(as_text=True)
    response = await post(
        client, "/providers/cloud/remove", {"version": "2"}, from_page="/providers/cloud/edit"
    )
    html = await response.get_data(as_text=True)
    assert response.status_code == 400
    assert "[agents.sales] failover: provider &#39;cloud&#39; is not defined" in html
    assert "cloud" in ui.gw.running.services.config.providers


async def test_tables_from_the_config_file_are_read_only(ui: UI) -> None:
    _account, client = await owner(ui)
    _status, html = await page(client, "/channels")
    assert 'id="channel-support"' in html and 'id="edit-support"' not in html
    assert "config file" in html
    for path in ("/channels/support/edit", "/agents/default/edit", "/providers/model/edit"):
        status, html = await page(client, path)
        assert status == 409 and "systemctl reload sovereign-gateway" in html, path
    response = await post(client, "/channels/support/edit", {"agent": "default"})
    assert response.status_code == 409
    response = await post(client, "/channels/support/remove", {"version": "1"})
    assert response.status_code == 409
    assert (await client.get("/channels/nope/edit")).status_code == 404
    assert "support" in ui.gw.running.services.config.channels


async def test_the_second_of_two_admins_is_told_it_changed(ui: UI) -> None:
    _account, first = await owner(ui)
    admin = await ui.add_user("admin@example.com", "admin")
    second = await ui.sign_in(admin)
    form = {"name": "helper", "provider": "model", "system_prompt": "Version one."}
    response = await post(first, "/agents/new", form, from_page="/agents/new")
    assert response.status_code == 303
    _status, mine = await page(first, "/agents/helper/edit")
    _status, theirs = await page(second, "/agents/helper/edit")
    assert 'name="version" value="1"' in mine and 'name="version" value="1"' in theirs
    edit = {"provider": "model", "version": "1"}
    saved = await post(
        first, "/agents/helper/edit", {**edit, "system_prompt": "First."}, from_page="/agents"
    )
    assert saved.status_code == 303
    late = await post(
        second, "/agents/helper/edit", {**edit, "system_prompt": "Second."}, from_page="/agents"
    )
    html = await late.get_data(as_text=True)
    assert late.status_code == 409
    assert "this agent was changed since you opened it" in html
    assert "by admin:owner@example.com" in html and "Open the current version" in html
    assert "Second." in html  # the late editor's text is still on the page to copy
    assert ui.gw.running.services.config.agents["helper"].system_prompt == "First."
    row = await managed.get(ui.gw.running.services, "agents", "helper")
    assert row is not None and row.version == 2
    # Removing with the old version is refused the same way.
    late = await post(second, "/agents/helper/remove", {"version": "1"}, from_page="/agents")
    assert late.status_code == 409 and "helper" in ui.gw.running.services.config.agents


@pytest.mark.parametrize("role", ["agent", "auditor"])
async def test_only_owners_and_admins_edit_and_refusals_are_audited(ui: UI, role: str) -> None:
    _account, boss = await owner(ui)
    response = await post(
        boss, "/agents/new", {"name": "helper", "provider": "model"}, from_page="/agents/new"
    )
    assert response.status_code == 303
    someone = await ui.add_user(f"{role}@example.com", role)
    client = await ui.sign_in(someone)
    start = "/inbox"
    gets = ["/channels/new", "/channels/new?plugin=telegram", "/providers/new", "/agents/new"]
    gets += ["/agents/helper/edit"]
    for path in gets:
        assert (await client.get(path)).status_code == 403, path
    posts = [
        ("/channels/new", telegram_form("https://api.telegram.org")),
        ("/providers/new", {"name": "x", "plugin": "faq"}),
        ("/agents/new", {"name": "x", "provider": "model"}),
        ("/agents/helper/edit", {"provider": "model", "version": "1"}),
        ("/agents/helper/remove", {"version": "1"}),
        ("/agents/helper/knowledge/remove", {"file": "a.md"}),
        ("/channels/support/register-webhook", {}),
    ]
    for path, form in posts:
        assert (await post(client, path, form, from_page=start)).status_code == 403, path
    denied = [
        e for e in await ui.audit("permission.denied") if e.actor.endswith(f"{role}@example.com")
    ]
    assert [e.target for e in denied] == [
        "channels.edit",
        "channels.edit",
        "providers.edit",
        "agents.edit",
        "agents.edit",
        "channels.edit",
        "providers.edit",
        "agents.edit",
        "agents.edit",
        "agents.edit",
        "agents.edit",
        "channels.edit",
    ]
    _status, inbox = await page(client, start)
    assert 'href="/channels/new"' not in inbox
    assert set(ui.gw.running.services.config.agents) == {"default", "helper"}
    assert [e.action for e in await ui.audit("config.")] == ["config.create"]


async def test_a_form_without_its_csrf_token_is_refused_and_audited(ui: UI) -> None:
    _account, client = await owner(ui)
    form = {"name": "helper", "provider": "model"}
    for token in (None, "forged"):
        sent = form if token is None else {**form, "csrf": token}
        response = await client.post("/agents/new", form=sent)
        assert response.status_code == 403
        assert "This form expired" in await response.get_data(as_text=True)
    assert [e.action for e in await ui.audit("csrf.")] == ["csrf.refused", "csrf.refused"]
    assert "helper" not in ui.gw.running.services.config.agents


async def test_an_optional_secret_is_removed_with_its_box(ui: UI) -> None:
    _account, client = await owner(ui)
    async with open_fake_telegram(TOKEN) as tg:
        form = telegram_form(tg.api_base, webhook_secret="hook_secret-1")
        response = await post(client, "/channels/new", form, from_page="/channels/new")
        assert response.status_code == 303, await response.get_data(as_text=True)
        config = ui.gw.running.services.config
        assert config.channels["tg"].config.webhook_secret.reveal() == "hook_secret-1"  # type: ignore[attr-defined]
        status, html = await page(client, "/channels/tg/edit")
        assert 'name="webhook_secret.clear"' in html  # optional and stored
        assert 'name="token.clear"' not in html  # required: replaced, never removed
        edited = {**form, "token": "", "webhook_secret": "", "version": "1"}
        edited["webhook_secret.clear"] = "on"
        del edited["name"]
        response = await post(client, "/channels/tg/edit", edited, from_page="/channels/tg/edit")
        assert response.status_code == 303, await response.get_data(as_text=True)
        config = ui.gw.running.services.config
        assert config.channels["tg"].config.webhook_secret is None  # type: ignore[attr-defined]
        assert config.channels["tg"].config.token.reveal() == TOKEN  # type: ignore[attr-defined]
        assert await ui.sql("SELECT name FROM vault") == [("channels.tg.token",)]
