"""The JSON Schemas of the developer API's bodies (components/schemas of gateway.devapi.openapi)."""

from __future__ import annotations

from typing import Any

from gateway.privacy.requests import KINDS, STATUSES


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_TARGET = {
    "subscriber": {
        "type": "string",
        "pattern": "^sub_[A-Za-z0-9_-]{16}$",
        "description": "The subscriber's id (GET /api/v1/subscribers).",
    },
    "channel": {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "description": "With external_id instead of subscriber (needs the external_ids scope): "
        "the gateway channel the person subscribed on.",
    },
    "external_id": {
        "type": "string",
        "minLength": 1,
        "maxLength": 128,
        "description": "The platform's id of the person (a Telegram user id...).",
    },
}
_ONE_TARGET = {
    "oneOf": [{"required": ["subscriber"]}, {"required": ["channel", "external_id"]}],
    "dependentRequired": {"channel": ["external_id"], "external_id": ["channel"]},
}
_TIME = {"type": "string", "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "description": "Points into /api/v1/problems."},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string", "description": "What was wrong and the fix."},
            "instance": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "problem"],
                    "properties": {"field": {"type": "string"}, "problem": {"type": "string"}},
                    "additionalProperties": False,
                },
            },
            "attempts_left": {"type": "integer", "minimum": 0},
        },
    },
    "NotificationRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["text"],
        "properties": {
            **_TARGET,
            "text": {"type": "string", "minLength": 1, "maxLength": 4096},
        },
        **_ONE_TARGET,
    },
    "NotificationAccepted": {
        "type": "object",
        "required": ["id", "status", "subscriber", "channel"],
        "properties": {
            "id": {"type": "string", "pattern": "^ntf_"},
            "status": {"const": "queued"},
            "subscriber": {"type": "string"},
            "channel": {"type": "string"},
        },
    },
    "NotificationStatus": {
        "type": "object",
        "required": ["id", "subscriber", "status", "created_at", "sent_at"],
        "properties": {
            "id": {"type": "string"},
            "subscriber": {"type": "string"},
            "status": {
                "enum": [
                    "queued",
                    "sending",
                    "sent",
                    "delivered",
                    "read",
                    "failed",
                    "unknown",
                    "removed",
                ]
            },
            "created_at": _TIME,
            "sent_at": {"type": ["string", "null"]},
        },
    },
    "OtpRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **_TARGET,
            "length": {"type": "integer", "minimum": 4, "maximum": 10},
        },
        **_ONE_TARGET,
    },
    "OtpCreated": {
        "type": "object",
        "required": ["id", "subscriber", "expires_at", "length"],
        "properties": {
            "id": {"type": "string", "pattern": "^otp_"},
            "subscriber": {"type": "string"},
            "expires_at": _TIME,
            "length": {"type": "integer"},
        },
    },
    "OtpVerifyRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "code"],
        "properties": {
            "id": {"type": "string", "pattern": "^otp_[A-Za-z0-9_-]{16}$"},
            "code": {"type": "string", "pattern": "^[0-9]{4,10}$"},
        },
    },
    "OtpVerified": {
        "type": "object",
        "required": ["id", "verified", "subscriber"],
        "properties": {
            "id": {"type": "string"},
            "verified": {"const": True},
            "subscriber": {"type": "string"},
        },
    },
    "Subscriber": {
        "type": "object",
        "required": ["id", "channel", "external_id", "subscribed_at"],
        "properties": {
            "id": {"type": "string", "pattern": "^sub_"},
            "channel": {"type": "string"},
            "external_id": {
                "type": "string",
                "description": "In full with the external_ids scope, else ***<last 2>.",
            },
            "subscribed_at": _TIME,
        },
    },
    "SubscriberPage": {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": ref("Subscriber")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "PrivacyRequestCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["kind"],
        "properties": {
            **_TARGET,
            "kind": {"enum": list(KINDS), "description": "The right the person exercises."},
            "note": {
                "type": "string",
                "minLength": 1,
                "maxLength": 2000,
                "description": "What they asked, in words (e.g. what to rectify).",
            },
        },
        **_ONE_TARGET,
    },
    "PrivacyRequest": {
        "type": "object",
        "required": [
            "id",
            "kind",
            "status",
            "verification",
            "subscriber",
            "received_at",
            "closed_at",
            "due",
        ],
        "properties": {
            "id": {"type": "integer", "description": "The request's number in the register."},
            "kind": {"enum": list(KINDS)},
            "status": {"enum": list(STATUSES)},
            "verification": {
                "enum": ["unverified", "verified", "failed"],
                "description": "Whether the operator checked who asked (API requests start "
                "unverified: the app vouched for its user).",
            },
            "subscriber": {"type": ["string", "null"]},
            "received_at": _TIME,
            "closed_at": {"type": ["string", "null"]},
            "due": {
                "type": "object",
                "required": ["gdpr", "fz152"],
                "properties": {
                    "gdpr": {
                        "type": "string",
                        "format": "date",
                        "description": "Last day under GDPR art. 12(3) (one month, extendable).",
                    },
                    "fz152": {
                        "type": "string",
                        "format": "date",
                        "description": "Last day under 152-FZ (ten Russian working days).",
                    },
                },
            },
        },
    },
    "FormData": {
        "type": "object",
        "description": "The form's configured fields ([api.forms.NAME] fields).",
        "additionalProperties": {"type": ["string", "integer", "boolean"]},
    },
    "FormReceived": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "received"}},
    },
    "Submission": {
        "type": "object",
        "required": ["id", "data", "origin", "created_at", "archived_at"],
        "properties": {
            "id": {"type": "integer"},
            "data": {"type": "object"},
            "origin": {"type": "string"},
            "created_at": _TIME,
            "archived_at": {"type": ["string", "null"]},
        },
    },
    "SubmissionPage": {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": ref("Submission")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
}
