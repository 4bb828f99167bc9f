"""The public app: channel routes (webhooks, web chat pages) and a health check.

Handlers stay thin (verify, journal, ack): hypercorn is the slowest layer (ARCHITECTURE.md).
Built from the running channels at start-up and again by each config reload that changes them;
gateway.http.swap serves the newest one while requests on an older one finish there.

Two kinds of route: a channel's ``webhooks()`` (:class:`~gateway.webhooks.WebhookRoute`) are
served by :class:`PublicApp` straight from ASGI, everything else (``blueprint()`` pages, the
developer API, ``/healthz``) by a QuartTrio app behind it. Why two: a webhook is the one route
that every inbound message takes, and Quart's request, routing and response machinery cost
0.69 ms of server CPU per request where a bare ASGI handler costs 0.41 (``bench/ceilings.py``);
a webhook handler needs none of it (headers, the body, a status).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    Scope,
)
from quart import Blueprint, Response, redirect, request
from quart_trio import QuartTrio

from gateway.plugin import Channel
from gateway.webhooks import (
    ClientGone,
    WebhookHandler,
    WebhookRequest,
    WebhookRoute,
    drain_body,
    plain,
)


async def settle_body(request: Any, response: Response) -> None:
    """Once the answer is decided, for a thin route or a Quart one: read what the handler left
    of the request body so the connection can carry the next request, or mark the response
    ``Connection: close`` when that is too much. A 413 came from ``read_body``, which drained
    what it could and decided about closing; a response that closes anyway needs nothing."""
    if response.status_code == 413 or "Connection" in response.headers:
        return
    if not await drain_body(request):
        response.headers["Connection"] = "close"


log = logging.getLogger("gateway.http")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class PublicApp:
    """The public bind's ASGI app: thin webhook routes first, the Quart app (``quart``) for
    every other path, lifespan and websocket."""

    def __init__(self, quart: QuartTrio, routes: Sequence[WebhookRoute] = ()) -> None:
        self.quart = quart
        self.routes: dict[str, dict[str, WebhookHandler]] = {}
        for route in routes:
            methods = self.routes.setdefault(route.path, {})
            for method in route.methods:
                if method.upper() in methods:
                    raise ValueError(f"two webhook routes for {method.upper()} {route.path}")
                methods[method.upper()] = route.handler

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http":
            methods = self.routes.get(scope["path"])
            if methods is not None:
                await self._serve(methods, scope, receive, send)
                return
        await self.quart(scope, receive, send)

    async def _serve(
        self,
        methods: Mapping[str, WebhookHandler],
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
    ) -> None:
        request = WebhookRequest(scope, receive)
        handler = methods.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = methods.get("GET")
        try:
            if handler is None:
                response = plain(405, "method not allowed")
                response.headers["Allow"] = ", ".join(sorted(methods))
            else:
                try:
                    response = await handler(request)
                except ClientGone:
                    raise
                except Exception:
                    log.exception("webhook %s %s failed", request.method, request.path)
                    response = plain(500, "internal error: not acknowledged, send it again later")
                    response.headers["Connection"] = "close"
            await settle_body(request, response)
        except ClientGone:
            return  # nobody to answer; whatever the handler committed stays committed
        body = b"" if request.method == "HEAD" else await response.get_data(as_text=False)
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.items()
        ]
        for name, value in SECURITY_HEADERS.items():
            if name not in response.headers:
                headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": headers,
                "trailers": False,
            }
        )
        end: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": body,
            "more_body": False,
        }
        await send(end)


def make_public_app(
    channels: Mapping[str, Channel], blueprints: Sequence[Blueprint] = ()
) -> PublicApp:
    app = QuartTrio("gateway.public")
    app.config["MAX_CONTENT_LENGTH"] = 1 * 1024 * 1024
    for extra in blueprints:
        app.register_blueprint(extra)
    routes: list[WebhookRoute] = []
    for plugin in channels.values():
        blueprint = plugin.blueprint()
        if blueprint is not None:
            app.register_blueprint(blueprint)
        webhooks = getattr(plugin, "webhooks", None)
        if webhooks is not None:
            routes.extend(webhooks())
    chats = [name for name, p in channels.items() if type(p).__name__ == "WebchatChannel"]

    @app.get("/")
    async def index() -> Any:
        if chats:
            return redirect(f"/chat/{chats[0]}/")
        return Response("Sovereign Gateway\n", content_type="text/plain")

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.after_request
    async def headers(response: Response) -> Response:
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        await settle_body(request, response)
        return response

    return PublicApp(app, routes)
