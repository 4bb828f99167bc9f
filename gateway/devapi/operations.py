"""What each API operation does, once the request is parsed and the key checked
(gateway.http.api): each returns (HTTP status, JSON body) or raises a Problem."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import sqlite_utils

from gateway.devapi import otp
from gateway.devapi.config import api_config
from gateway.devapi.forms import submissions_page_txn
from gateway.devapi.keys import ApiKey
from gateway.devapi.problems import Problem
from gateway.devapi.schema import now, public_id
from gateway.devapi.state import retry_after
from gateway.devapi.subscriptions import (
    Subscription,
    find_subscription_txn,
    redact,
    subscribers_page_txn,
)
from gateway.services import Services
from gateway.store.outbox import OptedOut

Result = tuple[int, dict[str, Any]]
STATUS = {"pending": "queued", "sending": "sending", "sent": "sent", "failed": "failed"}


@dataclasses.dataclass(frozen=True)
class Target:
    """Whom to send to: the API's subscriber id, or a channel and the platform's id there."""

    subscriber: str | None = None
    channel: str | None = None
    external_id: str | None = None

    def describe(self) -> tuple[str, str]:
        """(field to name in errors, how to say it)."""
        if self.subscriber is not None:
            return "subscriber", f"subscriber {self.subscriber}"
        return "external_id", f"{self.external_id!r} on channel {self.channel!r}"


def otp_pepper(services: Services) -> bytes:
    return services.master.derive("api-otp-pepper")


async def _subscription(services: Services, key: ApiKey, target: Target) -> Subscription:
    found = await services.store.read(
        "find subscriber",
        find_subscription_txn,
        key.project_id,
        target.subscriber,
        target.channel,
        target.external_id,
    )
    if found is None:
        raise not_a_subscriber(key, target)
    return found


def not_a_subscriber(key: ApiKey, target: Target) -> Problem:
    field, who = target.describe()
    return Problem(
        "not-found",
        f"{who} is not a subscriber of project {key.project}: an end user subscribes by "
        f"sending /start {key.project} to one of your bots (a link https://t.me/<bot>?start="
        f"{key.project} does it in one tap)",
        errors=[{"field": field, "problem": f"not a subscriber of project {key.project}"}],
    )


def _refused(exc: Exception, sub: Subscription) -> Problem:
    if isinstance(exc, OptedOut):
        return Problem(
            "opted-out",
            f"subscriber {sub.public_id} opted out of all our messages (they sent STOP); "
            "nothing is sent to them until they send START or /start again",
        )
    return Problem(
        "not-found",
        f"the chat of subscriber {sub.public_id} no longer exists on the gateway (removed by "
        "retention or erasure); they can subscribe again with /start",
    )


def _record_txn(
    db: sqlite_utils.Database, project_id: int, sub: str, outbox_id: int, kind: str
) -> str:
    notification = public_id("ntf")
    db.conn.execute(
        "INSERT INTO api_notifications (public_id, project_id, subscription_public_id, "
        "outbox_id, kind, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (notification, project_id, sub, outbox_id, kind, now()),
    )
    return notification


async def notify(
    services: Services, key: ApiKey, target: Target, text: str, idempotency_key: str
) -> Result:
    sub = await _subscription(services, key, target)
    # The outbox's own idempotency: two racing copies of one request queue one message.
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    try:
        outbox_id = await services.pipeline.send_notification(
            sub.channel, sub.account, sub.thread_key, text, key=f"api:{key.project_id}:{digest}"
        )
    except (OptedOut, LookupError) as exc:
        raise _refused(exc, sub) from None
    notification = await services.store.write(
        "record notification", _record_txn, key.project_id, sub.public_id, outbox_id, "notification"
    )
    return 202, {
        "id": notification,
        "status": "queued",
        "subscriber": sub.public_id,
        "channel": sub.channel,
    }


def _status_txn(db: sqlite_utils.Database, project_id: int, notification: str) -> Any:
    return db.conn.execute(
        "SELECT n.public_id, n.subscription_public_id, n.created_at, o.state, o.platform_status, "
        "o.sent_at FROM api_notifications n LEFT JOIN outbox o ON o.id = n.outbox_id "
        "WHERE n.project_id = ? AND n.public_id = ? AND n.kind = 'notification'",
        (project_id, notification),
    ).fetchone()


async def notification_status(services: Services, key: ApiKey, notification: str) -> Result:
    row = await services.store.read("notification", _status_txn, key.project_id, notification)
    if row is None:
        raise Problem(
            "not-found",
            f"project {key.project} has no notification {notification}",
            errors=[{"field": "id", "problem": "unknown notification id"}],
        )
    ident, sub, created, state, platform, sent_at = row
    status = platform or STATUS.get(state, state or "removed")
    return 200, {
        "id": ident,
        "subscriber": sub,
        "status": status,
        "created_at": created,
        "sent_at": sent_at,
    }


async def send_code(services: Services, key: ApiKey, target: Target, length: int | None) -> Result:
    cfg = api_config(services.config)
    sub = await _subscription(services, key, target)
    code = otp.new_code(length or cfg.otp_length)
    created = await services.store.write(
        "new one-time code",
        otp.create_code_txn,
        otp_pepper(services),
        code,
        project_id=key.project_id,
        subscription_id=sub.id,
        subscription_public_id=sub.public_id,
        ttl=cfg.otp_ttl,
        max_attempts=cfg.otp_max_attempts,
        resend_after=cfg.otp_resend_after,
        max_per_hour=cfg.otp_max_per_hour,
    )
    if isinstance(created, otp.Throttled):
        raise Problem(
            "rate-limited",
            f"{created.reason}; retry after the Retry-After seconds",
            headers={"Retry-After": retry_after(created.retry_after)},
        )
    text = cfg.otp_message.format(
        code=code, project=key.project_title, minutes=math.ceil(cfg.otp_ttl / 60)
    )
    try:
        outbox_id = await services.pipeline.send_notification(
            sub.channel, sub.account, sub.thread_key, text, key=f"api-otp:{created.public_id}"
        )
    except (OptedOut, LookupError) as exc:
        await services.store.write("forget unsent code", otp.attach_outbox_txn, created.id, None)
        raise _refused(exc, sub) from None
    await services.store.write("code sent", otp.attach_outbox_txn, created.id, outbox_id)
    return 201, {
        "id": created.public_id,
        "subscriber": sub.public_id,
        "expires_at": created.expires_at,
        "length": len(code),
    }


_VERDICTS: dict[str, tuple[str, str]] = {
    "expired": ("otp-expired", "the code expired; send a new one (POST /api/v1/otp)"),
    "used": ("otp-used", "the code was verified already; each code works once"),
    "superseded": ("otp-superseded", "a newer code was sent since; verify that one"),
    "locked": ("otp-locked", "too many wrong codes; send a new one (POST /api/v1/otp)"),
}


async def verify_code(services: Services, key: ApiKey, code_id: str, code: str) -> Result:
    checked = await services.store.write(
        "verify one-time code",
        otp.verify_code_txn,
        otp_pepper(services),
        key.project_id,
        code_id,
        code,
    )
    if checked.verdict == "verified":
        return 200, {"id": code_id, "verified": True, "subscriber": checked.subscriber}
    if checked.verdict == "unknown":
        raise Problem(
            "not-found",
            f"project {key.project} has no code {code_id}",
            errors=[{"field": "id", "problem": "unknown code id (the id POST /api/v1/otp gave)"}],
        )
    if checked.verdict == "mismatch":
        raise Problem(
            "otp-mismatch",
            f"the code does not match; {checked.attempts_left} attempt(s) left",
            errors=[{"field": "code", "problem": "does not match the code that was sent"}],
            extra={"attempts_left": checked.attempts_left},
        )
    kind, detail = _VERDICTS[checked.verdict]
    raise Problem(kind, detail)


async def subscribers_page(services: Services, key: ApiKey, after: int, limit: int) -> Result:
    rows = await services.store.read(
        "subscribers", subscribers_page_txn, key.project_id, after, limit + 1
    )
    full = "external_ids" in key.scopes
    data = [
        {
            "id": s.public_id,
            "channel": s.channel,
            "external_id": s.external_id if full else redact(s.external_id),
            "subscribed_at": s.subscribed_at,
        }
        for s in rows[:limit]
    ]
    more = len(rows) > limit
    return 200, {"data": data, "next_cursor": str(rows[limit - 1].id) if more else None}


async def submissions_page(
    services: Services, key: ApiKey, form: str, after: int, limit: int
) -> Result:
    forms = api_config(services.config).forms
    if form not in forms or forms[form].project != key.project:
        raise Problem(
            "not-found",
            f"project {key.project} has no form {form!r}",
            errors=[{"field": "form", "problem": "not a form of this key's project"}],
        )
    rows = await services.store.read(
        "form submissions", submissions_page_txn, key.project_id, form, after, limit + 1
    )
    more = len(rows) > limit
    return 200, {"data": rows[:limit], "next_cursor": str(rows[limit - 1]["id"]) if more else None}
