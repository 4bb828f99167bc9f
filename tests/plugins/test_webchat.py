"""The web chat channel against a real hypercorn server and a real websocket client."""

from __future__ import annotations

import re

import httpx
import pydantic
import pytest
import trio
import trio_websocket

from gateway.errors import SendError
from gateway.messages import Outbound, SendResult
from gateway.plugin import HistoryItem
from gateway.testing.conformance import serve_channels
from gateway.testing.context import MemoryChannelContext
from plugins.webchat import WebchatChannel
from plugins.webchat.convert import new_client_id
from plugins.webchat.testing import handshake_refusal, new_visitor, open_chat_client, open_webchat


@pytest.fixture
async def context():
    ctx = MemoryChannelContext("web")
    yield ctx
    await ctx.aclose()


def stored_reply(
    outbox_id: int, text: str, created_at: str = "9999-01-01T00:00:00+00:00"
) -> HistoryItem:
    """A reply as the core stores it once sent: external id is what send() returned."""
    return HistoryItem(1000 + outbox_id, "out", text, created_at, f"web:{outbox_id}")


async def test_page_is_the_widget_in_page_mode_and_self_contained(context):
    async with open_webchat(context, title="Ask <Acme> & co", welcome="Hi <b>there</b>") as (
        _,
        url,
    ):
        async with httpx.AsyncClient(base_url=url) as http:
            page = await http.get("/chat/web/")
            script = await http.get("/chat/web/widget.js")
            settings = await http.get("/chat/web/config")
            missing = await http.get("/chat/web/static/chat.js")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    body = page.text
    assert "<title>Ask &lt;Acme&gt; &amp; co</title>" in body
    assert '<script src="widget.js" data-channel="web" data-mode="page" async>' in body
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # The words reach the page as data (textContent), never as markup.
    assert settings.json()["strings"]["en"]["welcome"] == "Hi <b>there</b>"
    assert settings.json()["strings"]["ru"]["title"] == "Ask <Acme> & co"
    # Self-contained: nothing loads from another host (the SVG namespace is a name, not a load).
    for text in (body, script.text.replace('"http://www.w3.org/2000/svg"', "SVG_NS")):
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), (
            "an external URL is referenced"
        )
    assert script.status_code == 200 and "getRandomValues" in script.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert "__SOVEREIGN_CHAT_CSS__" not in script.text and ".sg-launcher" in script.text
    assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", script.text)
    assert missing.status_code == 404


async def test_page_options(context):
    config = {"privacy_notice_url": "/privacy", "ai_disclosure": False, "max_message_chars": 280}
    async with open_webchat(context, **config) as (_, url):
        async with httpx.AsyncClient(base_url=url) as http:
            settings = (await http.get("/chat/web/config")).json()
    assert settings["privacy_notice_url"] == "/privacy"
    assert settings["ai_disclosure"] is False
    assert settings["max_message_chars"] == 280


def test_config_rejects_unsafe_values():
    with pytest.raises(pydantic.ValidationError, match="privacy_notice_url"):
        WebchatChannel.Config(plugin="webchat", privacy_notice_url="javascript:alert(1)")
    with pytest.raises(pydantic.ValidationError, match="not supported"):
        WebchatChannel.Config(plugin="webchat", allowed_origins=["*"])
    with pytest.raises(pydantic.ValidationError, match="not an origin"):
        WebchatChannel.Config(plugin="webchat", allowed_origins=["https://example.com/chat"])
    config = WebchatChannel.Config(
        plugin="webchat", allowed_origins=["https://WWW.Example.com/"], privacy_notice_url="/p"
    )
    assert config.allowed_origins == ["https://www.example.com"]


async def test_message_is_accepted_then_acked(context):
    async with open_webchat(context) as (channel, url), open_chat_client(url, "web") as client:
        assert client.history == []
        client_id = new_client_id()
        answer = await client.send_message("Where is my order?", client_id)
        thread = channel.thread_key(client.visitor)
    assert answer == {"type": "ack", "client_id": client_id, "duplicate": False}
    [inbound] = context.inbound
    assert inbound.account == "web"
    # The stored keys are a keyed hash: the database never holds the id that reads the thread.
    assert thread != client.visitor and client.visitor not in thread
    assert inbound.external_id == f"{thread}:{client_id}"
    assert inbound.thread_key == inbound.sender_id == thread
    assert inbound.text == "Where is my order?"


async def test_history_on_hello(context):
    visitor = new_visitor()
    async with open_webchat(context) as (channel, url):
        async with open_chat_client(url, "web", visitor=visitor) as client:
            first = new_client_id()
            await client.send_message("first question", first)
        context.outbound_history[channel.thread_key(visitor)] = [stored_reply(7, "first answer")]
        async with open_chat_client(url, "web", visitor=visitor) as again:
            history = again.history
        async with open_chat_client(url, "web") as stranger:
            assert stranger.history == []
    assert history == [
        {
            "direction": "in",
            "text": "first question",
            "id": "m:1",
            "client_id": first,
        },
        {"direction": "out", "text": "first answer", "id": "m:1007"},
    ]


async def test_resend_after_reconnect_is_a_duplicate(context):
    visitor = new_visitor()
    client_id = new_client_id()
    async with open_webchat(context) as (_, url):
        async with open_chat_client(url, "web", visitor=visitor) as client:
            await client.send_message("only once", client_id)
        # The page lost the ack with the connection and resends the same message.
        async with open_chat_client(url, "web", visitor=visitor) as client:
            assert [m["text"] for m in client.history] == ["only once"]
            answer = await client.send_message("only once", client_id)
    assert answer == {"type": "ack", "client_id": client_id, "duplicate": True}
    assert [m.text for m in context.inbound] == ["only once"]
    assert len(context.duplicates) == 1


async def test_send_reaches_every_live_tab_of_the_visitor(context):
    visitor = new_visitor()
    async with open_webchat(context) as (channel, url):
        async with (
            open_chat_client(url, "web", visitor=visitor) as tab1,
            open_chat_client(url, "web", visitor=visitor) as tab2,
            open_chat_client(url, "web") as other,
        ):
            await tab1.send_message("hello?")
            result = await channel.send(
                Outbound(42, "k42", "web", channel.thread_key(visitor), "Hello! How can I help?")
            )
            reply1 = await tab1.wait_for(lambda f: f["type"] == "reply")
            reply2 = await tab2.wait_for(lambda f: f["type"] == "reply")
            await other.sync()
    assert result == SendResult(external_id="web:42")
    assert reply1 == reply2 == {"type": "reply", "id": "web:42", "text": "Hello! How can I help?"}
    assert other.replies == []


async def test_send_with_nobody_connected_shows_in_history(context):
    visitor = new_visitor()
    async with open_webchat(context) as (channel, url):
        async with open_chat_client(url, "web", visitor=visitor) as client:
            await client.send_message("anyone there?")
        thread = channel.thread_key(visitor)
        result = await channel.send(
            Outbound(5, "k5", "web", thread, "Yes, we are here.", message_id=1005)
        )
        assert result == SendResult(external_id="web:5")
        context.outbound_history[thread] = [stored_reply(5, "Yes, we are here.")]
        async with open_chat_client(url, "web", visitor=visitor) as client:
            history = client.history
    assert [(m["direction"], m["text"], m["id"]) for m in history][-1] == (
        "out",
        "Yes, we are here.",
        "m:1005",  # the same id the live push would have carried
    )


async def test_send_to_a_malformed_thread_is_permanent_error(context):
    async with open_webchat(context) as (channel, _):
        for thread in ("not-a-visitor", new_visitor()):  # a raw visitor id is no thread key
            with pytest.raises(SendError) as info:
                await channel.send(Outbound(1, "k1", "web", thread, "hi"))
            assert info.value.permanent


async def test_foreign_origin_is_rejected(context):
    shop = {"allowed_origins": ["https://shop.example"], "privacy_notice_url": "/privacy"}
    async with open_webchat(context, **shop) as (_, url):
        refusals = {
            origin: await handshake_refusal(url, "web", origin=origin)
            for origin in ("https://evil.example", "http://127.0.0.1:1", "null", None, "")
        }
        async with open_chat_client(url, "web", origin="https://shop.example") as client:
            answer = await client.send_message("from the shop")
    assert refusals == {
        "https://evil.example": 403,
        "http://127.0.0.1:1": 403,
        "null": 403,
        None: 403,
        "": None,
    }
    assert answer["type"] == "ack"
    assert [m.text for m in context.inbound] == ["from the shop"]


async def test_invalid_frames_get_error_frames_not_a_crash(context):
    async with open_webchat(context, max_message_chars=10) as (_, url):
        async with open_chat_client(url, "web", hello=False) as client:
            await client.send_frame(
                {"type": "message", "client_id": new_client_id(), "text": "early"}
            )
            early = await client.wait_for(lambda f: f["type"] == "error")
            await client.send_frame({"type": "hello", "visitor": "1234"})
            weak = await client.wait_for(lambda f: f["type"] == "error")
        async with open_chat_client(url, "web") as client:
            too_long = await client.send_message("x" * 11)
            empty = await client.send_message("   ")
            await client.send_frame("{not json")
            bad_json = await client.wait_for(lambda f: f["type"] == "error")
            await client.send_frame({"type": "typing"})
            unknown = await client.wait_for(lambda f: f["type"] == "error")
            fits = await client.send_message("x" * 10)
    assert early["code"] == "no_hello"
    assert weak["code"] == "bad_visitor"
    assert too_long["type"] == "error" and too_long["retry"] is False
    assert "longer than 10 characters" in too_long["reason"]
    assert empty["code"] == "empty" and empty["retry"] is False
    assert bad_json["code"] == "bad_json"
    assert unknown["code"] == "unknown_type" and "'typing'" in unknown["reason"]
    assert fits["type"] == "ack"
    assert [m.text for m in context.inbound] == ["x" * 10]


async def test_accept_failure_asks_for_a_retry(context):
    async with open_webchat(context) as (_, url), open_chat_client(url, "web") as client:
        client_id = new_client_id()
        context.fail_accepts = 1
        failed = await client.send_message("keep me", client_id)
        retried = await client.send_message("keep me", client_id)
    assert (
        failed["type"] == "error" and failed["retry"] is True and failed["client_id"] == client_id
    )
    assert retried == {"type": "ack", "client_id": client_id, "duplicate": False}
    assert [m.text for m in context.inbound] == ["keep me"]


async def test_runaway_client_is_rate_limited(context):
    async with open_webchat(context, message_burst=3, message_rate=0.5) as (_, url):
        async with open_chat_client(url, "web") as client:
            answers = [await client.send_message(f"m{i}") for i in range(5)]
    assert [a["type"] for a in answers] == ["ack", "ack", "ack", "error", "error"]
    assert answers[3]["code"] == "rate_limited" and answers[3]["retry"] is True
    assert 0 < answers[3]["retry_after"] <= 2
    assert [m.text for m in context.inbound] == ["m0", "m1", "m2"]


async def test_stopping_run_closes_live_sockets_and_refuses_new_ones(context):
    channel = WebchatChannel("web", {"plugin": "webchat"}, context)
    stop = trio.CancelScope()

    async def run_until_stopped(*, task_status=trio.TASK_STATUS_IGNORED):
        with stop:
            await channel.run(task_status=task_status)

    async with serve_channels(channel) as url:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_until_stopped)
            async with open_chat_client(url, "web") as client:
                stop.cancel()
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await client.ws.get_message()
            refused = await handshake_refusal(url, "web")
    assert closed.value.reason.code == 1001
    assert refused == 503
