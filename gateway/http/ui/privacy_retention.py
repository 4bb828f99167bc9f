"""Retention on the desk: the settings in force per category and channel (read-only, from the
running config), the last destruction acts with their HTML/JSON, a dry run showing what would
go, "sweep now", and the legal holds in force (add on a conversation, release with a reason).

A sweep from here is :func:`gateway.privacy.retention_sweep.sweep` run in the request, with the
signed-in person as the act's performer (152-FZ acts name who destroyed the data); it is refused
while the scheduled sweep or another sweep from the UI runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import quart
import sqlite_utils
from quart import Blueprint, request

from gateway.errors import GatewayError
from gateway.http.ui import security
from gateway.http.ui.privacy_app import not_found, reason_missing, refused, text
from gateway.http.ui.security import current, require, state
from gateway.privacy import acts, holds
from gateway.privacy.retention import retention_config
from gateway.privacy.retention_categories import categories
from gateway.privacy.retention_sweep import SweepResult, sweep

ACTS_SHOWN = 20
JOB = "retention sweep"
_sweeping: set[int] = set()
"""Stores (one per daemon) with a sweep from the UI under way."""


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    title: str
    action: str
    what: str
    key: str
    days: int
    per_channel: bool
    channels: dict[str, int]
    """Days in force on each configured channel (the global value unless overridden)."""


def settings() -> list[Setting]:
    config = state().services.config
    section = retention_config(config)
    found = []
    for category in categories().values():
        found.append(
            Setting(
                category.name,
                category.title,
                category.action,
                category.what,
                category.key,
                section.days(category.key),
                category.per_channel,
                {
                    name: section.days(category.key, name)
                    for name in config.channels
                    if category.per_channel
                },
            )
        )
    return found


def _page_txn(db: sqlite_utils.Database) -> tuple[list[acts.ActSummary], list[holds.Hold]]:
    return acts.list_acts(db, ACTS_SHOWN), holds.list_holds(db.conn)


async def _page(result: SweepResult | None = None, status: int = 200) -> quart.Response:
    services = state().services
    recent, held = await services.store.read("retention page", _page_txn)
    job = services.scheduler.jobs.get(JOB)
    body = await quart.render_template(
        "ui/privacy_retention.html",
        section=retention_config(services.config),
        settings=settings(),
        channels=list(services.config.channels),
        acts=recent,
        holds=held,
        job=job,
        result=result,
    )
    return quart.Response(body, status=status)


def register(bp: Blueprint) -> None:
    @bp.get("/retention")
    @require("privacy.view")
    async def retention() -> Any:
        return await _page()

    @bp.post("/retention/sweep")
    @require("privacy.act")
    async def run_sweep() -> Any:
        dry_run = (await request.form).get("dry_run") == "1"
        services = state().services
        job = services.scheduler.jobs.get(JOB)
        key = id(services.store)
        if key in _sweeping or (job is not None and job.running):
            return await refused(
                GatewayError("a retention sweep is running now; wait for its act, then retry")
            )
        _sweeping.add(key)
        try:
            result = await sweep(
                services.store,
                services.config,
                sealer=services.store.sealer,
                actor=current().actor,
                dry_run=dry_run,
                write_files=not dry_run,
            )
        except GatewayError as exc:
            return await refused(exc, 400)
        finally:
            _sweeping.discard(key)
        return await _page(result)

    @bp.get("/retention/acts/<int:act_id>.<fmt>")
    @require("privacy.view")
    async def act_file(act_id: int, fmt: str) -> Any:
        if fmt not in ("html", "json"):
            return await not_found(f"act format {fmt[:10]!r} (use .html or .json)")
        try:
            document = await state().services.store.read("retention act", acts.load_act, act_id)
        except GatewayError:
            return await not_found(f"retention act #{act_id}")
        await security.audit_event(
            "retention.act.download", target=f"retention-act:{act_id}", detail={"format": fmt}
        )
        kind = "text/html" if fmt == "html" else "application/json"
        response = quart.Response(acts.render(document, fmt), content_type=f"{kind}; charset=utf-8")
        response.headers["Content-Disposition"] = f'attachment; filename="act-{act_id:06d}.{fmt}"'
        return response

    @bp.post("/holds")
    @require("contacts.manage")
    async def add_hold() -> Any:
        form = await request.form
        reason = text(form, "reason", 500)
        contact = form.get("contact_id", "").strip()
        conversation = form.get("conversation_id", "").strip()
        if reason_missing(reason):
            return await refused(GatewayError("a legal hold needs its reason (case, order)"), 400)
        if not (contact.isdigit() or conversation.isdigit()):
            return await refused(GatewayError("give the contact or conversation id to hold"), 400)
        actor = current().actor
        try:
            await state().services.store.write(
                "legal hold",
                lambda db: holds.add_hold_txn(
                    db,
                    contact_id=int(contact) if contact.isdigit() else None,
                    conversation_id=int(conversation) if conversation.isdigit() else None,
                    reason=reason,
                    author=actor,
                ),
            )
        except GatewayError as exc:
            return await refused(exc, 400)
        return quart.redirect(_back(form), 303)

    @bp.post("/holds/<int:hold_id>/release")
    @require("contacts.manage")
    async def release_hold(hold_id: int) -> Any:
        form = await request.form
        reason = text(form, "reason", 500)
        if reason_missing(reason):
            return await refused(GatewayError("say why the hold is released"), 400)
        actor = current().actor
        try:
            await state().services.store.write(
                "release hold",
                lambda db: holds.release_hold_txn(db, hold_id, reason=reason, author=actor),
            )
        except GatewayError as exc:
            return await refused(exc)
        return quart.redirect(_back(form), 303)


def _back(form: Any) -> str:
    """Back to the contact page the form came from (``back=contact:12``), else the hold list."""
    back = str(form.get("back", ""))
    contact = back.removeprefix("contact:")
    if back.startswith("contact:") and contact.isdigit() and len(contact) < 12:
        return quart.url_for("contacts.contact", contact_id=int(contact))
    return quart.url_for("privacy.retention") + "#holds"
