"""One-time codes: made by the gateway, sent in the subscriber's chat, stored only as a keyed
hash, verified once, with expiry, an attempt limit, resend throttling, and wiped from the
sent message once it can no longer be used."""

from __future__ import annotations

import hashlib

from gateway.devapi.feature import housekeeping
from gateway.devapi.otp import SCRUBBED
from gateway.store.bodies import message_text
from tests.api.conftest import bearer, code_in


def idem(key: str, value: str) -> dict[str, str]:
    return bearer(key, **{"Idempotency-Key": value})


async def send(api, key, sub, n):
    response = await api.client.post("/api/v1/otp", json={"subscriber": sub}, headers=idem(key, n))
    return response


async def verify(api, key, code_id, code):
    return await api.client.post(
        "/api/v1/otp/verify", json={"id": code_id, "code": code}, headers=bearer(key)
    )


async def last_text(api, thread):
    await api.gw.wait_idle()
    return api.channel().texts(thread)[-1]


async def test_a_code_arrives_verifies_once_and_is_stored_only_as_a_hash(api):
    key = await api.key(scopes=["otp"])
    sub = await api.subscribe("ann")
    response = await send(api, key, sub, "o1")
    assert response.status_code == 201
    created = await response.get_json()
    assert created["subscriber"] == sub and created["length"] == 6
    text = await last_text(api, "ann")
    code = code_in(text)
    assert len(code) == 6 and "Acme Shop" in text
    # The same request again (a retry): the same answer, no second code.
    again = await send(api, key, sub, "o1")
    assert await again.get_json() == created and again.headers["Idempotent-Replayed"] == "true"
    await api.gw.wait_idle()
    assert sum(code in t for t in api.channel().texts("ann")) == 1
    # In the database: a salted keyed hash, never the code.
    (row,) = await api.sql("SELECT salt, hash, state FROM api_otp_codes")
    salt, stored, state = row
    assert state == "active" and len(salt) == 16 and len(stored) == 32
    assert bytes(stored) != hashlib.sha256(code.encode()).digest()
    assert code.encode() not in bytes(stored) + bytes(salt)
    wrong = "000000" if code != "000000" else "111111"
    bad = await verify(api, key, created["id"], wrong)
    assert bad.status_code == 422
    assert (await bad.get_json())["attempts_left"] == 4
    good = await verify(api, key, created["id"], code)
    assert good.status_code == 200
    assert await good.get_json() == {"id": created["id"], "verified": True, "subscriber": sub}
    used = await verify(api, key, created["id"], code)
    assert used.status_code == 409 and (await used.get_json())["type"].endswith("#otp-used")
    # Housekeeping wipes the code from the sent message (and the outbox row).
    counts = await housekeeping(api.services)
    assert counts["scrubbed"] == 1
    (outbox_id,) = (await api.sql("SELECT outbox_id FROM api_otp_codes"))[0]
    sealer = api.services.store.sealer
    shown = await api.services.store.read(
        "text",
        lambda db: message_text(
            sealer,
            db.conn,
            db.conn.execute("SELECT message_id FROM outbox WHERE id = ?", (outbox_id,)).fetchone()[
                0
            ],
        ),
    )
    assert shown == SCRUBBED


async def test_attempt_limit_expiry_newer_codes_and_throttling(api):
    key = await api.key(scopes=["otp"])
    sub = await api.subscribe("bob")
    first = await (await send(api, key, sub, "p1")).get_json()
    code = code_in(await last_text(api, "bob"))
    # Resend throttling: a second code within otp_resend_after (30 s) is refused with Retry-After.
    throttled = await send(api, key, sub, "p2")
    assert throttled.status_code == 429 and 1 <= int(throttled.headers["Retry-After"]) <= 30
    # A throttled request releases its Idempotency-Key: the retry later is a fresh attempt.
    await api.services.store.write(
        "age codes",
        lambda db: db.conn.execute(
            "UPDATE api_otp_codes SET created_at = '2000-01-01T00:00:00+00:00'"
        ),
    )
    second = await send(api, key, sub, "p2")
    assert second.status_code == 201
    second_body = await second.get_json()
    second_code = code_in(await last_text(api, "bob"))
    replaced = await verify(api, key, first["id"], code)
    assert replaced.status_code == 410 and (await replaced.get_json())["type"].endswith(
        "#otp-superseded"
    )
    wrong = "0000" if not second_code.startswith("0000") else "1111"
    for left in (4, 3, 2, 1):
        response = await verify(api, key, second_body["id"], wrong + "00")
        assert (await response.get_json())["attempts_left"] == left
    locked = await verify(api, key, second_body["id"], wrong + "00")
    assert locked.status_code == 410 and (await locked.get_json())["type"].endswith("#otp-locked")
    still = await verify(api, key, second_body["id"], second_code)
    assert still.status_code == 410  # locked stays locked, even with the right code
    # Expiry.
    await api.services.store.write(
        "age codes",
        lambda db: db.conn.execute(
            "UPDATE api_otp_codes SET created_at = '2000-01-01T00:00:00+00:00'"
        ),
    )
    third = await (await send(api, key, sub, "p3")).get_json()
    third_code = code_in(await last_text(api, "bob"))
    await api.services.store.write(
        "expire",
        lambda db: db.conn.execute(
            "UPDATE api_otp_codes SET expires_at = '2000-01-01T00:00:00+00:00' WHERE public_id = ?",
            (third["id"],),
        ),
    )
    expired = await verify(api, key, third["id"], third_code)
    assert expired.status_code == 410 and (await expired.get_json())["type"].endswith(
        "#otp-expired"
    )


async def test_hourly_cap_unknown_codes_and_bad_input(api):
    key = await api.key(scopes=["otp"])
    sub = await api.subscribe("cid")
    for n in range(5):
        assert (await send(api, key, sub, f"q{n}")).status_code == 201
        await api.services.store.write(
            "age",
            lambda db: db.conn.execute(
                "UPDATE api_otp_codes SET created_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', "
                "'now', '-40 seconds') WHERE created_at > strftime('%Y-%m-%dT%H:%M:%f', 'now', '-40 seconds')"
            ),
        )
    capped = await send(api, key, sub, "q9")
    assert capped.status_code == 429
    assert "otp_max_per_hour" in (await capped.get_json())["detail"]
    unknown = await verify(api, key, "otp_AAAAAAAAAAAAAAAA", "123456")
    assert unknown.status_code == 404
    for payload in (
        {"id": "otp_x", "code": "123456"},
        {"id": "otp_AAAAAAAAAAAAAAAA", "code": "12a"},
        {},
    ):
        response = await api.client.post("/api/v1/otp/verify", json=payload, headers=bearer(key))
        assert response.status_code == 400, payload
    not_sub = await api.client.post(
        "/api/v1/otp", json={"subscriber": "sub_AAAAAAAAAAAAAAAA"}, headers=idem(key, "z")
    )
    assert not_sub.status_code == 404
    short = await api.client.post(
        "/api/v1/otp", json={"subscriber": sub, "length": 3}, headers=idem(key, "zz")
    )
    assert short.status_code == 400
