"""The public app: channel routes (webhooks, web chat pages) and a health check.

Handlers stay thin (verify, journal, ack): hypercorn is the slowest layer (ARCHITECTURE.md).
Built from the running channels at start-up and again by each config reload that changes them;
gateway.http.swap serves the newest one while requests on an older one finish there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from quart import Blueprint, Response, redirect
from quart_trio import QuartTrio

from gateway.plugin import Channel

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
        return response

    return app
