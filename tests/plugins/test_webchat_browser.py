"""The web chat page in a real headless Chromium: type, get the reply, reload, still there.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/install-test-deps.sh``) and the pip
package ``selenium``, driven with the system chromedriver: never Selenium Manager, which would
try to download a browser. The sync driver runs in a thread while the server runs in trio.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import pytest
import trio

from gateway.messages import Outbound
from gateway.plugin import HistoryItem
from gateway.testing.context import MemoryChannelContext
from plugins.webchat.testing import open_webchat

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = pathlib.Path(__file__).resolve().parents[2] / "artifacts"
STEP = 20.0
"""Seconds one browser step may take (Chromium's first start is the slow one)."""


def _start_browser(profile: pathlib.Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Without the background-networking flags Chromium keeps trying to reach Google on a
    # closed network and misbehaves; a fresh profile keeps runs independent.
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=900,700",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, STEP, poll_frequency=0.05).until(
        condition, f"timed out waiting for {what}"
    )


def _bubbles(driver: Any) -> list[tuple[str, str, str]]:
    """(side, text, note) of each message shown, the welcome first."""
    from selenium.webdriver.common.by import By

    shown = []
    for item in driver.find_elements(By.CSS_SELECTOR, "#chat-log > li"):
        side = "you" if "msg-in" in item.get_attribute("class") else "bot"
        text = item.find_element(By.CSS_SELECTOR, ".msg-text").text
        notes = item.find_elements(By.CSS_SELECTOR, ".msg-note")
        shown.append((side, text, notes[0].text if notes else ""))
    return shown


def _type_and_send(driver: Any, url: str, text: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(url)
    _wait(driver, lambda d: d.find_element(By.ID, "chat-status").text == "", "the page to connect")
    box = driver.find_element(By.ID, "chat-input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    visitor: str = driver.execute_script(
        "return localStorage.getItem('sovereign-webchat:web:visitor')"
    )
    return visitor


def _wait_for_reply(driver: Any, reply: str) -> list[tuple[str, str, str]]:
    # The ack and the reply may arrive in either order: wait for both to show.
    _wait(
        driver,
        lambda d: any(b[1] == reply for b in _bubbles(d)) and not any(b[2] for b in _bubbles(d)),
        "the reply to show and the message to be marked sent",
    )
    return _bubbles(driver)


def _reload_and_capture(
    driver: Any, reply: str, screenshot: pathlib.Path | None
) -> tuple[list[tuple[str, str, str]], str]:
    driver.refresh()
    _wait(driver, lambda d: any(b[1] == reply for b in _bubbles(d)), "the history after reloading")
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
    visitor: str = driver.execute_script(
        "return localStorage.getItem('sovereign-webchat:web:visitor')"
    )
    return _bubbles(driver), visitor


def _browser_installed() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


def _severe_console_entries(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


async def test_chat_in_a_real_browser(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _browser_installed():
        pytest.fail(
            "Chromium is not installed: run scripts/install-test-deps.sh (apt-get install chromium chromium-driver)"
        )
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager go online
    question = "Do you ship to Lisbon? <b>thanks</b>"
    reply = "Yes, we ship to Lisbon within 3 days."
    context = MemoryChannelContext("web")
    try:
        async with open_webchat(context, title="Acme support", welcome="Hi! How can we help?") as (
            channel,
            url,
        ):
            driver = await trio.to_thread.run_sync(_start_browser, tmp_path / "profile")
            try:
                page = f"{url}/chat/web/"
                # The first attempt finds the journal failing: the page must send it again.
                context.fail_accepts = 1
                visitor = await trio.to_thread.run_sync(_type_and_send, driver, page, question)
                # The daemon's part: the message is committed, the pipeline answers it and the
                # core stores the reply (as history) before the channel sends it.
                with trio.fail_after(STEP):
                    [inbound] = await context.wait_inbound(1)
                stored = HistoryItem(2, "out", reply, "9999-01-01T00:00:00+00:00", "web:1")
                context.outbound_history[inbound.thread_key] = [stored]
                await channel.send(
                    Outbound(1, "reply-1", "web", inbound.thread_key, reply, message_id=2)
                )
                live = await trio.to_thread.run_sync(_wait_for_reply, driver, reply)
                reloaded, visitor_after = await trio.to_thread.run_sync(
                    _reload_and_capture, driver, reply, ARTIFACTS / "webchat.png"
                )
                # A reply the core stored but had not sent when the page read the history,
                # then sent live, carries the same message id both times: shown once.
                thread = context.outbound_history[inbound.thread_key]
                thread.append(
                    HistoryItem(3, "out", "Anything else?", "9999-01-02T00:00:00+00:00", None)
                )
                await trio.to_thread.run_sync(_reload_and_capture, driver, "Anything else?", None)
                await channel.send(
                    Outbound(
                        2, "reply-2", "web", inbound.thread_key, "Anything else?", message_id=3
                    )
                )
                await channel.send(
                    Outbound(3, "reply-3", "web", inbound.thread_key, "Bye!", message_id=4)
                )
                overlapped = await trio.to_thread.run_sync(_wait_for_reply, driver, "Bye!")
                title = await trio.to_thread.run_sync(lambda: driver.title)
                errors = await trio.to_thread.run_sync(_severe_console_entries, driver)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(driver.quit)
    finally:
        await context.aclose()

    assert title == "Acme support"
    assert inbound.text == question
    assert context.fail_accepts == 0 and len(context.inbound) == 1
    assert inbound.thread_key == visitor and len(visitor) == 32
    expected = [("bot", "Hi! How can we help?", ""), ("you", question, ""), ("bot", reply, "")]
    assert live == expected, "the message was not acknowledged or the reply did not show"
    assert reloaded == expected, "the conversation did not survive a reload"
    assert visitor_after == visitor
    assert overlapped == [*expected, ("bot", "Anything else?", ""), ("bot", "Bye!", "")]
    assert errors == [], f"the page logged errors: {errors}"
