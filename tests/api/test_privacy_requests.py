"""POST /api/v1/privacy-requests and GET /api/v1/privacy-requests/{id}: a subscriber's
data-subject request enters the privacy register (channel 'api', unverified, audited) once per
Idempotency-Key, only for the key's project, with both clocks."""

from __future__ import annotations

import datetime as dt
import json

from gateway.devapi.keys import key_prefix
from gateway.privacy.requests import gdpr_due, get_request, request_events, ru_due
from tests.api.conftest import bearer
from tests.api.test_notifications import idem, problem

URL = "/api/v1/privacy-requests"


async def test_a_request_enters_the_register_once_audited_with_both_clocks(api):
    key = await api.key(scopes=["privacy"])
    actor = f"api:{key_prefix(key)}"
    sub = await api.subscribe("ann")
    payload = {"subscriber": sub, "kind": "erasure", "note": "delete my account"}
    first = await api.client.post(URL, json=payload, headers=idem(key, "p1"))
    assert first.status_code == 201, await first.get_data(as_text=True)
    body = await first.get_json()
    assert body["kind"] == "erasure" and body["status"] == "received"
    assert body["verification"] == "unverified" and body["subscriber"] == sub
    received = dt.datetime.fromisoformat(body["received_at"])
    assert abs(dt.datetime.now(dt.UTC) - received) < dt.timedelta(minutes=1)

    request = await api.services.store.read("r", lambda db: get_request(db.conn, body["id"]))
    assert request.channel == "api" and request.requester == actor
    assert request.kind == "erasure" and request.verification == "unverified"
    assert "vouched" in (request.verification_note or "") and sub in request.verification_note
    assert request.details == {"project": "acme", "subscriber": sub, "note": "delete my account"}
    ann = await api.sql("SELECT contact_id FROM identities WHERE external_id = 'ann'")
    assert request.contact_id == ann[0][0]
    day = request.received_on  # [privacy] timezone's date
    assert body["due"] == {"gdpr": gdpr_due(day).isoformat(), "fz152": ru_due(day).isoformat()}
    events = await api.services.store.read("e", lambda db: request_events(db.conn, body["id"]))
    assert [(e["event"], e["actor"]) for e in events] == [("created", actor)]
    audit = await api.sql(
        "SELECT actor, detail FROM audit_log WHERE action = 'privacy.request.created' "
        "AND target = ?",
        f"request:{body['id']}",
    )
    assert len(audit) == 1 and audit[0][0] == actor
    assert json.loads(audit[0][1])["channel"] == "api"

    # A retry is the same request, not a second one.
    again = await api.client.post(URL, json=payload, headers=idem(key, "p1"))
    assert again.status_code == 201 and await again.get_json() == body
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await api.sql("SELECT count(*) FROM requests") == [(1,)]
    # A new key is a new request; GET follows each one's status.
    other = await api.client.post(
        URL, json={"subscriber": sub, "kind": "access"}, headers=idem(key, "p2")
    )
    assert other.status_code == 201
    assert (await other.get_json())["id"] != body["id"]
    got = await api.client.get(f"{URL}/{body['id']}", headers=bearer(key))
    assert got.status_code == 200 and await got.get_json() == body


async def test_by_platform_id_with_the_external_ids_scope(api):
    await api.subscribe("bob")
    payload = {"channel": "chat", "external_id": "bob", "kind": "access"}
    without = await api.key(scopes=["privacy"])
    refused = await api.client.post(URL, json=payload, headers=idem(without, "q1"))
    assert "external_ids" in (await problem(refused, 403, "forbidden-scope"))["detail"]
    key = await api.key(scopes=["privacy", "external_ids"])
    ok = await api.client.post(URL, json=payload, headers=idem(key, "q2"))
    assert ok.status_code == 201 and (await ok.get_json())["kind"] == "access"
    rows = await api.sql("SELECT channel, kind FROM requests")
    assert rows == [("api", "access")]


async def test_only_the_keys_project_and_only_with_the_privacy_scope(api):
    sub = await api.subscribe("cat")
    payload = {"subscriber": sub, "kind": "access"}
    notify_only = await api.key(scopes=["notify", "subscribers"])
    denied = await api.client.post(URL, json=payload, headers=idem(notify_only, "s1"))
    assert "privacy" in (await problem(denied, 403, "forbidden-scope"))["detail"]
    denied_get = await api.client.get(f"{URL}/1", headers=bearer(notify_only))
    await problem(denied_get, 403, "forbidden-scope")
    audit = await api.sql(
        "SELECT detail FROM audit_log WHERE action = 'permission.denied' AND outcome = 'denied'"
    )
    assert any(json.loads(d)["scope"] == "privacy" for (d,) in audit)

    await api.project("other", "Other Co")
    other = await api.key("other", scopes=["privacy"])
    stranger = await api.client.post(URL, json=payload, headers=idem(other, "s2"))
    body = await problem(stranger, 404, "not-found")
    assert body["errors"][0]["field"] == "subscriber" and "/start other" in body["detail"]
    assert await api.sql("SELECT count(*) FROM requests") == [(0,)]

    mine = await api.key(scopes=["privacy"])
    made = await api.client.post(URL, json=payload, headers=idem(mine, "s3"))
    ident = (await made.get_json())["id"]
    hidden = await api.client.get(f"{URL}/{ident}", headers=bearer(other))
    await problem(hidden, 404, "not-found")
    # Nor one made elsewhere (the CLI, a chat command), though it exists.
    await api.say("cat", "cat", "/forgetme")  # (a /mydata would find the open access request)
    chat = await api.sql("SELECT id FROM requests WHERE channel = 'chat'")
    await problem(
        await api.client.get(f"{URL}/{chat[0][0]}", headers=bearer(mine)), 404, "not-found"
    )


async def test_bad_requests_name_the_field(api):
    key = await api.key(scopes=["privacy"])
    sub = await api.subscribe("dan")
    no_idem = await api.client.post(
        URL, json={"subscriber": sub, "kind": "access"}, headers=bearer(key)
    )
    body = await problem(no_idem, 400, "invalid-request")
    assert body["errors"][0]["field"] == "header:Idempotency-Key"
    cases = [
        ({"subscriber": sub, "kind": "delete-everything"}, "kind"),
        ({"subscriber": sub}, "kind"),
        ({"subscriber": sub, "kind": 3}, "kind"),
        ({"subscriber": sub, "kind": "access", "note": "x" * 2001}, "note"),
        ({"subscriber": sub, "kind": "access", "reason": "x"}, "reason"),
        ({"kind": "access"}, "subscriber"),
        ({"subscriber": "sub_short", "kind": "access"}, "subscriber"),
    ]
    for n, (payload, field) in enumerate(cases):
        response = await api.client.post(URL, json=payload, headers=idem(key, f"t{n}"))
        body = await problem(response, 400, "invalid-request")
        assert field in [e["field"] for e in body["errors"]], (payload, body)
    again = await api.client.post(URL, json=cases[0][0], headers=idem(key, "t-again"))
    (kind_error,) = [e for e in (await again.get_json())["errors"] if e["field"] == "kind"]
    assert "erasure" in kind_error["problem"] and "portability" in kind_error["problem"]
    for bad in ("abc", "0", "9" * 19):
        response = await api.client.get(f"{URL}/{bad}", headers=bearer(key))
        assert (await problem(response, 400, "invalid-request"))["errors"][0]["field"] == "id"
    await problem(await api.client.get(f"{URL}/999", headers=bearer(key)), 404, "not-found")
    assert await api.sql("SELECT count(*) FROM requests") == [(0,)]
