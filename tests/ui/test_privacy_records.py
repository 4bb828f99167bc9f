"""The desk's records: retention (settings, dry run, sweep now, acts, holds), the audit log
(filters, paging, verification, export), the processing record, the transfer log and the
incident register, against a real daemon's store."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from gateway.privacy import audit
from tests.ui.conftest import UI, page, post
from tests.ui.test_privacy_requests import a_contact, desk


async def age_conversations(ui: UI, days: int) -> None:
    """Make every conversation (and its messages) ``days`` old."""
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).isoformat()

    def txn(db: Any) -> None:
        db.conn.execute("UPDATE conversations SET last_message_at = ?, created_at = ?", (old, old))
        db.conn.execute("UPDATE messages SET created_at = ?", (old,))

    await ui.gw.running.store.write("age", txn)


async def test_retention_settings_dry_run_sweep_and_acts(ui: UI) -> None:
    await a_contact(ui, "an old message")
    await age_conversations(ui, 120)  # past message_content_days (90), not the others
    client = await desk(ui)
    status, html = await page(client, "/privacy/retention")
    assert status == 200 and 'id="category-message_content"' in html
    assert "<code>message_content_days</code>" in html and ">support</th>" in html
    assert "No sweep has run yet." in html
    dry = await post(
        client, "/privacy/retention/sweep", {"dry_run": "1"}, from_page="/privacy/retention"
    )
    body = await dry.get_data(as_text=True)
    assert dry.status_code == 200 and "Dry run: act #1" in body
    assert "2 record(s) would go" in body
    assert await ui.sql("SELECT count(*) FROM messages WHERE redacted_at IS NULL") == [(2,)]
    swept = await post(client, "/privacy/retention/sweep", {}, from_page="/privacy/retention")
    body = await swept.get_data(as_text=True)
    assert swept.status_code == 200 and "Sweep: act #2" in body and "2 record(s) removed" in body
    assert await ui.sql("SELECT count(*) FROM messages WHERE redacted_at IS NOT NULL") == [(2,)]
    assert await ui.sql("SELECT id, dry_run, actor FROM retention_acts ORDER BY id") == [
        (1, 1, "admin:owner@example.com"),
        (2, 0, "admin:owner@example.com"),
    ]
    _s, html = await page(client, "/privacy/retention")
    assert 'id="act-2"' in html and "dry run" in html
    act = await client.get("/privacy/retention/acts/2.json")
    document = json.loads(await act.get_data(as_text=True))
    assert act.status_code == 200 and document["act"]["performed_by"] == "admin:owner@example.com"
    assert document["totals"]["records"] == 2
    act_html = await (await client.get("/privacy/retention/acts/2.html")).get_data(as_text=True)
    assert "Act of destruction of personal data No. 2" in act_html
    assert (await client.get("/privacy/retention/acts/2.pdf")).status_code == 404
    assert (await client.get("/privacy/retention/acts/99.json")).status_code == 404
    downloads = [e.detail for e in await ui.audit("retention.act.download")]
    assert downloads == [{"format": "json"}, {"format": "html"}]


async def test_conversation_holds_from_the_retention_page(ui: UI) -> None:
    await a_contact(ui)
    [[conversation]] = await ui.sql("SELECT id FROM conversations")
    client = await desk(ui)
    missing = await post(
        client, "/privacy/holds", {"conversation_id": "77", "reason": "court order"},
        from_page="/privacy/retention",
    )  # fmt: skip
    assert missing.status_code == 400 and "no conversation 77" in await missing.get_data(
        as_text=True
    )
    short = await post(
        client, "/privacy/holds", {"conversation_id": str(conversation), "reason": "x"},
        from_page="/privacy/retention",
    )  # fmt: skip
    assert short.status_code == 400
    placed = await post(
        client, "/privacy/holds", {"conversation_id": str(conversation), "reason": "court order"},
        from_page="/privacy/retention",
    )  # fmt: skip
    assert placed.status_code == 303 and placed.location == "/privacy/retention#holds"
    _s, html = await page(client, "/privacy/retention")
    assert f"conversation {conversation}" in html and "court order" in html
    [[hold_id]] = await ui.sql("SELECT id FROM legal_holds")
    await post(client, f"/privacy/holds/{hold_id}/release", {"reason": "case closed"},
               from_page="/privacy/retention")  # fmt: skip
    twice = await post(client, f"/privacy/holds/{hold_id}/release", {"reason": "case closed"},
                       from_page="/privacy/retention")  # fmt: skip
    assert twice.status_code == 409 and "already released" in await twice.get_data(as_text=True)
    _s, html = await page(client, "/privacy/retention")
    assert "No legal holds." in html


async def test_the_audit_viewer_filters_pages_verifies_and_exports(ui: UI) -> None:
    def fill(db: Any) -> None:
        for n in range(230):
            audit.append_txn(db, actor="cli:test", action="test.fill", target=f"thing:{n % 3}")

    await ui.gw.running.store.write("fill", fill)
    client = await desk(ui, "auditor", "dpo@example.com")
    _s, html = await page(client, "/privacy/audit?action=test.")
    assert html.count('<tr class="outcome-ok">') == 100 and 'id="audit-older"' in html
    older = html.split('id="audit-older"')[0].rsplit('href="', 1)[1].split('"')[0]
    _s, second = await page(client, older.replace("&amp;", "&"))
    assert second.count('<tr class="outcome-ok">') == 100 and "← Newest" in second
    first_ids = {int(x) for x in __import__("re").findall(r'<td class="num">(\d+)</td>', html)}
    second_ids = {int(x) for x in __import__("re").findall(r'<td class="num">(\d+)</td>', second)}
    assert not first_ids & second_ids and max(second_ids) < min(first_ids)
    _s, by_target = await page(client, "/privacy/audit?target=thing:1&action=test.")
    assert by_target.count('<tr class="outcome-ok">') == 77
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
    _s, none = await page(client, f"/privacy/audit?since={tomorrow}")
    assert "No entries match." in none
    _s, bad = await page(client, "/privacy/audit?since=yesterday")
    assert "is not a date or time" in bad
    checked = await post(client, "/privacy/audit/verify", {}, from_page="/privacy/audit")
    body = await checked.get_data(as_text=True)
    head_id, head_hash = await ui.gw.running.store.read("head", audit.head_txn)
    assert checked.status_code == 200 and "<strong>Intact</strong>" in body
    assert (
        f'id="head-id">{head_id - 1}<' in body and head_hash not in body
    )  # the check's own entry is newer
    [entry] = await ui.audit("audit.verify")
    assert entry.outcome == "ok" and entry.detail is not None
    assert entry.detail["checked"] == head_id - 1
    noted = entry.detail["head_hash"]
    await ui.gw.running.store.write(
        "tamper", lambda db: db.conn.execute("UPDATE audit_log SET target = 'x' WHERE id = 5")
    )
    broken = await post(
        client, "/privacy/audit/verify", {"expect_head": noted}, from_page="/privacy/audit"
    )
    body = await broken.get_data(as_text=True)
    assert "<strong>BROKEN</strong>" in body and "BROKEN at entry 5" in body
    assert [e.outcome for e in await ui.audit("audit.verify")] == ["ok", "failed"]
    export = await client.get("/privacy/audit/export.jsonl?action=test.")
    lines = (await export.get_data(as_text=True)).splitlines()
    assert export.status_code == 200 and len(lines) == 230
    assert (
        json.loads(lines[0])["action"] == "test.fill"
        and json.loads(lines[0])["id"] > json.loads(lines[-1])["id"]
    )
    [exported] = await ui.audit("audit.export")
    assert exported.detail == {"action": "test."}


async def test_processing_record_and_transfer_log(ui: UI) -> None:
    await a_contact(ui)
    await a_contact(ui, "second", sender="u2")
    client = await desk(ui)
    status, html = await page(client, "/privacy/processing")
    assert status == 200 and 'id="processing-record"' in html
    assert "<h2>Purposes of the processing</h2>" in html and '<th scope="col">Provider</th>' in html
    assert "<style>" not in html  # the page's own CSS (CSP forbids inline styles)
    md = await client.get("/privacy/processing.md")
    assert md.status_code == 200 and (await md.get_data(as_text=True)).startswith("# ")
    record = json.loads(await (await client.get("/privacy/processing.json")).get_data(as_text=True))
    assert record["transfers"]["providers"][0]["calls"] == 2
    assert (await client.get("/privacy/processing.pdf")).status_code == 404
    assert [e.detail for e in await ui.audit("report.processing")] == [
        {"format": "md"},
        {"format": "json"},
    ]
    _s, html = await page(client, "/privacy/transfers")
    assert html.count('<tr class="outcome-ok">') == 2 and "model" in html
    _s, html = await page(client, "/privacy/transfers?outcome=refused")
    assert "No transfers match." in html


async def test_incidents_with_their_clocks(ui: UI) -> None:
    client = await desk(ui)
    _s, html = await page(client, "/privacy/incidents")
    assert 'id="no-incidents"' in html
    detected = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=30)).strftime("%Y-%m-%dT%H:%M")
    form = {
        "title": "Laptop lost", "description": "An agent's laptop was stolen.",
        "detected_at": detected, "law-gdpr": "1", "law-152-fz": "1",
        "subjects_approx": "120", "data_categories": "names, messages",
    }  # fmt: skip
    added = await post(client, "/privacy/incidents", form, from_page="/privacy/incidents")
    assert added.status_code == 303
    _s, html = await page(client, "/privacy/incidents")
    assert "Laptop lost" in html and "Subjects (approx.)" in html
    assert "OVERDUE since" in html.split('id="clock-1-rkn-24h"')[1].split("</tr>")[0]
    assert "left)" in html.split('id="clock-1-gdpr"')[1].split("</tr>")[0]
    notified = await post(
        client, "/privacy/incidents/1/notify", {"clock": "gdpr", "at": "now", "note": "ref 77"},
        from_page="/privacy/incidents",
    )  # fmt: skip
    assert notified.status_code == 303
    _s, html = await page(client, "/privacy/incidents")
    assert "notified at" in html.split('id="clock-1-gdpr"')[1].split("</tr>")[0]
    bad = [
        ({**form, "detected_at": "tomorrow"}, "is not a time"),
        ({**form, "title": ""}, "needs a title"),
        ({**form, "subjects_approx": "many"}, "is a whole number"),
        ({k: v for k, v in form.items() if not k.startswith("law-")}, "laws must be"),
    ]
    for bad_form, reason in bad:
        response = await post(
            client, "/privacy/incidents", bad_form, from_page="/privacy/incidents"
        )
        assert response.status_code == 400 and reason in await response.get_data(as_text=True)
    wrong = await post(client, "/privacy/incidents/1/notify", {"clock": "fax", "at": "now"},
                       from_page="/privacy/incidents")  # fmt: skip
    assert wrong.status_code == 400 and "unknown authority" in await wrong.get_data(as_text=True)
    closed = await post(
        client, "/privacy/incidents/1/close", {"note": "done"}, from_page="/privacy/incidents"
    )
    assert closed.status_code == 303
    _s, html = await page(client, "/privacy/incidents")
    assert "No open incidents." in html
    assert [e.action for e in await ui.audit("incident.")] == [
        "incident.add", "incident.notify", "incident.close",
    ]  # fmt: skip
