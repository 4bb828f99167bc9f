"""WhatsAppChannel's webhook against the fake Cloud API: handshake, signatures, bodies, media,
statuses, store failures, and the doctor check. Sending is in test_whatsapp_sending.py."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import tomllib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pydantic
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import PluginError
from gateway.messages import Outbound
from gateway.plugin import Channel
from gateway.secretref import Secret
from gateway.testing.conformance import ConformanceContext, public_client, serve_channels
from gateway.testing.context import MemoryChannelContext
from gateway.testing.fake_whatsapp import (
    DEFAULT_APP_SECRET,
    DEFAULT_PHONE_NUMBER_ID,
    DEFAULT_TOKEN,
    FakeWhatsAppServer,
    open_fake_whatsapp,
)
from plugins.whatsapp import WhatsAppChannel, WhatsAppConfig
from plugins.whatsapp.graph import Graph, _covers

USER = "4915112345678"
VERIFY = "verify-Token_42"


def config(server: FakeWhatsAppServer | None = None, **overrides: Any) -> WhatsAppConfig:
    table: dict[str, Any] = {
        "plugin": "whatsapp",
        "phone_number_id": DEFAULT_PHONE_NUMBER_ID,
        "access_token": Secret(DEFAULT_TOKEN, "env:WA_TOKEN"),
        "app_secret": Secret(DEFAULT_APP_SECRET, "env:WA_APP_SECRET"),
        "verify_token": Secret(VERIFY, "env:WA_VERIFY"),
        **overrides,
    }
    if server is not None:
        table.setdefault("api_base", server.api_base)
    return WhatsAppConfig.model_validate(table)


@contextlib.asynccontextmanager
async def webhook(
    context: MemoryChannelContext | None = None,
    *,
    cfg: WhatsAppConfig | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[FakeWhatsAppServer, MemoryChannelContext, WhatsAppChannel]]:
    context = context or MemoryChannelContext("wa")
    async with open_fake_whatsapp() as server:
        channel = WhatsAppChannel("wa", cfg or config(server, **overrides), context)
        async with serve_channels(channel) as base:
            context.public_url = base
            server.webhook_url = channel.webhook_url()
            async with trio.open_nursery() as nursery:
                await nursery.start(channel.run)
                yield server, context, channel
                nursery.cancel_scope.cancel()
    await context.aclose()


def raw(notification: dict[str, Any]) -> bytes:
    return json.dumps(notification).encode()


# -- config ----------------------------------------------------------------------------------


def test_defaults_follow_meta_limits() -> None:
    cfg = config()
    assert (cfg.send_rate, cfg.send_rate_per_chat, cfg.send_burst_per_chat) == (80.0, 1 / 6, 5)
    assert (cfg.api_base, cfg.api_version) == ("https://graph.facebook.com", "v23.0")
    assert cfg.media_hosts == ["https://lookaside.fbsbx.com"] and cfg.window_template is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"app_secret": Secret("")}, "must not be empty"),
        ({"phone_number_id": "+1 555 0100"}, "numeric id"),
        ({"api_version": "23"}, "v23.0"),
        ({"api_base": "graph.facebook.com"}, "http(s) URL"),
        ({"window_template": {"language": "en_US"}}, "name"),
        ({"acess_token": "env:X"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_config_says_what_to_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as excinfo:
        config(**overrides)
    assert message in str(excinfo.value)
    assert DEFAULT_TOKEN not in str(excinfo.value) and DEFAULT_APP_SECRET not in str(excinfo.value)


def test_app_secret_is_required() -> None:
    table = {"plugin": "whatsapp", "phone_number_id": "1", "access_token": Secret("t")}
    with pytest.raises(pydantic.ValidationError) as excinfo:
        WhatsAppConfig.model_validate({**table, "verify_token": Secret("v")})
    assert "app_secret" in str(excinfo.value) and "Field required" in str(excinfo.value)


def test_window_template_as_written_in_toml() -> None:
    table = tomllib.loads(
        'window_template = { name = "reply_later", language = "de", body_parameter = true }'
    )
    template = config(**table).window_template
    assert template is not None
    assert (template.name, template.language, template.body_parameter) == (
        "reply_later",
        "de",
        True,
    )


def test_the_token_only_goes_to_api_base_and_media_hosts() -> None:
    graph = Graph(
        config(media_hosts=["https://*.fbsbx.com", "http://localhost:8000"]), httpx.AsyncClient
    )
    trusted = graph._trusted
    assert any(_covers(r, "https://graph.facebook.com/v23.0/1") for r in trusted)
    for url in ("https://lookaside.fbsbx.com/a?mid=1", "http://localhost:8000/m"):
        assert any(_covers(r, url) for r in trusted), url
    for url in (
        "https://evil-fbsbx.com/a",
        "http://lookaside.fbsbx.com/a",
        "http://localhost:8001/m",
    ):
        assert not any(_covers(r, url) for r in trusted), url


# -- handshake -------------------------------------------------------------------------------


async def test_subscription_handshake() -> None:
    async with webhook() as (server, _, channel):
        assert isinstance(channel, Channel)
        assert await server.verify_webhook(VERIFY, challenge="1158201444") == (200, "1158201444")
        status, text = await server.verify_webhook("guess", challenge="1")
        assert status == 403 and VERIFY not in text
        async with httpx.AsyncClient() as http:
            url = channel.webhook_url()
            assert url is not None
            no_mode = await http.get(url, params={"hub.verify_token": VERIFY, "hub.challenge": "1"})
            assert no_mode.status_code == 400
            params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY}
            assert (await http.get(url, params=params)).status_code == 400  # no challenge


# -- signatures ------------------------------------------------------------------------------


async def test_valid_signature_is_accepted_before_the_200_and_a_replay_dedupes() -> None:
    async with webhook() as (server, context, _):
        note = server.push_message(USER, "Hello from WhatsApp", name="Kari")
        assert await server.post_webhook(note) == 200
        [inbound] = context.inbound  # committed before the answer
        assert (inbound.text, inbound.sender_name, inbound.thread_key) == (
            "Hello from WhatsApp",
            "Kari",
            USER,
        )
        assert inbound.external_id == note["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        assert await server.post_webhook(note) == 200  # replayed: the same signed body again
        assert len(context.inbound) == 1 and len(context.duplicates) == 1


@pytest.mark.parametrize(
    ("signature", "status"),
    [
        (None, 401),  # missing header
        ("sha256=" + "0" * 64, 403),  # wrong signature
        ("other-secret", 403),  # signed with another secret
        ("sha1=abcdef", 401),  # not Meta's sha256 scheme
        ("sha256=", 401),
    ],
)
async def test_bad_signatures_are_refused_and_nothing_is_stored(
    signature: str | None, status: int
) -> None:
    async with webhook() as (server, context, _):
        body = raw(server.push_message(USER, "forged"))
        if signature == "other-secret":
            signature = server.sign(body, secret="not-the-app-secret")
        async with httpx.AsyncClient() as http:
            headers = {"Content-Type": "application/json"}
            if signature is not None:
                headers["X-Hub-Signature-256"] = signature
            assert server.webhook_url is not None
            response = await http.post(server.webhook_url, content=body, headers=headers)
        assert response.status_code == status
        expected = server.sign(body).removeprefix("sha256=")
        assert expected not in response.text and DEFAULT_APP_SECRET not in response.text
        assert context.inbound == [] and context.duplicates == []


async def test_a_tampered_body_fails_its_signature() -> None:
    async with webhook() as (server, context, _):
        body = raw(server.push_message(USER, "pay 10 EUR"))
        signature = server.sign(body)
        tampered = body.replace(b"10 EUR", b"99 EUR")
        assert await server.post_webhook(tampered, signature=signature) == 403
        assert context.inbound == []


async def test_no_app_secret_fails_closed() -> None:
    """A config that slipped past validation with no secret refuses every POST, even one
    "signed" with the empty key, and says why."""
    cfg = config().model_copy(update={"app_secret": Secret("")})
    async with webhook(cfg=cfg) as (server, context, _):
        body = raw(server.push_message(USER, "hi"))
        unkeyed = "sha256=" + hmac.new(b"", body, hashlib.sha256).hexdigest()
        for signature in (server.sign(body), unkeyed, None):
            assert await server.post_webhook(body, signature=signature) == 403
        assert context.inbound == []
        async with httpx.AsyncClient() as http:
            assert server.webhook_url is not None
            headers = {"Content-Type": "application/json", "X-Hub-Signature-256": unkeyed}
            response = await http.post(server.webhook_url, content=body, headers=headers)
        assert "no app secret is configured" in response.text


# -- bodies ----------------------------------------------------------------------------------


async def test_bad_bodies_get_clear_4xx() -> None:
    async with webhook() as (server, context, _):
        note = raw(server.push_message(USER, "x"))
        assert await server.post_webhook(note, content_type="text/plain") == 415
        assert await server.post_webhook(b"{not json") == 400
        assert await server.post_webhook(b"[1, 2]") == 400
        assert await server.post_webhook(b'{"hello": "world"}') == 400  # JSON, no notification
        assert context.inbound == []


# httpx's request-body generator is left unfinished when the server answers the 9 MiB upload
# early (413, connection closed) before it was all sent: that early answer is what is tested.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object ByteStream.__aiter__"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_oversized_body_is_413_and_closes_the_connection_only_past_the_drain_limit() -> None:
    """A body a little over 1 MiB is read to its end and dropped, so the connection can carry the
    next request; a huge one is not read, and then ``Connection: close`` matters: hypercorn
    would otherwise keep a connection whose unread body makes the next request on it hang."""
    channel, context = fuzz_app()
    async with serve_channels(channel) as base, httpx.AsyncClient(base_url=base) as client:
        for size, closes in ((1 << 20, False), (9 << 20, True)):
            body = b"{" + b" " * size + b"}"
            headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)}
            response = await client.post("/webhooks/wa", content=body, headers=headers)
            assert response.status_code == 413
            assert (response.headers.get("Connection") == "close") is closes
    assert context.inbound == []
    await context.aclose()


async def test_other_products_and_other_numbers_are_acknowledged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    page = {"object": "page", "entry": [{"id": "1", "time": 1, "messaging": []}]}
    async with webhook() as (server, context, _):
        assert await server.post_webhook(page) == 200
        assert "'page'" in caplog.text and "its own channel" in caplog.text
        other = server.notification(
            messages=[server.message(USER, "text", {"body": "for number 2"})], phone_number_id="2"
        )
        assert await server.post_webhook(other) == 200
        reaction = server.push(USER, "reaction", {"message_id": "wamid.X", "emoji": "👍"})
        assert await server.post_webhook(reaction) == 200
        assert context.inbound == []


async def test_unsupported_message_is_stored_with_empty_text() -> None:
    async with webhook() as (server, context, _):
        note = server.push(USER, "unsupported", {"type": "poll_creation"})
        assert await server.deliver(note) == 200
        [inbound] = context.inbound
        assert inbound.text == "" and inbound.metadata["unsupported_type"] == "poll_creation"


async def test_a_batch_is_one_accept_in_order() -> None:
    context = ConformanceContext("wa")
    async with webhook(context) as (server, _, _):
        batch = server.notification(
            messages=[server.message(USER, "text", {"body": f"m{i}"}) for i in range(3)]
            + [server.message("4712345678", "text", {"body": "other user"})],
            names={USER: "Kari", "4712345678": "Ola"},
        )
        assert await server.deliver(batch) == 200
        assert context.accept_calls == 1
        assert [(m.thread_key, m.text, m.sender_name) for m in context.inbound] == [
            (USER, "m0", "Kari"),
            (USER, "m1", "Kari"),
            (USER, "m2", "Kari"),
            ("4712345678", "other user", "Ola"),
        ]


async def test_store_failure_answers_503_and_the_retry_is_stored() -> None:
    async with webhook() as (server, context, _):
        context.fail_accepts = 1
        assert await server.deliver(server.push_message(USER, "keep me")) == 200
        assert server.webhook_statuses == [503, 200]
        assert [m.text for m in context.inbound] == ["keep me"]


# -- media -----------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


async def test_media_is_downloaded_before_accept() -> None:
    async with webhook() as (server, context, _):
        note = server.push_media(USER, "image", PNG, "image/png", caption="broken lid")
        doc = server.push_media(
            USER, "document", b"%PDF-1.7 ...", "application/pdf", filename="a.pdf"
        )
        assert await server.deliver(note) == 200 and await server.deliver(doc) == 200
        image, pdf = context.inbound
        assert image.text == "broken lid"
        [attachment] = image.attachments
        assert (attachment.kind, attachment.mime_type, attachment.data) == (
            "image",
            "image/png",
            PNG,
        )
        assert pdf.attachments[0].filename == "a.pdf" and pdf.attachments[0].data == b"%PDF-1.7 ..."
        media_id = note["entry"][0]["changes"][0]["value"]["messages"][0]["image"]["id"]
        # GET /{media-id} for the short-lived URL, then the download, both with the token
        assert ("GET", f"/v23.0/{media_id}") in server.requests
        assert ("GET", f"/_media/{media_id}") in server.requests


@pytest.mark.parametrize("trouble", ["download", "media_info", "too_big", "sha256", "host"])
async def test_media_trouble_keeps_the_message_without_bytes(trouble: str) -> None:
    overrides = {"max_media_bytes": 100} if trouble == "too_big" else {}
    async with webhook(**overrides) as (server, context, _):
        note = server.push_media(USER, "image", PNG, "image/png", caption="see photo")
        media_id = note["entry"][0]["changes"][0]["value"]["messages"][0]["image"]["id"]
        if trouble in ("download", "media_info"):
            server.fail_next(trouble, status=500)
        elif trouble == "sha256":
            server.uploads[media_id] = (b"something else", "image/png")
        elif trouble == "host":  # the token must not follow a URL to an unconfigured host
            server.media_base = server.api_base.replace("127.0.0.1", "localhost")
        assert await server.deliver(note) == 200
        [inbound] = context.inbound
        assert inbound.text == "see photo"
        [attachment] = inbound.attachments
        assert attachment.data is None and attachment.url and attachment.url.endswith(media_id)
        if trouble == "host":
            assert not any(p.startswith("/_media/") for _, p in server.requests)


async def test_a_configured_media_host_is_trusted() -> None:
    async with webhook() as (server, context, channel):
        other = server.api_base.replace("127.0.0.1", "localhost")
        channel.graph = Graph(config(server, media_hosts=[other]), lambda: context.http)
        server.media_base = other
        assert (
            await server.deliver(server.push_media(USER, "sticker", b"RIFF", "image/webp")) == 200
        )
        assert context.inbound[0].attachments[0].data == b"RIFF"


# -- statuses --------------------------------------------------------------------------------


async def test_statuses_reach_update_delivery() -> None:
    async with webhook() as (server, context, _):
        assert await server.deliver(server.push_message(USER, "hi")) == 200
        wamid = await _send(server, context, USER)
        failed = [{"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable",
                   "error_data": {"details": "Unable to deliver message."}}]  # fmt: skip
        for status in ("sent", "delivered", "read"):
            assert await server.deliver(server.status(wamid, status)) == 200
        assert await server.deliver(server.status(wamid, "failed", errors=failed)) == 200
        assert context.statuses == [
            (wamid, "sent", None),
            (wamid, "delivered", None),
            (wamid, "read", None),
            (wamid, "failed", "131026 Message undeliverable: Unable to deliver message."),
        ]
        unknown = server.status("wamid.NOT-OURS", "read")
        assert await server.post_webhook(unknown) == 200  # the context answers False: fine


async def _send(server: FakeWhatsAppServer, context: MemoryChannelContext, to: str) -> str:
    channel = WhatsAppChannel("wa", config(server), context)
    now = dt.datetime.now(dt.UTC)
    result = await channel.send(
        Outbound(1, "k", DEFAULT_PHONE_NUMBER_ID, to, "reply", last_inbound_at=now)
    )
    assert result.external_id == server.sent[-1].message_id
    return result.external_id


# -- doctor ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def standalone(**overrides: Any) -> AsyncIterator[WhatsAppChannel]:
    """A channel outside any server, its context closed afterwards."""
    context = MemoryChannelContext("wa")
    try:
        yield WhatsAppChannel("wa", config(**overrides), context)
    finally:
        await context.aclose()


async def test_check_proves_the_token() -> None:
    async with webhook() as (server, _, channel):
        summary = await channel.check()
        assert "Fake Gateway Shop" in summary and "quality GREEN" in summary
        assert summary.endswith(f"callback URL for Meta: {channel.webhook_url()}")
        assert ("GET", f"/v23.0/{DEFAULT_PHONE_NUMBER_ID}") in server.requests
        base = server.api_base
        async with standalone(api_base=base, access_token=Secret("EAA-wrong")) as bad:
            with pytest.raises(PluginError, match="rejected the access token") as excinfo:
                await bad.check()
            assert "EAA-wrong" not in str(excinfo.value)
        async with standalone(api_base=base, phone_number_id="42") as lost:
            with pytest.raises(PluginError, match="phone_number_id"):
                await lost.check()
        async with standalone(api_base=base) as nowhere:
            with pytest.raises(UserWarning, match="public_url"):
                await nowhere.check()


async def test_check_when_meta_is_unreachable() -> None:
    async with open_fake_whatsapp() as server:
        base = server.api_base
    async with standalone(api_base=base) as channel:
        with pytest.raises(PluginError, match="unreachable"):
            await channel.check()


# -- secrets stay out of logs ------------------------------------------------------------------


async def test_secrets_never_appear_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with webhook() as (server, context, _):
        await server.deliver(server.push_media(USER, "image", PNG, "image/png"))
        await server.post_webhook(raw(server.push_message(USER, "x")), signature="sha256=00")
        await server.verify_webhook("wrong")
        await _send(server, context, USER)
    assert "HTTP Request" in caplog.text  # httpx did log the calls
    for secret in (DEFAULT_TOKEN, DEFAULT_APP_SECRET, VERIFY):
        assert secret not in caplog.text


# -- fuzzing the endpoint (no server: quart's test client) -------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)


def fuzz_app() -> tuple[WhatsAppChannel, MemoryChannelContext]:
    context = MemoryChannelContext("wa", public_url="https://gw.example.com")
    # Port 9 on loopback refuses at once: a fuzzed media message never leaves the machine.
    channel = WhatsAppChannel("wa", config(api_base="http://127.0.0.1:9"), context)
    return channel, context


def sign(body: bytes, secret: str = DEFAULT_APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
    header=st.none()
    | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
    | st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256={h}")
    | st.sampled_from(["sha256=", "sha256=zz", "SHA256=0"]),
)
async def test_unsigned_or_badly_signed_bodies_are_only_ever_401_or_403(
    body: bytes, header: str | None
) -> None:
    channel, context = fuzz_app()
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["X-Hub-Signature-256"] = header
    async with public_client(channel) as client:
        response = await client.post("/webhooks/wa", content=body, headers=headers)
    assert response.status_code in (401, 403) and context.inbound == []
    await context.aclose()


media_messages = st.fixed_dictionaries(
    {
        "from": st.text("0123456789", min_size=1, max_size=15),
        "id": st.text(min_size=1, max_size=20),
        "type": st.just("image"),
        "image": st.fixed_dictionaries(
            {
                "id": st.text(max_size=30),
                "sha256": st.text(max_size=70),
                "mime_type": st.text(max_size=20),
            }
        ),
    }
)


@settings(max_examples=150, deadline=None)
@given(
    value=st.fixed_dictionaries(
        {"metadata": st.just({"phone_number_id": DEFAULT_PHONE_NUMBER_ID})},
        optional={
            "messages": json_values | st.lists(media_messages, max_size=2),
            "statuses": json_values,
            "contacts": json_values,
        },
    ),
    obj=st.sampled_from(["whatsapp_business_account", "page", 7]),
)
async def test_signed_bodies_get_200_or_a_clear_4xx_never_5xx(value: Any, obj: Any) -> None:
    channel, context = fuzz_app()
    body = json.dumps(
        {"object": obj, "entry": [{"changes": [{"field": "messages", "value": value}]}]}
    )
    data = body.encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(data)}
    async with public_client(channel) as client:
        response = await client.post("/webhooks/wa", content=data, headers=headers)
    assert response.status_code == (400 if obj == 7 else 200)
    await context.aclose()
