"""PUBLIC: a fake Max messenger Bot API (platform-api.max.ru) on 127.0.0.1, for tests.

Bot side (what a bot calls), every route with ``Authorization: <token>`` (else 401 ``{"code":
"verify.token", "message": "Invalid access_token"}``; a token in the query is refused, as Max
now does). Behaviour follows the published schema (dev.max.ru/docs-api):

- ``GET /me``: the bot (``user_id``, ``username``...);
- ``GET /updates?marker&timeout&limit&types``: long-polls up to ``timeout`` (0-90) seconds and
  answers ``{"updates": [...], "marker": N}``. Passing a marker commits every earlier update;
  without one the bot gets everything not committed yet. A newer poll ends a pending one with
  nothing. While a webhook subscription exists it answers 405, as Max does;
- ``POST /messages?chat_id=|user_id=``: a NewMessageBody (text up to 4000 characters,
  attachments such as ``inline_keyboard``, ``link`` to a known message, else 404); answers
  ``{"message": {...}}`` with a new ``mid`` and records a :class:`SentMessage`;
- ``POST /answers?callback_id=``: the answer to a button press (``notification`` or
  ``message``); records a :class:`CallbackAnswer`; an unknown callback id is 404;
- ``GET/POST/DELETE /subscriptions``: webhook subscriptions (``secret`` 5-256 of ``[\\w-]``);
- ``GET /videos/{token}``: a video's direct links; files users sent are served without the
  token at ``/_files/ID`` (Max's CDN).

Errors are Max's ``{"code": ..., "message": ...}`` with the HTTP status; :meth:`fail_next`
scripts them (429 with ``Retry-After``, 5xx, 4xx) or a dropped connection.

User side: :meth:`push_message`, :meth:`push_callback`, :meth:`push_bot_started` and
:meth:`push_update` queue updates in the published format (times in milliseconds, chat ids
for threads). In webhook mode :meth:`deliver` POSTs one to the subscribed URL with the
subscribed secret in ``X-Max-Bot-Api-Secret``, re-sending until a 200 as Max does (for up to
8 hours, here ``attempts`` times at once); :meth:`post_webhook` sends once with any secret.

Departures, on purpose: any chat id is a known chat; positive chat ids are dialogs, negative
ones group chats; ``http://`` webhook URLs on any port are accepted; file uploads
(``POST /uploads``) are not implemented. ``tls=`` serves HTTPS with a test CA's certificate.
"""

from __future__ import annotations

import argparse
import json
import ssl
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import httpx
import trio

from gateway.testing._fake_max_api import BotApi, CallbackAnswer, SentMessage, chat_type
from gateway.testing._http import serve_standalone, serving
from gateway.testing._posting import post

__all__ = ["DEFAULT_TOKEN", "CallbackAnswer", "FakeMaxServer", "SentMessage", "open_fake_max"]

DEFAULT_TOKEN = "f9LHodD0cOJZ0b30xpIJTfake-max-token_0123456789"
DEFAULT_BOT_ID = 229229229
SECRET_HEADER = "X-Max-Bot-Api-Secret"
SUBSCRIBED = object()
"""``post_webhook(secret=SUBSCRIBED)``: the secret of the subscription (the default)."""


class FakeMaxServer(BotApi):
    """An in-process Max Bot API. Start it with ``await nursery.start(server.serve)`` or use
    :func:`open_fake_max`. Tests may read ``sent``, ``answers``, ``updates`` (not committed),
    ``deliveries`` (times each update number was handed out), ``polls``, ``subscriptions``,
    ``requests`` and ``webhook_statuses``, and set ``on_poll`` / ``on_send`` hooks."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_id: int = DEFAULT_BOT_ID,
        bot_username: str = "fake_gateway_bot",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(token=token, bot_id=bot_id, bot_username=bot_username, port=port)
        self.tls = tls
        if tls is not None:
            self.scheme = "https"
        self.webhook_statuses: list[int] = []
        self._http: httpx.AsyncClient | None = None

    async def serve(
        self, *, task_status: trio.TaskStatus[FakeMaxServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on 127.0.0.1 until cancelled; ``task_status.started(self)`` once bound."""
        listeners: list[Any] = list(await trio.open_tcp_listeners(self.port, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        if self.tls is not None:
            listeners = [trio.SSLListener(sock, self.tls) for sock in listeners]
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

    def user(self, user_id: int, first_name: str = "Ada", last_name: str = "") -> dict[str, Any]:
        """A User object as Max sends it."""
        name = f"{first_name} {last_name}".strip()
        return {
            "user_id": user_id,
            "first_name": first_name,
            "last_name": last_name,
            "is_bot": False,
            "last_activity_time": _now(),
            "name": name,
        }

    def message(
        self,
        chat_id: int,
        text: str | None,
        *,
        user_id: int | None = None,
        first_name: str = "Ada",
        attachments: Sequence[Mapping[str, Any]] = (),
        reply_to: str | None = None,
    ) -> dict[str, Any]:
        """A user's Message object (a new ``mid``) in ``chat_id``."""
        body: dict[str, Any] = {"mid": self.next_mid(), "seq": self.next_id(), "text": text}
        if attachments:
            body["attachments"] = [dict(a) for a in attachments]
        message: dict[str, Any] = {
            "recipient": {"chat_id": chat_id, "chat_type": chat_type(chat_id)},
            "timestamp": _now(),
            "body": body,
            "sender": self.user(chat_id if user_id is None else user_id, first_name),
        }
        if chat_id > 0:
            message["recipient"]["user_id"] = self.bot_id
        if reply_to is not None:
            message["link"] = {"type": "reply", "message": {"mid": reply_to, "seq": 0}}
        return message

    def push_message(
        self, chat_id: int, text: str | None, *, locale: str | None = "ru", **kwargs: Any
    ) -> dict[str, Any]:
        """A user writes to the bot (``message_created``); returns the queued update.
        Keyword arguments as :meth:`message`."""
        update: dict[str, Any] = {
            "update_type": "message_created",
            "timestamp": _now(),
            "message": self.message(chat_id, text, **kwargs),
        }
        if locale:
            update["user_locale"] = locale
        return self.push_update(update)

    def file_attachment(
        self,
        data: bytes,
        mime_type: str,
        *,
        kind: str = "image",
        filename: str | None = None,
        url: str | None = None,
    ) -> dict[str, Any]:
        """An attachment object for a file a user sends, its bytes kept at ``/_files/ID`` (or
        pointing at ``url``). ``kind``: image, video, audio, file or sticker."""
        file_id = f"f{self.next_id()}"
        self.files[file_id] = (data, mime_type)
        link = url or f"{self.api_base}/_files/{file_id}"
        payload: dict[str, Any] = {"url": link, "token": f"tok-{file_id}"}
        if kind == "image":
            payload["photo_id"] = self.next_id()
        attachment: dict[str, Any] = {"type": kind, "payload": payload}
        if kind == "video":
            payload["token"] = f"video-{file_id}"
            payload["url"] = url or f"https://max.ru/video/{file_id}"  # a player page
            attachment.update(width=854, height=480, duration=3)
        if kind == "file":
            attachment.update(filename=filename or "file.bin", size=len(data))
        if kind == "sticker":
            payload["code"] = f"sticker{file_id}"
            attachment.update(width=128, height=128)
        return attachment

    def keyboard_message(
        self, chat_id: int, text: str, buttons: Sequence[tuple[str, str]]
    ) -> dict[str, Any]:
        """A message of the bot's with an inline keyboard of callback buttons (label,
        payload), as another part of a system (a developer's bot) may have sent."""
        rows = [[{"type": "callback", "text": label, "payload": p}] for label, p in buttons]
        body = {
            "mid": self.next_mid(),
            "seq": self.next_id(),
            "text": text,
            "attachments": [
                {
                    "callback_id": f"kb{self.next_id()}",
                    "type": "inline_keyboard",
                    "payload": {"buttons": rows},
                }
            ],
        }
        return {
            "recipient": {"chat_id": chat_id, "chat_type": chat_type(chat_id)},
            "timestamp": _now(),
            "body": body,
            "sender": {**self.me(), "is_bot": True},
        }

    def push_callback(
        self,
        chat_id: int,
        payload: str,
        *,
        user_id: int | None = None,
        message: Mapping[str, Any] | None = None,
        label: str = "Press me",
    ) -> dict[str, Any]:
        """A user presses a callback button (``message_callback``). ``message`` is the one
        with the keyboard (default: a new one with a single button ``label``/``payload``)."""
        if message is None:
            message = self.keyboard_message(chat_id, "Choose:", [(label, payload)])
        callback_id = f"f9LHodD0cOJ{self.next_id():08d}fakecallback"
        self.callbacks.add(callback_id)
        return self.push_update(
            {
                "update_type": "message_callback",
                "timestamp": _now(),
                "callback": {
                    "timestamp": _now(),
                    "callback_id": callback_id,
                    "user": self.user(chat_id if user_id is None else user_id),
                    "payload": payload,
                },
                "message": dict(message),
                "user_locale": "ru",
            }
        )

    def push_bot_started(
        self, chat_id: int, *, user_id: int | None = None, payload: str | None = None
    ) -> dict[str, Any]:
        """A user presses Start, through a deep link ``https://max.ru/BOT/start/PAYLOAD``
        when ``payload`` is given (``bot_started``)."""
        update: dict[str, Any] = {
            "update_type": "bot_started",
            "timestamp": _now(),
            "chat_id": chat_id,
            "user": self.user(chat_id if user_id is None else user_id),
            "user_locale": "ru",
        }
        if payload is not None:
            update["payload"] = payload
        return self.push_update(update)

    def push_update(self, update: Mapping[str, Any]) -> dict[str, Any]:
        """Queue any update for GET /updates (the same object is what :meth:`deliver` posts);
        returns the queued copy."""
        queued: dict[str, Any] = json.loads(json.dumps(update))  # a deep copy, surely JSON
        self.enqueue(queued)
        return queued

    # -- webhook delivery ------------------------------------------------------------------

    async def post_webhook(
        self, update: Mapping[str, Any] | bytes, *, url: str | None = None, secret: Any = SUBSCRIBED
    ) -> int:
        """POST once to ``url`` (default: the subscribed URL); ``secret`` is SUBSCRIBED (the
        subscription's), None (no header) or the header's value. Returns the status."""
        subscription = self.subscriptions[-1] if self.subscriptions else None
        target = url or (subscription["url"] if subscription else None)
        if self._http is None or target is None:
            raise RuntimeError("post_webhook needs the server running and a subscription or url")
        raw = update if isinstance(update, bytes) else json.dumps(update).encode()
        headers = {"Content-Type": "application/json"}
        value = (subscription or {}).get("secret") if secret is SUBSCRIBED else secret
        if value is not None:
            headers[SECRET_HEADER] = str(value)
        response = await post(self._http, target, content=raw, headers=headers)
        self.webhook_statuses.append(response.status_code)
        return response.status_code

    async def deliver(self, update: Mapping[str, Any], *, attempts: int = 10) -> int:
        """POST to the subscription until a 200 (Max counts anything else as a failure and
        re-sends); the update then leaves the polling queue. Returns the last status."""
        status = 0
        for _ in range(attempts):
            status = await self.post_webhook(update)
            if status == 200:
                self.updates = [(n, u) for n, u in self.updates if u != update]
                break
        return status


def _now() -> int:
    return int(time.time() * 1000)


def open_fake_max(
    token: str = DEFAULT_TOKEN, **kwargs: Any
) -> AbstractAsyncContextManager[FakeMaxServer]:
    """Run a :class:`FakeMaxServer` (keyword arguments as its constructor's) for the block."""
    return serving(FakeMaxServer(token, **kwargs))


def main(argv: list[str] | None = None) -> None:
    """``python -m gateway.testing.fake_max --port 0``: serve, print the api_base."""

    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--token", default=DEFAULT_TOKEN, help="the bot token it accepts")

    serve_standalone(
        "Run a fake Max Bot API on 127.0.0.1.",
        lambda args: FakeMaxServer(args.token, port=args.port),
        lambda server: server.api_base,
        argv,
        options=options,
    )


if __name__ == "__main__":
    main()
