"""The widget's pure rules: visitor id -> thread key, the fallback's request bodies, SSE framing,
statuses, and the origin rule with its reasons. Hypothesis for the parsers."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugins.webchat import convert

VISITOR = "0123456789abcdef" * 2
CLIENT_ID = "3f2b8c1e-9d4a-4e6b-8f00-1a2b3c4d5e6f"
# No deadline: the machine is shared, and a slow example is no wrong answer.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
visitors = st.text("0123456789abcdef", min_size=32, max_size=128)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@PROPERTY
@given(visitors, visitors, st.binary(min_size=32, max_size=32))
def test_thread_key_is_a_keyed_one_way_map(visitor, other, secret):
    thread = convert.thread_key(secret, visitor)
    assert convert.valid_thread(thread) and not convert.valid_visitor(thread)
    assert visitor not in thread and thread == convert.thread_key(secret, visitor)
    assert (convert.thread_key(secret, other) == thread) == (other == visitor)
    assert convert.thread_key(bytes(32) if secret != bytes(32) else b"\1" * 32, visitor) != thread


@PROPERTY
@given(st.dictionaries(st.sampled_from(["visitor", "client_id", "text", "gpc", "x"]), json_values))
def test_posted_bodies_parse_or_are_refused_with_a_reason(data):
    for with_message in (False, True):
        try:
            posted = convert.parse_posted(data, max_message_chars=50, with_message=with_message)
        except convert.FrameError as exc:
            assert exc.reason and convert.http_status(exc.frame()) in (400, 413)
        else:
            assert convert.valid_visitor(posted.visitor)
            assert posted.gpc is (data.get("gpc") is True)
            assert (posted.message is not None) is with_message


def test_posted_bodies():
    body = {"visitor": VISITOR, "client_id": CLIENT_ID, "text": "hi", "gpc": True}
    assert convert.parse_posted(body, max_message_chars=10, with_message=True) == convert.Posted(
        VISITOR, True, convert.Message(CLIENT_ID, "hi")
    )
    assert convert.parse_posted(
        {"visitor": VISITOR, "gpc": "yes"}, max_message_chars=10, with_message=False
    ) == convert.Posted(VISITOR, False)
    hello = convert.parse_frame(
        json.dumps({"type": "hello", "visitor": VISITOR, "gpc": True}), max_message_chars=10
    )
    assert hello == convert.Hello(VISITOR, gpc=True)


@PROPERTY
@given(json_values)
def test_sse_event_is_one_data_line_that_round_trips(value):
    frame = {"type": "reply", "id": "m:1", "text": value}
    event = convert.sse_event(frame)
    assert event.startswith("data: ") and event.endswith("\n\n") and event.count("\n") == 2
    assert json.loads(event[len("data: ") : -2]) == frame


def test_statuses():
    assert convert.http_status(convert.ack_frame(CLIENT_ID, duplicate=False)) == 200
    codes = ["bad_json", "too_long", "rate_limited", "store_failed", "not_running", "bad_visitor"]
    statuses = [convert.http_status(convert.error_frame(c, "r")) for c in codes]
    assert statuses == [400, 413, 429, 503, 503, 400]


@pytest.mark.parametrize(
    ("origin", "required", "reason"),
    [
        ("https://shop.example", True, None),
        (None, False, None),  # a same-origin GET carries no Origin
        (None, True, "must carry its Origin"),
        ("null", False, "must carry its Origin"),
        ("https://evil.example", False, "add it to allowed_origins of [channels.web]"),
        ("https://shop.example.evil.example", True, "allowed_origins"),
        ("http://shop.example", True, "allowed_origins"),  # another scheme is another site
    ],
)
def test_origin_refusal_reasons(origin, required, reason):
    refused = convert.origin_refusal(
        origin, "gw.example", ["https://shop.example"], None, channel="web", required=required
    )
    assert refused is None if reason is None else reason in refused


@PROPERTY
@given(st.text(max_size=200) | st.none(), st.text(max_size=50) | st.none())
def test_origin_rule_never_crashes(origin, host):
    refused = convert.origin_refusal(origin, host, ["https://shop.example"], None, channel="web")
    assert refused is None or "Origin" in refused or "allowed_origins" in refused
