"""PUBLIC: a fake Meta Graph API on 127.0.0.1 for the Messenger and Instagram Send API, and a
webhook sender that behaves like Meta's.

Graph side (``api_base = server.api_base``), after https://developers.facebook.com/docs/messenger-platform:

- ``POST /vNN.N/{page-id | ig-id | me}/messages``: JSON, or multipart form fields plus
  ``filedata``; the token as ``Authorization: Bearer`` or ``access_token``; an
  ``appsecret_proof`` when given must be HMAC-SHA256(app secret, token). It enforces what Meta
  enforces: ``messaging_type`` required; RESPONSE/UPDATE only within 24 hours of the user's last
  message, MESSAGE_TAG + HUMAN_AGENT within 7 days, else error 10/2018278; a user who never
  wrote is 100/2018001; text over 2,000 characters (Instagram 1,000) is error 100. Answers
  ``{"recipient_id", "message_id"}``; errors are ``{"error": {"message", "type", "code",
  "error_subcode", "fbtrace_id"}}``.
- ``GET /vNN.N/{node}?fields=...``: the Page (id, name) or the Instagram account (id/user_id,
  username) the token belongs to; 190 for a bad token.
- ``GET /media/N``: bytes registered with :meth:`FakeGraphServer.add_media` (attachment URLs).

Webhook side: :meth:`~FakeGraphServer.user_message`, :meth:`~FakeGraphServer.postback`,
:meth:`~FakeGraphServer.delivery`, :meth:`~FakeGraphServer.read`... build bodies in Meta's
published format (``object`` "page" / "instagram", ``entry[].messaging[]``, millisecond
timestamps); :meth:`~FakeGraphServer.deliver` POSTs one signed with ``X-Hub-Signature-256`` to
the subscribed URL and re-sends it until it gets a 2xx, as Meta does.

::

    async with open_fake_graph() as graph:
        graph.webhook_urls["messenger"] = f"{base}/webhooks/fb"
        await graph.deliver(graph.user_message("2400000001", "hello"))
        (reply,) = await graph.wait_sent(1)

or standalone: ``python -m gateway.testing.fake_graph --port 0`` prints the base URL.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import httpx
import trio

from gateway.testing._graph_http import (
    Disconnect,
    GraphError,
    body_params,
    error_body,
    object_param,
    recorded_attachment,
    send_bytes,
    serve_connection,
)
from gateway.testing._http import send_json, serve_standalone, serving
from gateway.testing._posting import post

__all__ = ["FakeGraphServer", "SentMessage", "open_fake_graph", "sign"]

log = logging.getLogger(__name__)

PAGE_ID = "104000000000001"
INSTAGRAM_ID = "17841400000000001"
PAGE_TOKEN = "EAAFakePageToken0001"
INSTAGRAM_TOKEN = "IGQFakeInstagramToken0001"
APP_SECRET = "fake-app-secret-0001"
_DAY_MS = 24 * 3600 * 1000
_TEXT_LIMITS = {"messenger": 2000, "instagram": 1000}


def sign(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends: ``sha256=`` + hex HMAC of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclasses.dataclass(frozen=True)
class SentMessage:
    """One Send API call the fake accepted."""

    platform: str
    account: str
    recipient_id: str
    message_id: str
    messaging_type: str
    tag: str | None
    text: str | None
    attachment: Mapping[str, Any] | None
    """``{"type", "url"}`` for a URL attachment, ``{"type", "data", "mime_type", "filename"}``
    for an uploaded one."""
    timestamp: int


@dataclasses.dataclass
class _Fault:
    status: int
    code: int | None
    subcode: int | None
    message: str
    headers: dict[str, str]
    disconnect: bool
    hang: bool


class FakeGraphServer:
    """One Meta app with a Page (Messenger) and an Instagram account. Start it with
    ``await nursery.start(server.serve)``. Readable state: ``sent``, ``webhook_urls``
    (platform -> URL), ``webhook_statuses`` (every status a webhook POST got), ``requests``."""

    def __init__(
        self,
        *,
        page_id: str = PAGE_ID,
        page_token: str = PAGE_TOKEN,
        instagram_id: str = INSTAGRAM_ID,
        instagram_token: str = INSTAGRAM_TOKEN,
        app_secret: str = APP_SECRET,
        port: int = 0,
    ) -> None:
        self.page_id, self.page_token = page_id, page_token
        self.instagram_id, self.instagram_token = instagram_id, instagram_token
        self.app_secret = app_secret
        self.port = port
        self.sent: list[SentMessage] = []
        self.requests: list[tuple[str, str]] = []
        self.webhook_urls: dict[str, str] = {}
        self.webhook_statuses: list[int] = []
        self.now_ms: Callable[[], int] = lambda: int(time.time() * 1000)
        """The fake's clock (ms); a test may move it to open or close the 24-hour window."""
        self.last_wrote: dict[tuple[str, str], int] = {}
        """(platform, user id) -> when the user last wrote, in ms."""
        self._faults: list[_Fault] = []
        self._media: dict[str, tuple[bytes, str, bool]] = {}
        self._ids = itertools.count(1)
        self._changed = trio.Event()
        self._http: httpx.AsyncClient | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def account(self, platform: str) -> str:
        return self.page_id if platform == "messenger" else self.instagram_id

    async def serve(
        self, *, task_status: trio.TaskStatus[FakeGraphServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with httpx.AsyncClient() as http:
            self._http = http
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(
                        functools.partial(
                            trio.serve_listeners,
                            functools.partial(serve_connection, handler=self._answer),
                            listeners,
                        )
                    )
                    task_status.started(self)
            finally:
                self._http = None

    # -- test-facing: the Graph side ---------------------------------------------------------

    def fail_next(
        self,
        *,
        status: int = 400,
        code: int | None = 2,
        subcode: int | None = None,
        message: str = "An unexpected error has occurred. Please retry your request later.",
        headers: Mapping[str, str] | None = None,
        disconnect: bool = False,
        hang: bool = False,
        times: int = 1,
    ) -> None:
        """Fail the next ``times`` Send API calls with a Graph error. ``disconnect`` (close
        without answering) and ``hang`` (never answer) record the message first: it reached
        Meta, only the answer is lost."""
        fault = _Fault(status, code, subcode, message, dict(headers or {}), disconnect, hang)
        self._faults.extend([fault] * times)

    def add_media(self, data: bytes, content_type: str, *, declare_length: bool = True) -> str:
        """Serve ``data`` at a new URL (as Meta's CDN serves attachments); with
        ``declare_length=False`` it comes chunked, without a Content-Length."""
        key = str(next(self._ids))
        self._media[key] = (data, content_type, declare_length)
        return f"{self.api_base}/media/{key}"

    def user_wrote(
        self, user_id: str, *, platform: str = "messenger", at_ms: int | None = None
    ) -> None:
        """Record that the user wrote (opens the 24-hour window) without a webhook."""
        self.last_wrote[(platform, user_id)] = self.now_ms() if at_ms is None else at_ms

    def sent_to(self, user_id: str) -> list[SentMessage]:
        return [m for m in self.sent if m.recipient_id == user_id]

    async def wait_sent(self, count: int) -> list[SentMessage]:
        while len(self.sent) < count:
            await self._changed.wait()
        return list(self.sent)

    # -- test-facing: webhooks ----------------------------------------------------------------

    def webhook_body(self, platform: str, events: list[dict[str, Any]]) -> dict[str, Any]:
        """``{"object", "entry": [{"id", "time", "messaging": events}]}`` for the account."""
        obj = "page" if platform == "messenger" else "instagram"
        entry = {"id": self.account(platform), "time": self.now_ms(), "messaging": events}
        return {"object": obj, "entry": [entry]}

    def event(
        self, platform: str, user_id: str, payload: dict[str, Any], *, echo: bool = False
    ) -> dict[str, Any]:
        """One ``messaging[]`` event from the user (to the user when ``echo``)."""
        ends = [{"id": user_id}, {"id": self.account(platform)}]
        if echo:
            ends.reverse()
        return {"sender": ends[0], "recipient": ends[1], "timestamp": self.now_ms(), **payload}

    def user_message(
        self,
        user_id: str,
        text: str | None = None,
        *,
        platform: str = "messenger",
        attachments: list[dict[str, Any]] | None = None,
        mid: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A webhook body for a user's message (opens the 24-hour window). ``attachments`` are
        ``{"type": "image", "payload": {"url": ...}}``; ``fields`` go into ``message`` as they
        are (``quick_reply``, ``reply_to``, ``is_deleted``, ``is_unsupported``...)."""
        message: dict[str, Any] = {"mid": mid or self._mid(platform)}
        if text is not None:
            message["text"] = text
        if attachments:
            message["attachments"] = attachments
        message.update(fields)
        self.user_wrote(user_id, platform=platform)
        return self.webhook_body(platform, [self.event(platform, user_id, {"message": message})])

    def postback(
        self,
        user_id: str,
        payload: str,
        title: str,
        *,
        platform: str = "messenger",
        mid: str | None = None,
    ) -> dict[str, Any]:
        postback = {"title": title, "payload": payload, "mid": mid or self._mid(platform)}
        self.user_wrote(user_id, platform=platform)
        return self.webhook_body(platform, [self.event(platform, user_id, {"postback": postback})])

    def echo(self, user_id: str, text: str, *, platform: str = "messenger") -> dict[str, Any]:
        message = {
            "mid": self._mid(platform),
            "is_echo": True,
            "text": text,
            "app_id": 1517776481860111,
        }
        return self.webhook_body(
            platform, [self.event(platform, user_id, {"message": message}, echo=True)]
        )

    def delivery(
        self, user_id: str, mids: list[str] | None = None, *, watermark: int | None = None
    ) -> dict[str, Any]:
        """Messenger's message_deliveries: ``mids`` (may be absent) and a ``watermark`` (ms)."""
        delivery: dict[str, Any] = {"watermark": self.now_ms() if watermark is None else watermark}
        if mids is not None:
            delivery["mids"] = mids
        return self.webhook_body(
            "messenger", [self.event("messenger", user_id, {"delivery": delivery})]
        )

    def read(
        self,
        user_id: str,
        *,
        platform: str = "messenger",
        watermark: int | None = None,
        mid: str | None = None,
    ) -> dict[str, Any]:
        """Messenger's message_reads (``watermark``) or Instagram's messaging_seen (``mid``)."""
        if platform == "messenger":
            read: dict[str, Any] = {"watermark": self.now_ms() if watermark is None else watermark}
        else:
            read = {"mid": mid or (self.sent_to(user_id)[-1].message_id)}
        return self.webhook_body(platform, [self.event(platform, user_id, {"read": read})])

    def reaction(self, user_id: str, mid: str, *, platform: str = "messenger") -> dict[str, Any]:
        reaction = {"mid": mid, "action": "react", "reaction": "love", "emoji": "\u2764\ufe0f"}
        return self.webhook_body(platform, [self.event(platform, user_id, {"reaction": reaction})])

    async def post_webhook(
        self,
        url: str,
        body: Mapping[str, Any] | bytes,
        *,
        signature: str | None = "auto",
        secret: str | None = None,
        content_type: str = "application/json",
    ) -> int:
        """POST ``body`` to ``url``: signed with the app secret (or ``secret``) unless
        ``signature`` is given (None: no header). Returns the HTTP status."""
        if self._http is None:
            raise RuntimeError("FakeGraphServer.post_webhook needs the server running (serve)")
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": content_type}
        if signature == "auto":
            signature = sign(secret or self.app_secret, raw)
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        response = await post(self._http, url, content=raw, headers=headers)
        self.webhook_statuses.append(response.status_code)
        return response.status_code

    async def deliver(self, body: Mapping[str, Any], *, attempts: int = 10) -> list[int]:
        """POST ``body`` signed to the webhook its ``object`` is subscribed at, again after every
        non-2xx answer (Meta retries until it gets one); the statuses, in order."""
        platform = "messenger" if body.get("object") == "page" else "instagram"
        url = self.webhook_urls.get(platform)
        if url is None:
            raise RuntimeError(f"no webhook URL for {platform}: set webhook_urls or subscribe()")
        statuses = []
        for _ in range(attempts):
            statuses.append(await self.post_webhook(url, body))
            if 200 <= statuses[-1] < 300:
                break
        return statuses

    async def subscribe(self, platform: str, url: str, verify_token: str) -> bool:
        """Meta's subscription handshake: GET with hub.* parameters; the URL is kept if it
        echoes the challenge."""
        assert self._http is not None, "serve() first"
        challenge = secrets.token_hex(8)
        params = {
            "hub.mode": "subscribe",
            "hub.verify_token": verify_token,
            "hub.challenge": challenge,
        }
        response = await self._http.get(url, params=params)
        if response.status_code == 200 and response.text == challenge:
            self.webhook_urls[platform] = url
            return True
        return False

    # -- the HTTP server ----------------------------------------------------------------------

    def _mid(self, platform: str) -> str:
        n = next(self._ids)
        return f"m_FAKE{n:08d}" if platform == "messenger" else f"aWdfFAKE{n:08d}"

    async def _answer(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        request: h11.Request,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        target = urlsplit(request.target.decode("latin-1"))
        method = request.method.decode()
        self.requests.append((method, target.path))
        media = re.fullmatch(r"/media/(\d+)", target.path)
        if media and method == "GET":
            data, content_type, declare = self._media.get(media.group(1), (None, "", True))
            await send_bytes(stream, conn, data, content_type, declare_length=declare)
            return
        try:
            params = dict(parse_qsl(target.query))
            params.update(body_params(headers.get("content-type", ""), body))
            status, payload = await self._graph(method, target.path, headers, params)
        except GraphError as exc:
            status, payload = exc.status, error_body(exc.code, exc.message, exc.subcode)
        extra = [(k.encode(), v.encode()) for k, v in payload.pop("_headers", {}).items()]
        await send_json(stream, conn, status, payload, extra)

    async def _graph(
        self, method: str, path: str, headers: dict[str, str], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        match = re.fullmatch(r"/(v\d+\.\d+)/([^/]+)(/messages)?", path)
        if match is None:
            raise GraphError(400, 2500, f"Unknown path components: {path}")
        node, edge = match.group(2), match.group(3)
        token = params.get("access_token") or headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        platform = {self.page_token: "messenger", self.instagram_token: "instagram"}.get(token)
        if platform is None:
            raise GraphError(400, 190, "Invalid OAuth access token - Cannot parse access token")
        proof = params.get("appsecret_proof")
        expected = hmac.new(self.app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
        if proof is not None and not hmac.compare_digest(str(proof), expected):
            raise GraphError(400, 100, "Invalid appsecret_proof provided in the API argument")
        # The Page token also reads the Instagram account linked to the Page.
        own = {"me", self.instagram_id} | ({self.page_id} if platform == "messenger" else set())
        if node not in own:
            raise GraphError(
                400,
                100,
                f"Unsupported request - object with ID '{node}' does not exist or lacks permission",
                33,
            )
        if method == "GET" and edge is None:
            return 200, self._account_fields(platform, node, str(params.get("fields", "id")))
        if method == "POST" and edge:
            return await self._send(platform, node, params)
        raise GraphError(400, 100, "Unsupported method")

    def _account_fields(self, platform: str, node: str, fields: str) -> dict[str, Any]:
        if node == self.page_id or (node == "me" and platform == "messenger"):
            known = {"id": self.page_id, "name": "Fake Bakery"}
        elif node == "me":
            known = {
                "id": "2600000000000001",
                "user_id": self.instagram_id,
                "username": "fake_bakery",
            }
        else:
            known = {"id": self.instagram_id, "username": "fake_bakery"}
        wanted = [f.strip() for f in fields.split(",")]
        return {k: v for k, v in known.items() if k in wanted or k == "id"}

    async def _send(
        self, token_platform: str, node: str, params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        recipient = object_param(params, "recipient")
        message = object_param(params, "message")
        user = str(recipient.get("id", ""))
        platform = token_platform
        if node == self.page_id and ("instagram", user) in self.last_wrote:
            platform = "instagram"  # Instagram messaging through the linked Page
        kind = params.get("messaging_type")
        if kind not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
            raise GraphError(400, 100, "(#100) The parameter messaging_type is required")
        wrote = self.last_wrote.get((platform, user))
        if wrote is None:
            raise GraphError(400, 100, "(#100) No matching user found", 2018001)
        tag = params.get("tag")
        age = self.now_ms() - wrote
        allowed = (
            age <= _DAY_MS
            if kind != "MESSAGE_TAG"
            else (tag == "HUMAN_AGENT" and age <= 7 * _DAY_MS)
        )
        if not allowed:
            raise GraphError(
                400, 10, "(#10) This message is sent outside of allowed window.", 2018278
            )
        text = message.get("text")
        attachment = message.get("attachment")
        if (text is None) == (attachment is None):
            raise GraphError(400, 100, "(#100) Must send either message text or an attachment")
        if text is not None and (not isinstance(text, str) or len(text) > _TEXT_LIMITS[platform]):
            raise GraphError(
                400,
                100,
                f"(#100) Length of param message[text] must be less than or equal to {_TEXT_LIMITS[platform]}",
            )
        recorded = recorded_attachment(attachment, params.get("filedata"))
        sent = SentMessage(
            platform,
            self.account(platform),
            user,
            self._mid(platform),
            str(kind),
            str(tag) if tag else None,
            text,
            recorded,
            self.now_ms(),
        )
        if self._faults:
            fault = self._faults.pop(0)
            if fault.disconnect or fault.hang:
                self._record(sent)
                if fault.hang:
                    await trio.sleep_forever()
                raise Disconnect
            payload = error_body(fault.code, fault.message, fault.subcode)
            payload["_headers"] = fault.headers
            return fault.status, payload
        self._record(sent)
        return 200, {"recipient_id": user, "message_id": sent.message_id}

    def _record(self, sent: SentMessage) -> None:
        self.sent.append(sent)
        self._changed.set()
        self._changed = trio.Event()


def open_fake_graph(**kwargs: Any) -> AbstractAsyncContextManager[FakeGraphServer]:
    """Run a :class:`FakeGraphServer` for the duration of the block."""
    return serving(FakeGraphServer(**kwargs))


def main(argv: list[str] | None = None) -> None:
    serve_standalone(
        "Run a fake Meta Graph API on 127.0.0.1.",
        lambda args: FakeGraphServer(port=args.port),
        lambda server: server.api_base,
        argv,
    )


if __name__ == "__main__":
    main()
