"""The web chat page (the widget in page mode) in a real headless Chromium: type, get the reply,
reload, still there. Helpers and requirements: plugins/webchat/browser.py."""

from __future__ import annotations

import pathlib

import pytest
import trio

from gateway.messages import Outbound
from gateway.plugin import HistoryItem
from gateway.testing.context import MemoryChannelContext
from plugins.webchat import browser
from plugins.webchat.testing import open_webchat

ARTIFACTS = pathlib.Path(__file__).resolve().parents[2] / "artifacts"
STEP = browser.STEP


def _open_and_send(driver, url: str, gateway: str, text: str) -> str:
    driver.get(url)
    browser.wait_ready(driver)
    browser.type_and_send(driver, text)
    visitor: str = browser.local_storage(driver, browser.visitor_key(gateway, "web"))
    return visitor


def _reload_and_capture(driver, gateway: str, reply: str, screenshot: pathlib.Path | None):
    driver.refresh()
    browser.wait(
        driver,
        lambda d: browser.has_chat(d) and any(b[1] == reply for b in browser.bubbles(d)),
        "the history after reloading",
    )
    if screenshot is not None:
        browser.save_screenshot(driver, screenshot)
    visitor = browser.local_storage(driver, browser.visitor_key(gateway, "web"))
    return browser.bubbles(driver), visitor


async def test_chat_page_in_a_real_browser(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not browser.browser_installed():
        pytest.fail(
            "Chromium is not installed: run scripts/install-test-deps.sh (apt-get install chromium chromium-driver)"
        )
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager go online
    question = "Do you ship to Lisbon? <b>thanks</b>"
    reply = "Yes, we ship to Lisbon within 3 days."
    context = MemoryChannelContext("web")
    run = trio.to_thread.run_sync
    try:
        async with open_webchat(context, title="Acme support", welcome="Hi! How can we help?") as (
            channel,
            url,
        ):
            driver = await run(browser.start_browser, tmp_path / "profile")
            try:
                page = f"{url}/chat/web/"
                # The first attempt finds the journal failing: the page must send it again.
                context.fail_accepts = 1
                visitor = await run(_open_and_send, driver, page, url, question)
                # The daemon's part: the message is committed, the pipeline answers it and the
                # core stores the reply (as history) before the channel sends it.
                with trio.fail_after(STEP):
                    [inbound] = await context.wait_inbound(1)
                stored = HistoryItem(2, "out", reply, "9999-01-01T00:00:00+00:00", "web:1")
                context.outbound_history[inbound.thread_key] = [stored]
                await channel.send(
                    Outbound(1, "reply-1", "web", inbound.thread_key, reply, message_id=2)
                )
                live = await run(browser.wait_for_reply, driver, reply)
                reloaded, visitor_after = await run(
                    _reload_and_capture, driver, url, reply, ARTIFACTS / "webchat.png"
                )
                # A reply the core stored but had not sent when the page read the history,
                # then sent live, carries the same message id both times: shown once.
                thread = context.outbound_history[inbound.thread_key]
                thread.append(
                    HistoryItem(3, "out", "Anything else?", "9999-01-02T00:00:00+00:00", None)
                )
                await run(_reload_and_capture, driver, url, "Anything else?", None)
                await channel.send(
                    Outbound(
                        2, "reply-2", "web", inbound.thread_key, "Anything else?", message_id=3
                    )
                )
                await channel.send(
                    Outbound(3, "reply-3", "web", inbound.thread_key, "Bye!", message_id=4)
                )
                overlapped = await run(browser.wait_for_reply, driver, "Bye!")
                title = await run(lambda: driver.title)
                state = await run(browser.chat_state, driver)
                errors = await run(browser.console_entries, driver)
            finally:
                with trio.CancelScope(shield=True):
                    await run(driver.quit)
    finally:
        await context.aclose()

    assert title == "Acme support"
    assert inbound.text == question
    assert context.fail_accepts == 0 and len(context.inbound) == 1
    assert inbound.thread_key == channel.thread_key(visitor) and len(visitor) == 32
    assert state == ("ready", "websocket")
    expected = [("bot", "Hi! How can we help?", ""), ("you", question, ""), ("bot", reply, "")]
    assert live == expected, "the message was not acknowledged or the reply did not show"
    assert reloaded == expected, "the conversation did not survive a reload"
    assert visitor_after == visitor
    assert overlapped == [*expected, ("bot", "Anything else?", ""), ("bot", "Bye!", "")]
    assert errors == [], f"the page logged errors: {errors}"
