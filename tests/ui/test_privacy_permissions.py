"""Who may use the privacy desk and the contacts pages, decided by the permission table
(gateway.http.ui.security.PERMISSIONS) on the server, every refusal audited; and CSRF on every
form of both."""

from __future__ import annotations

import re
from typing import Any

from gateway.http.ui import security
from tests.ui.conftest import UI, csrf_of, page, post
from tests.ui.test_privacy_requests import a_contact, desk, new_request, verify

BLUEPRINTS = ("privacy.", "contacts.")


def routes(ui: UI) -> list[tuple[str, str, str]]:
    """(method, path, endpoint) of every route of the desk and the contacts pages, with ids 1."""
    found = []
    for rule in ui.app.url_map.iter_rules():
        if not rule.endpoint.startswith(BLUEPRINTS):
            continue
        path = re.sub(r"<int:[a-z_]+>", "1", rule.rule)
        path = re.sub(r"<(?:[a-z]+:)?fmt>", "json", path)
        assert "<" not in path, path
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((method, path, rule.endpoint))
    return found


def test_the_permission_table_of_the_desk() -> None:
    table = security.PERMISSIONS
    desk = {"owner", "admin", "auditor"}
    for permission in ("privacy.view", "privacy.act", "privacy.erase", "audit.view"):
        assert table[permission] == desk, permission
    for permission in ("contacts.view", "contacts.reveal", "contacts.manage"):
        assert table[permission] == desk, permission
    assert table["contacts.import"] == {"owner", "admin"}
    assert not any("agent" in roles for p, roles in table.items() if p.startswith(BLUEPRINTS))


async def test_an_agent_is_refused_every_desk_and_contacts_route_and_each_is_audited(
    ui: UI,
) -> None:
    contact_id = await a_contact(ui)
    owner = await desk(ui)
    request_id = await new_request(owner, contact_id, "erasure")
    agent = await desk(ui, "agent")
    _status, inbox = await page(agent, "/inbox")
    assert 'href="/privacy"' not in inbox and 'href="/contacts"' not in inbox
    token = csrf_of(inbox)
    tried = routes(ui)
    assert len(tried) >= 30
    for method, path, _endpoint in tried:
        path = path.replace("/requests/1", f"/requests/{request_id}")
        path = path.replace("/contacts/1", f"/contacts/{contact_id}")
        if method == "GET":
            response = await agent.get(path)
        else:
            form = {"csrf": token, "confirm": f"ERASE {contact_id}", "reason": "just because"}
            response = await agent.post(path, form=form)
        assert response.status_code == 403, (method, path)
    denied = await ui.audit("permission.denied")
    assert len(denied) == len(tried)
    assert {e.actor for e in denied} == {"admin:agent@example.com"}
    assert {e.target for e in denied} <= {p for p in security.PERMISSIONS if p.startswith(
        ("privacy.", "contacts.", "audit.")
    )}  # fmt: skip
    # Nothing happened: the contact is whole, the request still open, no export written.
    assert await ui.sql("SELECT erased_at FROM contacts") == [(None,)]
    assert await ui.sql("SELECT status, verification FROM requests") == [("received", "unverified")]
    assert await ui.audit("privacy.export") == []


async def test_the_dpo_works_the_desk_but_does_not_import_contacts(ui: UI) -> None:
    contact_id = await a_contact(ui)
    dpo = await desk(ui, "auditor", "dpo@example.com")
    for method, path, endpoint in routes(ui):
        if method != "GET" or "/1" in path or path.endswith(".json") or "export" in path:
            continue
        status = (await dpo.get(path)).status_code
        expected = 403 if endpoint == "contacts.import_form" else 200
        assert status == expected, (path, status)
    request_id = await new_request(dpo, contact_id, "erasure")
    await verify(dpo, request_id)
    path = f"/privacy/requests/{request_id}"
    confirm = {"confirm": f"ERASE {contact_id}"}
    done = await post(dpo, f"{path}/erase", confirm, from_page=path)
    assert done.status_code == 303
    assert (await ui.sql("SELECT erased_at IS NOT NULL FROM contacts")) == [(1,)]
    refused = await post(
        dpo, "/contacts/import/preview", {"csv": "channel,external_id,basis\n"},
        from_page="/contacts",
    )  # fmt: skip
    assert refused.status_code == 403
    denied = [(e.target, e.detail and e.detail["method"]) for e in await ui.audit("permission.")]
    assert denied == [("contacts.import", "GET"), ("contacts.import", "POST")]


async def test_every_form_needs_its_csrf_token(ui: UI) -> None:
    contact_id = await a_contact(ui)
    owner = await desk(ui)
    request_id = await new_request(owner, contact_id, "erasure")
    await verify(owner, request_id)
    posts = [(m, p) for m, p, _e in routes(ui) if m == "POST"]
    assert len(posts) >= 20
    for _method, path in posts:
        path = path.replace("/requests/1", f"/requests/{request_id}")
        path = path.replace("/contacts/1", f"/contacts/{contact_id}")
        form: dict[str, Any] = {"confirm": f"ERASE {contact_id}", "reason": "because I can"}
        missing = await owner.post(path, form=form)
        wrong = await owner.post(path, form={**form, "csrf": "0" * 64})
        assert missing.status_code == wrong.status_code == 403, path
        assert "This form expired" in await wrong.get_data(as_text=True)
    refused = await ui.audit("csrf.refused")
    assert len(refused) == 2 * len(posts)
    assert await ui.sql("SELECT erased_at FROM contacts") == [(None,)]
    assert await ui.sql("SELECT status FROM requests") == [("received",)]
    assert await ui.sql("SELECT count(*) FROM legal_holds") == [(0,)]
    # Every form of the desk's pages carries the token.
    for path in ("/privacy", f"/privacy/requests/{request_id}", "/privacy/retention",
                 "/privacy/audit", "/privacy/incidents", f"/contacts/{contact_id}",
                 "/contacts/import", f"/privacy/requests/{request_id}/erase"):  # fmt: skip
        _status, html = await page(owner, path)
        forms = re.findall(r"<form[^>]*method=\"post\".*?</form>", html, re.S)
        assert forms, path
        for form_html in forms:
            assert 'name="csrf"' in form_html, (path, form_html[:120])
