"""The inbox: conversation lists (filters, full-text search), a conversation with its messages,
attachments, analysis and suggested replies; reveal, reply as a person, take over, hand back,
close, assign. Personal data is masked unless this session revealed the contact."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from typing import Any
from urllib.parse import urlencode

import quart
from quart import Blueprint, request

from gateway.errors import StoreError
from gateway.http.ui import inbox_data, masking, security, sessions
from gateway.http.ui.security import current, require, state
from gateway.privacy import audit
from gateway.privacy.sealing import KeyDestroyed
from gateway.store.records import open_attachment_txn
from gateway.store.search import SearchIndex

REPLY_KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_REPLY = 4096
MIN_REASON = 5


def _filters() -> tuple[inbox_data.Filters, str]:
    args = request.args
    return (
        inbox_data.Filters(
            channel=args.get("channel") or None,
            status=args.get("status") or None,
            assignee=args.get("assignee") or None,
            before=args.get("before", "")[:40] or None,
        ),
        args.get("q", "").strip()[:200],
    )


def _with_query(path: str) -> str:
    query = request.query_string.decode("ascii", "replace")
    return f"{path}?{query}" if query else path


def _older(rows: list[dict[str, Any]], filters: inbox_data.Filters, query: str) -> str | None:
    """The next page's URL when this one is full (not for search results: best first)."""
    if query or len(rows) < inbox_data.PAGE:
        return None
    args = {k: v for k, v in request.args.items() if k != "before"}
    args["before"] = rows[-1]["row"].last_message_at
    return quart.url_for("ui.inbox") + "?" + urlencode(args)


def _now() -> dt.datetime:
    return sessions.utcnow()


def shown_row(row: inbox_data.ConversationRow) -> dict[str, Any]:
    """A list row as the template shows it: masked unless the contact is revealed."""
    revealed = current().revealed(f"contact:{row.contact_id}", _now())
    return {
        "row": row,
        "revealed": revealed,
        "name": row.contact_name or "(no name)"
        if revealed
        else masking.mask_name(row.contact_name),
        "identity": row.identity if revealed else masking.mask_id(row.identity),
    }


async def _rows(filters: inbox_data.Filters, query: str) -> list[dict[str, Any]]:
    ui = state()
    if query:
        found = await SearchIndex.for_services(ui.services).search(ui.services.store, query)
        filters = dataclasses.replace(filters, ids=tuple(c for c, _m in found))
    rows = await ui.services.store.read(
        "inbox", inbox_data.inbox_txn, filters, current().user_id, inbox_data.PAGE
    )
    return [shown_row(r) for r in rows]


async def _conversation(conversation_id: int) -> dict[str, Any] | None:
    ui = state()
    store = ui.services.store
    view: inbox_data.ConversationView | None = await store.read(
        "conversation", inbox_data.conversation_txn, store.sealer, conversation_id
    )
    if view is None:
        return None
    session = current()
    revealed = session.revealed(f"contact:{view.row.contact_id}", _now())
    agent = ui.services.config.agents.get(view.agent)
    redactor = masking.text_redactor(agent, [view.row.contact_name])
    messages = []
    for m in view.messages:
        labels = json.loads(m.analysis) if m.analysis else None
        messages.append(
            {
                "m": m,
                "text": m.text if revealed else masking.mask_text(redactor, m.text),
                "labels": labels,
                "files": view.attachments.get(m.id, []),
                "delivery": view.deliveries.get(m.id),
            }
        )
    suggestions = [s if revealed else masking.mask_text(redactor, s) for s in view.suggestions]
    return {
        "view": view,
        "shown": shown_row(view.row),
        "revealed": revealed,
        "messages": messages,
        "suggestions": suggestions,
        "event_files": view.attachments.get(None, []),
        "until": session.reveals.get(f"contact:{view.row.contact_id}"),
    }


async def _back(conversation_id: int, found: bool = True) -> Any:
    """After a change: back to the conversation (303), or 404 if there is none."""
    if not found:
        return await security.error_page(f"There is no conversation {conversation_id}.", 404)
    return quart.redirect(quart.url_for("ui.conversation", conversation_id=conversation_id), 303)


def register(bp: Blueprint) -> None:
    @bp.get("/inbox")
    @require("inbox.view")
    async def inbox() -> Any:
        filters, query = _filters()
        ui = state()
        rows = await _rows(filters, query)
        channels = await ui.services.store.read("inbox channels", inbox_data.channels_txn)
        team = await ui.services.store.read("team", inbox_data.team_txn)
        return await quart.render_template(
            "ui/inbox.html",
            rows=rows,
            filters=filters,
            query=query,
            channels=sorted(set(channels) | set(ui.services.config.channels)),
            statuses=inbox_data.STATUSES,
            team=team,
            fragment=_with_query(quart.url_for("ui.inbox_rows")),
            older=_older(rows, filters, query),
        )

    @bp.get("/inbox/rows")
    @require("inbox.view")
    async def inbox_rows() -> Any:
        filters, query = _filters()
        return await quart.render_template("ui/_rows.html", rows=await _rows(filters, query))

    @bp.get("/conversations/<int:conversation_id>")
    @require("inbox.view")
    async def conversation(conversation_id: int) -> Any:
        context = await _conversation(conversation_id)
        if context is None:
            return await security.error_page(f"There is no conversation {conversation_id}.", 404)
        team = await state().services.store.read("team", inbox_data.team_txn)
        session = current()
        return await quart.render_template(
            "ui/conversation.html",
            **context,
            team=team,
            reply_key=sessions.new_token(),
            can_reply=security.allowed(session.role, "conversation.reply"),
            can_manage=security.allowed(session.role, "conversation.manage"),
            note=request.args.get("note", "")[:200],
        )

    @bp.get("/conversations/<int:conversation_id>/messages")
    @require("inbox.view")
    async def conversation_messages(conversation_id: int) -> Any:
        context = await _conversation(conversation_id)
        if context is None:
            return await security.error_page(f"There is no conversation {conversation_id}.", 404)
        return await quart.render_template("ui/_messages.html", **context)

    @bp.post("/conversations/<int:conversation_id>/reveal")
    @require("conversation.reveal")
    async def reveal(conversation_id: int) -> Any:
        form = await request.form
        reason = " ".join(form.get("reason", "").split())[:300]
        if len(reason) < MIN_REASON:
            return await security.error_page(
                "Say why you need to see this person's data (a few words at least)."
            )
        ui = state()
        session = current()
        minutes = ui.settings.reveal_minutes
        until = _now() + dt.timedelta(minutes=minutes)
        done = await ui.services.store.write(
            "reveal", _reveal_txn, session.id_hash, session.actor, conversation_id, reason, until
        )
        return await _back(conversation_id, done)

    @bp.post("/conversations/<int:conversation_id>/status")
    @require("conversation.manage")
    async def change_status(conversation_id: int) -> Any:
        form = await request.form
        action = form.get("action", "")
        if action not in inbox_data.ACTIONS:
            return await security.error_page(
                f"Unknown action {action[:40]!r}: use takeover, release, close or reopen."
            )
        session = current()
        found = await state().services.store.write(
            f"conversation {action}",
            inbox_data.change_status_txn,
            conversation_id,
            action,
            session.actor,
            session.user_id,
        )
        return await _back(conversation_id, found)

    @bp.post("/conversations/<int:conversation_id>/assign")
    @require("conversation.manage")
    async def assign(conversation_id: int) -> Any:
        form = await request.form
        value = form.get("assignee", "")
        if value and not value.isdigit():
            return await security.error_page("Choose a person from the list.")
        try:
            found = await state().services.store.write(
                "conversation assign",
                inbox_data.assign_txn,
                conversation_id,
                int(value) if value else None,
                current().actor,
            )
        except ValueError as exc:
            return await security.error_page(f"Not assigned: {exc}.")
        return await _back(conversation_id, found)

    @bp.post("/conversations/<int:conversation_id>/reply")
    @require("conversation.reply")
    async def reply(conversation_id: int) -> Any:
        form = await request.form
        text = form.get("text", "").strip()
        key = form.get("key", "")
        if not text:
            return await security.error_page("The reply is empty: write something first.")
        if len(text) > MAX_REPLY:
            return await security.error_page(
                f"The reply is too long: at most {MAX_REPLY} characters."
            )
        if not REPLY_KEY.match(key):
            return await security.error_page(
                "The form is incomplete: reload the conversation and try again."
            )
        ui = state()
        session = current()
        try:
            await ui.services.pipeline.reply_as_human(
                conversation_id,
                text,
                actor=session.actor,
                key=f"ui:{key}",
                audit_detail={"chars": len(text)},
            )
        except LookupError:
            return await security.error_page(f"There is no conversation {conversation_id}.", 404)
        except ValueError as exc:
            return await security.error_page(f"Not sent: {exc}.")
        return await _back(conversation_id)

    @bp.get("/conversations/<int:conversation_id>/attachments/<int:attachment_id>")
    @require("attachment.download")
    async def attachment(conversation_id: int, attachment_id: int) -> Any:
        store = state().services.store
        owner = await store.read("attachment", inbox_data.attachment_owner_txn, attachment_id)
        if owner is None or owner[0] != conversation_id:
            return await security.error_page(
                "There is no such attachment in this conversation.", 404
            )
        _conv, contact_id, filename, mime = owner
        if not current().revealed(f"contact:{contact_id}", _now()):
            return await security.error_page(
                "Reveal this contact (with a reason) before downloading their files.", 403
            )
        try:
            data = await store.read(
                "open attachment", open_attachment_txn, store.sealer, attachment_id
            )
        except (LookupError, KeyDestroyed):
            return await security.error_page(
                "This file is not stored (not downloaded, or erased).", 410
            )
        except StoreError as exc:
            return await security.error_page(f"This file cannot be opened: {exc}", 409)
        await security.audit_event(
            "attachment.download",
            target=f"attachment:{attachment_id}",
            detail={"conversation_id": conversation_id, "bytes": len(data)},
        )
        name = re.sub(r"[^A-Za-z0-9._-]", "_", filename or f"attachment-{attachment_id}")[:100]
        response = quart.Response(data, content_type="application/octet-stream")
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        response.headers["X-Original-Content-Type"] = (mime or "unknown")[:100]
        return response


def _reveal_txn(
    db: Any, id_hash: str, actor: str, conversation_id: int, reason: str, until: dt.datetime
) -> bool:
    contact_id = inbox_data.conversation_contact_txn(db, conversation_id)
    if contact_id is None:
        return False
    sessions.add_reveal(db.conn, id_hash, f"contact:{contact_id}", until)
    audit.append_txn(
        db,
        actor=actor,
        action="conversation.reveal",
        target=f"conversation:{conversation_id}",
        detail={"contact_id": contact_id, "reason": reason, "until": sessions.iso(until)},
    )
    return True
