"""Request plumbing of the developer API (gateway.http.api): key checks, body and field
parsing, Idempotency-Key handling, client addresses. Every refusal is a Problem."""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import quart

from gateway.devapi import idempotency
from gateway.devapi.config import api_config, parse_rate
from gateway.devapi.keys import (
    ApiKey,
    key_by_prefix_txn,
    key_matches,
    key_prefix,
    server_key,
    touch_key_txn,
)
from gateway.devapi.problems import MEDIA_TYPE, Problem, invalid
from gateway.devapi.state import retry_after, state_of
from gateway.privacy import audit
from gateway.services import Services
from gateway.webhooks import WebhookRefused, read_body

JSON_LIMIT = 16 * 1024
TOUCH_EVERY = 60.0
_IDEMPOTENCY = re.compile(r'^"?([\x21\x23-\x7e]{1,255})"?$')
_BEARER = 'Bearer realm="gateway-api"'
_DIGITS = re.compile(r"[0-9]{1,18}")


def encodable(text: str) -> bool:
    """False for text JSON allows but UTF-8 cannot store (lone surrogates such as "\\ud800")."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> quart.Response:
    text = body if isinstance(body, str) else json.dumps(body)
    return quart.Response(
        text, status=status, content_type="application/json", headers=headers or {}
    )


def problem_response(problem: Problem, instance: str | None = None) -> quart.Response:
    return quart.Response(
        problem.json(instance),
        status=problem.status,
        content_type=MEDIA_TYPE,
        headers=problem.headers,
    )


class Fields:
    """Checks a JSON object's members, collecting ``{field, problem}`` errors."""

    def __init__(self, data: dict[str, Any], allowed: tuple[str, ...]) -> None:
        self.data = data
        self.errors: list[dict[str, str]] = []
        for name in data:
            if name not in allowed:
                self.errors.append(
                    {
                        "field": name[:64],
                        "problem": f"unknown member; allowed: {', '.join(allowed)}",
                    }
                )

    def text(
        self,
        name: str,
        *,
        required: bool = False,
        max_length: int = 256,
        pattern: re.Pattern[str] | None = None,
        shape: str = "",
    ) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                self.errors.append({"field": name, "problem": f"missing: give {shape or 'text'}"})
            return None
        if not isinstance(value, str):
            self.errors.append({"field": name, "problem": f"must be a string ({shape or 'text'})"})
            return None
        if not value.strip():
            self.errors.append({"field": name, "problem": "must not be empty"})
            return None
        if not encodable(value):
            self.errors.append(
                {"field": name, "problem": "must be valid Unicode (a lone surrogate?)"}
            )
            return None
        if len(value) > max_length:
            self.errors.append(
                {"field": name, "problem": f"{len(value)} characters; at most {max_length}"}
            )
            return None
        if pattern is not None and not pattern.match(value):
            self.errors.append({"field": name, "problem": f"must be {shape}"})
            return None
        return value

    def integer(self, name: str, *, low: int, high: int) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.errors.append(
                {"field": name, "problem": f"must be a whole number from {low} to {high}"}
            )
            return None
        return value

    def check(self) -> None:
        if self.errors:
            raise invalid(self.errors)


def page_args(request: quart.Request, max_page: int) -> tuple[int, int]:
    """(after id, limit) from ``?cursor=`` and ``?limit=``."""
    errors = []
    unknown = sorted(set(request.args) - {"cursor", "limit"})
    for name in unknown:
        errors.append({"field": f"query:{name[:64]}", "problem": "unknown; use cursor and limit"})
    limit_text = request.args.get("limit", "50")
    # [0-9], not str.isdigit(): that accepts "²", which int() refuses.
    limit = int(limit_text) if _DIGITS.fullmatch(limit_text) else 0
    if not 1 <= limit <= max_page:
        errors.append({"field": "query:limit", "problem": f"must be a number from 1 to {max_page}"})
    cursor = request.args.get("cursor", "0")
    after = int(cursor) if _DIGITS.fullmatch(cursor) else -1
    if after < 0:
        errors.append(
            {"field": "query:cursor", "problem": "must be the next_cursor of the previous page"}
        )
    if errors:
        raise invalid(errors)
    return after, limit


async def read_json(request: quart.Request, limit: int = JSON_LIMIT) -> dict[str, Any]:
    try:
        body = await read_body(request, content_types=("application/json",), limit=limit)
    except WebhookRefused as exc:
        if exc.status == 413:
            raise Problem("payload-too-large", f"the body is over {limit} bytes") from None
        raise Problem(
            "unsupported-media-type",
            f"{exc.reason}: send the body as JSON with Content-Type: application/json",
            errors=[{"field": "header:Content-Type", "problem": "must be application/json"}],
        ) from None
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise invalid(
            [{"field": "body", "problem": f"not valid JSON ({str(exc)[:80]}); send an object"}]
        ) from None
    if not isinstance(value, dict):
        raise invalid([{"field": "body", "problem": "must be a JSON object ({...})"}])
    return value


def idempotency_key(request: quart.Request) -> str:
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        raise invalid(
            [
                {
                    "field": "header:Idempotency-Key",
                    "problem": "missing: send a new unique value (e.g. a UUID) with each request, "
                    "and the same one when you retry it",
                }
            ]
        )
    match = _IDEMPOTENCY.match(raw.strip())
    if match is None:
        raise invalid(
            [
                {
                    "field": "header:Idempotency-Key",
                    "problem": "must be 1-255 visible ASCII characters (a UUID is ideal)",
                }
            ]
        )
    return match.group(1)


async def _audit(services: Services, **entry: Any) -> None:
    await services.store.write("audit api access", lambda db: audit.append_txn(db, **entry))


async def authenticate(services: Services, request: quart.Request, scope: str) -> ApiKey:
    """The request's key, if valid, within its rate and holding ``scope``; else a Problem."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    challenge = {"WWW-Authenticate": _BEARER}
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(
            "unauthorized",
            "send the project's API key as Authorization: Bearer <key> (keys come from "
            "`gateway api keys create PROJECT`)",
            headers=challenge,
        )
    token = token.strip()
    prefix = key_prefix(token)
    if prefix is None:
        raise Problem(
            "unauthorized",
            "that is not a gateway API key (they look like sgw_xxxxxxxx_ and 43 more characters)",
            headers=challenge,
        )
    state = state_of(services)
    record = await services.store.read("api key", key_by_prefix_txn, prefix)
    if not state.secret:
        state.secret = await services.store.read("api key secret", lambda db: server_key(db.conn))
    if record is None or not key_matches(record, state.secret, token):
        if record is not None:
            await _audit(
                services,
                actor=f"api:{prefix}",
                action="api.auth.failed",
                target=f"project:{record.project}",
                outcome="denied",
                detail={"reason": "wrong secret"},
            )
        raise Problem(
            "unauthorized", "unknown API key: check it was copied whole", headers=challenge
        )
    if record.revoked_at is not None:
        await _audit(
            services,
            actor=f"api:{prefix}",
            action="api.auth.failed",
            target=f"project:{record.project}",
            outcome="denied",
            detail={"reason": "revoked"},
        )
        raise Problem(
            "unauthorized",
            f"key {prefix} was revoked at {record.revoked_at}; use a current key",
            headers=challenge,
        )
    rate = parse_rate(record.rate or api_config(services.config).default_rate)
    wait = state.keys.take(record.id, rate)
    if wait > 0:
        raise Problem(
            "rate-limited",
            f"key {prefix} may make {rate} requests; wait Retry-After seconds",
            headers={"Retry-After": retry_after(wait)},
        )
    if scope not in record.scopes:
        await _audit(
            services,
            actor=f"api:{prefix}",
            action="permission.denied",
            target=f"project:{record.project}",
            outcome="denied",
            detail={"scope": scope, "path": request.path[:200]},
        )
        raise Problem(
            "forbidden-scope",
            f"key {prefix} lacks the {scope!r} scope (it has {', '.join(record.scopes)}); create "
            f"a key with `gateway api keys create {record.project} --scopes {scope},...`",
        )
    moment = time.monotonic()
    if moment - state.touched.get(record.id, -TOUCH_EVERY) >= TOUCH_EVERY:
        state.touched[record.id] = moment
        await services.store.write("api key used", touch_key_txn, record.id)
    return record


async def idempotent(
    services: Services,
    key: ApiKey,
    idem: str,
    request: quart.Request,
    body: dict[str, Any],
    work: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
) -> quart.Response:
    """Run ``work`` once per Idempotency-Key (see gateway.devapi.idempotency)."""
    digest = idempotency.request_hash(request.method, request.path, body)
    outcome = await services.store.write(
        "idempotency key", idempotency.reserve_txn, key.project_id, idem, digest
    )
    if isinstance(outcome, idempotency.Replay):
        return quart.Response(
            outcome.body,
            status=outcome.status,
            content_type=MEDIA_TYPE if outcome.status >= 400 else "application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    if isinstance(outcome, idempotency.Conflict):
        if outcome.in_progress:
            raise Problem(
                "idempotency-in-progress",
                "a request with this Idempotency-Key is still being handled; retry in a moment",
                headers={"Retry-After": "1"},
            )
        raise Problem(
            "idempotency-key-reused",
            "this Idempotency-Key was used for a different request; use a new key for a new "
            "request (the same key only to retry the same request)",
            errors=[{"field": "header:Idempotency-Key", "problem": "already used"}],
        )
    try:
        status, answer = await work()
    except Problem as problem:
        if problem.status >= 500 or problem.kind == "rate-limited":
            await services.store.write(
                "idempotency release", idempotency.release_txn, key.project_id, idem
            )
        else:
            await services.store.write(
                "idempotency answer",
                idempotency.finish_txn,
                key.project_id,
                idem,
                problem.status,
                problem.json(),
            )
        raise
    except Exception:
        await services.store.write(
            "idempotency release", idempotency.release_txn, key.project_id, idem
        )
        raise
    text = json.dumps(answer)
    await services.store.write(
        "idempotency answer", idempotency.finish_txn, key.project_id, idem, status, text
    )
    return json_response(status, text)


def client_address(request: quart.Request, trusted: list[str]) -> str:
    """The client's address: the peer, or the nearest untrusted X-Forwarded-For hop when the
    peer is one of ``[api] trusted_proxies``."""
    peer = request.remote_addr or "unknown"
    if peer not in trusted:
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed header: trust nothing in it
        if hop not in trusted:
            return hop
    return peer
