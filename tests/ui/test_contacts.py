"""The contacts pages against a real daemon: the list masked, search, a contact's page and its
actions (reveal, consent, AI, restriction, legal holds), the CSV export."""

from __future__ import annotations

import csv
import io

from tests.ui.conftest import UI, page, post
from tests.ui.test_privacy_requests import NAME, a_contact, desk

MASKED = "K\u2022\u2022\u2022 N\u2022\u2022\u2022\u2022\u2022\u2022\u2022"


async def test_the_list_is_masked_and_searchable(ui: UI) -> None:
    kari = await a_contact(ui, sender="tg-4242")
    ola = await a_contact(ui, "hi", sender="tg-777777")
    client = await desk(ui)
    status, html = await page(client, "/contacts")
    assert status == 200 and NAME not in html and "tg-4242" not in html
    assert html.count(MASKED) == 2 and "\u2022\u2022\u2022742" not in html
    assert "support \u2022\u2022\u202242" in html and "support \u2022\u2022\u202277" in html
    _s, found = await page(client, "/contacts?external_id=tg-777777")
    assert f'id="contact-{ola}"' in found and f'id="contact-{kari}"' not in found
    _s, partial = await page(client, "/contacts?external_id=tg-7")
    assert "No contacts match." in partial  # exact only: no guessing ids a character at a time
    _s, by_id = await page(client, f"/contacts?id=%23{kari}")
    assert f'id="contact-{kari}"' in by_id and f'id="contact-{ola}"' not in by_id
    _s, by_channel = await page(client, "/contacts?channel=support")
    assert by_channel.count("data-contact=") == 2
    _s, other = await page(client, "/contacts?channel=nope")
    assert "No contacts match." in other


async def test_a_contacts_page_reveal_and_consent(ui: UI) -> None:
    contact_id = await a_contact(ui, sender="tg-4242")
    client = await desk(ui, "auditor", "dpo@example.com")
    path = f"/contacts/{contact_id}"
    status, html = await page(client, path)
    assert status == 200 and MASKED in html and "tg-4242" not in html
    assert 'id="consent-marketing"' in html and "not recorded" in html
    assert f'href="/privacy/requests/new?contact={contact_id}"' in html
    [[conversation]] = await ui.sql("SELECT id FROM conversations")
    assert f'href="/conversations/{conversation}"' in html
    revealed = await post(
        client, f"{path}/reveal", {"reason": "access request by phone"}, from_page=path
    )
    assert revealed.status_code == 303
    _s, html = await page(client, path)
    assert NAME in html and "tg-4242" in html and 'id="revealed"' in html
    [entry] = await ui.audit("contact.reveal")
    assert entry.target == f"contact:{contact_id}" and entry.actor == "admin:dpo@example.com"
    short = await post(
        client,
        f"{path}/consent",
        {"change": "withdraw", "purpose": "marketing", "evidence": "x"},
        from_page=path,
    )
    assert short.status_code == 400
    withdrawn = await post(
        client, f"{path}/consent",
        {"change": "withdraw", "purpose": "marketing", "evidence": "phone call, ticket 881"},
        from_page=path,
    )  # fmt: skip
    assert withdrawn.status_code == 303
    bad = await post(
        client, f"{path}/consent", {"change": "grant", "purpose": "spam", "evidence": "because"},
        from_page=path,
    )  # fmt: skip
    assert bad.status_code == 409 and "unknown consent purpose" in await bad.get_data(as_text=True)
    _s, html = await page(client, path)
    row = html.split('id="consent-marketing"')[1].split("</tr>")[0]
    assert "withdrawn" in row and "admin:dpo@example.com" in row and "ticket 881" in row
    assert await ui.sql("SELECT purpose, state, source FROM consents ORDER BY id") == [
        ("marketing", "withdrawn", "admin:dpo@example.com"),
        ("messages", "withdrawn", "admin:dpo@example.com"),
    ]
    [entry] = await ui.audit("consent.")
    assert entry.action == "consent.withdraw" and entry.actor == "admin:dpo@example.com"


async def test_ai_switch_restriction_and_holds_on_the_contact_page(ui: UI) -> None:
    contact_id = await a_contact(ui)
    client = await desk(ui)
    path = f"/contacts/{contact_id}"
    off = await post(client, f"{path}/ai", {"enabled": "0"}, from_page=path)
    assert off.status_code == 303
    assert await ui.sql("SELECT ai_enabled FROM contacts") == [(0,)]
    await post(client, f"{path}/consent", {"change": "withdraw", "purpose": "ai_processing",
               "evidence": "their e-mail"}, from_page=path)  # fmt: skip
    refused = await post(client, f"{path}/ai", {"enabled": "1"}, from_page=path)
    assert refused.status_code == 409
    assert "withdrew consent to AI processing" in await refused.get_data(as_text=True)
    await post(client, f"{path}/consent", {"change": "grant", "purpose": "ai_processing",
               "evidence": "their new e-mail"}, from_page=path)  # fmt: skip
    assert await ui.sql("SELECT ai_enabled FROM contacts") == [(1,)]  # the grant turned it on
    restricted = await post(
        client, f"{path}/restrict", {"lift": "0", "reason": "dispute 12"}, from_page=path
    )
    assert restricted.status_code == 303
    _s, html = await page(client, path)
    assert 'id="restricted"' in html and "Lift the restriction" in html
    blocked = await post(client, f"{path}/ai", {"enabled": "1"}, from_page=path)
    assert blocked.status_code == 409 and "restricted" in await blocked.get_data(as_text=True)
    lifted = await post(
        client, f"{path}/restrict", {"lift": "1", "reason": "dispute settled"}, from_page=path
    )
    assert lifted.status_code == 303
    assert await ui.sql("SELECT restricted FROM contacts") == [(0,)]
    placed = await post(
        client, "/privacy/holds",
        {"contact_id": str(contact_id), "reason": "tax audit 2026", "back": f"contact:{contact_id}"},
        from_page=path,
    )  # fmt: skip
    assert placed.location == path
    _s, html = await page(client, path)
    assert "tax audit 2026" in html and "legal hold" in html
    _s, listing = await page(client, "/contacts")
    assert "legal hold" in listing.split(f'id="contact-{contact_id}"')[1].split("</tr>")[0]
    [[hold_id]] = await ui.sql("SELECT id FROM legal_holds")
    released = await post(
        client, f"/privacy/holds/{hold_id}/release",
        {"reason": "audit finished", "back": f"contact:{contact_id}"}, from_page=path,
    )  # fmt: skip
    assert released.location == path
    _s, html = await page(client, path)
    assert "audit finished" in html and "by admin:owner@example.com" in html
    actions = [e.action for e in await ui.audit() if e.target == f"contact:{contact_id}"]
    assert actions == [
        "contact.ai.off", "consent.withdraw", "consent.grant", "privacy.restrict",
        "privacy.restrict.lift", "retention.hold.add", "retention.hold.release",
    ]  # fmt: skip
    assert (await client.get("/contacts/999")).status_code == 404


async def test_csv_export_is_masked_unless_revealed_and_audited(ui: UI) -> None:
    kari = await a_contact(ui, sender="tg-4242")
    other = await a_contact(ui, sender="tg-5555")
    client = await desk(ui)
    response = await client.get("/contacts/export.csv")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(await response.get_data(as_text=True))))
    assert [r["id"] for r in rows] == [str(other), str(kari)]
    assert {r["name"] for r in rows} == {MASKED} and {r["masked"] for r in rows} == {"1"}
    assert rows[1]["identities"] == "support:\u2022\u2022\u202242"
    await post(client, f"/contacts/{kari}/reveal", {"reason": "exporting for a DPO request"},
               from_page=f"/contacts/{kari}")  # fmt: skip
    response = await client.get("/contacts/export.csv")
    rows = list(csv.DictReader(io.StringIO(await response.get_data(as_text=True))))
    shown = {r["id"]: (r["name"], r["identities"], r["masked"]) for r in rows}
    assert shown == {
        str(kari): (NAME, "support:tg-4242", "0"),
        str(other): (MASKED, "support:\u2022\u2022\u202255", "1"),
    }
    exports = [e.detail for e in await ui.audit("contacts.export")]
    assert exports == [
        {"filters": "", "revealed": []},
        {"filters": "", "revealed": [f"contact:{kari}"]},
    ]
