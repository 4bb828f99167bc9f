"""The privacy desk and the contacts pages of the admin UI, as two :class:`Section` s.

Mounted by :mod:`gateway.http.mounts` (``blueprints(services, sections=privacy_app.sections())``).
Privacy desk (``/privacy``): data-subject requests with their two deadline clocks and actions
(:mod:`privacy_requests`, :mod:`privacy_erasure`), retention settings, acts, dry run and sweep
(:mod:`privacy_retention`), the audit log with chain verification, the processing record, the
transfer log and the incident register (:mod:`privacy_records`, :mod:`privacy_incidents`).
Contacts (``/contacts``): list, search, a contact's page, CSV import and export
(:mod:`contacts_views`, :mod:`contacts_import`).

Who may do what is in :data:`gateway.http.ui.security.PERMISSIONS` (``privacy.*``,
``contacts.*``): owner, admin and auditor (the DPO) see and act on the desk; only owner and
admin import contacts; an agent is refused everything here (audited). Every action is audited
by the privacy engine's own ``*_txn`` function in the transaction that does it; personal data is
masked unless this session revealed the contact (with a reason, audited).

Errors of the engine (:class:`gateway.errors.GatewayError`: a request that is not verified, a
legal hold, a bad incident time) are shown as a 4xx page with the engine's message, which says
what to do; nothing was changed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import quart
import sqlite_utils
from quart import Blueprint

from gateway.errors import GatewayError
from gateway.http.ui import security, sessions
from gateway.http.ui.app import Section
from gateway.http.ui.security import current, state
from gateway.privacy import audit, requests
from gateway.privacy.dsr_schema import privacy_config
from gateway.privacy.requests import local_date
from gateway.services import Services

MIN_REASON = 5
MAX_NOTE = 1000


def sections() -> list[Section]:
    return [
        Section(privacy_blueprint, nav=(("Privacy", "privacy.requests_page", "privacy.view"),)),
        Section(contacts_blueprint, nav=(("Contacts", "contacts.contacts", "contacts.view"),)),
    ]


def privacy_blueprint(services: Services) -> Blueprint:
    from gateway.http.ui import (
        privacy_erasure,
        privacy_incidents,
        privacy_records,
        privacy_requests,
        privacy_retention,
    )

    bp = Blueprint("privacy", __name__, url_prefix="/privacy")
    for module in (
        privacy_requests,
        privacy_erasure,
        privacy_retention,
        privacy_records,
        privacy_incidents,
    ):
        module.register(bp)
    return bp


def contacts_blueprint(services: Services) -> Blueprint:
    from gateway.http.ui import contacts_import, contacts_views

    bp = Blueprint("contacts", __name__, url_prefix="/contacts")
    contacts_views.register(bp)
    contacts_import.register(bp)
    return bp


# -- helpers the desk's views share ----------------------------------------------------------------


def now() -> dt.datetime:
    return sessions.utcnow()


def today() -> dt.date:
    """Today in the ``[privacy] timezone`` (the calendar the deadlines are counted on)."""
    return local_date(now(), privacy_config(state().services.config).timezone)


def text(form: Any, name: str, limit: int = MAX_NOTE) -> str:
    """A form field with its whitespace tidied, cut to ``limit`` characters."""
    return " ".join(str(form.get(name, "")).split())[:limit]


def reason_missing(reason: str) -> bool:
    return len(reason) < MIN_REASON


def revealed(contact_id: int | None) -> bool:
    return contact_id is not None and current().revealed(f"contact:{contact_id}", now())


async def refused(exc: GatewayError | LookupError, status: int = 409) -> quart.Response:
    """The engine said no: its message (what is wrong and what to do), nothing changed."""
    message = str(exc.args[0]) if isinstance(exc, LookupError) and exc.args else str(exc)
    return await security.error_page(f"Not done: {message}", status, "Not done")


async def load_request(request_id: int) -> requests.Request | None:
    try:
        found: requests.Request = await state().services.store.read(
            "request", lambda db: requests.get_request(db.conn, request_id)
        )
    except LookupError:
        return None
    return found


async def not_found(what: str) -> quart.Response:
    return await security.error_page(f"There is no {what}.", 404, "Not found")


async def reveal(target: str, reason: str, action: str) -> None:
    """Let this session see ``target``'s personal data (``contact:12``, or ``request:7`` for a
    request about nobody known yet) for ``[admin_ui] reveal_minutes``; audited as ``action``."""
    ui = state()
    session = current()
    until = now() + dt.timedelta(minutes=ui.settings.reveal_minutes)

    def txn(db: sqlite_utils.Database) -> None:
        sessions.add_reveal(db.conn, session.id_hash, target, until)
        audit.append_txn(
            db,
            actor=session.actor,
            action=action,
            target=target,
            detail={"reason": reason, "until": sessions.iso(until)},
        )

    await ui.services.store.write("reveal", txn)
