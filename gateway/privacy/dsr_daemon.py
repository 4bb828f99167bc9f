"""Data-subject requests in the running daemon: the chat commands and two scheduled jobs.

Chat commands (``[privacy] access_commands``, default ``/mydata``; ``erasure_commands``, default
``/forgetme``) register a request with channel 'chat', unverified, for the contact who wrote,
and answer what happens next. An erasure asked for in chat:

- ``chat_erasure = "operator"`` (default): waits for an operator to verify it
  (``gateway requests verify ID --method ...``) and run it (``gateway erase CONTACT --request
  ID``, or the admin UI). Someone who got hold of a phone must not be able to erase its owner.
- ``chat_erasure = "immediate"``: the platform identity the command came from is taken as the
  verification (method 'platform identity'); the request is scheduled, the reply says it is the
  last message, and the erasure job runs it once that reply was sent (its outbox row settled),
  so the confirmation can still be sealed and delivered before the contact's key is destroyed.

Jobs: "data-subject request deadlines" (``reminder_interval``) logs and audits requests within
``remind_days`` of a deadline or overdue, once a day each; "data-subject erasures"
(``erasure_check_interval``) runs scheduled erasures and sweeps what reached an erased contact
after their erasure (gateway.privacy.erasure.sweep_residue_txn).

Async API for the admin UI and the developer API: :func:`create_request`, :func:`erase_contact`
(and :func:`gateway.privacy.export.export_contact`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from typing import TYPE_CHECKING, Any

from gateway.pipeline.commands import CommandCall
from gateway.privacy.dsr_schema import PrivacyConfig, privacy_config
from gateway.privacy.erasure import (
    ErasureReceipt,
    erase_contact_txn,
    execute_erasure_txn,
    recently_erased,
    sweep_residue_txn,
)
from gateway.privacy.requests import (
    Request,
    RequestError,
    create_request_txn,
    get_request,
    local_date,
    remind_txn,
    set_status_txn,
    verify_request_txn,
)
from gateway.store import search

if TYPE_CHECKING:
    import sqlite_utils

    from gateway.services import Services

log = logging.getLogger("gateway.privacy.requests")

CONFIRMATION_GRACE = dt.timedelta(minutes=15)
"""An immediate chat erasure whose confirmation never reached the outbox runs after this."""


def _chat_request_txn(
    db: sqlite_utils.Database, call: CommandCall, kind: str, config: PrivacyConfig
) -> tuple[Request, str]:
    """Register (once per journal entry) a chat request; returns it and the reply template."""
    conn = db.conn
    source = f"journal:{call.journal_id}"
    row = conn.execute("SELECT id FROM requests WHERE source_ref = ?", (source,)).fetchone()
    if row is not None:  # the same message handled again after a crash: the same answer
        request = get_request(conn, row[0])
        return request, _template(config, request)
    earlier = conn.execute(
        "SELECT id FROM requests WHERE contact_id = ? AND kind = ? AND status IN "
        "('received', 'in_progress', 'scheduled') ORDER BY id LIMIT 1",
        (call.contact_id, kind),
    ).fetchone()
    if earlier is not None:
        return get_request(conn, earlier[0]), config.pending_reply
    actor = f"contact:{call.contact_id}"
    request = create_request_txn(
        db,
        kind=kind,
        channel="chat",
        actor=actor,
        contact_id=call.contact_id,
        identity_id=call.identity_id,
        details={"command": call.command, "conversation": call.conversation_id},
        source_ref=source,
        tz=config.timezone,
    )
    if kind == "erasure" and config.chat_erasure == "immediate" and call.identity_id is not None:
        verify_request_txn(
            db,
            request.id,
            verified=True,
            method="platform identity",
            note=f"sent from the {call.channel} identity {call.identity_id} the data belongs "
            "to; [privacy] chat_erasure = immediate",
            actor="system",
        )
        request = set_status_txn(
            db,
            request.id,
            "scheduled",
            actor="system",
            note="runs once the confirmation was sent",
            execute_after=f"reply:{call.journal_id}",
        )
    return request, _template(config, request)


def _template(config: PrivacyConfig, request: Request) -> str:
    if request.kind != "erasure":
        return config.access_reply
    return config.erasure_immediate_reply if request.status == "scheduled" else config.erasure_reply


async def _command(services: Services, kind: str, call: CommandCall) -> str:
    config = privacy_config(services.config)
    request, template = await services.store.write(
        "data-subject request", _chat_request_txn, call, kind, config
    )
    log.info(
        "data-subject request #%d (%s) from contact %d by chat command %s",
        request.id,
        request.kind,
        call.contact_id,
        call.command,
    )
    return template.format(id=request.id, due=request.next_due.isoformat(), channel=call.channel)


async def create_request(services: Services, **fields: Any) -> Request:
    """Register a request (the keywords of create_request_txn; ``tz`` from the config)."""
    fields.setdefault("tz", privacy_config(services.config).timezone)
    request: Request = await services.store.write(
        "data-subject request", functools.partial(create_request_txn, **fields)
    )
    return request


async def erase_contact(
    services: Services,
    contact_id: int,
    *,
    actor: str,
    basis: str,
    request_id: int | None = None,
) -> ErasureReceipt:
    store = services.store
    receipt: ErasureReceipt = await store.write(
        "erase contact",
        erase_contact_txn,
        store.sealer,
        contact_id,
        actor=actor,
        basis=basis,
        request_id=request_id,
    )
    # The admin UI's search index is a separate file (never in backups): drop them from it too.
    await search.forget_contact(services, contact_id)
    log.info("contact %d erased (%s)", contact_id, basis)
    return receipt


def _ready_txn(db: sqlite_utils.Database) -> list[int]:
    """Scheduled erasures whose confirmation was sent (or never came)."""
    ready = []
    late = (dt.datetime.now(dt.UTC) - CONFIRMATION_GRACE).isoformat()
    for request_id, after, received in db.conn.execute(
        "SELECT id, execute_after, received_at FROM requests "
        "WHERE status = 'scheduled' AND kind = 'erasure' ORDER BY id"
    ).fetchall():
        if after:
            row = db.conn.execute(
                "SELECT state FROM outbox WHERE idempotency_key = ?", (after,)
            ).fetchone()
            if (row is None and received > late) or (row and row[0] in ("pending", "sending")):
                continue
        ready.append(int(request_id))
    return ready


def _execute_txn(
    db: sqlite_utils.Database, request_id: int, sealer: Any
) -> tuple[ErasureReceipt | None, str | None]:
    if request_id not in _ready_txn(db):
        return None, None
    db.conn.execute("SAVEPOINT erase")
    try:
        receipt = execute_erasure_txn(db, sealer, request_id, actor="system")
    except RequestError as exc:
        # A legal hold, or the contact erased by other means: back to an operator.
        db.conn.execute("ROLLBACK TO erase")
        db.conn.execute("RELEASE erase")
        set_status_txn(db, request_id, "in_progress", actor="system", note=f"not run: {exc}")
        return None, str(exc)
    db.conn.execute("RELEASE erase")
    return receipt, None


async def run_erasures(services: Services) -> list[ErasureReceipt]:
    """The erasure job: run scheduled erasures that are ready, then sweep residue."""
    store = services.store
    done = []
    for request_id in await store.read("scheduled erasures", _ready_txn):
        receipt, error = await store.write("erase contact", _execute_txn, request_id, store.sealer)
        if error is not None:
            log.error("scheduled erasure #%d was not run: %s", request_id, error)
        if receipt is not None:
            log.info("erasure request #%d done: contact %d erased", request_id, receipt.contact_id)
            await search.forget_contact(services, receipt.contact_id)
            done.append(receipt)
    recent = await store.read("recent erasures", lambda db: bool(recently_erased(db.conn)))
    removed = await store.write("erasure residue", sweep_residue_txn, store.sealer) if recent else 0
    if removed:
        log.info("removed %d rows that reached erased contacts after their erasure", removed)
    return done


async def remind(services: Services) -> list[Request]:
    """The deadline job: log (and audit, once a day) requests due soon or overdue."""
    config = privacy_config(services.config)
    today = local_date(dt.datetime.now(dt.UTC), config.timezone)
    reminded: list[Request] = await services.store.write(
        "request reminders", remind_txn, today, config.remind_days
    )
    for r in reminded:
        left = r.days_left(today)
        log.log(
            logging.ERROR if left < 0 else logging.WARNING,
            "data-subject request #%d (%s, %s) %s: GDPR deadline %s, 152-FZ deadline %s",
            r.id,
            r.kind,
            r.status,
            f"is {-left} day(s) OVERDUE" if left < 0 else f"is due in {left} day(s)",
            r.gdpr_due,
            r.ru_due,
        )
    return reminded


def install(services: Services) -> None:
    config = privacy_config(services.config)
    for name in config.access_commands:
        services.pipeline.commands.add(name, functools.partial(_command, services, "access"))
    for name in config.erasure_commands:
        services.pipeline.commands.add(name, functools.partial(_command, services, "erasure"))
    services.scheduler.every(
        "data-subject request deadlines",
        config.reminder_interval,
        functools.partial(remind, services),
        first_after=30.0,
    )
    services.scheduler.every(
        "data-subject erasures",
        config.erasure_check_interval,
        functools.partial(run_erasures, services),
    )
