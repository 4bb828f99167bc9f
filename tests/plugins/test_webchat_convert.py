"""The web chat's pure rules: frames, origins, the rate limit."""

from __future__ import annotations

import json

import pytest

from gateway.plugin import HistoryItem
from plugins.webchat import convert

VISITOR = "0123456789abcdef" * 2
CLIENT_ID = "3f2b8c1e-9d4a-4e6b-8f00-1a2b3c4d5e6f"


def parse(frame: object) -> convert.Frame:
    return convert.parse_frame(json.dumps(frame), max_message_chars=20)


def refusal(raw: str | bytes) -> tuple[str, bool, str | None]:
    with pytest.raises(convert.FrameError) as info:
        convert.parse_frame(raw, max_message_chars=20)
    return info.value.code, info.value.retry, info.value.client_id


def test_frames_parse():
    assert parse({"type": "hello", "visitor": VISITOR}) == convert.Hello(VISITOR)
    assert parse({"type": "message", "client_id": CLIENT_ID, "text": "hi"}) == convert.Message(
        CLIENT_ID, "hi"
    )
    assert parse({"type": "ping"}) == convert.Ping()


@pytest.mark.parametrize(
    ("raw", "code", "client_id"),
    [
        (b"{}", "bad_frame", None),
        ("[1, 2]", "bad_frame", None),
        ("{nope", "bad_json", None),
        ('{"type": "typing"}', "unknown_type", None),
        ('{"type": "hello", "visitor": "abc"}', "bad_visitor", None),
        ('{"type": "hello", "visitor": "' + VISITOR.upper() + '"}', "bad_visitor", None),
        ('{"type": "message", "client_id": "x", "text": "hi"}', "bad_frame", None),
        (
            '{"type": "message", "client_id": "' + CLIENT_ID + '", "text": 5}',
            "bad_frame",
            CLIENT_ID,
        ),
        (
            '{"type": "message", "client_id": "' + CLIENT_ID + '", "text": " \\n "}',
            "empty",
            CLIENT_ID,
        ),
        (
            '{"type": "message", "client_id": "' + CLIENT_ID + '", "text": "' + "x" * 21 + '"}',
            "too_long",
            CLIENT_ID,
        ),
        ("x" * (convert.max_frame_chars(20) + 1), "too_large", None),
    ],
)
def test_bad_frames_are_refused_for_good(raw, code, client_id):
    assert refusal(raw) == (code, False, client_id)


def test_history_frame_ids_match_live_replies():
    items = [
        HistoryItem(1, "in", "question", "t1", f"{VISITOR}:{CLIENT_ID}"),
        HistoryItem(2, "out", "answer", "t2", convert.reply_id(9)),
        HistoryItem(3, "out", "not yet recorded as sent", "t3", None),
    ]
    assert convert.history_frame(items, VISITOR)["messages"] == [
        {
            "direction": "in",
            "text": "question",
            "client_id": CLIENT_ID,
            "id": "m:1",
        },
        {"direction": "out", "text": "answer", "id": convert.message_ref(2)},
        {"direction": "out", "text": "not yet recorded as sent", "id": "m:3"},
    ]


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "public_url", "expected"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080", [], None, True),
        ("https://Chat.Example.com", "chat.example.com", [], None, True),  # TLS proxy keeping Host
        ("http://127.0.0.1:8081", "127.0.0.1:8080", [], None, False),
        ("https://evil.example", "chat.example.com", [], None, False),
        ("https://evil.example", "chat.example.com", ["https://shop.example"], None, False),
        ("https://shop.example", "chat.example.com", ["https://shop.example"], None, True),
        ("https://chat.example.com", "10.0.0.5:8080", [], "https://chat.example.com/", True),
        (None, "chat.example.com", [], None, False),
        ("null", "chat.example.com", [], None, False),
        ("chat.example.com", "chat.example.com", [], None, False),
        ("https://user@chat.example.com", "chat.example.com", [], None, False),
    ],
)
def test_origin_rule(origin, host, allowed, public_url, expected):
    assert convert.origin_allowed(origin, host, allowed, public_url) is expected


def test_token_bucket():
    bucket = convert.TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)
    assert bucket.take(100.5) == 0.0  # one token came back
    assert bucket.take(100.5) == pytest.approx(0.5)
    assert [bucket.take(200.0) for _ in range(4)][-1] > 0  # refills to the burst, not beyond
