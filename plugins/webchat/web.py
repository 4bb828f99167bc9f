"""The web chat's HTTP routes under ``/chat/NAME/``.

- ``GET /`` the chat as a full page (the widget in page mode);
- ``GET widget.js`` the widget: one script, its styles inside (they live in a Shadow DOM);
- ``GET config`` what the widget shows (words, colours, privacy notice link);
- ``POST events`` / ``POST send`` the fallback for networks that block websockets: a
  server-sent event stream of the socket's frames, and one POST per message.

Cross-origin rules: a request that carries an ``Origin`` must come from the gateway's own page,
``public_url`` or a site in ``allowed_origins``; anything else gets a 403 naming the setting, and
nothing is stored. Allowed origins get their own origin echoed in ``Access-Control-Allow-Origin``
(``Vary: Origin``), never ``*`` and never credentials: the widget sends no cookies, its visitor
id travels in the request body (never in a URL, where logs would keep it).
"""

from __future__ import annotations

import functools
import hashlib
import html
import importlib.resources
import json
import math
import string
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import quart
import trio

from gateway.webhooks import WebhookRefused, parse_json_object, read_body

from . import convert

if TYPE_CHECKING:
    from .channel import WebchatChannel

KEEPALIVE = 25.0
"""Seconds of silence after which an event stream gets a comment line (proxies close idle ones)."""
OPEN_BODY_LIMIT = 4096
PREFLIGHT_MAX_AGE = "600"
_CSS_PLACEHOLDER = '"__SOVEREIGN_CHAT_CSS__"'


def blueprint(channel: WebchatChannel) -> quart.Blueprint:
    routes = _Routes(channel)
    blueprint = quart.Blueprint(
        # Blueprint names must be unique per app and free of dots: hex keeps any channel
        # name distinct.
        f"webchat_{channel.name.encode().hex()}",
        __name__,
        url_prefix=f"/chat/{quote(channel.name, safe='')}",
    )
    blueprint.add_url_rule("/", "page", routes.page, methods=["GET"])
    blueprint.add_url_rule("/widget.js", "widget", routes.widget, methods=["GET"])
    blueprint.add_url_rule("/config", "config", routes.settings, methods=["GET", "OPTIONS"])
    blueprint.add_url_rule("/events", "events", routes.events, methods=["POST", "OPTIONS"])
    blueprint.add_url_rule("/send", "send", routes.send, methods=["POST", "OPTIONS"])
    return blueprint


class _Routes:
    def __init__(self, channel: WebchatChannel) -> None:
        self.channel = channel

    # -- static --------------------------------------------------------------------------------

    async def page(self) -> quart.Response:
        config = self.channel.config
        language = config.default_language()
        template = string.Template(static_bytes("page.html").decode())
        body = template.substitute(
            lang=html.escape(language),
            title=html.escape(config.words()[language]["title"]),
            channel=html.escape(self.channel.name),
        )
        response = quart.Response(body, content_type="text/html; charset=utf-8")
        frame_ancestors = " ".join(["'self'", *config.allowed_origins])
        # No inline script or style and no third-party source: injected markup cannot run.
        # 'self' in connect-src covers ws(s): to the same host (CSP level 3). The widget's
        # styles are a constructed stylesheet, which CSP does not restrict.
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors {frame_ancestors}"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    async def widget(self) -> quart.Response:
        origin, refused = self._origin(required=False)
        if refused is not None:
            return refused
        response = quart.Response(widget_script(), content_type="text/javascript; charset=utf-8")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        # Embeddable by pages that require it (Cross-Origin-Embedder-Policy: require-corp).
        response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
        response.set_etag(hashlib.sha256(widget_script().encode()).hexdigest()[:32])
        _cors(response, origin)
        return await response.make_conditional(quart.request)

    # -- settings ------------------------------------------------------------------------------

    async def settings(self) -> quart.Response:
        if quart.request.method == "OPTIONS":
            return self._preflight("GET")
        origin, refused = self._origin(required=False)
        if refused is not None:
            return refused
        config = self.channel.config
        response = _json(config.widget_settings(config.privacy_notice_url), 200)
        response.headers["Cache-Control"] = "no-cache"
        _cors(response, origin)
        return response

    # -- the fallback transport ----------------------------------------------------------------

    async def events(self) -> quart.Response:
        if quart.request.method == "OPTIONS":
            return self._preflight("POST")
        origin, refused = self._origin(required=True)
        if refused is not None:
            return refused
        posted = await self._posted(origin, with_message=False)
        if isinstance(posted, quart.Response):
            return posted
        channel = self.channel
        gpc = posted.gpc or _header_gpc()

        async def stream() -> AsyncIterator[str]:
            # Opened here, not before: a generator that never starts never runs its finally.
            tab = channel.open_tab()
            try:
                await channel.attach(tab, posted.visitor, gpc=gpc)
                while True:
                    frame: dict[str, Any] | None = None
                    with trio.move_on_after(KEEPALIVE):
                        try:
                            frame = await tab.outgoing.receive()
                        except trio.EndOfChannel:
                            return
                    # Never yield inside a cancel scope (trio forbids it in generators).
                    yield convert.sse_event(frame) if frame is not None else convert.SSE_KEEPALIVE
            finally:
                channel.detach(tab)

        response = quart.Response(stream(), content_type="text/event-stream; charset=utf-8")
        response.timeout = None  # lives as long as the visitor's tab, not Quart's 60 s
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        _cors(response, origin)
        return response

    async def send(self) -> quart.Response:
        if quart.request.method == "OPTIONS":
            return self._preflight("POST")
        origin, refused = self._origin(required=True)
        if refused is not None:
            return refused
        posted = await self._posted(origin, with_message=True)
        if isinstance(posted, quart.Response):
            return posted
        assert posted.message is not None
        channel = self.channel
        thread = channel.thread_key(posted.visitor)
        wait = channel.post_allowance(thread)
        if wait:
            frame = convert.rate_limited_frame(posted.message.client_id, wait)
        else:
            gpc = posted.gpc or _header_gpc()
            frame = await channel.submit(thread, posted.message, gpc=gpc)
        response = _json(frame, convert.http_status(frame))
        if wait:
            response.headers["Retry-After"] = str(math.ceil(wait))
        elif frame["type"] == "error" and frame["retry"]:
            response.headers["Retry-After"] = "1"
        _cors(response, origin)
        return response

    async def _posted(self, origin: str | None, *, with_message: bool) -> Any:
        """The request's Posted body, or the response refusing it."""
        if not self.channel.running:
            frame = convert.error_frame("not_running", "the chat is not running", retry=True)
            return _cors(_json(frame, 503), origin)
        config = self.channel.config
        limit = convert.max_frame_chars(config.max_message_chars) if with_message else None
        try:
            body = await read_body(quart.request, limit=limit or OPEN_BODY_LIMIT)
            data = parse_json_object(body)
            return convert.parse_posted(
                data,
                max_message_chars=config.max_message_chars,
                with_message=with_message,
                valid_visitor=self.channel.valid_visitor,
            )
        except WebhookRefused as exc:
            code = "too_large" if exc.status == 413 else "bad_request"
            response = _json(convert.error_frame(code, exc.reason), exc.status)
            if exc.close:
                response.headers["Connection"] = "close"
            return _cors(response, origin)
        except convert.FrameError as exc:
            frame = exc.frame()
            return _cors(_json(frame, convert.http_status(frame)), origin)

    # -- origins -------------------------------------------------------------------------------

    def _origin(self, *, required: bool) -> tuple[str | None, quart.Response | None]:
        """The request's Origin and, when it may not use this chat, the 403 to answer."""
        request = quart.request
        origin = request.headers.get("Origin")
        refused = convert.origin_refusal(
            origin,
            request.headers.get("Host"),
            self.channel.config.allowed_origins,
            self.channel.context.public_url,
            channel=self.channel.name,
            required=required,
        )
        if refused is None:
            return origin, None
        self.channel.log.warning(
            "web chat: refused %s %s from origin %r (%s)",
            request.method,
            request.path,
            origin,
            refused,
        )
        response = quart.Response(refused, status=403, content_type="text/plain; charset=utf-8")
        response.headers["Vary"] = "Origin"
        return origin, response

    def _preflight(self, method: str) -> quart.Response:
        origin, refused = self._origin(required=True)
        if refused is not None:
            return refused
        asked = quart.request.headers.get("Access-Control-Request-Method", "")
        if asked != method:
            text = f"{quart.request.path} takes {method}, not {asked or 'no method'}"
            return quart.Response(text, status=405, content_type="text/plain; charset=utf-8")
        response = quart.Response("", status=204)
        response.headers["Access-Control-Allow-Methods"] = method
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        _cors(response, origin)
        return response


def _cors(response: quart.Response, origin: str | None) -> quart.Response:
    """Let the (already allowed) ``origin`` read the response: its exact value, no credentials."""
    response.headers["Vary"] = "Origin"
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
    return response


def _json(frame: dict[str, Any], status: int) -> quart.Response:
    return quart.Response(
        json.dumps(frame, ensure_ascii=False),
        status=status,
        content_type="application/json; charset=utf-8",
    )


def _header_gpc() -> bool:
    """``Sec-GPC: 1`` (https://privacycg.github.io/gpc-spec/): the browser's opt-out."""
    return quart.request.headers.get("Sec-GPC", "").strip() == "1"


@functools.cache
def static_bytes(asset: str) -> bytes:
    return importlib.resources.files(__package__).joinpath("static", asset).read_bytes()


@functools.cache
def widget_script() -> str:
    """widget.js with widget.css inside it as a string (no build step: joined when served)."""
    script = static_bytes("widget.js").decode()
    css = json.dumps(static_bytes("widget.css").decode())
    assert _CSS_PLACEHOLDER in script, "widget.js lost its CSS placeholder"
    return script.replace(_CSS_PLACEHOLDER, css, 1)
