"""RFC 9457 problem details: every refusal of the developer API is one of these.

``type`` is a relative URI into /api/v1/problems (an HTML page listing every type below, so a
developer who follows it reads what went wrong and what to do); ``title`` is the type's short
name, ``detail`` says what was wrong with this request and the fix, ``errors`` lists each
offending field: ``{"field": "text", "problem": "missing: give the message text"}``. A field in
the body is named as is (``text``), a header as ``header:Idempotency-Key``, a query parameter as
``query:limit``.
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Mapping
from typing import Any

MEDIA_TYPE = "application/problem+json"
BASE = "/api/v1/problems"


@dataclasses.dataclass(frozen=True)
class ProblemType:
    status: int
    title: str
    about: str
    """For the problems page: when it happens and what to do."""


TYPES: dict[str, ProblemType] = {
    "invalid-request": ProblemType(
        400,
        "Invalid request",
        "A field, header or query parameter is missing or malformed; "
        "errors[] names each one and says what it must be.",
    ),
    "unauthorized": ProblemType(
        401,
        "Missing or invalid API key",
        "Send Authorization: Bearer <key> with a key "
        "created by `gateway api keys create` that was not revoked.",
    ),
    "forbidden-scope": ProblemType(
        403,
        "Key lacks a scope",
        "The key is valid but not allowed this operation; create a "
        "key with the scope named in detail.",
    ),
    "origin-not-allowed": ProblemType(
        403,
        "Origin not allowed",
        "A form was posted from a page whose origin is not in the form's allowed_origins.",
    ),
    "not-found": ProblemType(
        404,
        "Not found",
        "No such endpoint, form, subscriber, notification, code or privacy request for this "
        "project.",
    ),
    "method-not-allowed": ProblemType(
        405, "Method not allowed", "The endpoint exists; the Allow header lists its methods."
    ),
    "opted-out": ProblemType(
        409,
        "Subscriber opted out",
        "The end user sent STOP (or another opt-out word): no "
        "notification may go to them until they send START.",
    ),
    "idempotency-in-progress": ProblemType(
        409,
        "Request in progress",
        "Another request with this Idempotency-Key is still being "
        "handled; retry after a moment to get its answer.",
    ),
    "otp-used": ProblemType(
        409, "Code already used", "This code was verified once already; send a new one."
    ),
    "otp-expired": ProblemType(410, "Code expired", "The code's time ran out; send a new one."),
    "otp-superseded": ProblemType(
        410, "Code replaced", "A newer code was sent to this subscriber; only the newest works."
    ),
    "otp-locked": ProblemType(
        410, "Too many wrong codes", "The attempt limit was reached; send a new code."
    ),
    "payload-too-large": ProblemType(
        413, "Body too large", "The request body is over the limit given in detail."
    ),
    "unsupported-media-type": ProblemType(
        415, "Unsupported content type", "Send the Content-Type named in detail."
    ),
    "idempotency-key-reused": ProblemType(
        422,
        "Idempotency-Key reused",
        "The key was used before for a different request; use a new key for a new request.",
    ),
    "otp-mismatch": ProblemType(
        422, "Wrong code", "The code does not match; attempts_left says how many tries remain."
    ),
    "validation-failed": ProblemType(
        422,
        "Form data refused",
        "A form field is missing, too long or not allowed (e.g. a "
        "throwaway email address); errors[] names each one.",
    ),
    "rate-limited": ProblemType(
        429, "Too many requests", "Wait the number of seconds in Retry-After, then retry."
    ),
    "unavailable": ProblemType(
        503,
        "Temporarily unavailable",
        "The gateway cannot store the request right now (e.g. "
        "its disk is full); retry after Retry-After seconds. Nothing was done.",
    ),
    "internal": ProblemType(
        500,
        "Internal error",
        "A bug in the gateway; the request may not have been handled. "
        "The operator's log has the details.",
    ),
}


class Problem(Exception):
    """Raise anywhere in a request: the blueprint turns it into the problem+json response."""

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.type = TYPES[kind]
        self.status = self.type.status
        self.detail = detail
        self.errors = errors or []
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"{BASE}#{self.kind}",
            "title": self.type.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body

    def json(self, instance: str | None = None) -> str:
        # ASCII escapes: a field name echoed from the request may hold a lone surrogate.
        return json.dumps(self.body(instance))


def invalid(errors: list[dict[str, str]], status_kind: str = "invalid-request") -> Problem:
    """One problem for several field errors; detail repeats the first so a log line says it."""
    first = errors[0]
    more = f" (and {len(errors) - 1} more in errors)" if len(errors) > 1 else ""
    return Problem(status_kind, f"{first['field']}: {first['problem']}{more}", errors=errors)


def problems_page() -> str:
    """The page ``type`` URIs point into: one anchored section per problem type."""
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8><title>API problem types</title>",
        "<h1>Developer API problem types</h1>",
    ]
    for kind, t in TYPES.items():
        parts.append(
            f'<h2 id="{kind}">{t.status} {html.escape(t.title)}</h2><p>{html.escape(t.about)}</p>'
        )
    return "\n".join(parts) + "\n"
