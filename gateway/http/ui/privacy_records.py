"""Records on the desk: the audit log (filters, paging, chain verification, JSON-lines export),
the record of processing activities (in the page; Markdown, HTML or JSON to download) and the
transfer log (what was sent to which model provider, where; never content)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import quart
import sqlite_utils
from quart import Blueprint, request

from gateway.http.ui import security
from gateway.http.ui.privacy_app import not_found, text
from gateway.http.ui.security import require, state
from gateway.privacy import audit, processing, report_render
from gateway.store import Store

PAGE = 100
EXPORT_PAGE = 1000


@dataclasses.dataclass(frozen=True)
class AuditFilters:
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: str | None = None
    """ISO date or time (UTC): entries at or after it."""
    before: int | None = None
    """Entries with a smaller id (the next page, newest first)."""

    def query(self, **changes: Any) -> str:
        values = {**dataclasses.asdict(self), **changes}
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def _since(value: str) -> str | None:
    """A date (``2026-01-31``) or a time (``2026-01-31T10:00``, taken as UTC) as ISO UTC."""
    value = value.strip()
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


def audit_filters(args: Any) -> tuple[AuditFilters, str | None]:
    """The filters of the query string, and a problem with them (shown, not fatal)."""
    since_text = str(args.get("since", ""))[:40]
    since = _since(since_text)
    before = str(args.get("before", ""))
    return (
        AuditFilters(
            actor=str(args.get("actor", "")).strip()[:200] or None,
            action=str(args.get("action", "")).strip()[:100] or None,
            target=str(args.get("target", "")).strip()[:200] or None,
            since=since,
            before=int(before) if before.isdigit() and len(before) < 15 else None,
        ),
        f"{since_text!r} is not a date or time (use 2026-01-31 or 2026-01-31T10:00)"
        if since_text.strip() and since is None
        else None,
    )


def audit_page_txn(
    db: sqlite_utils.Database, filters: AuditFilters, limit: int = PAGE
) -> list[audit.Entry]:
    """Newest first, below ``filters.before``."""
    return list(
        audit.entries(
            db.conn,
            before_id=filters.before,
            actor=filters.actor,
            target=filters.target,
            action_prefix=filters.action,
            since=filters.since,
            limit=limit,
            newest_first=True,
        )
    )


async def _audit_page(verification: audit.Verification | None = None) -> quart.Response:
    filters, problem = audit_filters(request.args)
    entries = await state().services.store.read("audit log", audit_page_txn, filters)
    older = (
        quart.url_for("privacy.audit_log") + "?" + filters.query(before=entries[-1].id)
        if len(entries) == PAGE
        else None
    )
    return quart.Response(
        await quart.render_template(
            "ui/privacy_audit.html",
            entries=entries,
            filters=filters,
            since_text=request.args.get("since", "")[:40],
            problem=problem,
            older=older,
            newest=quart.url_for("privacy.audit_log") + "?" + filters.query(before=None)
            if filters.before
            else None,
            export=quart.url_for("privacy.audit_export") + "?" + filters.query(before=None),
            verification=verification,
        )
    )


async def _audit_lines(store: Store, filters: AuditFilters) -> AsyncIterator[bytes]:
    """Runs after the view returned (no request context): everything comes as arguments."""
    page = dataclasses.replace(filters, before=None)
    while True:
        entries = await store.read("audit export", audit_page_txn, page, EXPORT_PAGE)
        # One chunk per page: a few large writes, not one per line.
        yield "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in entries).encode()
        if len(entries) < EXPORT_PAGE:
            return
        page = dataclasses.replace(page, before=entries[-1].id)


def _transfers_txn(
    db: sqlite_utils.Database, provider: str | None, outcome: str | None, before: int | None
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    where, args = ["id < ?"], [before if before is not None else 2**62]
    if provider:
        where.append("provider = ?")
        args.append(provider)  # type: ignore[arg-type]
    if outcome:
        where.append("outcome = ?")
        args.append(outcome)  # type: ignore[arg-type]
    cursor = db.conn.execute(
        "SELECT id, at, conversation_id, agent, provider, plugin, region, purpose, categories, "
        "redacted, legal_basis, bytes_out, bytes_in, outcome, duration_ms FROM transfers WHERE "
        + " AND ".join(where)
        + f" ORDER BY id DESC LIMIT {PAGE}",
        args,
    )
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, r, strict=True)) for r in cursor]
    for row in rows:
        row["categories"] = ", ".join(json.loads(row["categories"] or "[]"))
    providers = [r[0] for r in db.conn.execute("SELECT DISTINCT provider FROM transfers")]
    outcomes = [r[0] for r in db.conn.execute("SELECT DISTINCT outcome FROM transfers")]
    return rows, sorted(providers), sorted(outcomes)


def register(bp: Blueprint) -> None:
    @bp.get("/audit")
    @require("audit.view")
    async def audit_log() -> Any:
        return await _audit_page()

    @bp.post("/audit/verify")
    @require("audit.view")
    async def audit_verify() -> Any:
        expect = text(await request.form, "expect_head", 64) or None
        store = state().services.store
        result: audit.Verification = await store.read(
            "audit verify", lambda db: audit.verify(db.conn, expect_head=expect)
        )
        await security.audit_event(
            "audit.verify",
            outcome="ok" if result.ok else "failed",
            detail={
                k: v
                for k, v in (
                    ("checked", result.checked),
                    ("head_id", result.head_id),
                    ("head_hash", result.head_hash),
                    ("expected_head", expect),
                    ("first_bad_id", result.first_bad_id),
                )
                if v is not None
            },
        )
        return await _audit_page(result)

    @bp.get("/audit/export.jsonl")
    @require("audit.view")
    async def audit_export() -> Any:
        filters, _problem = audit_filters(request.args)
        await security.audit_event(
            "audit.export", detail={k: v for k, v in dataclasses.asdict(filters).items() if v}
        )
        response = quart.Response(
            _audit_lines(state().services.store, filters), content_type="application/x-ndjson"
        )
        response.headers["Content-Disposition"] = 'attachment; filename="audit-log.jsonl"'
        return response

    @bp.get("/processing")
    @require("privacy.view")
    async def processing_record() -> Any:
        record = await _record()
        return await quart.render_template(
            "ui/privacy_processing.html", doc=processing.document(record), Table=report_render.Table
        )

    @bp.get("/processing.<fmt>")
    @require("privacy.view")
    async def processing_download(fmt: str) -> Any:
        if fmt not in ("md", "html", "json"):
            return await not_found(f"format {fmt[:10]!r} of the processing record (md, html, json)")
        record = await _record()
        if fmt == "json":
            body, kind = json.dumps(record, ensure_ascii=False, indent=2, default=str), "json"
        elif fmt == "md":
            body, kind = report_render.to_markdown(processing.document(record)), "markdown"
        else:
            body, kind = report_render.to_html(processing.document(record)), "html"
        await security.audit_event("report.processing", detail={"format": fmt})
        mime = {"json": "application/json", "markdown": "text/markdown", "html": "text/html"}[kind]
        response = quart.Response(body, content_type=f"{mime}; charset=utf-8")
        response.headers["Content-Disposition"] = f'attachment; filename="processing-record.{fmt}"'
        return response

    @bp.get("/transfers")
    @require("privacy.view")
    async def transfers() -> Any:
        args = request.args
        provider = args.get("provider", "")[:100] or None
        outcome = args.get("outcome", "")[:40] or None
        before_text = args.get("before", "")
        before = int(before_text) if before_text.isdigit() and len(before_text) < 15 else None
        rows, providers, outcomes = await state().services.store.read(
            "transfer log", _transfers_txn, provider, outcome, before
        )
        older = None
        if len(rows) == PAGE:
            query = {"provider": provider or "", "outcome": outcome or "", "before": rows[-1]["id"]}
            older = quart.url_for("privacy.transfers") + "?" + urlencode(query)
        return await quart.render_template(
            "ui/privacy_transfers.html",
            rows=rows,
            providers=providers,
            outcomes=outcomes,
            provider=provider or "",
            outcome=outcome or "",
            older=older,
            paged=before is not None,
        )


async def _record() -> dict[str, Any]:
    services = state().services
    config = services.config
    record: dict[str, Any] = await services.store.read(
        "processing record", lambda db: processing.build_record(config, db.conn)
    )
    return record
