"""Contacts: the list (masked), search by id, channel or exact platform id, a contact's page
(identities, consent per purpose with grant and withdraw, legal holds, restriction, AI on/off,
their conversations and requests), a reveal with a reason, and the CSV export of the list.

Names and platform ids are masked (gateway.http.ui.masking) unless this session revealed the
contact; the export follows the same rule row by row and is audited (``contacts.export``)."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import quart
from quart import Blueprint, request

from gateway.errors import GatewayError
from gateway.http.ui import contacts_data, masking, privacy_app, security
from gateway.http.ui.contacts_data import ContactRow, Filters
from gateway.http.ui.privacy_app import not_found, refused, text
from gateway.http.ui.security import current, require, state
from gateway.http.ui.sessions import Session, utcnow
from gateway.privacy.consent_ledger import PURPOSES, grant_consent_txn, withdraw_consent_txn
from gateway.privacy.rights import restrict_txn
from gateway.store import Store

EXPORT_PAGE = 1000
EXPORT_FIELDS = (
    "id", "name", "identities", "language", "created_at", "last_message_at", "conversations",
    "ai_enabled", "restricted", "legal_hold", "erased_at", "masked",
)  # fmt: skip


def shown(row: ContactRow, revealed: bool | None = None) -> dict[str, Any]:
    """A contact as the pages show it: masked unless revealed (default: in this session)."""
    if revealed is None:
        revealed = privacy_app.revealed(row.id)
    return {
        "row": row,
        "revealed": revealed,
        "name": "(erased)"
        if row.erased_at
        else (row.display_name or "(no name)")
        if revealed
        else masking.mask_name(row.display_name),
        "identities": [
            {
                "identity": i,
                "external_id": i.external_id if revealed else masking.mask_id(i.external_id),
                "name": (i.display_name or "") if revealed else masking.mask_name(i.display_name),
            }
            for i in row.identities
        ],
    }


def filters_of(args: Any) -> Filters:
    def number(value: str) -> int | None:
        value = value.strip().lstrip("#")
        return int(value) if value.isdigit() and len(value) < 15 else None

    return Filters(
        contact_id=number(str(args.get("id", ""))),
        channel=str(args.get("channel", ""))[:100] or None,
        external_id=str(args.get("external_id", "")).strip()[:300] or None,
        erased=args.get("erased") == "1",
        before=number(str(args.get("before", ""))),
    )


def _query(filters: Filters, **changes: Any) -> str:
    values = {
        "id": filters.contact_id,
        "channel": filters.channel,
        "external_id": filters.external_id,
        "erased": "1" if filters.erased else None,
        "before": filters.before,
        **changes,
    }
    return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def csv_row(row: ContactRow, revealed: bool) -> list[Any]:
    item = shown(row, revealed)
    ids = "; ".join(f"{i['identity'].channel}:{i['external_id']}" for i in item["identities"])
    return [
        row.id, item["name"], ids, row.language or "", row.created_at, row.last_message_at or "",
        row.conversations, int(row.ai_enabled), int(row.restricted), int(row.held),
        row.erased_at or "", int(not item["revealed"]),
    ]  # fmt: skip


async def _csv(store: Store, session: Session, filters: Filters) -> AsyncIterator[bytes]:
    """The CSV a page of rows at a time (runs after the view returned: no request context)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(EXPORT_FIELDS)
    page = filters
    while True:
        rows = await store.read("contacts export", contacts_data.contacts_txn, page, EXPORT_PAGE)
        for row in rows:
            writer.writerow(csv_row(row, session.revealed(f"contact:{row.id}", utcnow())))
        yield out.getvalue().encode()
        out.seek(0)
        out.truncate()
        if len(rows) < EXPORT_PAGE:
            return
        page = dataclasses.replace(page, before=rows[-1].id)


async def _contact(contact_id: int) -> contacts_data.ContactView | None:
    view: contacts_data.ContactView | None = await state().services.store.read(
        "contact", contacts_data.contact_txn, contact_id
    )
    return view


async def _change(contact_id: int, desc: str, fn: Any) -> Any:
    """Run ``fn(db)`` (an audited engine transaction) and go back to the contact's page."""
    if await _contact(contact_id) is None:
        return await not_found(f"contact {contact_id}")
    try:
        await state().services.store.write(desc, fn)
    except GatewayError as exc:
        return await refused(exc)
    return quart.redirect(quart.url_for("contacts.contact", contact_id=contact_id), 303)


def register(bp: Blueprint) -> None:
    @bp.get("")
    @require("contacts.view")
    async def contacts() -> Any:
        filters = filters_of(request.args)
        store = state().services.store
        rows = await store.read("contacts", contacts_data.contacts_txn, filters)
        channels = await store.read("contact channels", contacts_data.channels_txn)
        older = None
        if len(rows) == contacts_data.PAGE:
            older = quart.url_for("contacts.contacts") + "?" + _query(filters, before=rows[-1].id)
        return await quart.render_template(
            "ui/contacts_list.html",
            rows=[shown(r) for r in rows],
            filters=filters,
            channels=sorted(set(channels) | set(state().services.config.channels)),
            older=older,
            export=quart.url_for("contacts.export_csv") + "?" + _query(filters, before=None),
        )

    @bp.get("/export.csv")
    @require("contacts.view")
    async def export_csv() -> Any:
        filters = filters_of(request.args)
        session = current()
        revealed = sorted(k for k in session.reveals if k.startswith("contact:"))
        await security.audit_event(
            "contacts.export",
            detail={
                "filters": _query(filters),
                "revealed": [k for k in revealed if session.revealed(k, privacy_app.now())],
            },
        )
        response = quart.Response(
            _csv(state().services.store, session, filters), content_type="text/csv; charset=utf-8"
        )
        response.headers["Content-Disposition"] = 'attachment; filename="contacts.csv"'
        return response

    @bp.get("/<int:contact_id>")
    @require("contacts.view")
    async def contact(contact_id: int) -> Any:
        view = await _contact(contact_id)
        if view is None:
            return await not_found(f"contact {contact_id}")
        item = shown(view.row)
        return await quart.render_template(
            "ui/contacts_contact.html",
            view=view,
            c=item,
            until=current().reveals.get(f"contact:{contact_id}"),
            purposes=PURPOSES,
            can_manage=security.allowed(current().role, "contacts.manage"),
            can_act=security.allowed(current().role, "privacy.act"),
        )

    @bp.post("/<int:contact_id>/reveal")
    @require("contacts.reveal")
    async def reveal(contact_id: int) -> Any:
        reason = text(await request.form, "reason", 300)
        if await _contact(contact_id) is None:
            return await not_found(f"contact {contact_id}")
        if privacy_app.reason_missing(reason):
            return await refused(GatewayError("say why you need to see this person's data"), 400)
        await privacy_app.reveal(f"contact:{contact_id}", reason, "contact.reveal")
        return quart.redirect(quart.url_for("contacts.contact", contact_id=contact_id), 303)

    @bp.post("/<int:contact_id>/consent")
    @require("contacts.manage")
    async def consent(contact_id: int) -> Any:
        form = await request.form
        purpose, change = form.get("purpose", ""), form.get("change", "")
        evidence = text(form, "evidence", 500)
        if change not in ("grant", "withdraw"):
            return await refused(GatewayError("choose grant or withdraw"), 400)
        if privacy_app.reason_missing(evidence):
            return await refused(
                GatewayError("say what proves it (where and when the person said so)"), 400
            )
        session = current()
        record = grant_consent_txn if change == "grant" else withdraw_consent_txn
        return await _change(
            contact_id,
            f"consent {change}",
            lambda db: record(
                db, contact_id, purpose, f"admin:{session.email}", evidence, actor=session.actor
            ),
        )

    @bp.post("/<int:contact_id>/ai")
    @require("contacts.manage")
    async def ai(contact_id: int) -> Any:
        enabled = (await request.form).get("enabled") == "1"
        actor = current().actor
        return await _change(
            contact_id,
            "contact AI",
            lambda db: contacts_data.set_ai_txn(db, contact_id, enabled, actor),
        )

    @bp.post("/<int:contact_id>/restrict")
    @require("privacy.act")
    async def restrict(contact_id: int) -> Any:
        form = await request.form
        lift = form.get("lift") == "1"
        reason = text(form, "reason", 500)
        if privacy_app.reason_missing(reason):
            return await refused(GatewayError("say why (a request, a dispute, a court order)"), 400)
        actor = current().actor
        return await _change(
            contact_id,
            "restrict contact",
            lambda db: restrict_txn(db, contact_id, actor=actor, lift=lift, reason=reason),
        )
