"""Thin webhook routes on the public bind (gateway.http.public.PublicApp): a channel's
``webhooks()`` are served straight from ASGI, everything else by the Quart app behind them, and a
thin route keeps what the Quart routes guaranteed: security headers, 405 with Allow, a drained or
closed connection after an unread body, a 500 (nothing acknowledged) when the handler fails.
Served by hypercorn on 127.0.0.1 unless the test is about ASGI events themselves."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
import quart
import trio

from gateway.http.public import SECURITY_HEADERS, PublicApp, make_public_app
from gateway.testing.conformance import serve_channels
from gateway.webhooks import (
    LEFTOVER_LIMIT,
    WebhookRequest,
    WebhookRoute,
    plain,
    read_body,
)


class HookChannel:
    """Only what the public app asks of a channel: routes. ``seen`` has every handled request's
    method, query arguments and body (or None when the handler did not read it)."""

    def __init__(self, name: str = "hook") -> None:
        self.name = name
        self.seen: list[tuple[str, dict[str, str], bytes | None]] = []

    def blueprint(self) -> quart.Blueprint:
        pages = quart.Blueprint(f"pages_{self.name}", __name__)
        pages.add_url_rule(f"/pages/{self.name}", view_func=lambda: "a page", methods=["GET"])
        return pages

    def webhooks(self) -> list[WebhookRoute]:
        path = f"/webhooks/{self.name}"
        return [
            WebhookRoute(path, ("POST",), self.receive),
            WebhookRoute(path, ("GET",), self.handshake),
            WebhookRoute(f"{path}/refuse", ("POST",), self.refuse),
            WebhookRoute(f"{path}/boom", ("POST",), self.boom),
        ]

    async def receive(self, request: WebhookRequest) -> quart.Response:
        body = await read_body(request, content_types=())
        self.seen.append((request.method, dict(request.args), body))
        return plain(200, f"got {len(body)} bytes of {request.mimetype}")

    async def handshake(self, request: WebhookRequest) -> quart.Response:
        self.seen.append((request.method, dict(request.args), None))
        return plain(200, request.args.get("hub.challenge", ""))

    async def refuse(self, request: WebhookRequest) -> quart.Response:
        # Like a signature check that fails before the body is read.
        self.seen.append((request.method, dict(request.args), None))
        return plain(401, "missing signature")

    async def boom(self, request: WebhookRequest) -> quart.Response:
        raise RuntimeError("handler bug")


async def test_thin_route_answers_with_security_headers_and_quart_keeps_the_rest() -> None:
    channel = HookChannel()
    async with serve_channels(channel) as base, httpx.AsyncClient(base_url=base) as http:
        response = await http.post(
            "/webhooks/hook?a=1&a=2&b=",
            content=b'{"x": 1}',
            headers={"Content-Type": "Application/JSON; charset=utf-8"},
        )
        assert response.status_code == 200 and response.text == "got 8 bytes of application/json"
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value
        assert channel.seen == [("POST", {"a": "1", "b": ""}, b'{"x": 1}')]
        # The channel's blueprint and the core's routes still come from Quart.
        assert (await http.get("/pages/hook")).text == "a page"
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/webhooks/nothing-here")).status_code == 404


async def test_other_methods_get_405_naming_the_allowed_ones_and_head_is_get_without_body() -> None:
    channel = HookChannel()
    async with serve_channels(channel) as base, httpx.AsyncClient(base_url=base) as http:
        response = await http.put("/webhooks/hook", content=b"x")
        assert response.status_code == 405 and response.headers["Allow"] == "GET, POST"
        head = await http.head("/webhooks/hook?hub.challenge=abc")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["Content-Length"] == "3"
        get = await http.get("/webhooks/hook?hub.challenge=abc")
        assert get.text == "abc"
        assert [seen[0] for seen in channel.seen] == ["HEAD", "GET"]


async def test_a_body_the_handler_left_unread_is_drained_so_the_connection_carries_on() -> None:
    """hypercorn neither reuses nor closes a connection whose request body was left unread:
    the client's next request on it would hang. The app reads the rest after the handler."""
    channel = HookChannel()
    async with serve_channels(channel) as base:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            refused = await http.post("/webhooks/hook/refuse", content=b"x" * 200_000)
            assert refused.status_code == 401 and "Connection" not in refused.headers
            with trio.fail_after(5):
                after = await http.post("/webhooks/hook", content=b"{}")
            assert after.status_code == 200
            big = await http.post("/webhooks/hook/refuse", content=b"x" * (LEFTOVER_LIMIT + 1))
            assert big.status_code == 401 and big.headers["Connection"] == "close"
            with trio.fail_after(5):
                assert (await http.post("/webhooks/hook", content=b"{}")).status_code == 200


async def test_a_failing_handler_is_a_logged_500_that_acknowledges_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = HookChannel()
    async with serve_channels(channel) as base, httpx.AsyncClient(base_url=base) as http:
        with caplog.at_level(logging.ERROR, "gateway.http"):
            response = await http.post("/webhooks/hook/boom", content=b"{}")
        assert response.status_code == 500 and "not acknowledged" in response.text
        assert response.headers["Connection"] == "close"
        assert "POST /webhooks/hook/boom failed" in caplog.text and "handler bug" in caplog.text
        # The server goes on.
        assert (await http.post("/webhooks/hook", content=b"{}")).status_code == 200


async def test_a_client_gone_mid_body_gets_no_answer_and_the_handler_stops() -> None:
    channel = HookChannel()
    app = make_public_app({"hook": channel})  # type: ignore[dict-item]
    events = iter(
        [
            {"type": "http.request", "body": b'{"par', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[Any] = []

    async def receive() -> Any:
        return next(events)

    async def send(event: Any) -> None:
        sent.append(event)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/webhooks/hook",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent == [] and channel.seen == []


def test_request_reads_like_quart_request() -> None:
    async def receive() -> Any:
        raise AssertionError("not read")

    request = WebhookRequest(
        {
            "method": "POST",
            "path": "/webhooks/x",
            "query_string": b"hub.mode=subscribe&name=%C3%A9t%C3%A9&name=second",
            "headers": [
                (b"x-hub-signature-256", b"sha256=ab"),
                (b"content-type", b"text/plain ; charset=utf-8"),
                (b"content-length", b"not a number"),
                (b"x-twice", b"first"),
                (b"x-twice", b"second"),
            ],
        },
        receive,
    )
    assert request.headers.get("X-Hub-Signature-256") == "sha256=ab"
    assert request.headers["X-TWICE"] == "first" and "x-Twice" in request.headers
    assert request.headers.get("Missing", "default") == "default"
    assert request.args == {"hub.mode": "subscribe", "name": "été"}
    assert request.mimetype == "text/plain"
    assert request.content_length is None


def test_two_routes_for_one_method_and_path_are_refused_at_start() -> None:
    async def handler(request: WebhookRequest) -> quart.Response:
        return plain(200, "")

    with pytest.raises(ValueError, match="two webhook routes for POST /webhooks/x"):
        PublicApp(quart.Quart("x"), [WebhookRoute("/webhooks/x", ("post",), handler)] * 2)  # type: ignore[arg-type]
