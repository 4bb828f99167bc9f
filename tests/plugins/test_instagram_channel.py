"""InstagramChannel against the fake Graph API: Instagram's webhook object, story mentions and
replies, deletions, seen receipts, sending limits, the Page-linked variant, check()."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pydantic
import pytest

from gateway.errors import PluginError, SendError
from gateway.messages import Attachment, Outbound
from gateway.plugin import HistoryItem
from gateway.secretref import Secret
from gateway.testing.context import MemoryChannelContext
from gateway.testing.fake_graph import sign
from plugins.messenger import InstagramChannel, InstagramConfig
from tests.plugins.test_messenger_conformance import raw_config, running

IGSID = "5600000000000001"


def outbound(text: str = "hi", **fields: Any) -> Outbound:
    fields.setdefault("last_inbound_at", dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    return Outbound(1, "key-1", "17841400000000001", IGSID, text, **fields)


def test_config_defaults_and_keys() -> None:
    config = InstagramConfig.model_validate(raw_config("instagram"))
    assert (config.api_base, config.send_rate, config.page_id) == (
        "https://graph.instagram.com",
        20.0,
        None,
    )
    assert "https://*.cdninstagram.com" in config.media_hosts
    with pytest.raises(pydantic.ValidationError, match="digits only"):
        InstagramConfig.model_validate(raw_config("instagram", instagram_account_id="@bakery"))
    table = raw_config("instagram")
    del table["app_secret"]
    with pytest.raises(pydantic.ValidationError, match="app_secret"):
        InstagramConfig.model_validate(table)


async def test_messages_media_and_story_events(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    context = MemoryChannelContext("ig")
    async with running("instagram", context) as (server, _, url):
        photo = server.add_media(b"JPEGDATA", "image/jpeg")
        story = server.add_media(b"STORY", "image/jpeg")
        bodies = [
            server.user_message(IGSID, "Do you ship to Lisbon?", platform="instagram"),
            server.user_message(
                IGSID,
                platform="instagram",
                attachments=[{"type": "image", "payload": {"url": photo}}],
            ),
            server.user_message(
                IGSID,
                platform="instagram",
                attachments=[{"type": "story_mention", "payload": {"url": story}}],
            ),
            server.user_message(
                IGSID,
                "Love it",
                platform="instagram",
                reply_to={"story": {"id": "1788", "url": story}},
            ),
            server.user_message(IGSID, platform="instagram", is_unsupported=True),
            server.user_message(IGSID, platform="instagram", mid="aWdf_gone", is_deleted=True),
            server.echo(IGSID, "our own answer", platform="instagram"),
            server.reaction(IGSID, "aWdf_x", platform="instagram"),
        ]
        for body in bodies:
            assert await server.deliver(body) == [200]
        text, image, mention, reply, unsupported = context.inbound
        assert (text.text, text.account, text.thread_key) == (
            "Do you ship to Lisbon?",
            server.instagram_id,
            IGSID,
        )
        assert (image.attachments[0].data, image.attachments[0].mime_type) == (
            b"JPEGDATA",
            "image/jpeg",
        )
        # Meta forbids storing story media: the link is kept, the bytes are never fetched.
        assert mention.attachments == (Attachment(kind="other", url=story),)
        assert mention.metadata["story_mention"] is True
        assert ("GET", "/media/" + story.rsplit("/", 1)[1]) not in server.requests
        assert reply.metadata["story_reply"] == {"id": "1788", "url": story}
        assert unsupported.metadata["unsupported"] is True
        # A Messenger body at the Instagram URL is refused.
        assert await server.post_webhook(url, server.user_message(IGSID, "x")) == 400
    assert "ignored message deleted by the user" in caplog.text
    assert "ignored echo" in caplog.text
    await context.aclose()


async def test_seen_marks_the_named_message_and_those_before() -> None:
    context = MemoryChannelContext("ig")
    async with running("instagram", context) as (server, channel, _url):
        await server.deliver(server.user_message(IGSID, "hello", platform="instagram"))
        mids = [(await channel.send(outbound(t))).external_id for t in ("one", "two", "three")]
        at = dt.datetime.now(dt.UTC).isoformat()
        context.outbound_history[IGSID] = [
            HistoryItem(i, "out", t, at, mid)
            for i, (t, mid) in enumerate(zip(["one", "two", "three"], mids, strict=True))
        ]
        await server.deliver(server.read(IGSID, platform="instagram", mid=mids[1]))
        assert context.statuses == [(mids[1], "read", None), (mids[0], "read", None)]
    await context.aclose()


async def test_send_text_limits_and_attachments_by_url_only() -> None:
    context = MemoryChannelContext("ig")
    async with running("instagram", context) as (server, channel, _url):
        server.user_wrote(IGSID, platform="instagram")
        result = await channel.send(
            outbound(
                "x " * 700, attachments=(Attachment("image", url="https://example.com/cake.jpg"),)
            )
        )
        first, second, image = server.sent
        assert (first.platform, first.account) == ("instagram", server.instagram_id)
        assert len(first.text or "") <= 1000 and len(second.text or "") <= 1000
        assert image.attachment == {"type": "image", "url": "https://example.com/cake.jpg"}
        assert result.external_id == image.message_id
        assert ("POST", f"/v23.0/{server.instagram_id}/messages") in server.requests
        with pytest.raises(SendError, match="by URL only") as excinfo:
            await channel.send(outbound("", attachments=(Attachment("image", data=b"123"),)))
        assert excinfo.value.permanent and len(server.sent) == 3
        late = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        with pytest.raises(SendError, match="24-hour rule"):
            await channel.send(outbound("too late", last_inbound_at=late))
        server.user_wrote(IGSID, platform="instagram", at_ms=int(late.timestamp() * 1000))
        await channel.send(outbound("an operator", author="human", last_inbound_at=late))
        assert (server.sent[-1].messaging_type, server.sent[-1].tag) == (
            "MESSAGE_TAG",
            "HUMAN_AGENT",
        )
    await context.aclose()


async def test_page_linked_variant_sends_through_the_page() -> None:
    context = MemoryChannelContext("ig")
    async with running("instagram", context) as (server, _channel, _url):
        config = InstagramConfig.model_validate(
            raw_config(
                "instagram",
                server,
                page_id=server.page_id,
                access_token=Secret(server.page_token, "env:PAGE_TOKEN"),
            )
        )
        channel = InstagramChannel("ig", config, context)
        server.user_wrote(IGSID, platform="instagram")
        await channel.send(outbound("via the Page"))
        assert ("POST", f"/v23.0/{server.page_id}/messages") in server.requests
        assert server.sent[-1].platform == "instagram"
        assert "fake_bakery" in await channel.check()
    await context.aclose()


async def test_check_uses_me_with_the_instagram_token() -> None:
    context = MemoryChannelContext("ig")
    async with running("instagram", context) as (server, channel, _url):
        summary = await channel.check()
        assert "fake_bakery" in summary and server.instagram_id in summary
        assert ("GET", "/v23.0/me") in server.requests
        channel.account = "17841499999999999"
        with pytest.raises(PluginError, match="not to account 17841499999999999"):
            await channel.check()
    await context.aclose()


async def test_signature_is_checked_for_instagram_too() -> None:
    context = MemoryChannelContext("ig")
    async with running("instagram", context) as (server, _channel, url):
        body = server.user_message(IGSID, "hi", platform="instagram")
        assert await server.post_webhook(url, body, secret="messenger-app-secret") == 403
        assert await server.post_webhook(url, body, signature=sign("x", b"other")) == 403
        assert await server.post_webhook(url, body, signature=None) == 401
        assert context.inbound == []
        assert await server.post_webhook(url, body) == 200
        assert [m.text for m in context.inbound] == ["hi"]
    await context.aclose()
