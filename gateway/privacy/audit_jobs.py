"""The audit head in the system log, daily: what a later ``gateway audit verify --expect-head``
compares against, so newest entries cut off the log are detected (gateway.privacy.audit)."""

from __future__ import annotations

import functools
import logging

from gateway.privacy import audit
from gateway.services import Services

log = logging.getLogger("gateway.audit")

HEAD_INTERVAL = 24 * 3600.0


async def log_head(services: Services) -> tuple[int, str]:
    head_id, head_hash = await services.store.read("audit head", audit.head_txn)
    log.info("audit head: id %d hash %s", head_id, head_hash)
    return head_id, head_hash


def install(services: Services) -> None:
    services.scheduler.every(
        "audit head", HEAD_INTERVAL, functools.partial(log_head, services), first_after=60.0
    )
