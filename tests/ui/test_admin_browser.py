"""The admin UI end to end in a real headless Chromium against a real daemon: sign in with a
password and a TOTP code, watch a Telegram message (through the fake Bot API's webhook) arrive
in the inbox live, take the conversation over, reply as a person (it reaches the fake Bot
API), see the user's next message arrive live, hand it back. Screenshots of the main pages go
to artifacts/ui-*.png.

Needs Debian's ``chromium`` and ``chromium-driver`` (scripts/install-test-deps.sh) and
``selenium`` driven with the system chromedriver (never Selenium Manager), started as the web
chat's browser tests do (plugins.webchat.browser). The sync driver runs in a worker thread
while the daemon runs in trio; every wait is a WebDriverWait on what the page shows, or a trio
wait on the fake servers.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pyotp
import pytest
import trio

from gateway import users
from gateway.plugin import load_registry
from gateway.testing.daemon import free_port, http_config, open_gateway
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

ARTIFACTS = pathlib.Path(__file__).resolve().parents[2] / "artifacts"
TOKEN = "123456:UI-e2e-token"
SECRET = "ui-e2e-Webhook_secret"
PASSWORD = "correct horse battery staple"
REPLY = "A person here: your parcel ships tomorrow."


def config(tg_base: str, port: int) -> str:
    return (
        http_config(port).replace('data_dir = "data"', 'data_dir = "data"\nshutdown_grace = 2')
        + f"""
[channels.support_bot]
plugin = "telegram"
token = "env:TELEGRAM_TOKEN"
mode = "webhook"
api_base = "{tg_base}"
webhook_secret = "env:WEBHOOK_SECRET"
[agents.default]
provider = "model"
[providers.model]
plugin = "fake"
[admin_ui]
live_poll_seconds = 0.1
"""
    )


def update(update_id: int, text: str) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 1700000000,
            "text": text,
            "chat": {"id": 4242, "type": "private", "first_name": "Kari"},
            "from": {"id": 4242, "is_bot": False, "first_name": "Kari", "last_name": "Nordmann"},
        },
    }


def shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"ui-{name}.png"))


def sign_in(driver: Any, base: str, secret: str) -> str:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/inbox")
    _wait(driver, lambda d: d.find_elements(By.ID, "sign-in"), "the sign-in page")
    shot(driver, "login")
    driver.find_element(By.ID, "email").send_keys("owner@example.com")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "sign-in").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "code"), "the code page")
    driver.find_element(By.ID, "code").send_keys(pyotp.TOTP(secret).now())
    driver.find_element(By.ID, "verify").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "inbox-rows"), "the inbox")
    _wait(
        driver,
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-live") == "ready",
        "the live stream",
    )
    url: str = driver.current_url
    return url


def rows(driver: Any) -> list[str]:
    found: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#inbox-rows tr[data-conversation]'),"
        " e => e.getAttribute('data-conversation'));"
    )
    return found


def open_conversation(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    _wait(driver, lambda d: rows(d), "the conversation to appear live in the inbox")
    shot(driver, "inbox")
    name = driver.find_element(By.CSS_SELECTOR, "#inbox-rows a.contact").text
    driver.find_element(By.CSS_SELECTOR, "#inbox-rows a.contact").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "messages"), "the conversation")
    return str(name)


def status(driver: Any) -> str:
    # Read in one script: the live refresh may replace the element between two driver calls.
    return str(
        driver.execute_script(
            "var e = document.getElementById('conversation-status'); return e ? e.textContent : '';"
        )
    )


def click_and_wait_status(driver: Any, button: str, expected: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, button).click()
    _wait(driver, lambda d: status(d) == expected, f"status {expected}")
    _wait(
        driver,
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-live") == "ready",
        "the live stream",
    )


def send_reply(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "reply-text").send_keys(REPLY)
    driver.find_element(By.ID, "send-reply").click()
    _wait(driver, lambda d: REPLY in texts(d), "the reply in the conversation")
    _wait(
        driver,
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-live") == "ready",
        "the live stream",
    )


def texts(driver: Any) -> list[str]:
    found: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#messages .msg-text'), e => e.textContent);"
    )
    return found


def visit(driver: Any, base: str, path: str, marker: str, name: str) -> str:
    from selenium.webdriver.common.by import By

    driver.get(base + path)
    _wait(driver, lambda d: d.find_elements(By.ID, marker), path)
    if path == "/channels":  # the "test connection" button: the plugin's check() on the fake
        driver.find_element(By.CSS_SELECTOR, "#channel-support_bot button[type=submit]").click()
        _wait(driver, lambda d: d.find_elements(By.ID, "check-result"), "the check result")
    shot(driver, name)
    html: str = driver.page_source
    return html


async def test_sign_in_watch_take_over_reply_hand_back(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not browser_installed():
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: run scripts/install-test-deps.sh")
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager go online
    registry = load_registry()
    registry.add("llm", "fake", FakeProvider)
    env = {"TELEGRAM_TOKEN": TOKEN, "WEBHOOK_SECRET": SECRET}
    port = free_port()
    async with open_fake_telegram(TOKEN) as tg:
        async with open_gateway(config(tg.api_base, port), registry, tmp_path, environ=env) as gw:
            store = gw.running.store

            def owner(db: Any) -> str:
                made = users.add_user(
                    db.conn, "owner@example.com", PASSWORD, "owner", created_by="test"
                )
                db.conn.execute("UPDATE users SET totp_confirmed_at = ?", (users.now(),))
                assert made.totp_secret is not None
                return made.totp_secret

            secret = await store.write("owner", owner)
            base = gw.running.admin_urls[0]
            driver = await trio.to_thread.run_sync(start_browser, tmp_path / "profile")
            await trio.to_thread.run_sync(driver.set_window_size, 1200, 860)
            try:
                landed = await trio.to_thread.run_sync(sign_in, driver, base, secret)
                assert tg.webhook_url is not None  # registered at start (webhook mode)
                assert (
                    await tg.post_webhook(tg.webhook_url, update(1, "Where is my parcel?"), SECRET)
                    == 200
                )
                with trio.fail_after(STEP):
                    (ai,) = await tg.wait_sent(1)
                name = await trio.to_thread.run_sync(open_conversation, driver)
                await trio.to_thread.run_sync(click_and_wait_status, driver, "take-over", "handoff")
                await trio.to_thread.run_sync(send_reply, driver)
                with trio.fail_after(STEP):
                    sent = await tg.wait_sent(2)
                # The user writes again while a person has the conversation: it shows up live,
                # and the AI stays silent.
                assert (
                    await tg.post_webhook(tg.webhook_url, update(2, "Thank you so much"), SECRET)
                    == 200
                )
                await trio.to_thread.run_sync(
                    lambda: _wait(
                        driver, lambda d: "Thank you so much" in texts(d), "the new message live"
                    )
                )
                await gw.wait_idle()
                await trio.to_thread.run_sync(shot, driver, "conversation")
                await trio.to_thread.run_sync(click_and_wait_status, driver, "hand-back", "open")
                pages = {}
                for path, marker, picture in (
                    ("/users", "invite", "users"),
                    ("/channels", "channel-support_bot", "channels"),
                    ("/agents", "agent-default", "agents"),
                    ("/privacy/audit", "audit-verify", "audit"),
                ):
                    pages[path] = await trio.to_thread.run_sync(
                        visit, driver, base, path, marker, picture
                    )
                errors = await trio.to_thread.run_sync(console_entries, driver)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(driver.quit)
            statuses = await store.read(
                "s", lambda db: db.conn.execute("SELECT status FROM conversations").fetchall()
            )
            actions = await store.read(
                "a",
                lambda db: [
                    r[0] for r in db.conn.execute("SELECT action FROM audit_log ORDER BY id")
                ],
            )

    assert landed.endswith("/inbox")
    assert ai.text == "echo: Where is my parcel?"
    assert [m.text for m in sent] == [ai.text, REPLY] and len(tg.sent) == 2
    assert (
        name == "K\u2022\u2022\u2022 N\u2022\u2022\u2022\u2022\u2022\u2022\u2022"
    )  # masked in the list
    assert statuses == [("open",)]
    assert actions == [
        "login.ok",
        "conversation.takeover",
        "conversation.reply",
        "conversation.release",
        "channel.check",
    ]
    assert f"http://127.0.0.1:{port}/webhooks/support_bot" in pages["/channels"]
    assert "<strong>OK</strong> channel support_bot: telegram: bot @" in pages["/channels"]
    assert "webhook" in pages["/channels"] and TOKEN not in pages["/channels"]
    assert errors == [], f"the pages logged errors (CSP violations show here): {errors}"
