"""PUBLIC: what every webhook route of a channel plugin needs, done once.

- :func:`read_body` reads a request body up to a limit (413 past it, also for chunked bodies
  that declare no length) and checks its content type (415);
- :func:`parse_json_object` gives a JSON object or a 400;
- :func:`verify_hub_signature` checks Meta's ``X-Hub-Signature-256`` (WhatsApp, Messenger,
  Instagram) and :func:`verify_twilio_signature` Twilio's ``X-Twilio-Signature``. Both compare
  in constant time, **fail closed** (no secret configured: every request is refused) and never
  put the expected value in an error;
- :func:`meta_handshake` answers Meta's subscription GET and :func:`read_meta_notification`
  reads a signed Meta POST, the two halves every Meta webhook (WhatsApp, Messenger, Instagram)
  shares.

Each raises :class:`WebhookRefused` with an HTTP status and a short reason safe to send back;
:func:`refusal` turns it into a plain-text response. A route that catches it logs the reason
(never the body) and returns the response: the platform sees a clear 4xx, nothing is stored.

Thin webhook routes
-------------------
A channel's webhook can skip Quart: its ``webhooks()`` method returns :class:`WebhookRoute`
values, and the public app serves those paths itself (``gateway.http.public``), handing the
handler a :class:`WebhookRequest` built straight from the ASGI scope. Quart's request and
routing machinery costs ~0.3 ms of CPU per request, a webhook's whole budget on a busy bind. A
:class:`WebhookRequest` reads like ``quart.request`` for everything above (``headers.get``,
``mimetype``, ``content_length``, ``args``, ``async for chunk in request.body``), so the same
helpers serve both kinds of route; a handler returns an ordinary ``quart.Response`` (``plain``,
``refusal``). Pages and websockets stay on ``blueprint()``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import quart
import trio
from werkzeug.exceptions import HTTPException

from gateway.secretref import Secret

__all__ = [
    "DEFAULT_MAX_BODY",
    "META_SIGNATURE_HEADER",
    "WebhookHandler",
    "WebhookRefused",
    "WebhookRequest",
    "WebhookRoute",
    "meta_handshake",
    "parse_json_object",
    "plain",
    "read_body",
    "read_meta_notification",
    "refusal",
    "twilio_signature",
    "verify_hub_signature",
    "verify_subscription",
    "verify_twilio_signature",
]

META_SIGNATURE_HEADER = "X-Hub-Signature-256"
"""Where Meta puts ``sha256=<hex HMAC of the body with the app secret>``."""
DEFAULT_MAX_BODY = 1 << 20
"""1 MiB: far above any platform's event batch, far below a memory problem."""
DRAIN_LIMIT = 8 << 20
"""Up to 8 MiB of an oversized body is read and dropped (keeping the connection); beyond, the
connection is closed."""


class WebhookRefused(Exception):
    """A webhook request that must not be processed; ``status`` is the 4xx to answer."""

    def __init__(self, status: int, reason: str, *, close: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.close = close
        """The request body was not read to its end: the connection must not be reused."""


class ClientGone(Exception):
    """The client closed the connection before its request body ended (thin routes)."""


class _Headers(dict[str, str]):
    """Request headers by lower-cased name; ``get`` ignores case, as werkzeug's does. A name
    sent twice keeps its first value (werkzeug's ``Headers.get`` gives the first too)."""

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        super().__init__()
        for name, value in raw:
            self.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


class _Body:
    """The request body as ``async for chunk in request.body``, read from ASGI ``receive`` as
    the loop asks for it. Iterating again after a partial read goes on where it stopped (the
    public app drains what a handler left); after the end it yields nothing."""

    def __init__(self, receive: Callable[[], Awaitable[Any]]) -> None:
        self._receive = receive
        self.complete = False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        while not self.complete:
            event = await self._receive()
            if event["type"] == "http.disconnect":
                self.complete = True
                raise ClientGone()
            self.complete = not event.get("more_body", False)
            chunk: bytes = event.get("body", b"")
            if chunk:
                return chunk
        raise StopAsyncIteration


class WebhookRequest:
    """One request to a thin webhook route: what a handler may read, nothing else.

    ``method`` (upper case), ``path``, ``query_string`` (raw bytes), ``headers`` (``get`` in any
    case), ``args`` (the query's first value per name), ``mimetype`` (lower case, no
    parameters), ``content_length`` (int or None) and ``body``, read as
    ``async for chunk in request.body`` (use :func:`read_body`: it enforces the size limit).
    """

    __slots__ = ("method", "path", "query_string", "headers", "body", "_args")

    def __init__(self, scope: Mapping[str, Any], receive: Callable[[], Awaitable[Any]]) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query_string: bytes = scope.get("query_string", b"")
        self.headers = _Headers(scope.get("headers", ()))
        self.body = _Body(receive)
        self._args: dict[str, str] | None = None

    @property
    def args(self) -> Mapping[str, str]:
        if self._args is None:
            self._args = {}
            query = self.query_string.decode("utf-8", "replace")
            for name, value in parse_qsl(query, keep_blank_values=True):
                self._args.setdefault(name, value)
        return self._args

    @property
    def mimetype(self) -> str:
        return str(self.headers.get("content-type", "")).partition(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None


WebhookHandler = Callable[[WebhookRequest], Awaitable[quart.Response]]


@dataclass(frozen=True)
class WebhookRoute:
    """A path the public app serves without Quart: ``handler`` answers ``methods`` on exactly
    ``path`` (no converters, no trailing-slash redirect). Another method on the path gets a 405
    naming the allowed ones; HEAD is answered by the GET handler, without the body.

    The app reads nothing before the handler runs; whatever body the handler leaves unread is
    drained afterwards (or the connection closed), security headers are added, and an exception
    from the handler is logged and answered with a 500 (the platform retries; nothing was
    acknowledged)."""

    path: str
    methods: tuple[str, ...]
    handler: WebhookHandler


def plain(status: int, text: str) -> quart.Response:
    return quart.Response(text, status=status, content_type="text/plain; charset=utf-8")


def refusal(exc: WebhookRefused) -> quart.Response:
    response = plain(exc.status, exc.reason)
    if exc.close:
        # The body was not read: a kept-alive connection would hang on its unread rest.
        response.headers["Connection"] = "close"
    return response


async def read_body(
    request: quart.Request | WebhookRequest,
    *,
    content_types: Iterable[str] = ("application/json",),
    limit: int = DEFAULT_MAX_BODY,
) -> bytes:
    """The raw body (signatures are over the exact bytes), or WebhookRefused 415/413.

    A body somewhat over the limit is read to its end and dropped before the 413, so the
    client's keep-alive connection stays usable; past ``DRAIN_LIMIT`` the connection is closed
    instead (``refusal`` adds ``Connection: close``)."""
    wanted = tuple(content_types)
    given = (request.mimetype or "").lower()
    if wanted and given not in wanted:
        raise WebhookRefused(
            415, f"content type {given or 'missing'!r} not accepted; send {' or '.join(wanted)}"
        )
    declared = request.content_length or 0
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.body:
        size += len(chunk)
        if size > DRAIN_LIMIT or declared > DRAIN_LIMIT:
            raise WebhookRefused(413, f"body larger than {limit} bytes", close=True)
        if size <= limit:
            chunks.append(chunk)
    if size > limit or declared > limit:
        raise WebhookRefused(413, f"body larger than {limit} bytes")
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRefused(400, "body is not valid JSON") from None
    if not isinstance(value, dict):
        raise WebhookRefused(400, "body is not a JSON object")
    return value


def _reveal(secret: Secret | str | bytes | None) -> bytes | None:
    if secret is None:
        return None
    if isinstance(secret, Secret):
        secret = secret.reveal()
    value = secret.encode() if isinstance(secret, str) else secret
    return value or None


def verify_hub_signature(
    secret: Secret | str | bytes | None, body: bytes, header: str | None
) -> None:
    """Meta's ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body, app secret>``."""
    key = _reveal(secret)
    if key is None:
        raise WebhookRefused(403, "signature cannot be checked: no app secret is configured")
    if not header:
        raise WebhookRefused(401, "missing X-Hub-Signature-256 header")
    scheme, _, given = header.partition("=")
    if scheme.strip().lower() != "sha256" or not given:
        raise WebhookRefused(401, "X-Hub-Signature-256 is not of the form sha256=<hex>")
    expected = hmac.new(key, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
        raise WebhookRefused(403, "signature does not match")


def verify_subscription(args: Mapping[str, str], verify_token: Secret | str | None) -> str:
    """Meta's webhook handshake (``GET ?hub.mode=subscribe&hub.verify_token=..&hub.challenge=..``):
    returns the challenge to echo with 200, or raises WebhookRefused 403/400."""
    expected = _reveal(verify_token)
    if args.get("hub.mode") != "subscribe":
        raise WebhookRefused(400, "hub.mode must be 'subscribe'")
    challenge = args.get("hub.challenge")
    if not challenge:
        raise WebhookRefused(400, "missing hub.challenge")
    given = (args.get("hub.verify_token") or "").encode()
    if expected is None or not hmac.compare_digest(given, expected):
        raise WebhookRefused(403, "verify token does not match")
    return challenge


def meta_handshake(
    request: quart.Request | WebhookRequest,
    verify_token: Secret | str | None,
    log: logging.Logger,
    label: str,
) -> quart.Response:
    """Answer Meta's webhook handshake (the GET of :func:`verify_subscription`) on ``request``.

    200 with the challenge when ``verify_token`` matches, else the 400/403 of :func:`refusal`.
    Both outcomes are logged to ``log`` with ``label`` (which channel) in front; the tokens
    never are. A channel's GET route returns what this returns.
    """
    try:
        challenge = verify_subscription(request.args, verify_token)
    except WebhookRefused as exc:
        log.warning("%s webhook handshake refused (%d): %s", label, exc.status, exc.reason)
        return refusal(exc)
    log.info("%s webhook handshake answered: Meta subscribed the URL", label)
    return plain(200, challenge)


async def read_meta_notification(
    request: quart.Request | WebhookRequest, app_secret: Secret | str | bytes | None
) -> dict[str, Any]:
    """The JSON object a Meta webhook POST carries: the body read with :func:`read_body`, its
    :data:`META_SIGNATURE_HEADER` checked against ``app_secret`` (:func:`verify_hub_signature`,
    fail closed), then parsed with :func:`parse_json_object`.

    Raises :class:`WebhookRefused` (413/415/403/400); the caller answers with :func:`refusal`.
    """
    body = await read_body(request)
    verify_hub_signature(app_secret, body, request.headers.get(META_SIGNATURE_HEADER))
    return parse_json_object(body)


def twilio_signature(token: bytes, url: str, params: Mapping[str, list[str]]) -> str:
    """Twilio's scheme: base64(HMAC-SHA1(auth token, URL + each name+value, names sorted
    case-sensitively, a repeated name's distinct values sorted too, as Twilio's own validator
    does))."""
    data = url + "".join(
        name + value for name in sorted(params) for value in sorted(set(params[name]))
    )
    return base64.b64encode(hmac.new(token, data.encode(), hashlib.sha1).digest()).decode()


def _port_variants(url: str) -> list[str]:
    """The URL as configured, with and without the scheme's default port: Twilio signs the
    URL as it called it, and proxies differ in whether the port survives."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    variants = [url]
    if parts.port is None and default is not None:
        variants.append(urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}")))
    elif parts.port == default:
        netloc = parts.netloc.rsplit(":", 1)[0] if host else parts.netloc
        variants.append(urlunsplit(parts._replace(netloc=netloc)))
    return variants


def verify_twilio_signature(
    token: Secret | str | bytes | None,
    url: str,
    params: Mapping[str, list[str]],
    header: str | None,
) -> None:
    """Check ``X-Twilio-Signature`` for a form POST to ``url`` (the exact public URL Twilio was
    given, query string included)."""
    key = _reveal(token)
    if key is None:
        raise WebhookRefused(403, "signature cannot be checked: no auth token is configured")
    if not header:
        raise WebhookRefused(401, "missing X-Twilio-Signature header")
    given = header.strip().encode()
    if not any(
        hmac.compare_digest(twilio_signature(key, candidate, params).encode(), given)
        for candidate in _port_variants(url)
    ):
        raise WebhookRefused(403, "signature does not match")


LEFTOVER_LIMIT = 1 << 20
"""Most bytes of an unread request body read after the response was decided (else: close)."""
LEFTOVER_SECONDS = 5.0


async def drain_body(request: quart.Request | WebhookRequest) -> bool:
    """Read what is left of a request body after the response was decided. A refusal sent
    before the body arrived (a 401, Quart's own 404/405) leaves it unread, and hypercorn (0.18,
    h11) then neither reuses nor closes the connection: the client's next request on it hangs
    (schemathesis found it on /api/v1). Returns False when the rest is too large or too slow:
    answer with ``Connection: close`` instead."""
    size = 0
    with trio.move_on_after(LEFTOVER_SECONDS):
        try:
            async for chunk in request.body:
                size += len(chunk)
                if size > LEFTOVER_LIMIT:
                    return False
        except HTTPException:  # over MAX_CONTENT_LENGTH
            return False
        return True
    return False
