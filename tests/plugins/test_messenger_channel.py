"""MessengerChannel against the fake Graph API over real HTTP: the webhook (handshake,
signatures, bad input, media, receipts), sending (window, attachments, errors) and check()."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
from typing import Any

import httpx
import pydantic
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import PluginError, SendError
from gateway.messages import Attachment, Outbound
from gateway.plugin import Channel, HistoryItem
from gateway.secretref import Secret
from gateway.testing.conformance import public_client
from gateway.testing.context import MemoryChannelContext
from gateway.testing.fake_graph import APP_SECRET, sign
from plugins.messenger import MessengerChannel, MessengerConfig
from tests.plugins.test_messenger_conformance import VERIFY_TOKEN, raw_config, running

PSID = "2400000000000001"
WAIT = 5.0


def outbound(text: str = "hi", **fields: Any) -> Outbound:
    fields.setdefault("last_inbound_at", dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    return Outbound(1, "key-1", "104000000000001", PSID, text, **fields)


async def wait_inbound(context: MemoryChannelContext, count: int) -> None:
    with trio.fail_after(WAIT):
        await context.wait_inbound(count)


# -- config ------------------------------------------------------------------------------------


def test_app_secret_is_required_and_defaults_follow_meta() -> None:
    table = raw_config("messenger")
    del table["app_secret"]
    with pytest.raises(pydantic.ValidationError, match="app_secret"):
        MessengerConfig.model_validate(table)
    with pytest.raises(pydantic.ValidationError, match="must not be empty"):
        MessengerConfig.model_validate(raw_config("messenger", app_secret=Secret("")))
    config = MessengerConfig.model_validate(raw_config("messenger"))
    assert (config.send_rate, config.send_rate_per_chat, config.send_burst_per_chat) == (
        40.0,
        1.0,
        3,
    )
    assert (config.api_base, config.api_version) == ("https://graph.facebook.com", "v23.0")
    assert config.max_media_bytes == 25 * 1024 * 1024


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"page_id": "my-page"}, "digits only"),
        ({"api_version": "23"}, "v23.0"),
        ({"api_base": "graph.facebook.com"}, "http(s) URL"),
        ({"media_hosts": ["https://cdn.example.com/path"]}, "scheme and host only"),
        ({"page_tokn": "env:X"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_config_says_what_to_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as excinfo:
        MessengerConfig.model_validate(raw_config("messenger", **overrides))
    assert message in str(excinfo.value)


# -- handshake and signatures ------------------------------------------------------------------


async def test_subscription_handshake() -> None:
    context = MemoryChannelContext("fb")
    async with running("messenger", context) as (server, channel, url):
        assert isinstance(channel, Channel)
        assert server.webhook_urls["messenger"] == url  # the challenge was echoed
        assert not await server.subscribe("messenger", url, "wrong-token")
        async with httpx.AsyncClient() as http:
            missing = await http.get(
                url, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN}
            )
            assert (missing.status_code, missing.text) == (400, "missing hub.challenge")
            wrong = await http.get(
                url, params={"hub.mode": "subscribe", "hub.verify_token": "x", "hub.challenge": "c"}
            )
            assert wrong.status_code == 403 and VERIFY_TOKEN not in wrong.text
    await context.aclose()


async def test_signature_cases(caplog: pytest.LogCaptureFixture) -> None:
    """Valid, wrong, missing, another secret, tampered body, bad scheme, replay."""
    caplog.set_level(logging.DEBUG)
    context = MemoryChannelContext("fb")
    async with running("messenger", context) as (server, _, url):
        body = server.user_message(PSID, "secret text 42")
        raw = json.dumps(body).encode()
        assert await server.post_webhook(url, raw, signature="sha256=" + "0" * 64) == 403
        assert await server.post_webhook(url, raw, signature=None) == 401
        assert await server.post_webhook(url, raw, secret="another-apps-secret") == 403
        tampered = raw.replace(b"secret text 42", b"secret text 43")
        assert await server.post_webhook(url, tampered, signature=sign(APP_SECRET, raw)) == 403
        sha1 = "sha1=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha1).hexdigest()
        assert await server.post_webhook(url, raw, signature=sha1) == 401
        assert context.inbound == []  # nothing stored by a refused request
        assert await server.post_webhook(url, raw) == 200
        assert await server.post_webhook(url, raw) == 200  # replayed: acknowledged, deduped
        assert [m.text for m in context.inbound] == ["secret text 42"]
        assert len(context.duplicates) == 1
    logged = caplog.text
    assert "signature does not match" in logged and "missing X-Hub-Signature-256" in logged
    assert "secret text" not in logged and APP_SECRET not in logged  # never the body or the key
    await context.aclose()


async def test_no_app_secret_refuses_everything() -> None:
    """Fail-closed even if the config check were bypassed: an empty secret checks nothing."""
    context = MemoryChannelContext("fb")
    async with running("messenger", context) as (server, channel, url):
        channel.config = channel.config.model_copy(update={"app_secret": Secret("")})
        body = server.user_message(PSID, "hello")
        assert await server.post_webhook(url, body) == 403
        assert await server.post_webhook(url, body, secret="") == 403
        assert context.inbound == []
    await context.aclose()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())),
    signer=st.sampled_from(["right", "wrong", "none", "garbage"]),
)
async def test_webhook_fuzz_answers_4xx_or_200_never_5xx(body: bytes, signer: str) -> None:
    context = MemoryChannelContext("fb")
    channel = MessengerChannel(
        "fb", MessengerConfig.model_validate(raw_config("messenger")), context
    )
    headers = {"Content-Type": "application/json"}
    if signer != "none":
        secret = APP_SECRET if signer == "right" else "wrong"
        headers["X-Hub-Signature-256"] = sign(secret, body) if signer != "garbage" else "sha256=zz"
    async with public_client(channel) as client:
        response = await client.post("/webhooks/fb", content=body, headers=headers)
    assert response.status_code < 500
    if signer != "right":
        assert response.status_code in (401, 403)
    else:
        assert response.status_code in (200, 400)
    if response.status_code != 200:
        assert context.inbound == []
    await context.aclose()


# -- bad input ---------------------------------------------------------------------------------


async def test_bad_requests_get_clear_4xx() -> None:
    context = MemoryChannelContext("fb")
    async with running("messenger", context) as (server, _, url):
        body = server.user_message(PSID, "x")
        assert await server.post_webhook(url, body, content_type="text/plain") == 415
        assert await server.post_webhook(url, b"{not json") == 400
        assert await server.post_webhook(url, b"[1, 2]") == 400
        wrong_object = {**body, "object": "instagram"}
        assert await server.post_webhook(url, wrong_object) == 400
        assert await server.post_webhook(url, b"{" + b" " * (1 << 20) + b"}") == 413
        async with httpx.AsyncClient() as http:
            response = await http.post(
                url,
                content=json.dumps(wrong_object),
                headers={
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": sign(APP_SECRET, json.dumps(wrong_object).encode()),
                },
            )
            assert response.status_code == 400 and "object is 'instagram'" in response.text
        assert context.inbound == []
    await context.aclose()


async def test_echoes_reactions_and_handovers_are_acknowledged_and_ignored() -> None:
    context = MemoryChannelContext("fb")
    async with running("messenger", context) as (server, _, url):
        assert await server.deliver(server.echo(PSID, "we said this")) == [200]
        assert await server.deliver(server.reaction(PSID, "m_x")) == [200]
        handover = server.webhook_body(
            "messenger",
            [server.event("messenger", PSID, {"pass_thread_control": {"new_owner_app_id": "1"}})],
        )
        assert await server.deliver(handover) == [200]
        assert context.inbound == [] and context.statuses == []
    await context.aclose()


# -- media -------------------------------------------------------------------------------------


async def test_attachments_downloaded_size_limited_or_kept_as_links() -> None:
    context = MemoryChannelContext("fb")
    async with running("messenger", context, max_media_bytes=1000) as (server, _, url):
        small = server.add_media(b"\x89PNG" + b"1" * 100, "image/png")
        big = server.add_media(b"2" * 2000, "video/mp4")
        big_chunked = server.add_media(b"3" * 2000, "audio/mpeg", declare_length=False)
        missing = server.api_base + "/media/999999"
        elsewhere = "https://cdn.example.org/a.png"
        attachments = [
            {"type": kind, "payload": {"url": u}}
            for kind, u in [
                ("image", small),
                ("video", big),
                ("audio", big_chunked),
                ("file", missing),
                ("image", elsewhere),
            ]
        ]
        assert await server.deliver(server.user_message(PSID, "look", attachments=attachments)) == [
            200
        ]
        (inbound,) = context.inbound
        first, *rest = inbound.attachments
        assert (first.kind, first.mime_type, first.data) == (
            "image",
            "image/png",
            b"\x89PNG" + b"1" * 100,
        )
        assert [a.data for a in rest] == [None, None, None, None]
        assert [a.url for a in rest] == [big, big_chunked, missing, elsewhere]
        assert not any(path.startswith("/media") and "a.png" in path for _, path in server.requests)
    await context.aclose()


# -- store failures ----------------------------------------------------------------------------


async def test_store_failure_is_503_then_the_retry_is_stored() -> None:
    context = MemoryChannelContext("fb")
    async with running("messenger", context) as (server, _, _url):
        context.fail_accepts = 1
        assert await server.deliver(server.user_message(PSID, "keep me")) == [503, 200]
        assert [m.text for m in context.inbound] == ["keep me"]
    await context.aclose()


# -- receipts ----------------------------------------------------------------------------------


async def test_delivery_and_read_receipts_reach_update_delivery() -> None:
    context = MemoryChannelContext("fb")
    t0 = dt.datetime.now(dt.UTC)

    def ms(seconds: float) -> int:
        return int((t0 + dt.timedelta(seconds=seconds)).timestamp() * 1000)

    async with running("messenger", context) as (server, channel, _url):
        await server.deliver(server.user_message(PSID, "hello"))
        channel.now = lambda: t0
        first = await channel.send(outbound("one"))
        channel.now = lambda: t0 + dt.timedelta(seconds=10)
        second = await channel.send(outbound("two"))
        assert first.external_id and second.external_id
        at = t0.isoformat()
        context.outbound_history[PSID] = [
            # sent by an earlier run of the plugin: only the stored time is known
            HistoryItem(
                8, "out", "before a restart", (t0 - dt.timedelta(hours=1)).isoformat(), "m_old"
            ),
            HistoryItem(10, "out", "one", at, first.external_id),
            HistoryItem(11, "out", "two", at, second.external_id),
            HistoryItem(12, "out", "failed, never sent", at, None),
        ]
        await server.deliver(server.delivery(PSID, [first.external_id]))
        assert context.statuses == [(first.external_id, "delivered", None)]
        # A read watermark between our two sends: the old one and the first are read.
        await server.deliver(server.read(PSID, watermark=ms(5)))
        assert context.statuses[1:] == [("m_old", "read", None), (first.external_id, "read", None)]
        # A delivery without mids: its watermark covers the second; the others are read already.
        await server.deliver(server.delivery(PSID, None, watermark=ms(20)))
        assert context.statuses[3:] == [(second.external_id, "delivered", None)]
        await server.deliver(server.read(PSID, watermark=ms(30)))
        await server.deliver(server.read(PSID, watermark=ms(40)))
        assert context.statuses[4:] == [(second.external_id, "read", None)]  # once, not again
    await context.aclose()


# -- sending -----------------------------------------------------------------------------------


async def test_send_text_and_attachments() -> None:
    context = MemoryChannelContext("fb")
    async with running("messenger", context) as (server, channel, _url):
        server.user_wrote(PSID)
        long_text = ("Our opening hours are 7 to 19. " * 80).strip()  # about 2,500 characters
        attachments = (
            Attachment("image", url="https://example.com/menu.png"),
            Attachment(
                "document", mime_type="application/pdf", filename="menu.pdf", data=b"%PDF-1.7"
            ),
        )
        result = await channel.send(outbound(long_text, attachments=attachments))
        texts = [m.text for m in server.sent if m.text]
        assert len(texts) == 2 and " ".join(texts) == long_text
        by_url, upload = (m.attachment for m in server.sent[2:])
        assert by_url == {"type": "image", "url": "https://example.com/menu.png"}
        assert upload == {
            "type": "file",
            "data": b"%PDF-1.7",
            "mime_type": "application/pdf",
            "filename": "menu.pdf",
        }
        assert {m.messaging_type for m in server.sent} == {"RESPONSE"}
        assert result.external_id == server.sent[-1].message_id
        note = await channel.send(outbound("news", purpose="notification"))
        assert server.sent[-1].messaging_type == "UPDATE" and note.external_id
    await context.aclose()


async def test_window_rules_at_the_fake() -> None:
    context = MemoryChannelContext("fb")
    async with running("messenger", context) as (server, channel, _url):
        three_days = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
        server.user_wrote(PSID, at_ms=int(three_days.timestamp() * 1000))
        with pytest.raises(SendError, match="24-hour rule") as refused:
            await channel.send(outbound("from the model", last_inbound_at=three_days))
        assert refused.value.permanent and server.sent == []  # refused before any request
        await channel.send(outbound("from a person", author="human", last_inbound_at=three_days))
        (sent,) = server.sent
        assert (sent.messaging_type, sent.tag, sent.text) == (
            "MESSAGE_TAG",
            "HUMAN_AGENT",
            "from a person",
        )
        # Meta's own refusal (our clock thought the window open) is permanent too.
        with pytest.raises(SendError, match="2018278") as meta_refused:
            await channel.send(outbound("late", last_inbound_at=dt.datetime.now(dt.UTC)))
        assert meta_refused.value.permanent
    await context.aclose()


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        (
            {
                "status": 400,
                "code": 613,
                "headers": {
                    "X-Business-Use-Case-Usage": json.dumps(
                        {"1": [{"estimated_time_to_regain_access": 2}]}
                    )
                },
            },
            lambda e: e.retry_after == 120.0,
        ),
        ({"status": 400, "code": 4}, lambda e: e.retry_after == 60.0),
        (
            {
                "status": 400,
                "code": 551,
                "message": "(#551) This person isn't available right now.",
            },
            lambda e: e.permanent and "isn't available" in str(e),
        ),
        (
            {"status": 403, "code": 200, "message": "(#200) Requires pages_messaging permission"},
            lambda e: e.permanent,
        ),
        (
            {"status": 500, "code": 1200, "message": "Temporary send message failure"},
            lambda e: not (e.permanent or e.uncertain or e.retry_after),
        ),
        (
            {"status": 503, "code": None, "message": "Service Unavailable"},
            lambda e: not (e.permanent or e.uncertain),
        ),
        ({"disconnect": True}, lambda e: e.uncertain),
    ],
)
async def test_send_errors_map_to_send_error(fault: dict[str, Any], check: Any) -> None:
    context = MemoryChannelContext("fb")
    async with running("messenger", context) as (server, channel, _url):
        server.user_wrote(PSID)
        server.fail_next(**fault)
        with pytest.raises(SendError) as excinfo:
            await channel.send(outbound())
        assert check(excinfo.value), excinfo.value
    await context.aclose()


async def test_read_timeout_after_sending_is_uncertain() -> None:
    context = MemoryChannelContext("fb")
    async with running("messenger", context, request_timeout=0.3) as (server, channel, _url):
        server.user_wrote(PSID)
        server.fail_next(hang=True)
        with pytest.raises(SendError, match="may have been delivered") as excinfo:
            await channel.send(outbound("maybe"))
        assert excinfo.value.uncertain and [m.text for m in server.sent] == ["maybe"]
    await context.aclose()


async def test_partial_send_is_never_retried() -> None:
    context = MemoryChannelContext("fb")
    async with running("messenger", context) as (server, channel, _url):
        server.user_wrote(PSID)
        original = server._send

        async def second_fails(*args: Any) -> Any:
            if len(server.sent) == 1:
                server.fail_next(status=500, code=2)
            return await original(*args)

        server._send = second_fails  # type: ignore[method-assign]
        with pytest.raises(SendError, match="1 of 2 parts sent") as excinfo:
            await channel.send(outbound("word " * 500))
        assert excinfo.value.uncertain and len(server.sent) == 1
    await context.aclose()


async def test_unreachable_api_is_transient() -> None:
    context = MemoryChannelContext("fb")
    config = MessengerConfig.model_validate(
        {**raw_config("messenger"), "api_base": "http://127.0.0.1:9"}
    )
    channel = MessengerChannel("fb", config, context)
    with pytest.raises(SendError, match="unreachable") as excinfo:
        await channel.send(outbound())
    assert not (excinfo.value.uncertain or excinfo.value.permanent)
    with pytest.raises(PluginError, match="did not answer"):
        await channel.check()
    await context.aclose()


# -- check -------------------------------------------------------------------------------------


async def test_check_reads_the_page_with_the_token() -> None:
    context = MemoryChannelContext("fb")
    async with running("messenger", context) as (server, channel, url):
        summary = await channel.check()
        assert "Fake Bakery" in summary and server.page_id in summary and url in summary
        assert ("GET", f"/v23.0/{server.page_id}") in server.requests
        channel.token = "EAAwrong"
        with pytest.raises(PluginError, match="token is invalid"):
            await channel.check()
    await context.aclose()


async def test_wrong_app_secret_fails_the_appsecret_proof() -> None:
    context = MemoryChannelContext("fb")
    async with running("messenger", context) as (server, channel, _url):
        server.user_wrote(PSID)
        channel.config = channel.config.model_copy(update={"app_secret": Secret("not-the-secret")})
        with pytest.raises(SendError, match="appsecret_proof") as excinfo:
            await channel.send(outbound())
        assert excinfo.value.permanent
    await context.aclose()
