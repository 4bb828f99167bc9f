"""Connecting a channel against a fake platform, in a real headless Chromium against a real
daemon (issue 7): sign in, add a Telegram channel in polling mode whose api_base is the fake
Bot API (gateway.testing.fake_telegram), save, and watch a message sent on the fake platform
arrive in the inbox live; then add an agent with a knowledge file. Screenshots:
artifacts/ui-channel-form.png and artifacts/ui-agent-form.png.

Needs Debian's ``chromium`` and ``chromium-driver`` (scripts/install-test-deps.sh), started as
the other admin UI browser tests do (tests/ui/test_admin_browser.py).
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import trio

from gateway import users
from gateway.plugin import load_registry
from gateway.testing.daemon import http_config, open_gateway
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider
from gateway.testing.fake_telegram import open_fake_telegram
from plugins.webchat.browser import (
    CHROMEDRIVER,
    CHROMIUM,
    STEP,
    browser_installed,
    console_entries,
    start_browser,
)
from plugins.webchat.browser import wait as _wait
from tests.ui.test_admin_browser import PASSWORD, rows, shot, sign_in

TOKEN = "987654:Browser-added-channel-token"
CONFIG = (
    http_config(0, public_url=False)
    + """
[channels.support]
plugin = "fake"
[agents.default]
provider = "model"
[providers.model]
plugin = "fake"
[admin_ui]
live_poll_seconds = 0.1
"""
)


def fill(driver: Any, field: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, f"f-{field}")
    element.clear()
    element.send_keys(text)


def add_telegram_channel(driver: Any, base: str, api_base: str) -> str:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/channels")
    _wait(driver, lambda d: d.find_elements(By.ID, "add-channel"), "the channels page")
    driver.find_element(By.ID, "add-channel").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "plugin-telegram"), "the plugin choice")
    driver.find_element(By.ID, "plugin-telegram").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "f-token"), "the Telegram form")
    fill(driver, "name", "tg")
    fill(driver, "token", TOKEN)
    fill(driver, "api_base", api_base)
    fill(driver, "poll_timeout", "1")
    driver.set_window_size(1200, 1900)
    shot(driver, "channel-form")
    driver.set_window_size(1200, 860)
    driver.find_element(By.ID, "save").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "done"), "the saved notice")
    state = driver.find_element(By.CSS_SELECTOR, "#channel-tg .badge").text
    html: str = driver.page_source
    return f"{state}\n{html}"


def watch_inbox(driver: Any, base: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/inbox")
    _wait(
        driver,
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-live") == "ready",
        "the live stream",
    )


def arrived(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    _wait(driver, lambda d: rows(d), "the Telegram conversation to appear live in the inbox")
    driver.find_element(By.CSS_SELECTOR, "#inbox-rows a.contact").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "messages"), "the conversation")
    return str(driver.find_element(By.ID, "messages").text)


def add_agent(driver: Any, base: str, knowledge: pathlib.Path) -> str:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/agents")
    _wait(driver, lambda d: d.find_elements(By.ID, "add-agent"), "the agents page")
    driver.find_element(By.ID, "add-agent").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "f-system_prompt"), "the agent form")
    from selenium.webdriver.support.select import Select

    fill(driver, "name", "sales")
    Select(driver.find_element(By.ID, "f-provider")).select_by_visible_text("model")
    fill(driver, "system_prompt", "You answer questions about the premium plan. Be brief.")
    fill(driver, "redact_patterns", "ORDER_REF = ORD-[0-9]{6}")
    fill(driver, "residency", '[residency]\ncontact_details = ["local"]')
    driver.find_element(By.ID, "save").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "edit-agent-sales"), "the new agent")
    driver.find_element(By.ID, "edit-agent-sales").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "knowledge-file"), "the knowledge form")
    driver.find_element(By.ID, "knowledge-file").send_keys(str(knowledge))
    driver.find_element(By.ID, "upload").click()
    _wait(
        driver,
        lambda d: knowledge.name in d.find_element(By.ID, "knowledge-files").text,
        "the uploaded file in the list",
    )
    driver.set_window_size(1200, 2400)
    driver.execute_script("window.scrollTo(0, 0)")
    shot(driver, "agent-form")
    driver.set_window_size(1200, 860)
    html: str = driver.page_source
    return html


async def test_connect_a_channel_against_a_fake_platform(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not browser_installed():
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: run scripts/install-test-deps.sh")
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager go online
    registry = load_registry()
    registry.add("channel", "fake", FakeChannel)
    registry.add("llm", "fake", FakeProvider)
    knowledge = tmp_path / "premium-plan.md"
    knowledge.write_text("# Premium plan\n\nThe premium plan costs 42 euros a month.\n")
    async with open_fake_telegram(TOKEN) as tg, open_gateway(CONFIG, registry, tmp_path) as gw:
        store = gw.running.store

        def owner(db: Any) -> str:
            made = users.add_user(db.conn, "owner@example.com", PASSWORD, "owner", created_by="t")
            db.conn.execute("UPDATE users SET totp_confirmed_at = ?", (users.now(),))
            assert made.totp_secret is not None
            return made.totp_secret

        secret = await store.write("owner", owner)
        base = gw.running.admin_urls[0]
        driver = await trio.to_thread.run_sync(start_browser, tmp_path / "profile")
        await trio.to_thread.run_sync(driver.set_window_size, 1200, 860)
        try:
            await trio.to_thread.run_sync(sign_in, driver, base, secret)
            saved = await trio.to_thread.run_sync(add_telegram_channel, driver, base, tg.api_base)
            await trio.to_thread.run_sync(watch_inbox, driver, base)
            tg.push_message(4242, "Hello from the fake platform", first_name="Kari")
            shown = await trio.to_thread.run_sync(arrived, driver)
            with trio.fail_after(STEP):
                [answer] = await tg.wait_sent(1)
            agent_page = await trio.to_thread.run_sync(add_agent, driver, base, knowledge)
            errors = await trio.to_thread.run_sync(console_entries, driver)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(driver.quit)
        config = gw.running.services.config
        actions = await store.read(
            "a",
            lambda db: db.conn.execute(
                "SELECT action, target FROM audit_log ORDER BY id"
            ).fetchall(),
        )
    state, html = saved.split("\n", 1)
    assert state == "running" and TOKEN not in html
    assert "Hello from the fake platform" in shown
    assert answer.text == "echo: Hello from the fake platform"
    assert config.channels["tg"].config.token.reveal() == TOKEN  # type: ignore[attr-defined]
    assert config.agents["sales"].knowledge_dir == config.data_dir / "knowledge" / "sales"
    assert "premium-plan.md" in agent_page and "ORDER_REF = ORD-[0-9]{6}" in agent_page
    assert [a for a in actions if a[0] != "login.ok"] == [
        ("config.create", "channels:tg"),
        ("config.create", "agents:sales"),
        ("config.update", "agents:sales"),  # the first upload points knowledge_dir at its folder
        ("agent.knowledge.add", "agents:sales"),
    ]
    assert errors == [], f"the pages logged errors (CSP violations show here): {errors}"
