"""The incident register on the desk: each breach with its notification clocks (GDPR 72 h to
the authority; 152-FZ 24 h first notice and 72 h results), recording a new one, marking a
recipient notified, closing. Each change is a gateway.privacy.incidents ``*_txn`` (audited)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import quart
from quart import Blueprint, request

from gateway.errors import GatewayError
from gateway.http.ui import privacy_app
from gateway.http.ui.privacy_app import refused, text
from gateway.http.ui.security import current, require, state
from gateway.privacy import incidents
from gateway.privacy.processing import record_config


def _words(value: str) -> list[str]:
    """A comma-separated field as a list."""
    return [part.strip() for part in value.split(",") if part.strip()][:50]


def _count(form: Any, name: str) -> int | None:
    value = str(form.get(name, "")).strip()
    if not value:
        return None
    if not value.isdigit() or len(value) > 12:
        raise incidents.IncidentError(f"{name.replace('_', ' ')} is a whole number, not {value!r}")
    return int(value)


def _time(form: Any, name: str, *, what: str, required: bool) -> dt.datetime | None:
    value = str(form.get(name, "")).strip()[:40]
    if not value:
        if required:
            raise incidents.IncidentError(f"{what} is required (a time, or now)")
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return incidents.parse_time(value, what=what)  # "now", or its error naming the field
    if moment.tzinfo is None:  # the form says times are UTC (parse_time would take local)
        value = moment.replace(tzinfo=dt.UTC).isoformat()
    return incidents.parse_time(value, what=what)


def new_incident(form: Any) -> incidents.NewIncident:
    """The add form as a NewIncident (IncidentError names the bad field)."""
    laws = [law for law in incidents.LAWS if form.get(f"law-{law}")]
    return incidents.NewIncident(
        title=text(form, "title", 200),
        description=str(form.get("description", "")).strip()[:5000],
        detected_at=_time(form, "detected_at", what="detected at", required=True)
        or privacy_app.now(),
        laws=laws,
        occurred_at=_time(form, "occurred_at", what="occurred at", required=False),
        data_categories=_words(str(form.get("data_categories", ""))),
        subject_categories=_words(str(form.get("subject_categories", ""))),
        subjects_approx=_count(form, "subjects_approx"),
        records_approx=_count(form, "records_approx"),
        consequences=text(form, "consequences", 2000) or None,
        measures=text(form, "measures", 2000) or None,
        cross_border=bool(form.get("cross_border")),
        countries=_words(str(form.get("countries", "")).upper()),
    )


def register(bp: Blueprint) -> None:
    @bp.get("/incidents")
    @require("privacy.view")
    async def incidents_page() -> Any:
        show_all = request.args.get("all") == "1"
        found = await state().services.store.read(
            "incidents", lambda db: incidents.list_incidents(db.conn, open_only=not show_all)
        )
        moment = privacy_app.now()
        return await quart.render_template(
            "ui/privacy_incidents.html",
            rows=[(i, i.clocks(moment)) for i in reversed(found)],
            now=moment,
            show_all=show_all,
            laws=incidents.LAWS,
            default_laws=record_config(state().services.config).laws,
            clocks=incidents.CLOCKS,
        )

    @bp.post("/incidents")
    @require("privacy.act")
    async def add_incident() -> Any:
        form = await request.form
        actor = current().actor
        try:
            new = new_incident(form)
            await state().services.store.write(
                "incident", lambda db: incidents.add_incident_txn(db, new, actor=actor)
            )
        except GatewayError as exc:
            return await refused(exc, 400)
        return quart.redirect(quart.url_for("privacy.incidents_page"), 303)

    @bp.post("/incidents/<int:incident_id>/notify")
    @require("privacy.act")
    async def notify(incident_id: int) -> Any:
        form = await request.form
        actor = current().actor
        try:
            at = _time(form, "at", what="notified at", required=True) or privacy_app.now()
            await state().services.store.write(
                "incident notified",
                lambda db: incidents.notify_txn(
                    db,
                    incident_id,
                    str(form.get("clock", "")),
                    at,
                    text(form, "note") or None,
                    actor=actor,
                ),
            )
        except GatewayError as exc:
            return await refused(exc, 400)
        return quart.redirect(
            quart.url_for("privacy.incidents_page") + f"#incident-{incident_id}", 303
        )

    @bp.post("/incidents/<int:incident_id>/close")
    @require("privacy.act")
    async def close(incident_id: int) -> Any:
        form = await request.form
        actor = current().actor
        try:
            await state().services.store.write(
                "incident closed",
                lambda db: incidents.close_txn(
                    db, incident_id, text(form, "note") or None, actor=actor
                ),
            )
        except GatewayError as exc:
            return await refused(exc, 400)
        return quart.redirect(quart.url_for("privacy.incidents_page"), 303)
