"""The REST side of :mod:`gateway.testing.fake_twilio` (private: use ``FakeTwilioServer``).

Routes, statuses and error codes follow twilio.com/docs/messaging/api/message-resource and
twilio.com/docs/api/errors; see the public module's docstring for what is covered.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import email.utils
import functools
import itertools
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import trio

from gateway.testing._http import Answer as HttpAnswer
from gateway.testing._http import serve_requests

DEFAULT_ACCOUNT_SID = "AC" + "fa4e" * 8
DEFAULT_AUTH_TOKEN = "fake-twilio-auth-token-0123456789"
DEFAULT_NUMBER = "+15005550006"
API = "/2010-04-01/Accounts/"
_PHONE = re.compile(r"^\+?[1-9]\d{2,14}$")

Answer = tuple[int, list[tuple[str, str]], bytes]
ApiT = TypeVar("ApiT", bound="TwilioApi")


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def rfc2822(when: dt.datetime) -> str:
    return email.utils.format_datetime(when, usegmt=True)


@dataclasses.dataclass
class FakeMessage:
    """A Message resource: one the bot sent (``direction == "outbound-api"``), one a contact
    sent (``"inbound"``), or Twilio's own opt-out answer (``"outbound-reply"``)."""

    sid: str
    to: str
    from_: str
    body: str
    direction: str
    status: str
    created: dt.datetime
    media_urls: list[str] = dataclasses.field(default_factory=list)
    messaging_service_sid: str | None = None
    status_callback: str | None = None

    def resource(self, account_sid: str) -> dict[str, Any]:
        return {
            "account_sid": account_sid,
            "api_version": "2010-04-01",
            "body": self.body,
            "date_created": rfc2822(self.created),
            "date_sent": rfc2822(self.created),
            "date_updated": rfc2822(self.created),
            "direction": self.direction,
            "error_code": None,
            "error_message": None,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": str(len(self.media_urls)),
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {
                "media": f"{API}{account_sid}/Messages/{self.sid}/Media.json",
            },
            "to": self.to,
            "uri": f"{API}{account_sid}/Messages/{self.sid}.json",
        }


@dataclasses.dataclass
class _Fault:
    status: int
    code: int | None
    message: str
    retry_after: float | None
    mode: Literal["answer", "created", "disconnect", "hang"]


class _Disconnect(Exception):
    pass


class TwilioApi:
    """Twilio's REST API for one account: state and routes. ``FakeTwilioServer`` adds the
    webhooks."""

    def __init__(
        self,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        *,
        numbers: tuple[str, ...] = (DEFAULT_NUMBER,),
        messaging_service_sid: str | None = None,
        media_auth: bool = True,
        max_attempts: int = 10,
        cdn_host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.numbers = numbers
        self.messaging_service_sid = messaging_service_sid
        self.media_auth = media_auth
        self.max_attempts = max_attempts
        self.port = port
        self.cdn_host = cdn_host
        """Media redirects go to http://CDN_HOST:PORT/cdn/...: "localhost" makes it another
        origin than the API, as Twilio's CDN is."""
        self.messages: dict[str, FakeMessage] = {}
        self.sent: list[FakeMessage] = []
        self.auto_replies: list[FakeMessage] = []
        self.unsubscribed: set[tuple[str, str]] = set()
        """(our number, contact) pairs after a STOP, as Advanced Opt-Out keeps them."""
        self.webhook_log: list[tuple[str, int]] = []
        self.requests: list[tuple[str, str]] = []
        self.with_credentials: list[str] = []
        """Paths of the requests that carried an Authorization header."""
        self.sms_url: str | None = None
        self.voice_url: str | None = None
        self.voice_status_url: str | None = None
        self.download_failures = 0
        self._media: dict[str, tuple[str, bytes]] = {}
        self._cdn: dict[str, str] = {}
        self._recordings: dict[str, bytes] = {}
        self._faults: list[_Fault] = []
        self._proxy: tuple[str, str] | None = None
        self._changed = trio.Condition()
        self._http: httpx.AsyncClient | None = None
        self._clock = itertools.count()

    @property
    def api_base(self) -> str:
        """Give this to the channel as ``api_base``."""
        return f"http://127.0.0.1:{self.port}"

    async def serve(
        self: ApiT, *, task_status: trio.TaskStatus[ApiT] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on 127.0.0.1 until cancelled; ``task_status.started(self)`` once bound."""
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with httpx.AsyncClient(timeout=15.0) as http:
            self._http = http
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(
                        functools.partial(trio.serve_listeners, self._connection, listeners)
                    )
                    task_status.started(self)
            finally:
                self._http = None

    def fail_next(
        self,
        status: int = 500,
        *,
        code: int | None = None,
        message: str = "simulated failure",
        retry_after: float | None = None,
        mode: Literal["answer", "created", "disconnect", "hang"] = "answer",
        times: int = 1,
    ) -> None:
        """Make the next ``times`` message creations fail. ``mode``: "answer" refuses without
        creating; "created" creates the message and still answers ``status``; "disconnect"
        creates it and drops the connection; "hang" creates it and never answers."""
        fault = _Fault(status, code, message, retry_after, mode)
        self._faults.extend([fault] * times)

    def sent_to(self, number: str) -> list[FakeMessage]:
        return [m for m in self.sent if m.to == number]

    async def wait_sent(self, count: int) -> list[FakeMessage]:
        async with self._changed:
            while len(self.sent) < count:
                await self._changed.wait()
        return list(self.sent)

    # -- routes ---------------------------------------------------------------------------

    async def _connection(self, stream: trio.SocketStream) -> None:
        await serve_requests(stream, self._answer, max_event_size=16 * 1024)

    async def _answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> HttpAnswer | None:
        try:
            status, extra, payload = await self._route(method, target, headers, body)
        except _Disconnect:
            return None
        return status, list(extra), payload

    def _error(self, status: int, code: int, message: str) -> Answer:
        body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        return status, [("content-type", "application/json")], json.dumps(body).encode()

    def _authorised(self, headers: Mapping[str, str]) -> bool:
        pair = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return secrets.compare_digest(headers.get("authorization", ""), f"Basic {pair}")

    async def _route(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> Answer:
        url = urlsplit(target)
        path, query = url.path, {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.requests.append((method, path))
        if "authorization" in headers:
            self.with_credentials.append(path)
        if path.startswith("/cdn/") and path[5:] in self._cdn:
            return self._media_body(self._cdn[path[5:]])
        prefix = f"{API}{self.account_sid}"
        if not path.startswith(API):
            return self._error(404, 20404, "The requested resource was not found")
        media = re.fullmatch(rf"{prefix}/Messages/\w+/Media/(ME\w+)", path)
        if media and not self.media_auth and media.group(1) in self._media:
            return self._media_body(media.group(1))
        if not self._authorised(headers):
            return self._error(401, 20003, "Authenticate")
        if not path.startswith(prefix):
            return self._error(404, 20404, "The requested resource was not found")
        rest = path[len(prefix) :]
        if media and media.group(1) in self._media:
            token = secrets.token_urlsafe(16)
            self._cdn[token] = media.group(1)
            return 307, [("location", f"http://{self.cdn_host}:{self.port}/cdn/{token}")], b""
        if rest == ".json" and method == "GET":
            return self._json(200, self._account())
        if rest == "/Messages.json" and method == "POST":
            return await self._create(parse_qs(body.decode(), keep_blank_values=True))
        if rest == "/Messages.json" and method == "GET":
            return self._json(200, self._list(query))
        found = re.fullmatch(r"/Messages/(\w+)\.json", rest)
        if found and method == "GET" and found.group(1) in self.messages:
            return self._json(200, self.messages[found.group(1)].resource(self.account_sid))
        recording = re.fullmatch(r"/Recordings/(RE\w+?)(\.mp3|\.wav)?", rest)
        if recording and recording.group(1) in self._recordings:
            if self.download_failures:
                self.download_failures -= 1
                return self._error(500, 20500, "Internal Server Error")
            kind = "audio/mpeg" if recording.group(2) == ".mp3" else "audio/x-wav"
            return 200, [("content-type", kind)], self._recordings[recording.group(1)]
        return self._error(404, 20404, "The requested resource was not found")

    def _json(self, status: int, value: Any) -> Answer:
        return status, [("content-type", "application/json")], json.dumps(value).encode()

    def _media_body(self, media_sid: str) -> Answer:
        if self.download_failures:
            self.download_failures -= 1
            return self._error(500, 20500, "Internal Server Error")
        content_type, data = self._media[media_sid]
        return 200, [("content-type", content_type)], data

    def _account(self) -> dict[str, Any]:
        return {
            "sid": self.account_sid,
            "friendly_name": "Fake Twilio account",
            "status": "active",
            "type": "Full",
            "auth_token": "redacted",
            "uri": f"{API}{self.account_sid}.json",
        }

    async def _create(self, form: dict[str, list[str]]) -> Answer:
        def one(name: str) -> str:
            return form.get(name, [""])[0]

        to, sender, service, body = one("To"), one("From"), one("MessagingServiceSid"), one("Body")
        media = form.get("MediaUrl", [])
        if not to:
            return self._error(400, 21604, "A 'To' phone number is required.")
        if not sender and not service:
            return self._error(400, 21603, "A 'From' phone number is required.")
        if not _PHONE.fullmatch(to):
            return self._error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if service and service != self.messaging_service_sid:
            return self._error(400, 21705, "The Messaging Service Sid is invalid.")
        if sender and sender not in self.numbers:
            return self._error(
                400,
                21606,
                f"The From phone number {sender} is not a valid, SMS-capable inbound "
                "phone number or short code for your account.",
            )
        if not body and not media:
            return self._error(400, 21619, "A text message body or media urls must be specified.")
        if len(body.encode("utf-16-le")) // 2 > 1600:
            return self._error(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        sender = sender or self.numbers[0]
        if (sender, to) in self.unsubscribed:
            return self._error(400, 21610, "Attempt to send to unsubscribed recipient")
        fault = self._faults.pop(0) if self._faults else None
        if fault and fault.mode == "answer":
            return self._fault(fault)
        message = FakeMessage(
            new_sid("MM" if media else "SM"),
            to,
            sender,
            body,
            "outbound-api",
            "accepted" if service else "queued",
            # Distinct, increasing creation times: "newest first" stays well defined.
            dt.datetime.now(dt.UTC) + dt.timedelta(microseconds=next(self._clock)),
            media,
            service or None,
            one("StatusCallback") or None,
        )
        self.messages[message.sid] = message
        self.sent.append(message)
        async with self._changed:
            self._changed.notify_all()
        if fault and fault.mode == "disconnect":
            raise _Disconnect
        if fault and fault.mode == "hang":
            await trio.sleep_forever()
        if fault:
            return self._fault(fault)
        return self._json(201, message.resource(self.account_sid))

    def _fault(self, fault: _Fault) -> Answer:
        status, headers, body = self._error(fault.status, fault.code or fault.status, fault.message)
        if fault.retry_after is not None:
            headers.append(("retry-after", f"{fault.retry_after:g}"))
        return status, headers, body

    def _list(self, query: Mapping[str, str]) -> dict[str, Any]:
        def day(message: FakeMessage) -> str:
            return message.created.date().isoformat()

        found = sorted(self.messages.values(), key=lambda m: m.created, reverse=True)
        if "To" in query:
            found = [m for m in found if m.to == query["To"]]
        if "From" in query:
            found = [m for m in found if m.from_ == query["From"]]
        if "DateSent" in query:
            found = [m for m in found if day(m) == query["DateSent"]]
        if "DateSent<" in query:  # on or before that day
            found = [m for m in found if day(m) <= query["DateSent<"]]
        if "DateSent>" in query:  # on or after that day
            found = [m for m in found if day(m) >= query["DateSent>"]]
        size = min(int(query.get("PageSize", "50")), 1000)
        uri = f"{API}{self.account_sid}/Messages.json"
        return {
            "messages": [m.resource(self.account_sid) for m in found[:size]],
            "end": min(size, len(found)) - 1,
            "first_page_uri": f"{uri}?PageSize={size}&Page=0",
            "next_page_uri": None,
            "page": 0,
            "page_size": size,
            "previous_page_uri": None,
            "start": 0,
            "uri": f"{uri}?PageSize={size}&Page=0",
        }
