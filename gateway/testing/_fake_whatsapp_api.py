"""The Graph API half of :class:`~gateway.testing.fake_whatsapp.FakeWhatsAppServer`: the
routes a bot calls, Meta's error documents, and the h11 plumbing. Private: use the public
module. A bare trio + h11 loop, like the other fakes, so it never bottlenecks a benchmark."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import trio

from gateway.testing._http import Answer, json_answer, parse_multipart, serve_requests

WINDOW_SECONDS = 24 * 3600

# Titles and details of the errors the fake produces (Meta's Cloud API error reference).
ERRORS: dict[int, tuple[str, str]] = {
    100: ("Invalid parameter", "The request included an unsupported or misspelled parameter."),
    190: ("Invalid OAuth access token - Cannot parse access token", "The access token is invalid."),
    130429: ("Rate limit hit", "Message failed to send because there were too many messages sent from this phone number in a short period of time."),
    131000: ("Something went wrong", "Message failed to send due to an unknown error."),
    131026: ("Message undeliverable", "Unable to deliver message. The recipient may not be a WhatsApp user."),
    131047: ("Re-engagement message", "Message failed to send because more than 24 hours have passed since the customer last replied to this number."),
    131053: ("Media upload error", "Unable to find the uploaded media with the given id."),
    131056: ("(Business Account, Consumer Account) pair rate limit hit", "Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time."),
    132000: ("Number of parameters does not match the expected number of params", "The template's body variables and the parameters given differ."),
    132001: ("Template name does not exist in the translation", "The template does not exist in that language."),
}  # fmt: skip
MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")


@dataclasses.dataclass(frozen=True)
class SentMessage:
    """One message the bot sent (a recorded ``POST /messages``)."""

    to: str
    type: str
    text: str
    """What the user reads: the text body, a media caption, or the rendered template."""
    message_id: str
    payload: Mapping[str, Any]
    media: bytes | None = None
    """The uploaded file of a media message sent by id."""

    @property
    def reply_to(self) -> str | None:
        context = self.payload.get("context")
        return context.get("message_id") if isinstance(context, Mapping) else None


@dataclasses.dataclass
class _Fault:
    after: int
    status: int
    code: int | None
    details: str | None
    retry_after: str | None
    disconnect: bool


class _ApiError(Exception):
    def __init__(
        self, status: int, code: int, details: str | None = None, retry_after: str | None = None
    ) -> None:
        super().__init__(code)
        self.status, self.code, self.details = status, code, details
        self.retry_after = retry_after


class _Disconnect(Exception):
    """Drop the connection without answering."""


class GraphApi:
    """Serves the Cloud API routes from the state tests inspect and script."""

    def __init__(
        self,
        *,
        access_token: str,
        phone_number_id: str,
        templates: Mapping[tuple[str, str], str] | None,
        enforce_window: bool,
        port: int,
    ) -> None:
        self.access_token = access_token
        self.phone_number_id = phone_number_id
        self.templates: dict[tuple[str, str], str] = {("hello_world", "en_US"): "Hello World"}
        """(name, language) -> body, ``{{1}}``... marking variables; add your own."""
        self.templates.update(templates or {})
        self.enforce_window = enforce_window
        self.port = port
        self.sent: list[SentMessage] = []
        self.uploads: dict[str, tuple[bytes, str]] = {}
        """Media ids -> (bytes, MIME type): uploads by the bot and files users sent."""
        self.requests: list[tuple[str, str]] = []
        self.last_inbound: dict[str, float] = {}
        """wa_id -> when the user last wrote (``clock`` seconds), for the 24-hour window."""
        self.clock: Callable[[], float] = time.time
        self.media_base: str | None = None
        """Where media download URLs point (default: this server, like ``api_base``)."""
        self._ids = itertools.count(1)
        self._faults: dict[str, list[_Fault]] = {}
        self._changed = trio.Event()

    @property
    def api_base(self) -> str:
        """Give this as ``api_base`` in place of ``https://graph.facebook.com``."""
        return f"http://127.0.0.1:{self.port}"

    async def wait_sent(self, count: int) -> list[SentMessage]:
        while len(self.sent) < count:
            await self._changed.wait()
        return list(self.sent)

    def sent_to(self, wa_id: str) -> list[SentMessage]:
        return [m for m in self.sent if m.to == wa_id]

    def fail_next(
        self,
        endpoint: str,
        *,
        status: int = 400,
        code: int | None = None,
        details: str | None = None,
        retry_after: float | None = None,
        disconnect: bool = False,
        times: int = 1,
        after: int = 0,
    ) -> None:
        """Fail ``times`` calls of ``endpoint`` after letting ``after`` more succeed:
        "messages", "media" (upload), "media_info" (GET /{media-id}), "download" or
        "phone_number". ``code`` is the Graph error code (default by ``status``: 429 -> 130429,
        401 -> 190, else 131000). ``disconnect`` drops the connection instead of answering; for
        "messages" the message is recorded first (it reached WhatsApp, the answer was lost)."""
        wait = None if retry_after is None else f"{retry_after:g}"
        faults = self._faults.setdefault(endpoint, [])
        faults += [_Fault(after, status, code, details, wait, disconnect)]
        faults += [_Fault(0, status, code, details, wait, disconnect)] * (times - 1)

    # -- serving ---------------------------------------------------------------------------

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        await serve_requests(stream, self._answer)

    async def _answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Answer | None:
        try:
            status, out, extra = await self._route(method, target, headers, body)
        except _Disconnect:
            return None
        except _ApiError as exc:
            status, out = exc.status, _error_body(exc.code, exc.details)
            extra = {"retry-after": exc.retry_after} if exc.retry_after else {}
        return json_answer(status, out, extra)

    async def _route(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        url = urlsplit(target)
        self.requests.append((method, url.path))
        if headers.get("authorization") != f"Bearer {self.access_token}":
            raise _ApiError(401, 190)
        media = re.fullmatch(r"/_media/(\w+)", url.path)
        if media and method == "GET":
            self._fault("download")
            if media.group(1) not in self.uploads:
                raise _ApiError(404, 100, "no such media")
            data, mime = self.uploads[media.group(1)]
            return 200, data, {"content-type": mime}
        match = re.fullmatch(r"/v\d+\.\d+/(\w+)(?:/(messages|media))?", url.path)
        if match is None:
            raise _ApiError(404, 100, f"unknown path {url.path}")
        node, edge = match.groups()
        if edge and node != self.phone_number_id:
            raise _ApiError(400, 100, f"Object with ID '{node}' does not exist")
        if (method, edge) == ("POST", "messages"):
            fault = self._fault("messages", record=True)
            result = self._send(_json(body))
            if fault is not None:  # reached WhatsApp, then the connection broke
                raise _Disconnect
            return 200, result, {}
        if (method, edge) == ("POST", "media"):
            self._fault("media")
            return 200, self._upload(headers.get("content-type", ""), body), {}
        if method == "GET" and edge is None and node == self.phone_number_id:
            self._fault("phone_number")
            return 200, self._phone_number(dict(parse_qsl(url.query))), {}
        if method == "GET" and edge is None and node in self.uploads:
            self._fault("media_info")
            data, mime = self.uploads[node]
            return 200, self._media_info(node, data, mime), {}
        raise _ApiError(400, 100, f"Unsupported {method} request for {node}")

    def _fault(self, endpoint: str, *, record: bool = False) -> _Fault | None:
        """Play a scripted fault; returns a disconnect fault to apply after recording."""
        faults = self._faults.get(endpoint)
        if not faults:
            return None
        if faults[0].after:
            faults[0].after -= 1
            return None
        fault = faults.pop(0)
        if fault.disconnect:
            if record:
                return fault
            raise _Disconnect
        code = fault.code or {429: 130429, 401: 190}.get(fault.status, 131000)
        raise _ApiError(fault.status, code, fault.details, fault.retry_after)

    def _send(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("messaging_product") != "whatsapp":
            raise _ApiError(400, 100, "messaging_product must be 'whatsapp'")
        to = str(body.get("to", "")).lstrip("+")
        kind = body.get("type", "text")
        if not to.isdigit():
            raise _ApiError(400, 100, "'to' must be a phone number")
        content = body.get(kind)
        if not isinstance(content, dict):
            raise _ApiError(400, 100, f"missing the {kind!r} object")
        media = None
        if kind == "text":
            text = content.get("body")
            if not isinstance(text, str) or not text.strip() or len(text) > 4096:
                raise _ApiError(400, 100, "text.body must be 1-4096 characters")
        elif kind in MEDIA_KINDS:
            if ("id" in content) == ("link" in content):
                raise _ApiError(400, 100, "give exactly one of id and link")
            if "id" in content:
                if content["id"] not in self.uploads:
                    raise _ApiError(400, 131053)
                media = self.uploads[content["id"]][0]
            text = str(content.get("caption", ""))
        elif kind == "template":
            text = self._render(content)
        else:
            raise _ApiError(400, 100, f"message type {kind!r} is not supported by this fake")
        if kind != "template" and self.enforce_window:
            if self.clock() - self.last_inbound.get(to, float("-inf")) >= WINDOW_SECONDS:
                raise _ApiError(400, 131047)
        sent = SentMessage(to, kind, text, f"wamid.FAKEOUT{next(self._ids):010d}", body, media)
        self.sent.append(sent)
        self._changed.set()
        self._changed = trio.Event()
        return {
            "messaging_product": "whatsapp",
            "contacts": [{"input": body["to"], "wa_id": to}],
            "messages": [{"id": sent.message_id}],
        }

    def _render(self, template: dict[str, Any]) -> str:
        language = template.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        body = self.templates.get((str(template.get("name")), str(code)))
        if body is None:
            raise _ApiError(404, 132001)
        params: list[str] = []
        for component in template.get("components") or []:
            if isinstance(component, dict) and component.get("type") == "body":
                params += [str(p.get("text")) for p in component.get("parameters") or []]
        wanted = len(set(re.findall(r"\{\{(\d+)\}\}", body)))
        if wanted != len(params) or any(("\n" in p or "\t" in p) for p in params):
            raise _ApiError(400, 132000)
        return re.sub(r"\{\{(\d+)\}\}", lambda m: params[int(m.group(1)) - 1], body)

    def _upload(self, content_type: str, body: bytes) -> dict[str, Any]:
        message = parse_multipart(content_type, body)
        if not message.is_multipart():
            raise _ApiError(400, 100, "upload must be multipart/form-data")
        fields: dict[str, tuple[bytes, str]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                fields[name] = (payload, part.get_content_type())
        if fields.get("messaging_product", (b"",))[0] != b"whatsapp" or "file" not in fields:
            raise _ApiError(400, 100, "needs messaging_product=whatsapp and a file")
        mime = fields["type"][0].decode() if "type" in fields else fields["file"][1]
        media_id = str(8_000_000_000 + next(self._ids))
        self.uploads[media_id] = (fields["file"][0], mime)
        return {"id": media_id}

    def _media_info(self, media_id: str, data: bytes, mime: str) -> dict[str, Any]:
        return {
            "messaging_product": "whatsapp",
            "url": f"{self.media_base or self.api_base}/_media/{media_id}",
            "mime_type": mime,
            "sha256": hashlib.sha256(data).hexdigest(),
            "file_size": len(data),
            "id": media_id,
        }

    def _phone_number(self, query: dict[str, str]) -> dict[str, Any]:
        info = {"verified_name": "Fake Gateway Shop", "display_phone_number": "+1 555-078-3881"}
        info.update(quality_rating="GREEN", id=self.phone_number_id)
        wanted = query.get("fields", ",".join(info)).split(",")
        return {k: v for k, v in info.items() if k in wanted or k == "id"}


def _error_body(code: int, details: str | None) -> dict[str, Any]:
    title, default = ERRORS.get(code, ("Error", "Simulated failure."))
    return {
        "error": {
            "message": f"(#{code}) {title}",
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details or default},
            "fbtrace_id": "AFakeTraceId0123",
        }
    }


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        raise _ApiError(400, 100, "request body is not JSON") from None
    if not isinstance(value, dict):
        raise _ApiError(400, 100, "request body must be a JSON object")
    return value
