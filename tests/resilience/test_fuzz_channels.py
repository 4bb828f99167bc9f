"""Fuzzing the parsers and verifiers test_fuzz.py does not reach (issue #9: Hypothesis on every
converter and signature verifier, and on the webhook endpoints): Twilio's request signature, the
web chat's websocket frames, and the Max webhook endpoint. Never a crash, never a 5xx; nothing
unsigned or malformed is accepted."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.secretref import Secret
from gateway.testing.conformance import public_client
from gateway.testing.context import MemoryChannelContext
from gateway.webhooks import WebhookRefused, twilio_signature, verify_twilio_signature
from plugins.max import MaxChannel
from plugins.webchat import convert
from tests.plugins.test_max_convert import payload
from tests.resilience.test_fuzz import json_values

TOKEN = "twilio-auth-token"
URL = "https://gw.example.com/webhooks/sms?x=1"
names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
forms = st.dictionaries(names, st.lists(st.text(max_size=20), min_size=1, max_size=3), max_size=6)


@settings(max_examples=300, deadline=None)
@given(forms, st.data())
def test_twilio_signature_accepts_the_signed_form_and_nothing_changed(params, data):
    signature = twilio_signature(TOKEN.encode(), URL, params)
    verify_twilio_signature(Secret(TOKEN, "test"), URL, params, signature)
    if params:
        name = data.draw(st.sampled_from(sorted(params)))
        value = data.draw(st.text(max_size=20).filter(lambda v: v not in params[name]))
        changed = {**params, name: [*params[name], value]}
        with pytest.raises(WebhookRefused) as info:
            verify_twilio_signature(TOKEN, URL, changed, signature)
        assert info.value.status == 403 and signature not in info.value.reason
    with pytest.raises(WebhookRefused):
        verify_twilio_signature("another-token", URL, params, signature)
    with pytest.raises(WebhookRefused):
        verify_twilio_signature(TOKEN, URL.replace("x=1", "x=2"), params, signature)


@settings(max_examples=300, deadline=None)
@given(forms, st.text(max_size=60) | st.none(), st.text(max_size=80))
def test_twilio_signature_never_accepts_a_guess_or_crashes_on_any_url(params, header, url):
    with pytest.raises(WebhookRefused) as info:
        verify_twilio_signature(TOKEN, URL, params, header)
    assert info.value.status in (401, 403)
    try:  # any URL (a misconfigured public_url): refused or accepted, never an exception
        verify_twilio_signature(TOKEN, url, params, twilio_signature(TOKEN.encode(), url, params))
    except WebhookRefused:
        pass


LIMIT = 40
CODES = {"bad_json", "bad_frame", "unknown_type", "bad_visitor", "empty", "too_long", "too_large"}
VISITORS = st.text("0123456789abcdef", min_size=32, max_size=32)
frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "message", "ping", "typing"])},
    optional={
        "visitor": VISITORS | VISITORS.map(str.upper) | st.text(max_size=34) | json_values,
        "client_id": st.uuids().map(str) | st.uuids().map(str) | json_values,
        "text": st.text(max_size=LIMIT + 5) | st.text(max_size=LIMIT + 5) | json_values,
    },
) | st.fixed_dictionaries({"type": json_values | st.text(max_size=6)})


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        frames.map(json.dumps),
        json_values.map(json.dumps),
        st.text(max_size=300),
        st.binary(max_size=300),
    )
)
def test_webchat_frames_parse_or_are_refused_with_a_code(raw: str | bytes) -> None:
    try:
        frame = convert.parse_frame(raw, max_message_chars=LIMIT)
    except convert.FrameError as exc:
        assert exc.code in CODES and str(exc)
        return
    if isinstance(frame, convert.Message):
        assert frame.text.strip() and len(frame.text) <= LIMIT
    elif isinstance(frame, convert.Hello):
        assert convert.valid_visitor(frame.visitor)
    else:
        assert isinstance(frame, convert.Ping)


SECRET = "max-Fuzz_secret-1"
RECORDED = [
    "message_created_text",
    "message_created_reply",
    "message_created_group",
    "message_created_image",
    "message_callback",
    "bot_started",
]


@st.composite
def max_updates(draw: st.DrawFn) -> dict[str, Any]:
    """A recorded Max update (tests/plugins/payloads/max), its text replaced and maybe one
    field of it (or of its message) replaced by arbitrary JSON."""
    update = payload(draw(st.sampled_from(RECORDED)))
    body = (update.get("message") or {}).get("body")
    if isinstance(body, dict) and "text" in body:
        body["text"] = draw(st.text(max_size=60))
    if draw(st.booleans()):
        target = update.get("message") or update
        target[draw(st.sampled_from(sorted(target)))] = draw(json_values)
    return update


def max_app() -> tuple[MaxChannel, MemoryChannelContext]:
    context = MemoryChannelContext("maxbot", public_url="https://gw.example.com")
    config = MaxChannel.Config.model_validate(
        {
            "plugin": "max",
            "token": Secret("max-token", "env:MAX_TOKEN"),
            "api_base": "http://127.0.0.1:9",  # nothing listens: no download can succeed
            "mode": "webhook",
            "webhook_secret": Secret(SECRET, "env:MAX_WEBHOOK_SECRET"),
        }
    )
    channel = MaxChannel("maxbot", config, context)
    channel.account = "5550001"  # what run() learns from GET /me before the webhook is used
    return channel, context


@settings(max_examples=150, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        max_updates().map(lambda u: json.dumps(u).encode()),
    ),
    secret=st.sampled_from([SECRET, None, "wrong", SECRET + "x", SECRET[:-1]]),
)
async def test_max_webhook_answers_200_or_4xx_never_5xx(body: bytes, secret: str | None) -> None:
    channel, context = max_app()
    headers: dict[str, Any] = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Max-Bot-Api-Secret"] = secret
    async with public_client(channel) as client:
        response = await client.post("/webhooks/maxbot", content=body, headers=headers)
    assert response.status_code < 500, (response.status_code, body[:80])
    if secret != SECRET:
        assert response.status_code in (401, 403) and context.inbound == []
    elif response.status_code != 200:
        assert response.status_code == 400 and context.inbound == []
    for message in context.inbound:
        assert message.external_id and message.thread_key and message.sender_id
    await context.aclose()
