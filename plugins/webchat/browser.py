"""Drive the chat widget in a real headless Chromium, for tests.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/install-test-deps.sh``) and the pip
package ``selenium``, driven with the system chromedriver: never Selenium Manager, which would
try to download a browser (set ``SE_OFFLINE=true``). Every function here is synchronous (Selenium
is): call them with ``trio.to_thread.run_sync`` while the servers run in trio.

The widget lives in an open Shadow DOM under a ``<sovereign-chat>`` element whose
``data-state`` ("idle", "connecting", "ready") and ``data-transport`` ("websocket", "sse") say
what it is doing.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STEP = 20.0
"""Seconds one browser step may take (Chromium's first start is the slow one)."""
HOST = "sovereign-chat"


def browser_installed() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


def start_browser(profile: pathlib.Path, *, gpc: bool = False) -> Any:
    """A headless Chromium with a fresh profile. ``gpc`` makes it a browser with Global Privacy
    Control on, as Firefox or Brave would be: ``navigator.globalPrivacyControl`` is true and
    every request carries ``Sec-GPC: 1`` (Chromium has no setting for it)."""
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
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    if gpc:
        driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument",
            {
                "source": "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', "
                "{get: () => true, configurable: true});"
            },
        )
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Sec-GPC": "1"}})
    return driver


def wait(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    """Poll ``condition`` until it is truthy. An element that is not there yet, or that went
    stale because the page was replaced between finding it and reading it (a form posted and
    redirected), counts as "not yet" rather than failing the wait."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    def polled(d: Any) -> Any:
        try:
            return condition(d)
        except WebDriverException as exc:
            # Chrome reports an element that went stale *during* a command (the page was
            # replaced between resolving the node and reading its text) as a plain
            # WebDriverException "unhandled inspector error: ... Node with given id does not
            # belong to the document" rather than StaleElementReferenceException (seen in CI).
            if "does not belong to the document" in (exc.msg or ""):
                return False
            raise

    return WebDriverWait(
        driver,
        STEP,
        poll_frequency=0.05,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(polled, f"timed out waiting for {what}")


def chat_root(driver: Any) -> Any:
    """The widget's shadow root (NoSuchElementException while there is no widget)."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, HOST).shadow_root


def has_chat(driver: Any) -> bool:
    from selenium.webdriver.common.by import By

    return bool(driver.find_elements(By.CSS_SELECTOR, HOST))


def chat_state(driver: Any) -> tuple[str | None, str | None]:
    """(data-state, data-transport) of the widget, (None, None) while there is none."""
    from selenium.webdriver.common.by import By

    hosts = driver.find_elements(By.CSS_SELECTOR, HOST)
    if not hosts:
        return None, None
    return hosts[0].get_attribute("data-state"), hosts[0].get_attribute("data-transport")


def find(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return chat_root(driver).find_element(By.CSS_SELECTOR, selector)


def bubbles(driver: Any) -> list[tuple[str, str, str]]:
    """(side, text, note) of each message shown, the welcome first."""
    from selenium.webdriver.common.by import By

    shown = []
    for item in chat_root(driver).find_elements(By.CSS_SELECTOR, ".sg-log > li"):
        side = "you" if "msg-in" in (item.get_attribute("class") or "") else "bot"
        text = item.find_element(By.CSS_SELECTOR, ".msg-text").text
        notes = item.find_elements(By.CSS_SELECTOR, ".msg-note")
        shown.append((side, text, notes[0].text if notes else ""))
    return shown


def wait_ready(driver: Any) -> None:
    wait(driver, lambda d: chat_state(d)[0] == "ready", "the chat to connect")


def type_and_send(driver: Any, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = find(driver, ".sg-input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def wait_for_reply(driver: Any, reply: str) -> list[tuple[str, str, str]]:
    """Wait until ``reply`` shows and no message is still marked sending; return the bubbles."""
    wait(
        driver,
        lambda d: any(b[1] == reply for b in bubbles(d)) and not any(b[2] for b in bubbles(d)),
        f"the reply {reply!r} to show and the message to be marked sent",
    )
    return bubbles(driver)


def local_storage(driver: Any, key: str) -> str | None:
    value: str | None = driver.execute_script("return localStorage.getItem(arguments[0])", key)
    return value


def visitor_key(gateway_url: str, channel: str) -> str:
    """The host page's localStorage key of the visitor id the widget keeps."""
    return f"sovereign-chat:{gateway_url.rstrip('/')}/{channel}:visitor"


def console_entries(driver: Any, level: str = "SEVERE") -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == level]


def save_screenshot(driver: Any, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
