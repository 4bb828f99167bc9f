"""PUBLIC: a fake WhatsApp Business Cloud API (Meta's Graph API) on 127.0.0.1, for tests.

Graph side (what a bot calls), under ``/{version}/`` (any ``vNN.N``) with ``Authorization:
Bearer <token>`` (else 401, error code 190):

- ``POST /{phone-number-id}/messages``: text, image/audio/video/document/sticker (by ``id`` of
  an upload or by ``link``) and template messages; answers ``{"messaging_product": "whatsapp",
  "contacts": [...], "messages": [{"id": "wamid..."}]}`` and records a :class:`SentMessage`.
  Like Meta it refuses free-form messages to a user who has not written in 24 hours (error
  131047; ``enforce_window=False`` turns that off), unknown templates (132001) and templates
  given the wrong number of parameters (132000);
- ``POST /{phone-number-id}/media`` (multipart: ``file``, ``type``, ``messaging_product``) ->
  ``{"id": ...}``;
- ``GET /{media-id}`` -> ``{"url", "mime_type", "sha256", "file_size", "id"}``; the url is
  ``/_media/{media-id}`` on this server and also needs the bearer token;
- ``GET /{phone-number-id}`` -> the number's ``display_phone_number``, ``verified_name``...

Errors have Meta's shape: ``{"error": {"message": "(#131047) Re-engagement message", "type":
"OAuthException", "code": 131047, "error_data": {"messaging_product": "whatsapp", "details":
...}, "fbtrace_id": ...}}``; :meth:`fail_next` scripts them (or a dropped connection).

Webhook side (what Meta does): :meth:`push_message` / :meth:`push` / :meth:`push_media` /
:meth:`status` build notifications in the published format, :meth:`deliver` POSTs one to the
bot signed with ``X-Hub-Signature-256`` (HMAC-SHA256 of the body with the app secret) and
re-sends it until it gets a 2xx, as Meta does; :meth:`post_webhook` sends once, with any
signature; :meth:`verify_webhook` performs the GET subscription handshake.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import httpx
import trio

from gateway.testing._fake_whatsapp_api import GraphApi, SentMessage
from gateway.testing._http import serve_standalone, serving
from gateway.testing._posting import post

__all__ = ["FakeWhatsAppServer", "SentMessage", "open_fake_whatsapp"]

DEFAULT_TOKEN = "EAAFakeWhatsAppAccessToken0123456789"
DEFAULT_APP_SECRET = "fake-app-secret-0123456789abcdef"
DEFAULT_PHONE_NUMBER_ID = "106540352242922"
DEFAULT_DISPLAY_NUMBER = "15550783881"
DEFAULT_WABA_ID = "102290129340398"
SIGN = object()
"""``post_webhook(signature=SIGN)``: sign with the server's app secret (the default)."""


class FakeWhatsAppServer(GraphApi):
    """An in-process Cloud API. Start it with ``await nursery.start(server.serve)`` or use
    :func:`open_fake_whatsapp`. Tests may read ``sent``, ``uploads``, ``requests`` (method,
    path) and ``webhook_statuses``, and set ``webhook_url``, ``clock``, ``last_inbound``,
    ``templates`` and ``media_base``; :meth:`fail_next` scripts failures."""

    def __init__(
        self,
        *,
        access_token: str = DEFAULT_TOKEN,
        app_secret: str = DEFAULT_APP_SECRET,
        phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
        templates: Mapping[tuple[str, str], str] | None = None,
        enforce_window: bool = True,
        port: int = 0,
    ) -> None:
        super().__init__(
            access_token=access_token,
            phone_number_id=phone_number_id,
            templates=templates,
            enforce_window=enforce_window,
            port=port,
        )
        self.app_secret = app_secret
        self.webhook_url: str | None = None
        self.webhook_statuses: list[int] = []
        self._http: httpx.AsyncClient | None = None

    async def serve(
        self, *, task_status: trio.TaskStatus[FakeWhatsAppServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with httpx.AsyncClient() as http, trio.open_nursery() as nursery:
            self._http = http
            try:
                await nursery.start(
                    partial(trio.serve_listeners, self.handle_connection, listeners)
                )
                task_status.started(self)
                await trio.sleep_forever()
            finally:
                self._http = None

    # -- what users do ---------------------------------------------------------------------

    def notification(
        self,
        *,
        messages: Sequence[Mapping[str, Any]] = (),
        statuses: Sequence[Mapping[str, Any]] = (),
        names: Mapping[str, str] | None = None,
        phone_number_id: str | None = None,
    ) -> dict[str, Any]:
        """A ``whatsapp_business_account`` notification with one change of field messages."""
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": DEFAULT_DISPLAY_NUMBER,
                "phone_number_id": phone_number_id or self.phone_number_id,
            },
        }
        if names:
            value["contacts"] = [{"profile": {"name": n}, "wa_id": w} for w, n in names.items()]
        if messages:
            value["messages"] = [dict(m) for m in messages]
        if statuses:
            value["statuses"] = [dict(s) for s in statuses]
        return {
            "object": "whatsapp_business_account",
            "entry": [{"id": DEFAULT_WABA_ID, "changes": [{"value": value, "field": "messages"}]}],
        }

    def message(
        self, wa_id: str, kind: str, content: Any, *, context_id: str | None = None
    ) -> dict[str, Any]:
        """One user message object (``from``, a new ``wamid``, ``timestamp``, ``type``); the
        user's 24-hour window opens now."""
        now = self.clock()
        self.last_inbound[wa_id] = now
        message: dict[str, Any] = {
            "from": wa_id,
            "id": f"wamid.FAKE{wa_id}{next(self._ids):08d}",
            "timestamp": str(int(now)),
            "type": kind,
            kind: content,
        }
        if context_id:
            message["context"] = {"from": DEFAULT_DISPLAY_NUMBER, "id": context_id}
        return message

    def push(
        self, wa_id: str, kind: str, content: Any, *, name: str = "Ada Lovelace", **extra: Any
    ) -> dict[str, Any]:
        """A notification carrying one message of any type from ``wa_id``."""
        return self.notification(
            messages=[self.message(wa_id, kind, content, **extra)], names={wa_id: name}
        )

    def push_message(self, wa_id: str, text: str, **extra: Any) -> dict[str, Any]:
        return self.push(wa_id, "text", {"body": text}, **extra)

    def push_media(
        self,
        wa_id: str,
        kind: str,
        data: bytes,
        mime_type: str,
        *,
        caption: str | None = None,
        filename: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """The user sends a file: Meta keeps it (downloadable) and notifies its media id."""
        media_id = str(9_000_000_000 + next(self._ids))
        self.uploads[media_id] = (data, mime_type)
        content: dict[str, Any] = {
            "mime_type": mime_type,
            "sha256": hashlib.sha256(data).hexdigest(),
            "id": media_id,
        }
        if caption is not None:
            content["caption"] = caption
        if filename is not None:
            content["filename"] = filename
        return self.push(wa_id, kind, content, **extra)

    def status(
        self, message_id: str, status: str, *, errors: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, Any]:
        """A status notification (sent, delivered, read, failed) for a message the bot sent."""
        to = next((m.to for m in self.sent if m.message_id == message_id), "0")
        item: dict[str, Any] = {
            "id": message_id,
            "status": status,
            "timestamp": str(int(self.clock())),
            "recipient_id": to,
        }
        if errors:
            item["errors"] = [dict(e) for e in errors]
        return self.notification(statuses=[item])

    # -- webhook delivery ------------------------------------------------------------------

    def sign(self, body: bytes, secret: str | None = None) -> str:
        key = (self.app_secret if secret is None else secret).encode()
        return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()

    async def post_webhook(
        self,
        body: Mapping[str, Any] | bytes,
        *,
        url: str | None = None,
        signature: Any = SIGN,
        content_type: str = "application/json",
    ) -> int:
        """POST once; ``signature`` is SIGN (valid), None (no header) or the header's value."""
        target = url or self.webhook_url
        if self._http is None or target is None:
            raise RuntimeError("post_webhook needs the server running and a webhook_url")
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": content_type}
        if signature is SIGN:
            headers["X-Hub-Signature-256"] = self.sign(raw)
        elif signature is not None:
            headers["X-Hub-Signature-256"] = str(signature)
        response = await post(self._http, target, content=raw, headers=headers)
        self.webhook_statuses.append(response.status_code)
        return response.status_code

    async def deliver(
        self, notification: Mapping[str, Any], *, url: str | None = None, attempts: int = 10
    ) -> int:
        """POST signed, re-sending the same bytes until a 2xx (Meta retries for days; here
        ``attempts`` times, at once). Returns the last status."""
        raw = json.dumps(notification).encode()
        status = 0
        for _ in range(attempts):
            status = await self.post_webhook(raw, url=url)
            if 200 <= status < 300:
                break
        return status

    async def verify_webhook(
        self, verify_token: str, *, challenge: str = "1158201444", url: str | None = None
    ) -> tuple[int, str]:
        """Meta's subscription handshake: GET with hub.mode, hub.verify_token, hub.challenge."""
        target = url or self.webhook_url
        if self._http is None or target is None:
            raise RuntimeError("verify_webhook needs the server running and a webhook_url")
        params = {
            "hub.mode": "subscribe",
            "hub.verify_token": verify_token,
            "hub.challenge": challenge,
        }
        response = await self._http.get(target, params=params)
        return response.status_code, response.text


def open_fake_whatsapp(**kwargs: Any) -> AbstractAsyncContextManager[FakeWhatsAppServer]:
    """Run a :class:`FakeWhatsAppServer` (keyword arguments as its constructor's) for the block."""
    return serving(FakeWhatsAppServer(**kwargs))


def main(argv: list[str] | None = None) -> None:
    """``python -m gateway.testing.fake_whatsapp --port 0``: serve, print the api_base."""

    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--token", default=DEFAULT_TOKEN, help="the access token it accepts")
        parser.add_argument("--no-window", action="store_true", help="do not enforce 24 h windows")

    serve_standalone(
        "Run a fake WhatsApp Cloud API on 127.0.0.1.",
        lambda args: FakeWhatsAppServer(
            access_token=args.token, port=args.port, enforce_window=not args.no_window
        ),
        lambda server: server.api_base,
        argv,
        options=options,
    )


if __name__ == "__main__":
    main()
