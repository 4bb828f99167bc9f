"""The public app: channel routes (webhooks, web chat pages) and a health check.

Handlers stay thin (verify, journal, ack): hypercorn is the slowest layer (ARCHITECTURE.md).
Built from the running channels at start-up and again by each config reload that changes them;
gateway.http.swap serves the newest one while requests on an older one finish there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from quart import Blueprint, Response, redirect, request
from quart_trio import QuartTrio

from gateway.plugin import Channel
from gateway.webhooks import drain_body

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def make_public_app(
    channels: Mapping[str, Channel], blueprints: Sequence[Blueprint] = ()
) -> QuartTrio:
    app = QuartTrio("gateway.public")
    app.config["MAX_CONTENT_LENGTH"] = 1 * 1024 * 1024
    for extra in blueprints:
        app.register_blueprint(extra)
    for plugin in channels.values():
        blueprint = plugin.blueprint()
        if blueprint is not None:
            app.register_blueprint(blueprint)
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
        # A 413 came from read_body, which drained what it could and decided about closing.
        if response.status_code != 413 and not await drain_body(request):
            response.headers["Connection"] = "close"
        return response

    return app
