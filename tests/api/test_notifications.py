"""POST /api/v1/notifications and GET /api/v1/notifications/{id}: only to subscribers, once per
Idempotency-Key, refused after an opt-out; keys checked, scoped, rate-limited and audited."""

from __future__ import annotations

from tests.api.conftest import bearer

URL = "/api/v1/notifications"


def idem(key: str, value: str) -> dict[str, str]:
    return bearer(key, **{"Idempotency-Key": value})


async def problem(response, status: int, kind: str) -> dict:
    assert response.status_code == status, await response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/problem+json"
    body = await response.get_json()
    assert body["type"] == f"/api/v1/problems#{kind}" and body["status"] == status
    assert body["title"] and body["detail"]
    return body


async def test_a_notification_reaches_the_subscriber_once_per_idempotency_key(api):
    key = await api.key(scopes=["notify"])
    sub = await api.subscribe("ann")
    first = await api.client.post(
        URL, json={"subscriber": sub, "text": "Shipped!"}, headers=idem(key, "a1")
    )
    assert first.status_code == 202
    body = await first.get_json()
    assert (
        body["status"] == "queued" and body["subscriber"] == sub and body["id"].startswith("ntf_")
    )
    again = await api.client.post(
        URL, json={"subscriber": sub, "text": "Shipped!"}, headers=idem(key, "a1")
    )
    assert again.status_code == 202 and await again.get_json() == body
    assert again.headers["Idempotent-Replayed"] == "true"
    await api.gw.wait_idle()
    assert api.channel().texts("ann")[1:] == ["Shipped!"]
    # The same key for another request is a client bug: refused, nothing sent.
    other = await api.client.post(
        URL, json={"subscriber": sub, "text": "Other"}, headers=idem(key, "a1")
    )
    body422 = await problem(other, 422, "idempotency-key-reused")
    assert body422["errors"][0]["field"] == "header:Idempotency-Key"
    # Its status follows the outbox and the platform.
    status = await api.client.get(f"{URL}/{body['id']}", headers=bearer(key))
    assert (await status.get_json())["status"] == "sent"
    missing = await api.client.get(f"{URL}/ntf_AAAAAAAAAAAAAAAA", headers=bearer(key))
    await problem(missing, 404, "not-found")


async def test_only_subscribers_and_not_after_stop(api):
    key = await api.key(scopes=["notify", "external_ids"])
    unknown = await api.client.post(
        URL, json={"subscriber": "sub_AAAAAAAAAAAAAAAA", "text": "hi"}, headers=idem(key, "b1")
    )
    body = await problem(unknown, 404, "not-found")
    assert "/start acme" in body["detail"] and body["errors"][0]["field"] == "subscriber"
    # Someone who chatted but never subscribed is no subscriber either.
    await api.say("bob", "bob", "hello")
    by_id = await api.client.post(
        URL, json={"channel": "chat", "external_id": "bob", "text": "hi"}, headers=idem(key, "b2")
    )
    await problem(by_id, 404, "not-found")
    await api.subscribe("bob")
    ok = await api.client.post(
        URL, json={"channel": "chat", "external_id": "bob", "text": "hi"}, headers=idem(key, "b3")
    )
    assert ok.status_code == 202
    # The notification is sent in the background: let it reach bob first, or it may be the
    # next text bob's chat shows when STOP's answer is awaited (1 run in 40 failed so).
    await api.gw.wait_idle()
    assert "You are unsubscribed" in await api.say("bob", "bob", "STOP")
    refused = await api.client.post(
        URL,
        json={"channel": "chat", "external_id": "bob", "text": "again"},
        headers=idem(key, "b4"),
    )
    assert "STOP" in (await problem(refused, 409, "opted-out"))["detail"]
    await api.gw.wait_idle()
    assert "again" not in api.channel().texts("bob")


async def test_addressing_by_platform_id_needs_the_external_ids_scope(api):
    key = await api.key(scopes=["notify"])
    await api.subscribe("cid")
    response = await api.client.post(
        URL, json={"channel": "chat", "external_id": "cid", "text": "x"}, headers=idem(key, "c1")
    )
    assert "external_ids" in (await problem(response, 403, "forbidden-scope"))["detail"]


async def test_bad_requests_name_the_field_and_the_fix(api):
    key = await api.key(scopes=["notify"])
    sub = await api.subscribe("dee")
    no_idem = await api.client.post(URL, json={"subscriber": sub, "text": "x"}, headers=bearer(key))
    body = await problem(no_idem, 400, "invalid-request")
    assert body["errors"][0]["field"] == "header:Idempotency-Key"
    cases = [
        ({"subscriber": sub}, "text"),
        ({"subscriber": sub, "text": ""}, "text"),
        ({"subscriber": sub, "text": "x" * 4097}, "text"),
        ({"subscriber": sub, "text": "x", "colour": "red"}, "colour"),
        ({"text": "x"}, "subscriber"),
        ({"subscriber": sub, "channel": "chat", "text": "x"}, "subscriber"),
        ({"subscriber": "someone", "text": "x"}, "subscriber"),
        ({"subscriber": sub, "text": 5}, "text"),
        ({"subscriber": sub, "text": "\ud800"}, "text"),
    ]
    for n, (payload, field) in enumerate(cases):
        response = await api.client.post(URL, json=payload, headers=idem(key, f"d{n}"))
        body = await problem(response, 400, "invalid-request")
        assert field in [e["field"] for e in body["errors"]], (payload, body)
    raw = [
        (b"{nope", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"[" * 20000 + b"]" * 20000, "application/json", 413),
        (b'{"text": "x"}', "text/plain", 415),
        (b"{}" + b" " * 20000, "application/json", 413),
    ]
    for n, (data, content_type, status) in enumerate(raw):
        response = await api.client.post(
            URL, data=data, headers=idem(key, f"r{n}") | {"Content-Type": content_type}
        )
        assert response.status_code == status, (data[:20], await response.get_data(as_text=True))
        assert response.headers["Content-Type"] == "application/problem+json"
    deep = await api.client.post(
        URL,
        data=b"[" * 5000 + b"]" * 5000,
        headers=idem(key, "deep") | {"Content-Type": "application/json"},
    )
    await problem(deep, 400, "invalid-request")


async def test_keys_are_checked_scoped_rate_limited_and_audited(api):
    sub = await api.subscribe("eve")
    payload = {"subscriber": sub, "text": "x"}
    none = await api.client.post(URL, json=payload)
    await problem(none, 401, "unauthorized")
    assert none.headers["WWW-Authenticate"].startswith("Bearer")
    garbage = await api.client.post(URL, json=payload, headers=bearer("not-a-key"))
    assert "sgw_" in (await problem(garbage, 401, "unauthorized"))["detail"]
    key = await api.key(scopes=["otp"])
    wrong_secret = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    await problem(
        await api.client.post(URL, json=payload, headers=bearer(wrong_secret)), 401, "unauthorized"
    )
    denied = await api.client.post(URL, json=payload, headers=idem(key, "e1"))
    assert "notify" in (await problem(denied, 403, "forbidden-scope"))["detail"]
    audit = await api.sql("SELECT actor, action, outcome, detail FROM audit_log ORDER BY id")
    actions = [(a[1], a[2]) for a in audit]
    assert ("api.auth.failed", "denied") in actions and ("permission.denied", "denied") in actions
    assert all(key not in str(row) for row in audit)  # never the secret
    # Revoked keys stop at once.
    from gateway.devapi.keys import key_prefix, revoke_key_txn

    await api.services.store.write("revoke", lambda db: revoke_key_txn(db, key_prefix(key), "test"))
    revoked = await api.client.post(URL, json=payload, headers=idem(key, "e2"))
    assert "revoked" in (await problem(revoked, 401, "unauthorized"))["detail"]
    # A key's own rate: the third request within the minute waits.
    slow = await api.key(scopes=["notify"], rate="2/min")
    for _ in range(2):
        ok = await api.client.get(f"{URL}/ntf_AAAAAAAAAAAAAAAA", headers=bearer(slow))
        assert ok.status_code == 404
    limited = await api.client.get(f"{URL}/ntf_AAAAAAAAAAAAAAAA", headers=bearer(slow))
    await problem(limited, 429, "rate-limited")
    assert 1 <= int(limited.headers["Retry-After"]) <= 30


async def test_unknown_paths_and_methods_are_problems(api):
    response = await api.client.get("/api/v1/nothing/here")
    await problem(response, 404, "not-found")
    response = await api.client.delete(URL)
    await problem(response, 405, "method-not-allowed")
    assert response.headers["Allow"] == "POST, OPTIONS"
    response = await api.client.put("/api/v1/notifications/ntf_x")
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"
    response = await api.client.options("/api/v1/subscribers")
    assert response.status_code == 204 and response.headers["Allow"] == "GET, HEAD, OPTIONS"
    page = await api.client.get("/api/v1/problems")
    text = await page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="opted-out"' in text and 'id="otp-locked"' in text
