"""The shared webhook checks every channel uses: signatures (Meta, Twilio) fail closed and
compare in constant time; bodies are limited and typed; the Meta handshake echoes only with the
right token."""

from __future__ import annotations

import hashlib
import hmac

import pytest
import quart
from hypothesis import given
from hypothesis import strategies as st
from quart_trio import QuartTrio

from gateway.secretref import Secret
from gateway.webhooks import (
    WebhookRefused,
    parse_json_object,
    read_body,
    refusal,
    twilio_signature,
    verify_hub_signature,
    verify_subscription,
    verify_twilio_signature,
)

# Twilio's published example (security docs / helper libraries): auth token 12345.
TWILIO_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TWILIO_PARAMS = {
    "CallSid": ["CA1234567890ABCDE"],
    "Caller": ["+14158675310"],
    "Digits": ["1234"],
    "From": ["+14158675310"],
    "To": ["+18005551212"],
}
TWILIO_SIGNATURE = "GvWf1cFY/Q7PnoempGyD5oXAezc="


def hub(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def refused(fn, *args) -> WebhookRefused:
    with pytest.raises(WebhookRefused) as info:
        fn(*args)
    return info.value


def test_twilio_signature_matches_the_published_example():
    assert twilio_signature(b"12345", TWILIO_URL, TWILIO_PARAMS) == TWILIO_SIGNATURE
    verify_twilio_signature(Secret("12345", "test"), TWILIO_URL, TWILIO_PARAMS, TWILIO_SIGNATURE)


def test_twilio_signature_cases():
    wrong = refused(verify_twilio_signature, "12345", TWILIO_URL, TWILIO_PARAMS, "AAAA")
    assert wrong.status == 403 and TWILIO_SIGNATURE not in wrong.reason
    assert refused(verify_twilio_signature, "12345", TWILIO_URL, TWILIO_PARAMS, None).status == 401
    other = refused(verify_twilio_signature, "54321", TWILIO_URL, TWILIO_PARAMS, TWILIO_SIGNATURE)
    assert other.status == 403
    none = refused(verify_twilio_signature, None, TWILIO_URL, TWILIO_PARAMS, TWILIO_SIGNATURE)
    assert none.status == 403 and "no auth token" in none.reason
    tampered = {**TWILIO_PARAMS, "Digits": ["9999"]}
    assert refused(verify_twilio_signature, "12345", TWILIO_URL, tampered, TWILIO_SIGNATURE)


def test_twilio_signature_survives_a_proxy_that_adds_or_drops_the_default_port():
    with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    signed_with_port = twilio_signature(b"12345", with_port, TWILIO_PARAMS)
    verify_twilio_signature("12345", TWILIO_URL, TWILIO_PARAMS, signed_with_port)
    verify_twilio_signature("12345", with_port, TWILIO_PARAMS, TWILIO_SIGNATURE)


def test_repeated_form_names_are_signed_in_value_order():
    params = {"MediaUrl": ["b", "a"]}
    assert twilio_signature(b"t", "https://x/", params) == twilio_signature(
        b"t", "https://x/", {"MediaUrl": ["a", "b"]}
    )


def test_hub_signature_cases():
    body = b'{"object":"page","entry":[]}'
    verify_hub_signature(Secret("app-secret", "test"), body, hub(b"app-secret", body))
    verify_hub_signature(
        "app-secret", body, hub(b"app-secret", body).upper().replace("SHA256", "sha256")
    )
    assert refused(verify_hub_signature, "app-secret", body, None).status == 401
    assert refused(verify_hub_signature, "app-secret", body, "md5=abc").status == 401
    wrong = refused(verify_hub_signature, "app-secret", body, hub(b"other", body))
    expected = hub(b"app-secret", body).removeprefix("sha256=")
    assert wrong.status == 403 and expected not in wrong.reason
    assert refused(verify_hub_signature, "app-secret", body + b" ", hub(b"app-secret", body))
    assert refused(verify_hub_signature, None, body, hub(b"app-secret", body)).status == 403
    assert refused(verify_hub_signature, "", body, hub(b"", body)).status == 403


@given(st.binary(max_size=300), st.text(max_size=80))
def test_hub_signature_never_accepts_a_guess(body, header):
    with pytest.raises(WebhookRefused):
        verify_hub_signature("app-secret", body, header)


def test_subscription_handshake():
    args = {"hub.mode": "subscribe", "hub.verify_token": "tok", "hub.challenge": "1158201444"}
    assert verify_subscription(args, Secret("tok", "test")) == "1158201444"
    assert refused(verify_subscription, {**args, "hub.verify_token": "bad"}, "tok").status == 403
    assert refused(verify_subscription, args, None).status == 403
    assert refused(verify_subscription, {**args, "hub.mode": "x"}, "tok").status == 400
    assert refused(verify_subscription, {**args, "hub.challenge": ""}, "tok").status == 400


def test_parse_json_object():
    assert parse_json_object(b'{"a": 1}') == {"a": 1}
    assert refused(parse_json_object, b"{nope").status == 400
    assert refused(parse_json_object, b"[1, 2]").status == 400
    assert refused(parse_json_object, b"\xff\xfe").status == 400


async def test_read_body_limits_size_and_type_over_http():
    app = QuartTrio(__name__)

    @app.post("/hook")
    async def hook() -> quart.Response:
        try:
            body = await read_body(quart.request, limit=64)
        except WebhookRefused as exc:
            return refusal(exc)
        return quart.Response(str(len(body)))

    client = app.test_client()
    ok = await client.post("/hook", data=b'{"a":1}', headers={"Content-Type": "application/json"})
    assert ok.status_code == 200 and await ok.get_data() == b"7"
    big = await client.post("/hook", data=b"x" * 65, headers={"Content-Type": "application/json"})
    assert big.status_code == 413
    form = await client.post("/hook", data=b"a=1", headers={"Content-Type": "text/plain"})
    assert form.status_code == 415 and "application/json" in (await form.get_data(as_text=True))
