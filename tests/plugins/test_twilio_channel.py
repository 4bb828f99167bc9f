"""TwilioChannel against the fake Twilio: signed webhooks, MMS downloads, status callbacks,
idempotent sends and their errors, the doctor check."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import PluginError, SendError
from gateway.messages import Attachment, Outbound
from gateway.plugin import Channel
from gateway.secretref import Secret
from gateway.testing import fake_twilio
from gateway.testing.conformance import public_client, serve_channels
from gateway.testing.context import MemoryChannelContext
from gateway.testing.fake_twilio import (
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    DEFAULT_NUMBER,
    FakeTwilioServer,
    open_fake_twilio,
)
from plugins.twilio import TwilioChannel, TwilioConfig

SID = DEFAULT_ACCOUNT_SID
TOKEN = DEFAULT_AUTH_TOKEN
NUMBER = DEFAULT_NUMBER
CONTACT = "+15557654321"
SERVICE = "MG" + "5e" * 16
WAIT = 5.0
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'


def config(fake: FakeTwilioServer | None = None, **overrides: Any) -> TwilioConfig:
    table: dict[str, Any] = {
        "plugin": "twilio",
        "account_sid": SID,
        "auth_token": Secret(TOKEN, "env:TWILIO_AUTH_TOKEN"),
        "from_number": NUMBER,
        **overrides,
    }
    if fake is not None:
        table.setdefault("api_base", fake.api_base)
    return TwilioConfig.model_validate(table)


@dataclasses.dataclass
class Env:
    fake: FakeTwilioServer
    context: MemoryChannelContext
    channel: TwilioChannel
    local: str
    """Where the channel's webhooks are served: http://127.0.0.1:PORT/webhooks/tw"""

    @property
    def base(self) -> str:
        """The public webhook base Twilio signs."""
        base = self.channel.webhook_base()
        assert base is not None
        return base


@contextlib.asynccontextmanager
async def running(
    fake_options: dict[str, Any] | None = None, *, public: bool = True, **overrides: Any
) -> AsyncIterator[Env]:
    async with open_fake_twilio(**(fake_options or {})) as fake:
        context = MemoryChannelContext("tw")
        channel = TwilioChannel("tw", config(fake, **overrides), context)
        try:
            async with serve_channels(channel) as url:
                if public:
                    context.public_url = url
                env = Env(fake, context, channel, f"{url}/webhooks/tw")
                fake.point_webhooks(channel.webhook_base() or env.local)
                if channel.config.webhook_base:
                    fake.route_via(channel.config.webhook_base, env.local)
                async with trio.open_nursery() as nursery:
                    if public:
                        await nursery.start(channel.run)
                    yield env
                    nursery.cancel_scope.cancel()
        finally:
            await context.aclose()


def outbound(text: str = "hi back", key: str = "reply:1", **fields: Any) -> Outbound:
    return Outbound(
        1, key, fields.pop("account", NUMBER), fields.pop("to", CONTACT), text, **fields
    )


def creations(fake: FakeTwilioServer) -> int:
    return sum(
        1 for method, path in fake.requests if method == "POST" and path.endswith("/Messages.json")
    )


def lookups(fake: FakeTwilioServer) -> int:
    return sum(
        1 for method, path in fake.requests if method == "GET" and path.endswith("/Messages.json")
    )


# -- signatures -------------------------------------------------------------------------------


async def test_signed_sms_is_accepted_and_answered_with_empty_twiml() -> None:
    async with running() as env:
        assert isinstance(env.channel, Channel)
        params = env.fake.incoming_message(CONTACT, "Hello there")
        response = await env.fake.post_form(f"{env.base}/sms", params)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/xml")
        assert response.text == EMPTY_TWIML
        [inbound] = env.context.inbound  # accepted before the answer
        assert (inbound.text, inbound.thread_key, inbound.account) == (
            "Hello there",
            CONTACT,
            NUMBER,
        )
        assert inbound.external_id == params["MessageSid"]


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("wrong signature", 403),
        ("missing header", 401),
        ("another auth token", 403),
        ("tampered", 403),
    ],
)
async def test_forged_webhooks_are_refused(case: str, status: int) -> None:
    async with running() as env:
        params = env.fake.incoming_message(CONTACT, "forged")
        url = f"{env.base}/sms"
        expected = env.fake.signature(url, params)
        if case == "wrong signature":
            response = await env.fake.post_form(url, params, signature=expected[:-4] + "AAA=")
        elif case == "missing header":
            response = await env.fake.post_form(url, params, signature=None)
        elif case == "another auth token":
            response = await env.fake.post_form(url, params, token="some-other-account-token")
        else:
            signed = env.fake.signature(url, {**params, "Body": "original"})
            response = await env.fake.post_form(url, params, signature=signed)
        assert response.status_code == status
        assert expected not in response.text and TOKEN not in response.text
        assert env.context.inbound == [] and env.context.duplicates == []


async def test_without_a_public_url_every_webhook_is_refused() -> None:
    """Fail closed: the signed URL cannot be known, so nothing is accepted, however signed."""
    async with running(public=False) as env:
        params = env.fake.incoming_message(CONTACT, "no public url")
        response = await env.fake.post_form(f"{env.local}/sms", params)  # signed for this URL
        assert response.status_code == 403 and "public URL" in response.text
        assert env.context.inbound == []
        with pytest.raises(PluginError, match="public_url"):
            await env.channel.run()


async def test_without_an_auth_token_every_webhook_is_refused() -> None:
    """The config refuses a missing or empty token (test_twilio_convert); should one get past it
    anyway, the webhook layer still fails closed."""
    async with open_fake_twilio() as fake:
        context = MemoryChannelContext("tw")
        valid = config(fake)
        unchecked = TwilioConfig.model_construct(
            **{**dict(valid), "auth_token": Secret("", "env:EMPTY")}
        )
        channel = TwilioChannel("tw", unchecked, context)
        async with serve_channels(channel) as url:
            context.public_url = url
            params = fake.incoming_message(CONTACT, "unverifiable")
            response = await fake.post_form(f"{url}/webhooks/tw/sms", params, token="")
            assert response.status_code == 403 and "no auth token" in response.text
            assert context.inbound == []
        await context.aclose()


async def test_replayed_webhook_is_deduplicated() -> None:
    async with running() as env:
        params = env.fake.incoming_message(CONTACT, "only once")
        first = await env.fake.post_form(f"{env.base}/sms", params)
        again = await env.fake.post_form(f"{env.base}/sms", params)
        assert (first.status_code, again.status_code) == (200, 200)
        assert [m.text for m in env.context.inbound] == ["only once"]
        assert [m.external_id for m in env.context.duplicates] == [params["MessageSid"]]


async def test_signature_is_checked_against_the_public_url_not_the_host() -> None:
    public = "https://gw.example.com/hooks/tw"
    async with running(webhook_base=public) as env:
        assert env.base == public
        await env.fake.send_sms(CONTACT, "through the proxy")
        assert [m.text for m in env.context.inbound] == ["through the proxy"]
        # Signed for the address the request reached (what a Host-based check would use):
        params = env.fake.incoming_message(CONTACT, "signed for the wrong URL")
        local = f"{env.local}/sms"
        response = await env.fake.post_form(
            local, params, signature=env.fake.signature(local, params)
        )
        assert response.status_code == 403
        assert len(env.context.inbound) == 1


async def test_bad_requests_get_a_clear_4xx() -> None:
    async with running() as env, httpx.AsyncClient() as http:
        url = f"{env.base}/sms"
        params = env.fake.incoming_message(CONTACT, "x")
        signed = {"X-Twilio-Signature": env.fake.signature(url, params)}
        wrong_type = await http.post(url, json=params, headers=signed)
        assert wrong_type.status_code == 415 and "x-www-form-urlencoded" in wrong_type.text
        huge = await http.post(url, data={**params, "Body": "x" * 70_000}, headers=signed)
        assert huge.status_code == 413
        garbage = await http.post(
            url,
            content=b"Body=\xff\xfe",
            headers={**signed, "content-type": "application/x-www-form-urlencoded"},
        )
        assert garbage.status_code == 400 and "form data" in garbage.text
        for missing in ("MessageSid", "From"):
            partial = {k: v for k, v in params.items() if k != missing}
            response = await env.fake.post_form(url, partial)
            assert response.status_code == 400
            assert response.text == f"missing required parameter {missing}"
        bad_count = await env.fake.post_form(url, {**params, "NumMedia": "many"})
        assert bad_count.status_code == 400
        assert env.context.inbound == []


async def test_store_failure_answers_503_and_the_retry_is_accepted() -> None:
    async with running() as env:
        env.context.fail_accepts = 1
        await env.fake.send_sms(CONTACT, "do not lose me")
        assert [status for _, status in env.fake.webhook_log] == [503, 200]
        assert [m.text for m in env.context.inbound] == ["do not lose me"]


# -- MMS --------------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)


async def test_mms_media_is_downloaded_with_credentials_only_at_twilio() -> None:
    async with running({"cdn_host": "localhost"}, media_hosts=["http://localhost"]) as env:
        await env.fake.send_sms(
            CONTACT, "photo + pdf", media=(("image/png", PNG), ("application/pdf", b"%PDF-1.7"))
        )
        [inbound] = env.context.inbound
        image, pdf = inbound.attachments
        assert (image.kind, image.mime_type, image.data) == ("image", "image/png", PNG)
        assert (pdf.kind, pdf.data) == ("document", b"%PDF-1.7")
        assert image.url and "/Media/ME" in image.url
        media_paths = [p for m, p in env.fake.requests if "/Media/" in p]
        cdn_paths = [p for m, p in env.fake.requests if p.startswith("/cdn/")]
        assert len(media_paths) == len(cdn_paths) == 2
        assert set(media_paths) <= set(env.fake.with_credentials)  # Twilio's API: Basic auth
        assert not set(cdn_paths) & set(env.fake.with_credentials)  # the CDN: never


async def test_media_hosts_match_like_the_outbound_allowlist() -> None:
    context = MemoryChannelContext("tw")
    hosts = ["https://*.twiliocdn.com", "https://s3-external-1.amazonaws.com"]
    allowed = TwilioChannel("tw", config(media_hosts=hosts), context).rest._media_host
    assert allowed("mms.twiliocdn.com") and allowed("twiliocdn.com") and allowed("api.twilio.com")
    assert allowed("s3-external-1.amazonaws.com") and not allowed("evil-s3.amazonaws.com")
    assert not allowed("twiliocdn.com.evil.example") and not allowed(None)
    await context.aclose()


async def test_failed_downloads_keep_the_message_with_links() -> None:
    async with running() as env:
        env.fake.download_failures = 10
        await env.fake.send_sms(CONTACT, "look", media=(("image/jpeg", b"JPEG"),))
        [inbound] = env.context.inbound
        [attachment] = inbound.attachments
        assert attachment.data is None and attachment.url and attachment.kind == "image"


async def test_oversized_media_is_kept_as_a_link() -> None:
    async with running(max_media_bytes=1024) as env:
        await env.fake.send_sms(CONTACT, "", media=(("video/mp4", bytes(5000)),))
        [attachment] = env.context.inbound[0].attachments
        assert attachment.data is None and attachment.kind == "video"


async def test_media_elsewhere_is_not_fetched() -> None:
    async with running() as env:
        params = env.fake.incoming_message(CONTACT, "see this")
        params.update(
            NumMedia="1", MediaUrl0="https://evil.example/x.png", MediaContentType0="image/png"
        )
        assert (await env.fake.post_form(f"{env.base}/sms", params)).status_code == 200
        [attachment] = env.context.inbound[0].attachments
        assert attachment.url == "https://evil.example/x.png" and attachment.data is None


async def test_a_retried_mms_is_not_downloaded_again() -> None:
    async with running() as env:
        params = env.fake.incoming_message(CONTACT, "twice", media=(("image/gif", b"GIF89a"),))
        for _ in range(2):
            assert (await env.fake.post_form(f"{env.base}/sms", params)).status_code == 200
        assert sum(1 for _, path in env.fake.requests if "/Media/" in path) == 1
        assert len(env.context.inbound) == len(env.context.duplicates) == 1


# -- status callbacks -------------------------------------------------------------------------


async def test_status_callbacks_update_the_delivery() -> None:
    async with running() as env:
        result = await env.channel.send(outbound())
        sid = result.external_id
        assert sid is not None and env.fake.sent[0].status_callback == f"{env.base}/status"
        assert await env.fake.message_status(sid, "queued") == 200
        assert await env.fake.message_status(sid, "delivered") == 200
        assert await env.fake.message_status(sid, "undelivered", error_code=30007) == 200
        assert env.context.statuses == [
            (sid, "delivered", None),
            (sid, "failed", "Twilio error 30007: filtered by the carrier as spam"),
        ]


async def test_status_callback_without_message_sid_is_a_400() -> None:
    async with running() as env:
        response = await env.fake.post_form(f"{env.base}/status", {"MessageStatus": "sent"})
        assert response.status_code == 400 and "MessageSid" in response.text


# -- sending ----------------------------------------------------------------------------------


async def test_send_posts_the_message_from_the_number_written_to() -> None:
    other = "+15005550009"
    async with running({"numbers": (NUMBER, other)}) as env:
        result = await env.channel.send(outbound("from the other line", account=other))
        [sent] = env.fake.sent
        assert (sent.to, sent.from_, sent.body) == (CONTACT, other, "from the other line")
        assert result.external_id == sent.sid
        await env.channel.send(outbound("from the default", key="reply:2", account="tw-account"))
        assert env.fake.sent[1].from_ == NUMBER


async def test_send_through_a_messaging_service() -> None:
    async with running(
        {"messaging_service_sid": SERVICE}, from_number=None, messaging_service_sid=SERVICE
    ) as env:
        await env.channel.send(outbound())
        [sent] = env.fake.sent
        assert sent.messaging_service_sid == SERVICE and sent.status == "accepted"


async def test_attachments_go_by_url_and_bytes_are_refused() -> None:
    async with running() as env:
        picture = Attachment(kind="image", mime_type="image/png", url="https://cdn.example/p.png")
        await env.channel.send(outbound("see", attachments=(picture,)))
        assert env.fake.sent[0].media_urls == ["https://cdn.example/p.png"]
        sealed = Attachment(kind="image", mime_type="image/png", data=PNG)
        with pytest.raises(SendError) as refused:
            await env.channel.send(outbound("x", key="reply:2", attachments=(sealed,)))
        assert refused.value.permanent and "public https:// URL" in str(refused.value)
        many = (picture,) * 11
        with pytest.raises(SendError, match="at most 10"):
            await env.channel.send(outbound("x", key="reply:3", attachments=many))
        with pytest.raises(SendError) as not_a_number:
            await env.channel.send(outbound("x", key="reply:4", to="visitor-abc"))
        assert not_a_number.value.permanent
        assert len(env.fake.sent) == 1


async def test_a_resend_returns_the_stored_sid_without_sending() -> None:
    async with running() as env:
        first = await env.channel.send(outbound())
        again = await env.channel.send(outbound())
        assert first == again and len(env.fake.sent) == 1 and creations(env.fake) == 1


async def test_5xx_after_twilio_created_it_is_not_sent_twice() -> None:
    async with running() as env:
        env.fake.fail_next(500, code=20500, mode="created")
        with pytest.raises(SendError) as failed:
            await env.channel.send(outbound())
        assert not (failed.value.permanent or failed.value.uncertain)
        result = await env.channel.send(outbound())  # the dispatcher's retry
        assert len(env.fake.sent) == 1 and result.external_id == env.fake.sent[0].sid
        assert creations(env.fake) == 1 and lookups(env.fake) == 1


async def test_5xx_before_creation_is_sent_on_retry() -> None:
    async with running() as env:
        env.fake.fail_next(503, code=20503)
        with pytest.raises(SendError):
            await env.channel.send(outbound())
        result = await env.channel.send(outbound())
        assert len(env.fake.sent) == 1 and result.external_id == env.fake.sent[0].sid
        assert creations(env.fake) == 2 and lookups(env.fake) == 1


async def test_lost_answer_is_uncertain_and_a_later_attempt_finds_the_message() -> None:
    async with running() as env:
        env.fake.fail_next(mode="disconnect")
        with pytest.raises(SendError) as lost:
            await env.channel.send(outbound())
        assert lost.value.uncertain
        result = await env.channel.send(outbound())
        assert len(env.fake.sent) == 1 and result.external_id == env.fake.sent[0].sid


async def test_read_timeout_is_uncertain() -> None:
    async with running(timeout=0.3) as env:
        env.fake.fail_next(mode="hang")
        with trio.fail_after(WAIT), pytest.raises(SendError) as hung:
            await env.channel.send(outbound())
        assert hung.value.uncertain and "may have been sent" in str(hung.value)


async def test_429_waits_and_a_refusal_needs_no_lookup() -> None:
    async with running() as env:
        env.fake.fail_next(429, code=20429, message="Too Many Requests", retry_after=3)
        with pytest.raises(SendError) as slow:
            await env.channel.send(outbound())
        assert slow.value.retry_after == 3
        await env.channel.send(outbound())
        assert lookups(env.fake) == 0 and len(env.fake.sent) == 1


async def test_recipient_who_sent_stop_is_a_permanent_failure() -> None:
    async with running() as env:
        await env.fake.send_sms(CONTACT, "STOP")
        assert [m.body for m in env.fake.auto_replies][0].startswith(
            "You have successfully been unsubscribed"
        )
        with pytest.raises(SendError) as stopped:
            await env.channel.send(outbound())
        assert stopped.value.permanent and "21610" in str(stopped.value)
        assert "reply START" in str(stopped.value)


async def test_invalid_number_is_permanent() -> None:
    async with running() as env:
        env.fake.fail_next(400, code=21211, message="Invalid 'To' Phone Number")
        with pytest.raises(SendError) as invalid:
            await env.channel.send(outbound())
        assert invalid.value.permanent and "not a valid phone number" in str(invalid.value)


async def test_unreachable_twilio_is_transient() -> None:
    async with open_fake_twilio() as fake:
        base = fake.api_base
    context = MemoryChannelContext("tw")
    channel = TwilioChannel("tw", config(api_base=base), context)
    with pytest.raises(SendError) as down:
        await channel.send(outbound())
    assert not (down.value.permanent or down.value.uncertain)
    assert context.state["send:reply:1"] == ""  # nothing left unknown
    # An unknown earlier attempt is never followed by a blind send:
    context.state["send:reply:1"] = "trying 2024-06-10T13:40:00+00:00"
    with pytest.raises(SendError, match="could not be asked"):
        await channel.send(outbound())
    await context.aclose()


async def test_long_text_goes_as_several_messages_once() -> None:
    async with running() as env:
        text = " ".join(["segment"] * 400)  # 3,199 characters
        result = await env.channel.send(outbound(text))
        assert [len(m.body) for m in env.fake.sent] == [1599, 1599]
        assert result.external_id == env.fake.sent[0].sid
        await env.channel.send(outbound(text))
        assert len(env.fake.sent) == 2


# -- doctor, logs -----------------------------------------------------------------------------


async def test_check_proves_the_credentials() -> None:
    async with running() as env:
        summary = await env.channel.check()
        assert "Fake Twilio account" in summary and f"{env.base}/sms" in summary
        wrong = TwilioChannel(
            "tw", config(env.fake, auth_token=Secret("not-the-token")), env.context
        )
        with pytest.raises(PluginError, match="rejected the account SID / auth token"):
            await wrong.check()
        env.context.public_url = None
        with pytest.raises(UserWarning, match="public_url"):
            await env.channel.check()


async def test_check_when_twilio_is_unreachable() -> None:
    async with open_fake_twilio() as fake:
        base = fake.api_base
    context = MemoryChannelContext("tw")
    with pytest.raises(PluginError, match="cannot reach"):
        await TwilioChannel("tw", config(api_base=base), context).check()
    await context.aclose()


async def test_auth_token_never_appears_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running() as env:
        await env.fake.send_sms(CONTACT, "log me not", media=(("image/png", PNG),))
        await env.fake.post_form(f"{env.base}/sms", {"Body": "x"}, signature="forged")
        await env.channel.send(outbound())
        env.fake.fail_next(500)
        with pytest.raises(SendError):
            await env.channel.send(outbound(key="reply:2"))
    assert "refused" in caplog.text
    assert TOKEN not in caplog.text


# -- fuzzing the endpoint ---------------------------------------------------------------------


def fuzz_app() -> tuple[TwilioChannel, MemoryChannelContext]:
    context = MemoryChannelContext("tw", public_url="https://gw.example.com")
    # api_base on a closed port: a fuzzed MediaUrl on it fails fast instead of leaving the box
    channel = TwilioChannel("tw", config(api_base="http://127.0.0.1:9", media_timeout=1), context)
    return channel, context


@settings(max_examples=120, deadline=None)
@given(
    path=st.sampled_from(
        ["sms", "status", "voice", "voice/status", "voice/dial", "voice/recording"]
    ),
    params=st.dictionaries(
        st.sampled_from(
            [
                "MessageSid",
                "From",
                "To",
                "Body",
                "NumMedia",
                "MessageStatus",
                "CallSid",
                "CallStatus",
                "RecordingSid",
                "RecordingUrl",
            ]
        )
        | st.text(max_size=6),
        st.text(max_size=20),
        max_size=8,
    ),
    signing=st.sampled_from(["valid", "none", "wrong"]),
)
async def test_webhooks_answer_2xx_or_4xx_never_5xx(
    path: str, params: dict[str, str], signing: str
) -> None:
    channel, context = fuzz_app()
    url = f"https://gw.example.com/webhooks/tw/{path}"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signing == "valid":
        headers["X-Twilio-Signature"] = fake_twilio.signature(
            TOKEN, url, {k: v for k, v in params.items()}
        )
    elif signing == "wrong":
        headers["X-Twilio-Signature"] = "bm90IGEgc2lnbmF0dXJl"
    body = urlencode(params).encode()
    async with public_client(channel) as client:
        response = await client.post(f"/webhooks/tw/{path}", content=body, headers=headers)
    assert response.status_code < 500, (response.status_code, params)
    if signing != "valid":
        assert response.status_code in (400, 401, 403) and context.inbound == []
    await context.aclose()
