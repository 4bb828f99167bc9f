"""Data-subject requests through the developer API (scope ``privacy``).

A developer's app passes on what one of its users asked (access, portability, rectification,
restriction, objection, erasure) for a subscriber of the key's project. The request enters the
privacy engine's register (gateway.privacy.requests) like one from the admin UI or a chat
command: channel ``api``, requester and audit actor ``api:<key prefix>``, both deadline clocks
running from now. It stays *unverified*: the app vouched for its user, the gateway did not check
who they are, so an operator verifies it before anything is exported or erased (as for chat
requests; nothing runs by itself).

The request's ``source_ref`` is ``api:<project id>:<hash of the Idempotency-Key and the
body>``: two racing copies of one request register one, and only the project that created a
request can read it back.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlite_utils

from gateway.devapi.keys import ApiKey
from gateway.devapi.operations import Result, Target, not_a_subscriber
from gateway.devapi.problems import Problem
from gateway.devapi.subscriptions import find_subscription_txn
from gateway.privacy.dsr_schema import privacy_config
from gateway.privacy.requests import Request, RequestError, create_request_txn, get_request
from gateway.services import Services

VOUCHED = (
    "asked through the developer API by project {project} (key {prefix}), whose app vouched "
    "for its subscriber {subscriber}; the gateway has not checked who asked"
)


def _source(project_id: int, *parts: str | None) -> str:
    """The Idempotency-Key and what was asked: a key reused (after [api] idempotency_hours)
    for another request registers that one, not the first again."""
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
    return f"api:{project_id}:{digest}"


def answer(request: Request) -> dict[str, Any]:
    details = request.details or {}
    return {
        "id": request.id,
        "kind": request.kind,
        "status": request.status,
        "verification": request.verification,
        "subscriber": details.get("subscriber"),
        "received_at": request.received_at,
        "closed_at": request.closed_at,
        "due": {"gdpr": request.gdpr_due.isoformat(), "fz152": request.ru_due.isoformat()},
    }


def _create_txn(
    db: sqlite_utils.Database,
    key: ApiKey,
    target: Target,
    kind: str,
    note: str | None,
    source_ref: str,
    tz: str,
) -> Request | None:
    """None if the target is not a subscriber of the key's project (nothing written)."""
    sub = find_subscription_txn(
        db, key.project_id, target.subscriber, target.channel, target.external_id
    )
    if sub is None:
        return None
    actor = f"api:{key.prefix}"
    details: dict[str, Any] = {"project": key.project, "subscriber": sub.public_id}
    if note:
        details["note"] = note
    request = create_request_txn(
        db,
        kind=kind,
        channel="api",
        actor=actor,
        identity_id=sub.identity_id,
        requester=actor,
        details=details,
        source_ref=source_ref,
        tz=tz,
        # Shown with the verification status in the admin UI: an operator still verifies.
        verification_note=VOUCHED.format(
            project=key.project, prefix=key.prefix, subscriber=sub.public_id
        ),
    )
    return request


async def create(
    services: Services,
    key: ApiKey,
    target: Target,
    kind: str,
    note: str | None,
    idempotency_key: str,
) -> Result:
    tz = privacy_config(services.config).timezone
    source = _source(
        key.project_id,
        idempotency_key,
        kind,
        note,
        target.subscriber,
        target.channel,
        target.external_id,
    )
    try:
        request = await services.store.write(
            "data-subject request (api)", _create_txn, key, target, kind, note, source, tz
        )
    except RequestError as exc:  # e.g. the person was erased between lookup and insert
        field, _who = target.describe()
        raise Problem(
            "not-found",
            f"{exc}; the subscriber's data is no longer on the gateway",
            errors=[{"field": field, "problem": "no longer on the gateway"}],
        ) from None
    if request is None:
        raise not_a_subscriber(key, target)
    return 201, answer(request)


def _owned_txn(db: sqlite_utils.Database, project_id: int, request_id: int) -> Request | None:
    row = db.conn.execute(
        "SELECT source_ref FROM requests WHERE id = ? AND channel = 'api'", (request_id,)
    ).fetchone()
    if row is None or not str(row[0] or "").startswith(f"api:{project_id}:"):
        return None
    return get_request(db.conn, request_id)


async def status(services: Services, key: ApiKey, request_id: int) -> Result:
    request = await services.store.read("privacy request", _owned_txn, key.project_id, request_id)
    if request is None:
        raise Problem(
            "not-found",
            f"project {key.project} made no privacy request {request_id}",
            errors=[{"field": "id", "problem": "not a request made with this project's keys"}],
        )
    return 200, answer(request)
