"""The privacy desk's data-subject requests, through the admin app against a real daemon: the
register's two clocks, a request's life (create, verify, extend, close) and its actions
(export download, erasure with typed confirmation and its receipt, legal holds, restriction,
objection, rectification), each audited by the engine in the same transaction."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from typing import Any

from gateway.privacy import requests
from tests.ui.conftest import UI, page, post

NAME = "Kari Nordmann"


async def a_contact(
    ui: UI, text: str = "Where is my parcel?", *, sender: str = "u1", name: str = NAME
) -> int:
    """A contact who wrote once and got the AI's answer; named ``name``."""
    before = len(ui.channel.sent)
    await ui.channel.deliver(f"thread-{sender}", sender, text)
    await ui.channel.wait_sent(before + 1)
    await ui.gw.wait_idle()
    [[contact_id]] = await ui.sql("SELECT contact_id FROM identities WHERE external_id = ?", sender)
    await ui.gw.running.store.write(
        "name",
        lambda db: db.conn.execute(
            "UPDATE contacts SET display_name = ? WHERE id = ?", (name, contact_id)
        ),
    )
    return int(contact_id)


async def desk(ui: UI, role: str = "owner", email: str | None = None) -> Any:
    account = await ui.add_user(email or f"{role}@example.com", role)
    return await ui.sign_in(account)


async def new_request(client: Any, contact_id: int | None, kind: str, **extra: str) -> int:
    form = {"kind": kind, "contact": str(contact_id or ""), **extra}
    response = await post(client, "/privacy/requests/new", form, from_page="/privacy")
    assert response.status_code == 303, await response.get_data(as_text=True)
    return int(response.location.rsplit("/", 1)[1])


async def verify(client: Any, request_id: int) -> None:
    path = f"/privacy/requests/{request_id}"
    response = await post(
        client, f"{path}/verify", {"method": "platform identity", "note": "asked in chat"},
        from_page=path,
    )  # fmt: skip
    assert response.status_code == 303, await response.get_data(as_text=True)


def row_of(html: str, start: str) -> str:
    return html[html.index(start) :].split("</tr>")[0]


async def registered(ui: UI, kind: str, days_ago: int, contact_id: int) -> int:
    """A request received ``days_ago`` days ago (through the engine, as the CLI would)."""
    received = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    made: requests.Request = await ui.gw.running.store.write(
        "request",
        lambda db: requests.create_request_txn(
            db, kind=kind, channel="cli", actor="cli:test", contact_id=contact_id,
            received_at=received,
        ),
    )  # fmt: skip
    return made.id


async def test_the_register_shows_both_clocks_and_highlights_overdue(ui: UI) -> None:
    contact_id = await a_contact(ui)
    old = await registered(ui, "access", 40, contact_id)
    fresh = await registered(ui, "erasure", 0, contact_id)
    client = await desk(ui)
    status, html = await page(client, "/privacy")
    assert status == 200
    old_row = row_of(html, f'<tr id="request-{old}"')
    fresh_row = row_of(html, f'<tr id="request-{fresh}"')
    assert 'class="overdue"' in old_row and "days overdue" in old_row
    assert "working days overdue" in old_row
    assert "overdue" not in fresh_row and "working days left" in fresh_row
    today = dt.datetime.now(dt.UTC).date()
    assert f"{(requests.add_months(today, 1) - today).days} days left" in fresh_row
    # Overdue first (nearest deadline first), and the filters.
    assert html.index(f'id="request-{old}"') < html.index(f'id="request-{fresh}"')
    _s, overdue = await page(client, "/privacy?due=overdue")
    assert f'id="request-{old}"' in overdue and f'id="request-{fresh}"' not in overdue
    _s, erasures = await page(client, "/privacy?kind=erasure")
    assert f'id="request-{fresh}"' in erasures and f'id="request-{old}"' not in erasures
    _s, completed = await page(client, "/privacy?status=completed")
    assert "No requests match." in completed


async def test_a_request_from_creation_to_closing_is_recorded_and_audited(ui: UI) -> None:
    contact_id = await a_contact(ui)
    client = await desk(ui, "auditor", "dpo@example.com")  # the DPO acts on requests
    request_id = await new_request(client, contact_id, "rectification", requester=NAME)
    path = f"/privacy/requests/{request_id}"
    _s, html = await page(client, path)
    assert "unverified" in html and NAME not in html and "K\u2022\u2022\u2022 N\u2022" in html
    await verify(client, request_id)
    extended = await post(
        client, f"{path}/extend", {"clock": "gdpr", "months": "2", "reason": "many systems"},
        from_page=path,
    )  # fmt: skip
    assert extended.status_code == 303
    again = await post(
        client, f"{path}/extend", {"clock": "gdpr", "months": "1", "reason": "more"},
        from_page=path,
    )  # fmt: skip
    assert again.status_code == 409
    assert "can be extended once" in await again.get_data(as_text=True)
    ru = await post(
        client, f"{path}/extend", {"clock": "ru", "notice": "letter of 2 May"}, from_page=path
    )
    assert ru.status_code == 303
    rectified = await post(
        client, f"{path}/rectify", {"display_name": "Kari Olsen", "language": "nb"},
        from_page=path,
    )  # fmt: skip
    assert rectified.status_code == 303
    assert await ui.sql("SELECT display_name, language FROM contacts") == [("Kari Olsen", "nb")]
    [[status, gdpr_months, ru_notice]] = await ui.sql(
        "SELECT status, gdpr_extension_months, ru_extension_notice FROM requests"
    )
    assert (status, gdpr_months, ru_notice) == ("completed", 2, "letter of 2 May")
    _s, html = await page(client, path)
    assert 'id="request-status">completed' in html
    for event in ("created", "verified", "extended_gdpr", "extended_ru", "status"):
        assert f"<td>{event}</td>" in html, event
    actions = [(e.actor, e.action) for e in await ui.audit("privacy.")]
    assert actions == [
        ("admin:dpo@example.com", "privacy.request.created"),
        ("admin:dpo@example.com", "privacy.request.verified"),
        ("admin:dpo@example.com", "privacy.request.extended_gdpr"),
        ("admin:dpo@example.com", "privacy.request.extended_ru"),
        ("admin:dpo@example.com", "privacy.rectify"),
        ("admin:dpo@example.com", "privacy.request.status"),
    ]


async def test_bad_requests_are_refused_with_the_reason(ui: UI) -> None:
    contact_id = await a_contact(ui)
    client = await desk(ui)
    cases = [
        ({"kind": "everything", "contact": str(contact_id)}, "unknown request type"),
        ({"kind": "access", "contact": "abc"}, "is not a contact id"),
        ({"kind": "access", "contact": "999"}, "no contact with id 999"),
        ({"kind": "access", "contact": ""}, "needs the contact it is about"),
    ]
    for form, reason in cases:
        response = await post(client, "/privacy/requests/new", form, from_page="/privacy")
        assert response.status_code == 400, form
        assert reason in await response.get_data(as_text=True), form
    request_id = await new_request(client, contact_id, "access")
    path = f"/privacy/requests/{request_id}"
    closing = await post(client, f"{path}/status", {"status": "completed"}, from_page=path)
    assert closing.status_code == 409
    assert "is not verified" in await closing.get_data(as_text=True)
    assert (await client.get("/privacy/requests/4242")).status_code == 404
    assert await ui.sql("SELECT count(*), min(status) FROM requests") == [(1, "received")]


async def test_export_download_is_the_subjects_zip_and_completes_the_request(ui: UI) -> None:
    contact_id = await a_contact(ui, "My order ORD-123456 never came")
    client = await desk(ui)
    request_id = await new_request(client, contact_id, "access")
    path = f"/privacy/requests/{request_id}"
    early = await post(client, f"{path}/export", {}, from_page=path)
    assert early.status_code == 409 and "not verified" in await early.get_data(as_text=True)
    await verify(client, request_id)
    response = await post(client, f"{path}/export", {}, from_page=path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert "attachment" in response.headers["Content-Disposition"]
    data = await response.get_data()
    assert int(response.headers["Content-Length"]) == len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        messages = json.loads(zf.read("messages.json"))
        assert {"schema.json", "summary.txt", "contact.json", "consents.csv"} <= set(zf.namelist())
    assert [m["text"] for m in messages] == [
        "My order ORD-123456 never came",
        "echo: My order ORD-123456 never came",
    ]
    assert await ui.sql("SELECT status FROM requests") == [("completed",)]
    [entry] = await ui.audit("privacy.export")
    assert entry.target == f"contact:{contact_id}" and entry.detail is not None
    assert entry.detail["request"] == request_id and entry.detail["messages"] == 2
    assert entry.detail["sha256"] == response.headers["X-Export-SHA256"]
    left = list((ui.gw.config.data_dir / "ui-exports").iterdir())
    assert left == []  # unlinked before streaming: no copy stays on disk
    # A completed access request can be downloaded again (audited, no request to complete).
    again = await post(client, f"{path}/export", {}, from_page=path)
    assert again.status_code == 200 and len(await again.get_data()) > 0
    assert [e.detail["request"] for e in await ui.audit("privacy.export") if e.detail] == [
        request_id,
        None,
    ]


async def test_erasure_needs_the_typed_confirmation_respects_holds_and_gives_a_receipt(
    ui: UI,
) -> None:
    contact_id = await a_contact(ui)
    other = await a_contact(ui, "I stay", sender="u2")
    client = await desk(ui)
    request_id = await new_request(client, contact_id, "erasure")
    path = f"/privacy/requests/{request_id}"
    await verify(client, request_id)
    status, html = await page(client, f"{path}/erase")
    assert status == 200 and f"ERASE {contact_id}" in html
    assert "1 conversation(s) with 2 message(s)" in html
    wrong = await post(client, f"{path}/erase", {"confirm": "yes"}, from_page=f"{path}/erase")
    assert wrong.status_code == 400
    assert f"type ERASE {contact_id} to confirm" in await wrong.get_data(as_text=True)
    held = await post(
        client,
        "/privacy/holds",
        {"contact_id": str(contact_id), "reason": "case 2024-17", "back": f"contact:{contact_id}"},
        from_page=f"/contacts/{contact_id}",
    )
    assert held.status_code == 303 and held.location == f"/contacts/{contact_id}"
    _s, html = await page(client, f"{path}/erase")
    assert 'id="hold-warning"' in html
    confirm = {"confirm": f"ERASE {contact_id}"}
    refused = await post(client, f"{path}/erase", confirm, from_page=f"{path}/erase")
    assert refused.status_code == 409
    assert "under a legal hold" in await refused.get_data(as_text=True)
    assert await ui.sql("SELECT count(*) FROM messages") == [(4,)]
    [[hold_id]] = await ui.sql("SELECT id FROM legal_holds")
    released = await post(
        client, f"/privacy/holds/{hold_id}/release", {"reason": "case closed"},
        from_page="/privacy/retention",
    )  # fmt: skip
    assert released.status_code == 303
    done = await post(client, f"{path}/erase", confirm, from_page=f"{path}/erase")
    assert done.status_code == 303 and done.location == f"{path}/receipt"
    status, receipt = await page(client, f"{path}/receipt")
    assert status == 200 and 'id="receipt-erased"' in receipt
    assert "copies in older backups can no longer be read" in receipt
    assert '<td>messages</td><td class="num">2</td>' in receipt
    text = await (await client.get(f"{path}/receipt?format=txt")).get_data(as_text=True)
    assert text.startswith(f"Erasure receipt: contact {contact_id}")
    assert await ui.sql(
        "SELECT contact_id, count(*) FROM messages m JOIN conversations c "
        "ON c.id = m.conversation_id GROUP BY contact_id"
    ) == [(other, 2)]
    assert await ui.sql("SELECT status FROM requests") == [("completed",)]
    erase_entries = [(e.outcome, e.actor) for e in await ui.audit("privacy.erase")]
    assert erase_entries == [
        ("denied", "admin:owner@example.com"),
        ("ok", "admin:owner@example.com"),
    ]
    holds = [e.action for e in await ui.audit("retention.hold")]
    assert holds == ["retention.hold.add", "retention.hold.release"]
    # The erase page of a completed request goes to its receipt.
    after = await client.get(f"{path}/erase")
    assert after.status_code == 303 and after.location == f"{path}/receipt"


async def test_restriction_and_objection_requests_complete_with_the_change(ui: UI) -> None:
    contact_id = await a_contact(ui)
    client = await desk(ui)
    restriction = await new_request(client, contact_id, "restriction")
    objection = await new_request(client, contact_id, "objection")
    for request_id in (restriction, objection):
        await verify(client, request_id)
    path = f"/privacy/requests/{restriction}"
    assert (await post(client, f"{path}/restrict", {}, from_page=path)).status_code == 303
    path = f"/privacy/requests/{objection}"
    response = await post(client, f"{path}/object", {"evidence": "their letter"}, from_page=path)
    assert response.status_code == 303
    assert await ui.sql("SELECT restricted, ai_enabled FROM contacts") == [(1, 0)]
    assert await ui.sql("SELECT status FROM requests ORDER BY id") == [
        ("completed",),
        ("completed",),
    ]
    sources = await ui.sql("SELECT DISTINCT source FROM consents WHERE state = 'withdrawn'")
    assert sources == [("admin:owner@example.com",)]


async def test_a_requester_without_contact_is_masked_until_revealed(ui: UI) -> None:
    client = await desk(ui)
    request_id = await new_request(client, None, "access", requester="Ann Example, ann@ex.org")
    path = f"/privacy/requests/{request_id}"
    _s, html = await page(client, path)
    assert "ann@ex.org" not in html and "not linked to a contact" in html
    _s, register = await page(client, "/privacy")
    assert "ann@ex.org" not in register
    short = await post(client, f"{path}/reveal", {"reason": "no"}, from_page=path)
    assert short.status_code == 400
    shown = await post(client, f"{path}/reveal", {"reason": "calling her back"}, from_page=path)
    assert shown.status_code == 303
    _s, html = await page(client, path)
    assert "Ann Example, ann@ex.org" in html
    [entry] = await ui.audit("request.reveal")
    assert entry.target == f"request:{request_id}" and entry.detail is not None
    assert entry.detail["reason"] == "calling her back"
