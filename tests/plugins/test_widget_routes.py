"""The widget's HTTP routes against a real hypercorn server: origins and CORS, the SSE + POST
fallback, visitor continuity, the Global Privacy Control signal, and bad input."""

from __future__ import annotations

import httpx
import pytest
import trio

from gateway.messages import Outbound
from gateway.testing.context import MemoryChannelContext
from plugins.webchat import WebchatChannel
from plugins.webchat.convert import new_client_id
from plugins.webchat.testing import (
    new_visitor,
    open_chat_client,
    open_event_stream,
    open_webchat,
)

SHOP = "https://shop.example"
EVIL = "https://evil.example"
WIDGET = {"allowed_origins": [SHOP], "privacy_notice_url": "https://shop.example/privacy"}


@pytest.fixture
async def context():
    ctx = MemoryChannelContext("web")
    yield ctx
    await ctx.aclose()


def post_body(
    visitor: str | None = None, text: str = "hello", **extra: object
) -> dict[str, object]:
    return {"visitor": visitor or new_visitor(), "client_id": new_client_id(), "text": text} | extra


async def test_widget_script_is_served_to_any_page_but_not_to_a_refused_origin(context):
    async with open_webchat(context, **WIDGET) as (_, url):
        async with httpx.AsyncClient(base_url=url) as http:
            plain = await http.get("/chat/web/widget.js")  # a <script src> sends no Origin
            again = await http.get(
                "/chat/web/widget.js", headers={"If-None-Match": plain.headers["etag"]}
            )
            shop = await http.get("/chat/web/widget.js", headers={"Origin": SHOP})
            evil = await http.get("/chat/web/widget.js", headers={"Origin": EVIL})
    assert (
        plain.status_code == 200 and plain.headers["cross-origin-resource-policy"] == "cross-origin"
    )
    assert again.status_code == 304 and again.content == b""
    assert shop.status_code == 200 and shop.headers["access-control-allow-origin"] == SHOP
    assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers


async def test_config_fetch_echoes_only_an_allowed_origin(context):
    async with open_webchat(context, **WIDGET, accent_color="#AA3300", language="ru") as (_, url):
        async with httpx.AsyncClient(base_url=url) as http:
            shop = await http.get("/chat/web/config", headers={"Origin": SHOP})
            own = await http.get("/chat/web/config", headers={"Origin": url})
            same_origin_get = await http.get("/chat/web/config")  # browsers send no Origin
            evil = await http.get("/chat/web/config", headers={"Origin": EVIL})
            null = await http.get("/chat/web/config", headers={"Origin": "null"})
    assert shop.status_code == 200
    assert shop.headers["access-control-allow-origin"] == SHOP
    assert shop.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in shop.headers
    settings = shop.json()
    assert settings["privacy_notice_url"] == "https://shop.example/privacy"
    assert settings["accent_color"] == "#aa3300" and settings["language"] == "ru"
    assert settings["strings"]["ru"]["send"] == "Отправить"
    assert own.headers["access-control-allow-origin"] == url
    assert same_origin_get.status_code == 200
    assert "access-control-allow-origin" not in same_origin_get.headers
    assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers
    assert "https://evil.example" in evil.text and "allowed_origins of [channels.web]" in evil.text
    assert null.status_code == 403


async def test_cors_preflight(context):
    async with open_webchat(context, **WIDGET) as (_, url):
        async with httpx.AsyncClient(base_url=url) as http:

            async def preflight(path: str, origin: str, method: str = "POST") -> httpx.Response:
                return await http.options(
                    path,
                    headers={
                        "Origin": origin,
                        "Access-Control-Request-Method": method,
                        "Access-Control-Request-Headers": "content-type",
                    },
                )

            send = await preflight("/chat/web/send", SHOP)
            events = await preflight("/chat/web/events", SHOP)
            config = await preflight("/chat/web/config", SHOP, "GET")
            evil = await preflight("/chat/web/send", EVIL)
            wrong = await preflight("/chat/web/send", SHOP, "DELETE")
    assert send.status_code == 204
    assert send.headers["access-control-allow-origin"] == SHOP
    assert send.headers["access-control-allow-methods"] == "POST"
    assert send.headers["access-control-allow-headers"] == "Content-Type"
    assert send.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in send.headers
    assert events.status_code == 204 and config.status_code == 204
    assert config.headers["access-control-allow-methods"] == "GET"
    assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers
    assert wrong.status_code == 405 and "takes POST" in wrong.text


async def test_refused_origin_stores_nothing(context):
    visitor = new_visitor()
    async with open_webchat(context, **WIDGET) as (_, url):
        async with httpx.AsyncClient(base_url=url) as http:
            send = await http.post(
                "/chat/web/send",
                json=post_body(visitor, gpc=True),
                headers={"Origin": EVIL, "Sec-GPC": "1"},
            )
            no_origin = await http.post("/chat/web/send", json=post_body(visitor))
            events = await http.post(
                "/chat/web/events", json={"visitor": visitor}, headers={"Origin": EVIL}
            )
    assert send.status_code == 403 and "allowed_origins" in send.text
    assert no_origin.status_code == 403 and "Origin" in no_origin.text
    assert events.status_code == 403
    assert "access-control-allow-origin" not in send.headers
    assert (
        context.inbound == [] and context.consents == [] and context.state.keys() == {"visitor_key"}
    )


async def test_sse_fallback_carries_history_acks_and_live_replies(context):
    visitor = new_visitor()
    async with open_webchat(context, **WIDGET) as (channel, url):
        async with open_event_stream(url, "web", visitor=visitor, origin=SHOP) as tab:
            assert tab.history == []
            status, ack = await tab.post_message("Do you ship to Oslo?")
            thread = channel.thread_key(visitor)
            await channel.send(Outbound(1, "k1", "web", thread, "Yes, in 2 days.", message_id=9))
            reply = await tab.wait_for(lambda f: f["type"] == "reply")
        # A reload: a new stream for the same visitor reads the history back.
        async with open_event_stream(url, "web", visitor=visitor, origin=SHOP) as again:
            history = again.history
    assert status == 200 and ack["type"] == "ack" and ack["duplicate"] is False
    assert reply == {"type": "reply", "id": "m:9", "text": "Yes, in 2 days."}
    assert [(m["direction"], m["text"]) for m in history] == [("in", "Do you ship to Oslo?")]
    [inbound] = context.inbound
    assert inbound.thread_key == thread


async def test_a_reply_reaches_websocket_and_sse_tabs_of_one_visitor(context):
    visitor = new_visitor()
    async with open_webchat(context, **WIDGET) as (channel, url):
        async with (
            open_chat_client(url, "web", visitor=visitor, origin=SHOP) as socket_tab,
            open_event_stream(url, "web", visitor=visitor, origin=SHOP) as stream_tab,
            open_event_stream(url, "web", origin=SHOP) as stranger,
        ):
            await socket_tab.send_message("from the socket")
            status, _ = await stream_tab.post_message("from the stream")
            thread = channel.thread_key(visitor)
            await channel.send(Outbound(2, "k2", "web", thread, "Both of you", message_id=5))
            on_socket = await socket_tab.wait_for(lambda f: f["type"] == "reply")
            on_stream = await stream_tab.wait_for(lambda f: f["type"] == "reply")
        async with open_chat_client(url, "web", visitor=visitor, origin=SHOP) as reloaded:
            texts = [m["text"] for m in reloaded.history]
    assert status == 200
    assert on_socket == on_stream == {"type": "reply", "id": "m:5", "text": "Both of you"}
    assert stranger.replies == []
    assert texts == ["from the socket", "from the stream"]
    assert {m.thread_key for m in context.inbound} == {thread}


async def test_visitor_key_survives_a_restart_and_ids_do_not_collide(context):
    visitor = new_visitor()
    async with open_webchat(context, **WIDGET) as (channel, _):
        first = channel.thread_key(visitor)
        other = channel.thread_key(new_visitor())
    # A restarted channel (same store) maps the same visitor to the same thread...
    async with open_webchat(context, **WIDGET) as (channel, _):
        again = channel.thread_key(visitor)
    # ...another gateway (another key) does not: the mapping is keyed, not a plain hash.
    fresh = MemoryChannelContext("web")
    async with open_webchat(fresh, **WIDGET) as (channel, _):
        elsewhere = channel.thread_key(visitor)
    await fresh.aclose()
    assert first == again != other
    assert elsewhere != first
    assert channel.valid_thread(first) and not channel.valid_thread(visitor)


async def test_gpc_header_and_flag_are_recorded_once_for_a_known_visitor(context):
    async with open_webchat(context, **WIDGET) as (channel, url):
        async with httpx.AsyncClient(base_url=url, headers={"Origin": SHOP}) as http:
            header_visitor, flag_visitor, plain_visitor = (
                new_visitor(),
                new_visitor(),
                new_visitor(),
            )
            for _ in range(2):  # the signal comes with every request: one ledger entry
                await http.post(
                    "/chat/web/send", json=post_body(header_visitor), headers={"Sec-GPC": "1"}
                )
                await http.post("/chat/web/send", json=post_body(flag_visitor, gpc=True))
            await http.post("/chat/web/send", json=post_body(plain_visitor))
        # Over the websocket: the hello's flag (Chromium sends no Sec-GPC header), recorded once
        # the visitor has written; a hello alone creates no contact.
        ws_visitor = new_visitor()
        async with open_chat_client(
            url, "web", visitor=ws_visitor, origin=SHOP, hello=False
        ) as tab:
            await tab.send_frame({"type": "hello", "visitor": ws_visitor, "gpc": True})
            await tab.wait_for(lambda f: f["type"] == "history")
            await tab.sync()
            before_writing = list(context.consents)
            await tab.send_message("hi")
        stream_visitor = new_visitor()
        async with open_event_stream(
            url, "web", visitor=stream_visitor, origin=SHOP, headers={"Sec-GPC": "1"}
        ) as stream:
            await stream.post_message("hello from the fallback")
        # A returning visitor who turned GPC on since: the hello alone records it.
        returning = new_visitor()
        async with open_chat_client(url, "web", visitor=returning, origin=SHOP) as tab:
            await tab.send_message("before GPC")
        async with open_chat_client(url, "web", visitor=returning, origin=SHOP, hello=False) as tab:
            await tab.send_frame({"type": "hello", "visitor": returning, "gpc": True})
            await tab.wait_for(lambda f: f["type"] == "history")
            await tab.sync()
        thread = channel.thread_key
    assert before_writing == [
        (thread(header_visitor), "marketing", "withdrawn", "gpc"),
        (thread(flag_visitor), "marketing", "withdrawn", "gpc"),
    ]
    assert context.consents == [
        *before_writing,
        (thread(ws_visitor), "marketing", "withdrawn", "gpc"),
        (thread(stream_visitor), "marketing", "withdrawn", "gpc"),
        (thread(returning), "marketing", "withdrawn", "gpc"),
    ]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        (b"{nope", "application/json", 400, "not valid JSON"),
        (b"[1]", "application/json", 400, "not a JSON object"),
        (b"{}", "text/plain", 415, "content type"),
        (
            b'{"visitor": "1234", "client_id": "x", "text": "hi"}',
            "application/json",
            400,
            "visitor",
        ),
        (
            b'{"visitor": "VISITOR", "client_id": "x", "text": "hi"}',
            "application/json",
            400,
            "UUID",
        ),
        (
            b'{"visitor": "VISITOR", "client_id": "CID", "text": "  "}',
            "application/json",
            400,
            "empty",
        ),
        (
            b'{"visitor": "VISITOR", "client_id": "CID", "text": 7}',
            "application/json",
            400,
            "string",
        ),
        (
            b'{"visitor": "VISITOR", "client_id": "CID", "text": "ELEVEN CHAR"}',
            "application/json",
            413,
            "longer than 10",
        ),
        (
            b'{"visitor": "VISITOR", "pad": "' + b"x" * 200_000 + b'"}',
            "application/json",
            413,
            "larger",
        ),
    ],
)
async def test_bad_posts_get_a_4xx_with_a_reason(context, body, content_type, status, reason):
    body = body.replace(b"VISITOR", new_visitor().encode()).replace(
        b"CID", new_client_id().encode()
    )
    async with open_webchat(context, **WIDGET, max_message_chars=10) as (_, url):
        async with httpx.AsyncClient(base_url=url) as http:
            answer = await http.post(
                "/chat/web/send",
                content=body,
                headers={"Origin": SHOP, "Content-Type": content_type},
            )
    assert answer.status_code == status
    assert reason in answer.json()["reason"]
    # The widget can read the reason: the allowed origin is echoed on errors too.
    assert answer.headers["access-control-allow-origin"] == SHOP
    assert context.inbound == []


async def test_bad_event_stream_requests_get_a_4xx(context):
    async with open_webchat(context, **WIDGET) as (_, url):
        async with httpx.AsyncClient(base_url=url, headers={"Origin": SHOP}) as http:
            weak = await http.post("/chat/web/events", json={"visitor": "abc"})
            big = await http.post("/chat/web/events", json={"visitor": "a" * 5000})
            get = await http.get("/chat/web/events")
    assert weak.status_code == 400 and weak.json()["code"] == "bad_visitor"
    assert big.status_code == 413
    assert get.status_code == 405


async def test_post_rate_limit_and_store_failure_ask_for_a_retry(context):
    visitor = new_visitor()
    async with open_webchat(context, **WIDGET, message_burst=2, message_rate=0.5) as (_, url):
        async with httpx.AsyncClient(base_url=url, headers={"Origin": SHOP}) as http:
            answers = [
                await http.post("/chat/web/send", json=post_body(visitor, f"m{i}"))
                for i in range(3)
            ]
            other = await http.post("/chat/web/send", json=post_body(None, "someone else"))
            context.fail_accepts = 1
            failed = await http.post("/chat/web/send", json=post_body(None, "keep me"))
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["code"] == "rate_limited" and answers[2].headers["retry-after"] == "2"
    assert other.status_code == 200  # the limit is per visitor
    assert failed.status_code == 503 and failed.json()["retry"] is True
    assert failed.headers["retry-after"] == "1"
    assert [m.text for m in context.inbound] == ["m0", "m1", "someone else"]


async def test_stream_ends_when_the_channel_stops_and_is_refused_before_it_runs(context):
    channel = WebchatChannel("web", {"plugin": "webchat", **WIDGET}, context)
    from gateway.testing.conformance import serve_channels

    async with serve_channels(channel) as url:
        async with httpx.AsyncClient(base_url=url, headers={"Origin": SHOP}) as http:
            early = await http.post("/chat/web/events", json={"visitor": new_visitor()})
        stop = trio.CancelScope()

        async def run_until_stopped(*, task_status=trio.TASK_STATUS_IGNORED):
            with stop:
                await channel.run(task_status=task_status)

        async with trio.open_nursery() as nursery:
            await nursery.start(run_until_stopped)
            async with open_event_stream(url, "web", origin=SHOP) as tab:
                stop.cancel()
                with pytest.raises(EOFError):
                    await tab.wait_for(lambda f: False)
    assert early.status_code == 503 and early.json()["code"] == "not_running"


def test_widget_config_errors_name_the_fix():
    config = WebchatChannel.Config
    with pytest.raises(ValueError, match="privacy_notice_url is required when allowed_origins"):
        config(plugin="webchat", allowed_origins=[SHOP])
    with pytest.raises(ValueError, match="#rrggbb"):
        config(plugin="webchat", accent_color="red")
    with pytest.raises(ValueError, match=r"strings\.ru: unknown key\(s\) sned; known: title"):
        config(plugin="webchat", strings={"ru": {"sned": "Послать"}})
    with pytest.raises(ValueError, match="not a language code"):
        config(plugin="webchat", language="Russian")
    words = config(
        plugin="webchat", title="Acme", strings={"de": {"send": "Senden"}, "ru": {"send": "Ок"}}
    ).words()
    assert words["de"]["send"] == "Senden" and words["de"]["close"] == "Close chat"
    assert words["ru"]["send"] == "Ок" and words["ru"]["title"] == words["en"]["title"] == "Acme"
