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
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import quart
import trio
from werkzeug.exceptions import HTTPException

from gateway.secretref import Secret

__all__ = [
    "DEFAULT_MAX_BODY",
    "META_SIGNATURE_HEADER",
    "WebhookRefused",
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


def plain(status: int, text: str) -> quart.Response:
    return quart.Response(text, status=status, content_type="text/plain; charset=utf-8")


def refusal(exc: WebhookRefused) -> quart.Response:
    response = plain(exc.status, exc.reason)
    if exc.close:
        # The body was not read: a kept-alive connection would hang on its unread rest.
        response.headers["Connection"] = "close"
    return response


async def read_body(
    request: quart.Request,
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
    request: quart.Request,
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
    request: quart.Request, app_secret: Secret | str | bytes | None
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


async def drain_body(request: quart.Request) -> bool:
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
