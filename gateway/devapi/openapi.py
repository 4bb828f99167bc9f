"""The OpenAPI 3.1 document of /api/v1, served at /api/v1/openapi.json.

Kept true by tests/api/test_openapi.py (every route of the blueprint is documented and every
documented operation exists; every example validates against its schema) and by schemathesis
(tests/api/test_fuzz.py: responses match the documented statuses, types and schemas).
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from gateway import __version__
from gateway.devapi.keys import SCOPES
from gateway.devapi.openapi_schemas import SCHEMAS, ref

SUB = "sub_AbCdEfGhIjKlMnOp"
PROBLEM = "application/problem+json"


def _problem_example(status: int, kind: str, title: str, detail: str, **extra: Any) -> Any:
    body = {"type": f"/api/v1/problems#{kind}", "title": title, "status": status, "detail": detail}
    body.update(extra)
    return body


_RESPONSES: dict[str, dict[str, Any]] = {
    "400": {
        "description": "A field, header or query parameter is missing or malformed.",
        "example": _problem_example(
            400,
            "invalid-request",
            "Invalid request",
            "text: missing: give the message text",
            errors=[{"field": "text", "problem": "missing: give the message text"}],
        ),
    },
    "401": {
        "description": "No key, an unknown key, or a revoked key.",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
        "example": _problem_example(
            401, "unauthorized", "Missing or invalid API key", "unknown API key"
        ),
    },
    "403": {
        "description": "The key lacks the operation's scope (or, for forms, the origin is not "
        "allowed).",
        "example": _problem_example(
            403, "forbidden-scope", "Key lacks a scope", "key sgw_k3m9x2pq lacks the 'otp' scope"
        ),
    },
    "404": {
        "description": "No such subscriber, notification, code, privacy request or form in this "
        "project.",
        "example": _problem_example(
            404,
            "not-found",
            "Not found",
            f"subscriber {SUB} is not a subscriber of project acme",
            errors=[{"field": "subscriber", "problem": "not a subscriber of project acme"}],
        ),
    },
    "409": {
        "description": "The subscriber opted out (STOP), the code was used, or a request with "
        "this Idempotency-Key is still running.",
        "example": _problem_example(
            409, "opted-out", "Subscriber opted out", f"subscriber {SUB} opted out"
        ),
    },
    "410": {
        "description": "The code expired, was replaced by a newer one, or is locked after too "
        "many wrong attempts.",
        "example": _problem_example(410, "otp-expired", "Code expired", "the code expired"),
    },
    "413": {
        "description": "The body is too large.",
        "example": _problem_example(
            413, "payload-too-large", "Body too large", "the body is over 16384 bytes"
        ),
    },
    "415": {
        "description": "Wrong Content-Type.",
        "example": _problem_example(
            415,
            "unsupported-media-type",
            "Unsupported content type",
            "send the body as JSON with Content-Type: application/json",
        ),
    },
    "422": {
        "description": "Understood but refused: an Idempotency-Key reused for another request, "
        "a wrong code, or form data that breaks the form's rules.",
        "example": _problem_example(
            422,
            "otp-mismatch",
            "Wrong code",
            "the code does not match; 4 attempt(s) left",
            errors=[{"field": "code", "problem": "does not match the code that was sent"}],
            attempts_left=4,
        ),
    },
    "429": {
        "description": "Too many requests (the key's rate, a form's rate, or code throttling).",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait.",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
                "required": True,
            }
        },
        "example": _problem_example(
            429, "rate-limited", "Too many requests", "wait Retry-After seconds"
        ),
    },
    "503": {
        "description": "The gateway cannot store anything right now; retry later.",
        "example": _problem_example(
            503, "unavailable", "Temporarily unavailable", "the database cannot commit"
        ),
    },
}


def _errors(*codes: str) -> dict[str, Any]:
    out = {}
    for code in codes:
        spec = _RESPONSES[code]
        response: dict[str, Any] = {
            "description": spec["description"],
            "content": {PROBLEM: {"schema": ref("Problem"), "example": spec["example"]}},
        }
        if "headers" in spec:
            response["headers"] = spec["headers"]
        out[code] = response
    return out


def _ok(description: str, schema: str, example: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": ref(schema), "example": example}},
    }


def _body(schema: str, example: Any) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": ref(schema), "example": example}},
    }


_SECURED: list[dict[str, list[str]]] = [{"apiKey": []}]
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "A new unique value per request (a UUID); the same value to retry it. A "
    "repeat with the same body gets the first answer (Idempotent-Replayed: true); with another "
    "body, 422. Kept for [api] idempotency_hours.",
    "schema": {"type": "string", "pattern": '^"?[\\x21\\x23-\\x7e]{1,255}"?$'},
    "example": "9f1c2a4e-0b6d-4c55-9a0e-2f7d8e1b3c44",
}
_PAGE = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "Items per page (at most [api] max_page, default 100).",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
    },
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": "The previous page's next_cursor.",
        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
    },
]
_FORM_PARAM = {
    "name": "form",
    "in": "path",
    "required": True,
    "description": "The form's name: NAME in [api.forms.NAME].",
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
    "example": "contact",
}
_ORIGIN = {
    "name": "Origin",
    "in": "header",
    "required": True,
    "description": "Sent by the browser: must be one of the form's allowed_origins.",
    "schema": {"type": "string"},
    "example": "https://www.acme.example",
}


_NOTIFICATION_EXAMPLE = {"subscriber": SUB, "text": "Your order 1042 has shipped."}
_PRIVACY_EXAMPLE = {
    "id": 42,
    "kind": "erasure",
    "status": "received",
    "verification": "unverified",
    "subscriber": SUB,
    "received_at": "2025-05-01T10:00:00.000000+00:00",
    "closed_at": None,
    "due": {"gdpr": "2025-06-01", "fz152": "2025-05-20"},
}
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": {"schema": {"type": "string"}, "required": True},
}

PATHS: dict[str, Any] = {
    "/api/v1/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document.",
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    },
    "/api/v1/problems": {
        "get": {
            "operationId": "problems",
            "summary": "What each problem type means (the type URIs point here).",
            "responses": {
                "200": {
                    "description": "An HTML page.",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/api/v1/notifications": {
        "post": {
            "operationId": "sendNotification",
            "summary": "Send a message to a subscriber (scope notify).",
            "description": "Queued to the subscriber's channel and sent at most once. Refused "
            "(409) if they opted out of all messages; 404 if they are not subscribed.",
            "security": _SECURED,
            "parameters": [_IDEMPOTENCY],
            "requestBody": _body("NotificationRequest", _NOTIFICATION_EXAMPLE),
            "responses": {
                "202": _ok(
                    "Queued.",
                    "NotificationAccepted",
                    {
                        "id": "ntf_Q2xZpL0aBcDeFgHi",
                        "status": "queued",
                        "subscriber": SUB,
                        "channel": "support_bot",
                    },
                ),
                **_errors("400", "401", "403", "404", "409", "413", "415", "422", "429", "503"),
            },
        }
    },
    "/api/v1/notifications/{id}": {
        "get": {
            "operationId": "getNotification",
            "summary": "Where a notification is: queued, sent, delivered, read, failed (scope "
            "notify).",
            "security": _SECURED,
            "parameters": [
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^ntf_[A-Za-z0-9_-]{16}$"},
                }
            ],
            "responses": {
                "200": _ok(
                    "The notification.",
                    "NotificationStatus",
                    {
                        "id": "ntf_Q2xZpL0aBcDeFgHi",
                        "subscriber": SUB,
                        "status": "delivered",
                        "created_at": "2025-05-01T10:00:00.000000+00:00",
                        "sent_at": "2025-05-01T10:00:00.200000+00:00",
                    },
                ),
                **_errors("400", "401", "403", "404", "429", "503"),
            },
        }
    },
    "/api/v1/otp": {
        "post": {
            "operationId": "sendCode",
            "summary": "Send a one-time code to a subscriber (scope otp).",
            "description": "The gateway makes the code, sends it in the subscriber's chat and "
            "keeps only a hash. A newer code replaces older ones. Throttled per subscriber "
            "(429 with Retry-After).",
            "security": _SECURED,
            "parameters": [_IDEMPOTENCY],
            "requestBody": _body("OtpRequest", {"subscriber": SUB}),
            "responses": {
                "201": _ok(
                    "Sent.",
                    "OtpCreated",
                    {
                        "id": "otp_Zx8yW7vU6tS5rQ4p",
                        "subscriber": SUB,
                        "expires_at": "2025-05-01T10:05:00.000000+00:00",
                        "length": 6,
                    },
                ),
                **_errors("400", "401", "403", "404", "409", "413", "415", "422", "429", "503"),
            },
        }
    },
    "/api/v1/otp/verify": {
        "post": {
            "operationId": "verifyCode",
            "summary": "Check a code the user typed (scope otp). Each code verifies once.",
            "security": _SECURED,
            "requestBody": _body(
                "OtpVerifyRequest", {"id": "otp_Zx8yW7vU6tS5rQ4p", "code": "493027"}
            ),
            "responses": {
                "200": _ok(
                    "The code is right.",
                    "OtpVerified",
                    {"id": "otp_Zx8yW7vU6tS5rQ4p", "verified": True, "subscriber": SUB},
                ),
                **_errors(
                    "400", "401", "403", "404", "409", "410", "413", "415", "422", "429", "503"
                ),
            },
        }
    },
    "/api/v1/privacy-requests": {
        "post": {
            "operationId": "createPrivacyRequest",
            "summary": "Pass on a subscriber's data-subject request (scope privacy).",
            "description": "Registered with both deadline clocks (GDPR one month, 152-FZ ten "
            "working days), unverified: an operator checks who asked, then carries it out.",
            "security": _SECURED,
            "parameters": [_IDEMPOTENCY],
            "requestBody": _body("PrivacyRequestCreate", {"subscriber": SUB, "kind": "erasure"}),
            "responses": {
                "201": _ok("Registered.", "PrivacyRequest", _PRIVACY_EXAMPLE),
                **_errors("400", "401", "403", "404", "409", "413", "415", "422", "429", "503"),
            },
        }
    },
    "/api/v1/privacy-requests/{id}": {
        "get": {
            "operationId": "getPrivacyRequest",
            "summary": "A privacy request's status and clocks (scope privacy; this project's).",
            "security": _SECURED,
            "parameters": [
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
                }
            ],
            "responses": {
                "200": _ok("The request.", "PrivacyRequest", _PRIVACY_EXAMPLE),
                **_errors("400", "401", "403", "404", "429", "503"),
            },
        }
    },
    "/api/v1/subscribers": {
        "get": {
            "operationId": "listSubscribers",
            "summary": "The project's subscribers, oldest first (scope subscribers).",
            "security": _SECURED,
            "parameters": _PAGE,
            "responses": {
                "200": _ok(
                    "A page.",
                    "SubscriberPage",
                    {
                        "data": [
                            {
                                "id": SUB,
                                "channel": "support_bot",
                                "external_id": "***89",
                                "subscribed_at": "2025-05-01T09:00:00.000000+00:00",
                            }
                        ],
                        "next_cursor": None,
                    },
                ),
                **_errors("400", "401", "403", "429", "503"),
            },
        }
    },
    "/api/v1/forms/{form}": {
        "post": {
            "operationId": "submitForm",
            "summary": "A submission from a page of one of the form's allowed origins (no key).",
            "description": "JSON or an HTML form post (urlencoded). A filled-in honeypot is "
            "answered like a success and dropped.",
            "parameters": [_FORM_PARAM, _ORIGIN],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": ref("FormData"),
                        "example": {"name": "Ann", "email": "ann@example.com"},
                    },
                    "application/x-www-form-urlencoded": {"schema": ref("FormData")},
                },
            },
            "responses": {
                "200": {
                    **_ok("Received.", "FormReceived", {"status": "received"}),
                    "headers": _CORS_HEADERS,
                },
                "303": {
                    "description": "Received; the browser goes to the form's redirect_to.",
                    "headers": {"Location": {"schema": {"type": "string"}, "required": True}},
                },
                **_errors("400", "403", "404", "413", "415", "422", "429", "503"),
            },
        },
        "options": {
            "operationId": "formPreflight",
            "summary": "CORS preflight for the form.",
            "parameters": [
                _FORM_PARAM,
                _ORIGIN,
                {
                    "name": "Access-Control-Request-Method",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "enum": ["POST"]},
                    "example": "POST",
                },
            ],
            "responses": {
                "204": {"description": "Allowed.", "headers": _CORS_HEADERS},
                **_errors("400", "403", "404"),
            },
        },
    },
    "/api/v1/forms/{form}/submissions": {
        "get": {
            "operationId": "listSubmissions",
            "summary": "A form's submissions, oldest first (scope forms; the form's project).",
            "security": _SECURED,
            "parameters": [_FORM_PARAM, *_PAGE],
            "responses": {
                "200": _ok(
                    "A page.",
                    "SubmissionPage",
                    {
                        "data": [
                            {
                                "id": 1,
                                "data": {"email": "ann@example.com"},
                                "origin": "https://www.acme.example",
                                "created_at": "2025-05-01T09:00:00.000000+00:00",
                                "archived_at": None,
                            }
                        ],
                        "next_cursor": None,
                    },
                ),
                **_errors("400", "401", "403", "404", "429", "503"),
            },
        }
    },
}


@functools.cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sovereign Gateway developer API",
            "version": __version__,
            "description": "Notifications and one-time codes to end users who subscribed in a "
            "chat (/start <project>), their subscriber list, their data-subject requests, and "
            "website form submissions. "
            "Keys: `gateway api keys create PROJECT --scopes ...`; scopes: "
            + ", ".join(SCOPES)
            + ". Every error is an RFC 9457 problem (application/problem+json).",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "sgw_... key"}
            },
        },
    }


def document() -> dict[str, Any]:
    return copy.deepcopy(_document())


@functools.cache
def document_json() -> str:
    return json.dumps(_document(), indent=1)
