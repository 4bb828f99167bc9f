"""The Max plugin against the fake Bot API on 127.0.0.1: polling (files, button presses, the
marker), sending (splits, replies, errors) and the doctor check."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from gateway.errors import PluginError, SendError
from gateway.messages import Attachment, Outbound, utcnow
from gateway.secretref import Secret
from gateway.testing.conformance import serve_channels
from gateway.testing.context import MemoryChannelContext
from gateway.testing.fake_max import FakeMaxServer, open_fake_max
from plugins.max import MaxChannel

CHAT = 182182182
JPEG = b"\xff\xd8\xff\xe0 fake jpeg " * 40


@pytest.fixture
async def context() -> AsyncIterator[MemoryChannelContext]:
    ctx = MemoryChannelContext("maxbot")
    yield ctx
    await ctx.aclose()


def channel_for(server: FakeMaxServer, context: MemoryChannelContext, **keys: Any) -> MaxChannel:
    table: dict[str, Any] = {
        "plugin": "max",
        "token": Secret(server.token, "env:MAX_TOKEN"),
        "api_base": server.api_base,
        "media_hosts": [server.api_base],
        "poll_timeout": 30,
        **keys,
    }
    return MaxChannel("maxbot", MaxChannel.Config.model_validate(table), context)


@contextlib.asynccontextmanager
async def running(
    server: FakeMaxServer, context: MemoryChannelContext, **keys: Any
) -> AsyncIterator[MaxChannel]:
    """The channel's run() going, its webhook route served (context.public_url set to it)."""
    channel = channel_for(server, context, **keys)
    async with serve_channels(channel) as url:
        context.public_url = url
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            yield channel
            nursery.cancel_scope.cancel()


def reply(text: str, thread: int = CHAT, **extra: Any) -> Outbound:
    return Outbound(1, "key-1", "229229229", str(thread), text, last_inbound_at=utcnow(), **extra)


# -- receiving by polling -----------------------------------------------------------------------


async def test_files_are_downloaded_and_presses_answered_once(
    context: MemoryChannelContext,
) -> None:
    async with open_fake_max() as server, running(server, context):
        photo = server.file_attachment(JPEG, "image/jpeg")
        pdf = server.file_attachment(b"%PDF-1.7 fake", "application/pdf", kind="file",
                                     filename="invoice.pdf")  # fmt: skip
        video = server.file_attachment(b"\x00\x00\x00 ftypmp4 fake", "video/mp4", kind="video")
        server.push_message(CHAT, "Look", attachments=[photo, pdf, video], first_name="Kari")
        press = server.push_callback(CHAT, "order_status", label="📦 Where is my order?")
        server.push_bot_started(CHAT, payload="acme")
        first, pressed, started = await context.wait_inbound(3)
        assert first.text == "Look" and first.sender_name == "Kari"
        assert first.attachments == (
            Attachment("image", "image/jpeg", None, JPEG, photo["payload"]["url"]),
            Attachment("document", "application/pdf", "invoice.pdf", b"%PDF-1.7 fake",
                       pdf["payload"]["url"]),
            Attachment("video", "video/mp4", None, b"\x00\x00\x00 ftypmp4 fake",
                       video["payload"]["url"]),
        )  # fmt: skip
        assert pressed.text == "📦 Where is my order?"
        assert pressed.metadata["payload"] == "order_status"
        assert started.text == "/start acme"
        (answer,) = await server.wait_answers(1)
        assert answer.callback_id == press["callback"]["callback_id"]
        assert answer.notification == "✓"
        # The same press delivered again (a lost marker): stored once, answered once.
        server.push_update(press)
        await context.wait_for(lambda: len(context.duplicates) == 1)
        polls = len(server.polls)
        await server.wait_polls(polls + 1)
        assert len(server.answers) == 1 and len(context.inbound) == 3


async def test_a_file_that_cannot_be_fetched_keeps_the_message_with_its_link(
    context: MemoryChannelContext,
) -> None:
    async with open_fake_max() as server, running(server, context, max_media_bytes=1000):
        elsewhere = server.file_attachment(JPEG, "image/jpeg", url="https://cdn.elsewhere.test/x")
        too_big = server.file_attachment(JPEG * 2, "application/pdf", kind="file")
        broken = server.file_attachment(b"gone", "audio/ogg", kind="audio")
        server.fail_next("files", status=500)
        server.push_message(CHAT, "three files", attachments=[elsewhere, too_big, broken])
        (inbound,) = await context.wait_inbound(1)
        assert inbound.text == "three files"
        assert [(a.url, a.data) for a in inbound.attachments] == [
            (elsewhere["payload"]["url"], None),  # not on media_hosts: never requested
            (too_big["payload"]["url"], None),  # over max_media_bytes by its declared size
            (broken["payload"]["url"], None),  # the download failed
        ]
        assert [path for _, path in server.requests if path.startswith("/_files/")] == [
            broken["payload"]["url"].removeprefix(server.api_base)
        ]


async def test_the_marker_is_stored_only_after_the_batch_is_committed(
    context: MemoryChannelContext,
) -> None:
    async with open_fake_max() as server, running(server, context):
        context.fail_accepts = 1
        update = server.push_message(CHAT, "do not lose me")
        await context.wait_inbound(1)
        polls = await server.wait_polls(len(server.polls) + 1)  # the poll after the commit
        number = next(iter(server.deliveries))
        assert server.deliveries[number] == 2  # read, refused by the journal, read again
        assert context.state["marker"] == str(number + 1) == str(polls[-1]["marker"])
        assert context.state["bot_id"] == "229229229"
        assert [m.text for m in context.inbound] == [update["message"]["body"]["text"]]


async def test_a_restart_does_not_re_read_committed_updates(
    context: MemoryChannelContext,
) -> None:
    async with open_fake_max() as server:
        stop = trio.Event()

        async def stop_at_the_next_poll(params: dict[str, Any]) -> None:
            if params["marker"] is not None and not stop.is_set():
                stop.set()
                await trio.sleep_forever()  # the bot is gone before Max commits anything

        server.on_poll = stop_at_the_next_poll
        async with trio.open_nursery() as nursery:
            channel = channel_for(server, context)
            await nursery.start(channel.run)
            server.push_message(CHAT, "before the restart")
            await stop.wait()
            nursery.cancel_scope.cancel()
        assert len(server.updates) == 1  # Max has not committed it: no marker came after
        server.on_poll = None
        async with running(server, context):
            server.push_message(CHAT, "after the restart")
            await context.wait_inbound(2)
        assert [m.text for m in context.inbound] == ["before the restart", "after the restart"]
        assert context.duplicates == [] and set(server.deliveries.values()) == {1}


async def test_another_bots_marker_is_not_used(context: MemoryChannelContext) -> None:
    context.state.update(bot_id="1111", marker="99999999")
    async with open_fake_max() as server, running(server, context):
        server.push_message(CHAT, "hello")
        await context.wait_inbound(1)
        assert server.polls[0]["marker"] is None and context.state["bot_id"] == "229229229"


async def test_polling_removes_a_webhook_subscription(context: MemoryChannelContext) -> None:
    async with open_fake_max() as server:
        server.subscriptions.append({"url": "https://old.example/hook", "secret": None})
        async with running(server, context):
            assert server.subscriptions == []
            server.push_message(CHAT, "polled")
            assert [m.text for m in await context.wait_inbound(1)] == ["polled"]


async def test_a_refused_token_stops_the_channel_with_the_fix(
    context: MemoryChannelContext,
) -> None:
    async with open_fake_max() as server:
        channel = channel_for(server, context, token=Secret("wrong-token", "env:MAX_TOKEN"))
        with pytest.raises(PluginError, match=r"rejected the bot token .*token reference"):
            await channel.run()
        assert all(method != "/updates" for _, method in server.requests)


# -- sending ------------------------------------------------------------------------------------


async def test_long_replies_are_split_and_the_first_part_quotes_the_message(
    context: MemoryChannelContext,
) -> None:
    async with open_fake_max() as server:
        channel = channel_for(server, context)
        asked = server.push_message(CHAT, "tell me everything")["message"]["body"]["mid"]
        text = ("Lorem ipsum dolor sit amet. " * 200).strip()  # 5,599 characters
        result = await channel.send(reply(text, reply_to_external_id=asked))
        first, second = server.sent_to(CHAT)
        assert result.external_id == first.mid
        assert len(first.text) <= 4000 and first.reply_to == asked and second.reply_to is None
        assert f"{first.text} {second.text}" == text


async def test_a_reply_to_a_vanished_message_goes_out_without_the_quote(
    context: MemoryChannelContext,
) -> None:
    async with open_fake_max() as server:
        channel = channel_for(server, context)
        await channel.send(reply("still here", reply_to_external_id="mid.deleted0000"))
        (sent,) = server.sent
        assert sent.text == "still here" and sent.reply_to is None


async def test_a_press_is_answered_without_a_quote(context: MemoryChannelContext) -> None:
    async with open_fake_max() as server:
        await channel_for(server, context).send(reply("ok", reply_to_external_id="callback:x:1"))
        assert "link" not in server.sent[0].body


@pytest.mark.parametrize(
    ("fault", "expect"),
    [
        ({"status": 429, "retry_after": 2}, {"retry_after": 2.0}),
        ({"status": 429}, {"retry_after": 1.0}),
        ({"status": 503}, {"permanent": False, "uncertain": False, "retry_after": None}),
        ({"status": 403}, {"permanent": True}),
        ({"status": 401}, {"permanent": True}),
        ({"disconnect": True}, {"uncertain": True}),
    ],
)
async def test_send_errors(
    context: MemoryChannelContext, fault: dict[str, Any], expect: dict[str, Any]
) -> None:
    async with open_fake_max() as server:
        server.fail_next("messages", **fault)
        with pytest.raises(SendError) as caught:
            await channel_for(server, context).send(reply("hello"))
        for key, value in expect.items():
            assert getattr(caught.value, key) == value, caught.value
        if fault.get("status") == 403:
            assert "chat.denied" in str(caught.value)
        assert len(server.sent) == (1 if fault.get("disconnect") else 0)


async def test_a_failure_after_the_first_part_is_uncertain(context: MemoryChannelContext) -> None:
    async with open_fake_max() as server:
        channel = channel_for(server, context)
        server.on_send = lambda sent: server.fail_next("messages", status=503)
        with pytest.raises(SendError, match="1 of 2 parts") as caught:
            await channel.send(reply("word " * 1000))
        assert caught.value.uncertain and len(server.sent) == 1


@pytest.mark.parametrize(
    ("outbound", "match"),
    [
        (reply("x", thread=0).__class__(1, "k", "b", "not-a-chat", "x"), "not a Max chat id"),
        (reply("  "), "empty"),
        (reply("see file", attachments=(Attachment("document", data=b"x"),)), "text only"),
    ],
)
async def test_unsendable_replies_are_permanent(
    context: MemoryChannelContext, outbound: Outbound, match: str
) -> None:
    async with open_fake_max() as server:
        with pytest.raises(SendError, match=match) as caught:
            await channel_for(server, context).send(outbound)
        assert caught.value.permanent and server.sent == []


# -- gateway doctor -----------------------------------------------------------------------------


async def test_check_names_the_bot_and_where_updates_go(context: MemoryChannelContext) -> None:
    async with open_fake_max() as server:
        assert await channel_for(server, context).check() == (
            "bot @fake_gateway_bot (id 229229229), polling"
        )
        server.subscriptions.append({"url": "https://other.example/hook"})
        with pytest.raises(UserWarning, match="other.example/hook, so polling gets none"):
            await channel_for(server, context).check()
        context.public_url = "https://gw.example"
        hooked = channel_for(server, context, mode="webhook",
                             webhook_secret=Secret("s3cret-Value", "env:S"))  # fmt: skip
        with pytest.raises(UserWarning, match="not https://gw.example/webhooks/maxbot"):
            await hooked.check()
        server.subscriptions.append({"url": "https://gw.example/webhooks/maxbot"})
        assert (await hooked.check()).endswith("webhook https://gw.example/webhooks/maxbot")
        bad = channel_for(server, context, token=Secret("nope", "env:MAX_TOKEN"))
        with pytest.raises(PluginError, match="rejected the bot token"):
            await bad.check()
        await bad.aclose()
        await bad.aclose()


async def test_an_image_over_the_limit_is_kept_as_a_link(context: MemoryChannelContext) -> None:
    async with open_fake_max() as server, running(server, context, max_media_bytes=100):
        photo = server.file_attachment(JPEG, "image/jpeg")  # Max gives no size for images
        server.push_message(CHAT, None, attachments=[photo])
        (inbound,) = await context.wait_inbound(1)
        assert inbound.text == "" and inbound.attachments == (
            Attachment("image", url=photo["payload"]["url"]),
        )
