"""Data-subject requests: the register with both deadline clocks, a request's page with its
history, and its actions (verify, extend, restrict, object, rectify, move on or close). Export
and erasure are in :mod:`gateway.http.ui.privacy_erasure`.

Every action is a ``*_txn`` of the privacy engine run in one ``Store.write``: it records the
request event and the audit entry in the same transaction (gateway.privacy.requests).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from typing import Any

import quart
import sqlite_utils
from quart import Blueprint, request

from gateway.errors import GatewayError
from gateway.http.ui import contacts_data, masking, privacy_app
from gateway.http.ui.privacy_app import load_request, not_found, refused, text
from gateway.http.ui.security import current, require, state
from gateway.privacy import calendar_ru, dsr_daemon, requests
from gateway.privacy.dsr_schema import privacy_config
from gateway.privacy.rights import object_txn, rectify_txn, restrict_txn

SHOWN = 500
"""Newest requests shown in the register (with the filters applied)."""
DUE_SOON = 7
CLOSING = ("completed", "refused", "withdrawn")


@dataclasses.dataclass(frozen=True)
class Clocks:
    """A request's two deadlines as the register shows them (``today`` in [privacy] timezone)."""

    gdpr_days: int
    """Calendar days left to the GDPR deadline (negative: overdue)."""
    ru_days: int
    """Working days left to the 152-FZ deadline (negative: working days overdue)."""
    gdpr_overdue: bool
    ru_overdue: bool
    due_soon: bool

    @classmethod
    def of(cls, r: requests.Request, today: dt.date) -> Clocks:
        gdpr = (r.gdpr_due - today).days
        ru = calendar_ru.working_days_between(today, r.ru_due)
        if r.ru_due < today:
            ru = min(ru, -1)  # overdue even when the days since were all days off
        return cls(
            gdpr,
            ru,
            r.is_open and today > r.gdpr_due,
            r.is_open and today > r.ru_due,
            r.is_open and r.days_left(today) <= DUE_SOON,
        )

    @property
    def overdue(self) -> bool:
        return self.gdpr_overdue or self.ru_overdue


def requester_shown(r: requests.Request) -> str:
    if r.requester is None:
        return ""
    shown = privacy_app.revealed(r.contact_id) or current().revealed(
        f"request:{r.id}", privacy_app.now()
    )
    return r.requester if shown else masking.mask_name(r.requester)


def _register_txn(
    db: sqlite_utils.Database, status: str, kind: str, contact: int | None
) -> list[requests.Request]:
    found = requests.list_requests(db.conn, open_only=status == "open", contact_id=contact)
    if status not in ("open", "all"):
        found = [r for r in found if r.status == status]
    if kind:
        found = [r for r in found if r.kind == kind]
    return found


def _int(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() and len(value) < 12 else None


async def _on_contact(number: int, desc: str, txn: Any, **kwargs: Any) -> Any:
    """Run ``txn(db, contact_id, **kwargs)`` for the contact request ``number`` is about."""
    found = await load_request(number)
    if found is None or found.contact_id is None:
        return await not_found(f"contact of request #{number}")
    return await _act(number, desc, txn, found.contact_id, **kwargs)


async def _act(number: int, desc: str, txn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run an engine transaction for request ``number``; back to its page, or the refusal."""
    if await load_request(number) is None:
        return await not_found(f"data-subject request #{number}")
    try:
        await state().services.store.write(desc, functools.partial(txn, **kwargs), *args)
    except GatewayError as exc:
        return await refused(exc)
    return quart.redirect(quart.url_for("privacy.request_page", request_id=number), 303)


def register(bp: Blueprint) -> None:
    @bp.get("")
    @require("privacy.view")
    async def requests_page() -> Any:
        args = request.args
        status = args.get("status", "open")
        if status not in ("open", "all", *requests.STATUSES):
            status = "open"
        kind = args.get("kind", "")
        kind = kind if kind in requests.KINDS else ""
        due = args.get("due", "")
        contact = _int(args.get("contact"))
        found = await state().services.store.read(
            "request register", _register_txn, status, kind, contact
        )
        today = privacy_app.today()
        rows = [(r, Clocks.of(r, today)) for r in reversed(found)]
        if due == "overdue":
            rows = [(r, c) for r, c in rows if c.overdue]
        elif due == "soon":
            rows = [(r, c) for r, c in rows if c.due_soon]
        else:
            due = ""
        rows.sort(key=lambda rc: (not rc[0].is_open, rc[0].next_due, rc[0].id))
        return await quart.render_template(
            "ui/privacy_requests.html",
            rows=[(r, c, requester_shown(r)) for r, c in rows[:SHOWN]],
            more=len(rows) > SHOWN,
            status=status,
            kind=kind,
            due=due,
            contact=contact,
            statuses=requests.STATUSES,
            kinds=requests.KINDS,
            today=today,
        )

    @bp.get("/requests/new")
    @require("privacy.act")
    async def new_request() -> Any:
        contact_id = _int(request.args.get("contact"))
        row = None
        if contact_id is not None:
            row = await state().services.store.read(
                "contact", contacts_data.contact_row_txn, contact_id
            )
        return await quart.render_template(
            "ui/privacy_request_new.html",
            contact_id=contact_id,
            contact=row,
            name=_name(row),
            kinds=requests.KINDS,
            kind=request.args.get("kind", "access"),
        )

    @bp.post("/requests/new")
    @require("privacy.act")
    async def create_request() -> Any:
        form = await request.form
        kind = form.get("kind", "")
        contact_field = form.get("contact", "").strip()
        contact_id = _int(contact_field)
        if contact_field and contact_id is None:
            return await refused(
                GatewayError(f"{contact_field[:20]!r} is not a contact id (a number)"), 400
            )
        requester = text(form, "requester", 300) or None
        note = text(form, "details", 1000)
        try:
            made = await dsr_daemon.create_request(
                state().services,
                kind=kind,
                channel="admin",
                actor=current().actor,
                contact_id=contact_id,
                requester=requester,
                details={"note": note} if note else None,
            )
        except GatewayError as exc:
            return await refused(exc, 400)
        return quart.redirect(quart.url_for("privacy.request_page", request_id=made.id), 303)

    @bp.get("/requests/<int:request_id>")
    @require("privacy.view")
    async def request_page(request_id: int) -> Any:
        found = await load_request(request_id)
        if found is None:
            return await not_found(f"data-subject request #{request_id}")
        store = state().services.store
        events = await store.read(
            "request events", lambda db: requests.request_events(db.conn, request_id)
        )
        row = None
        if found.contact_id is not None:
            row = await store.read("contact", contacts_data.contact_row_txn, found.contact_id)
        today = privacy_app.today()
        return await quart.render_template(
            "ui/privacy_request.html",
            r=found,
            clocks=Clocks.of(found, today),
            today=today,
            events=events,
            contact=row,
            name=_name(row),
            revealed=privacy_app.revealed(found.contact_id)
            or current().revealed(f"request:{request_id}", privacy_app.now()),
            requester=requester_shown(found),
            provisional=found.provisional,
            mask_id=masking.mask_id,
            closing=CLOSING,
            config=privacy_config(state().services.config),
        )

    @bp.post("/requests/<int:request_id>/reveal")
    @require("contacts.reveal")
    async def reveal_request(request_id: int) -> Any:
        reason = text(await request.form, "reason", 300)
        found = await load_request(request_id)
        if found is None:
            return await not_found(f"data-subject request #{request_id}")
        if privacy_app.reason_missing(reason):
            return await refused(GatewayError("say why you need to see this person's data"), 400)
        if found.contact_id is not None:
            await privacy_app.reveal(f"contact:{found.contact_id}", reason, "contact.reveal")
        else:
            await privacy_app.reveal(f"request:{request_id}", reason, "request.reveal")
        return quart.redirect(quart.url_for("privacy.request_page", request_id=request_id), 303)

    @bp.post("/requests/<int:request_id>/verify")
    @require("privacy.act")
    async def verify(request_id: int) -> Any:
        form = await request.form
        return await _act(
            request_id,
            "verify request",
            requests.verify_request_txn,
            request_id,
            verified=form.get("outcome") != "failed",
            method=text(form, "method", 200),
            note=text(form, "note") or None,
            actor=current().actor,
        )

    @bp.post("/requests/<int:request_id>/extend")
    @require("privacy.act")
    async def extend(request_id: int) -> Any:
        form = await request.form
        tz = privacy_config(state().services.config).timezone
        actor = current().actor
        if form.get("clock") == "ru":
            return await _act(
                request_id,
                "extend request",
                requests.extend_ru_txn,
                request_id,
                notice=text(form, "notice"),
                actor=actor,
                tz=tz,
            )
        months = _int(form.get("months")) or 0
        return await _act(
            request_id,
            "extend request",
            requests.extend_gdpr_txn,
            request_id,
            months=months,
            reason=text(form, "reason"),
            actor=actor,
            tz=tz,
        )

    @bp.post("/requests/<int:request_id>/status")
    @require("privacy.act")
    async def set_status(request_id: int) -> Any:
        form = await request.form
        return await _act(
            request_id,
            "request status",
            requests.set_status_txn,
            request_id,
            form.get("status", ""),
            actor=current().actor,
            note=text(form, "note") or None,
        )

    @bp.post("/requests/<int:request_id>/restrict")
    @require("privacy.act")
    async def restrict(request_id: int) -> Any:
        return await _on_contact(
            request_id,
            "restrict contact",
            restrict_txn,
            actor=current().actor,
            reason=text(await request.form, "reason") or f"request #{request_id}",
            request_id=request_id,
        )

    @bp.post("/requests/<int:request_id>/object")
    @require("privacy.act")
    async def object_(request_id: int) -> Any:
        session = current()
        return await _on_contact(
            request_id,
            "objection",
            object_txn,
            actor=session.actor,
            source=f"admin:{session.email}",
            evidence=text(await request.form, "evidence") or None,
            request_id=request_id,
        )

    @bp.post("/requests/<int:request_id>/rectify")
    @require("privacy.act")
    async def rectify(request_id: int) -> Any:
        form = await request.form
        names: dict[int, str] = {}
        for key, value in form.items():
            identity = _int(key.removeprefix("identity-")) if key.startswith("identity-") else None
            if identity is not None and value.strip():
                names[identity] = value
        return await _on_contact(
            request_id,
            "rectify contact",
            rectify_txn,
            actor=current().actor,
            display_name=form.get("display_name", "").strip() or None,
            language=form.get("language", "").strip() or None,
            identity_names=names or None,
            request_id=request_id,
        )


def _name(row: contacts_data.ContactRow | None) -> str:
    if row is None:
        return ""
    if row.erased_at:
        return "(erased)"
    if privacy_app.revealed(row.id):
        return row.display_name or "(no name)"
    return masking.mask_name(row.display_name)
