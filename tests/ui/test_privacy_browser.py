"""The privacy desk end to end in a real headless Chromium against a real daemon: sign in with
a TOTP code, open a contact, register an access request from their page, verify it, download
the export ZIP (a valid ZIP with messages.json), then register an erasure request, confirm it by
typing and see the receipt; verify the audit chain and dry-run the retention sweep.
Screenshots: artifacts/ui-contact.png, ui-privacy-requests.png, ui-erasure-receipt.png,
ui-audit-verify.png, ui-retention.png.

Same machinery as tests/ui/test_admin_browser.py (Debian chromium + chromedriver through
Selenium, the sync driver in a worker thread, every wait a WebDriverWait on what the page
shows); the download goes to a folder set through the DevTools protocol.
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import zipfile
from typing import Any

import pytest
import trio

from gateway import users
from gateway.privacy import requests
from plugins.webchat.browser import (
    CHROMEDRIVER,
    CHROMIUM,
    browser_installed,
    console_entries,
    start_browser,
)
from plugins.webchat.browser import wait as _wait
from tests.ui.conftest import PASSWORD, UI
from tests.ui.test_admin_browser import shot, sign_in
from tests.ui.test_privacy_requests import a_contact


def _by() -> Any:
    from selenium.webdriver.common.by import By

    return By


def visit(driver: Any, url: str, marker: str) -> None:
    driver.get(url)
    _wait(driver, lambda d: d.find_elements(_by().ID, marker), f"{marker} on {url}")


def click_to(driver: Any, button: str, marker: str) -> None:
    driver.find_element(_by().ID, button).click()
    _wait(driver, lambda d: d.find_elements(_by().ID, marker), f"{marker} after {button}")


def new_request(driver: Any, kind: str) -> int:
    """From the contact's page: New request, choose ``kind``, register, verify the identity."""
    from selenium.webdriver.support.ui import Select

    by = _by()
    click_to(driver, "new-request", "new-request-form")
    Select(driver.find_element(by.ID, "n-kind")).select_by_value(kind)
    click_to(driver, "create-request", "verify-form")
    driver.find_element(by.ID, "v-method").send_keys("platform identity")
    driver.find_element(by.ID, "verify").click()
    _wait(
        driver,
        lambda d: d.find_element(by.ID, "verification").text.startswith("verified"),
        "the request verified",
    )
    return int(driver.current_url.rstrip("/").rsplit("/", 1)[1])


def download_export(driver: Any, folder: pathlib.Path) -> pathlib.Path:
    driver.find_element(_by().ID, "export").click()

    def done(_driver: Any) -> list[pathlib.Path]:
        return [p for p in folder.glob("*.zip") if p.stat().st_size > 0]

    (found,) = _wait(driver, done, "the export ZIP in the download folder")
    path: pathlib.Path = found
    return path


def erase(driver: Any, contact_id: int) -> str:
    by = _by()
    click_to(driver, "erase-start", "erase-form")
    driver.find_element(by.ID, "confirm").send_keys(f"ERASE {contact_id}")
    click_to(driver, "erase-confirm", "receipt")
    shot(driver, "erasure-receipt")
    text: str = driver.find_element(by.ID, "receipt").text
    return text


def desk_pages(driver: Any, base: str) -> dict[str, str]:
    pages = {}
    visit(driver, f"{base}/privacy?status=all", "requests")
    shot(driver, "privacy-requests")
    pages["requests"] = driver.page_source
    visit(driver, f"{base}/privacy/audit", "audit-verify")
    click_to(driver, "audit-verify", "audit-verification")
    shot(driver, "audit-verify")
    pages["audit"] = driver.find_element(_by().ID, "audit-verification").text
    visit(driver, f"{base}/privacy/retention", "dry-run")
    click_to(driver, "dry-run", "sweep-result")
    shot(driver, "retention")
    pages["retention"] = driver.find_element(_by().ID, "sweep-result").text
    return pages


async def test_export_and_erase_a_contact_from_the_desk(
    ui: UI, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not browser_installed():
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: run scripts/install-test-deps.sh")
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager go online
    store = ui.gw.running.store
    kari = await a_contact(ui, sender="tg-4242")
    ola = await a_contact(ui, "Please call me", sender="tg-5151", name="Ola Hansen")
    # An older request of someone else, overdue on both clocks, for the register's picture.
    await store.write(
        "old request",
        lambda db: requests.create_request_txn(
            db,
            kind="access",
            channel="chat",
            actor=f"contact:{ola}",
            contact_id=ola,
            received_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=40),
        ),
    )

    # Ola's conversation is four months old: the retention dry run has something to show.
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=120)).isoformat()
    await store.write(
        "age",
        lambda db: db.conn.execute(
            "UPDATE conversations SET last_message_at = ? WHERE contact_id = ?", (old, ola)
        ),
    )

    def owner(db: Any) -> str:
        made = users.add_user(db.conn, "owner@example.com", PASSWORD, "owner", created_by="test")
        db.conn.execute("UPDATE users SET totp_confirmed_at = ?", (users.now(),))
        assert made.totp_secret is not None
        return made.totp_secret

    secret = await store.write("owner", owner)
    base = ui.gw.running.admin_urls[0]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = await trio.to_thread.run_sync(start_browser, tmp_path / "profile")
    await trio.to_thread.run_sync(driver.set_window_size, 1200, 900)
    await trio.to_thread.run_sync(
        lambda: driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
    )
    try:
        await trio.to_thread.run_sync(sign_in, driver, base, secret)

        def open_contact() -> str:
            visit(driver, f"{base}/contacts", "contacts")
            driver.find_element(_by().CSS_SELECTOR, f"#contact-{kari} a.contact").click()
            _wait(driver, lambda d: d.find_elements(_by().ID, "identities"), "the contact")
            shot(driver, "contact")
            masked: str = driver.find_element(_by().ID, "contact-name").text
            return masked

        masked = await trio.to_thread.run_sync(open_contact)
        access = await trio.to_thread.run_sync(new_request, driver, "access")
        archive = await trio.to_thread.run_sync(download_export, driver, downloads)

        def erase_kari() -> tuple[int, str]:
            visit(driver, f"{base}/contacts/{kari}", "identities")
            request_id = new_request(driver, "erasure")
            return request_id, erase(driver, kari)

        erasure, receipt = await trio.to_thread.run_sync(erase_kari)
        pages = await trio.to_thread.run_sync(desk_pages, driver, base)
        errors = await trio.to_thread.run_sync(console_entries, driver)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(driver.quit)

    assert masked.startswith("K\u2022\u2022\u2022 N\u2022\u2022\u2022\u2022\u2022\u2022\u2022")
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        messages = json.loads(zf.read("messages.json"))
        contact = json.loads(zf.read("contact.json"))
    assert [m["text"] for m in messages] == ["Where is my parcel?", "echo: Where is my parcel?"]
    assert contact[0]["display_name"] == "Kari Nordmann"
    assert "messages" in receipt and "Kept, and why" in receipt
    assert f"erasure request #{erasure}" in receipt
    assert await ui.sql("SELECT id, status FROM requests ORDER BY id") == [
        (1, "received"),
        (access, "completed"),
        (erasure, "completed"),
    ]
    assert await ui.sql("SELECT erased_at IS NOT NULL FROM contacts ORDER BY id") == [(1,), (0,)]
    assert await ui.sql(
        "SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "WHERE c.contact_id = ?",
        kari,
    ) == [(0,)]
    assert 'class="overdue"' in pages["requests"]  # the old request's row
    assert "Intact" in pages["audit"] and "Head hash" in pages["audit"]
    assert "Dry run: act #1" in pages["retention"]
    assert "2 record(s) would go" in pages["retention"]  # Ola's two messages' text
    actions = [a for (a,) in await ui.sql("SELECT action FROM audit_log ORDER BY id")]
    for action in ("privacy.export", "privacy.erase", "audit.verify", "retention.sweep"):
        assert any(a.startswith(action) for a in actions), action
    assert errors == [], f"the pages logged errors (CSP violations show here): {errors}"
