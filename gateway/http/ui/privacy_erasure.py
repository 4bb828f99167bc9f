"""Carrying out access and erasure requests from the desk.

- **Export** (access, portability): the subject's ZIP is written by
  :func:`gateway.privacy.export.write_export` on a reader (one snapshot) into a private folder
  of ``data_dir``, audited (``privacy.export``, completing the request), then opened, unlinked
  at once (nothing stays on disk whatever happens to the download) and streamed in 64 KiB
  chunks: memory stays flat for a contact with 100k messages.
- **Erasure**: a confirmation page says what goes and what stays and asks to type
  ``ERASE <contact id>``; the erasure runs :func:`gateway.privacy.erasure.execute_erasure_txn`
  (one transaction, audited, the request completed with the receipt), then the contact's words
  leave the search index; a legal hold refuses it with the engine's message. The receipt page
  shows what was erased and kept, and offers it as text for the subject.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import quart
import sqlite_utils
import trio
from quart import Blueprint, request

from gateway.errors import GatewayError
from gateway.http.ui import contacts_data, security
from gateway.http.ui.privacy_app import load_request, not_found, refused
from gateway.http.ui.security import current, require, state
from gateway.privacy import erasure, export
from gateway.store import search

CHUNK = 1 << 16
EXPORTS_DIR = "ui-exports"
EXPORT_KINDS = ("access", "portability")


def exports_folder(data_dir: Path) -> Path:
    folder = data_dir / EXPORTS_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


async def stream_file(file: IO[bytes]) -> AsyncIterator[bytes]:
    """An open (already unlinked) file's bytes, a chunk at a time, read off the event loop."""
    try:
        while chunk := await trio.to_thread.run_sync(file.read, CHUNK):
            yield chunk
    finally:
        file.close()


def _preview_txn(db: sqlite_utils.Database, contact_id: int) -> dict[str, Any]:
    conn = db.conn
    conversations = [
        r[0]
        for r in conn.execute("SELECT id FROM conversations WHERE contact_id = ?", (contact_id,))
    ]
    marks = ",".join(str(int(c)) for c in conversations) or "NULL"

    def count(sql: str, *args: Any) -> int:
        return int(conn.execute(sql, args).fetchone()[0])

    return {
        "conversations": len(conversations),
        "messages": count(f"SELECT count(*) FROM messages WHERE conversation_id IN ({marks})"),
        "attachments": count("SELECT count(*) FROM attachments WHERE contact_id = ?", contact_id),
        "identities": count("SELECT count(*) FROM identities WHERE contact_id = ?", contact_id),
        "consents": count(
            "SELECT count(*) FROM consents WHERE identity_id IN "
            "(SELECT id FROM identities WHERE contact_id = ?)",
            contact_id,
        ),
        "hold": erasure.legal_hold(conn, contact_id, conversations),
    }


def confirmation_word(contact_id: int) -> str:
    return f"ERASE {contact_id}"


def register(bp: Blueprint) -> None:
    @bp.post("/requests/<int:request_id>/export")
    @require("privacy.act")
    async def export_request(request_id: int) -> Any:
        found = await load_request(request_id)
        if found is None:
            return await not_found(f"data-subject request #{request_id}")
        if found.kind not in EXPORT_KINDS or found.contact_id is None:
            return await refused(
                GatewayError(
                    f"request #{request_id} asks for {found.kind}"
                    + ("" if found.contact_id else " and names no contact")
                    + ": an export answers an access or portability request about a contact"
                ),
                400,
            )
        if not found.is_open and found.status != "completed":
            return await refused(GatewayError(f"request #{request_id} was {found.status}"))
        services = state().services
        folder = await trio.to_thread.run_sync(exports_folder, services.config.data_dir)
        path = folder / f"{secrets.token_hex(8)}.zip"
        # An open request is answered (completed) by this export; a completed one may be
        # downloaded again, audited as an export of the contact.
        answering = request_id if found.is_open else None
        try:
            summary = await export.export_contact(
                services, found.contact_id, path, actor=current().actor, request_id=answering
            )
        except GatewayError as exc:
            await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
            return await refused(exc)
        except BaseException:
            await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
            raise
        file = await trio.to_thread.run_sync(path.open, "rb")
        await trio.to_thread.run_sync(os.unlink, path)
        response = quart.Response(stream_file(file), content_type="application/zip")
        name = f"contact-{found.contact_id}-request-{request_id}.zip"
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        response.headers["Content-Length"] = str(summary.bytes)
        response.headers["X-Export-SHA256"] = summary.sha256
        return response

    @bp.get("/requests/<int:request_id>/erase")
    @require("privacy.erase")
    async def erase_page(request_id: int) -> Any:
        found = await load_request(request_id)
        if found is None:
            return await not_found(f"data-subject request #{request_id}")
        if found.kind != "erasure" or found.contact_id is None:
            return await refused(
                GatewayError(f"request #{request_id} is not an erasure request about a contact"),
                400,
            )
        if not found.is_open:
            return quart.redirect(quart.url_for("privacy.receipt", request_id=request_id), 303)
        store = state().services.store
        row = await store.read("contact", contacts_data.contact_row_txn, found.contact_id)
        preview = await store.read("erasure preview", _preview_txn, found.contact_id)
        return await quart.render_template(
            "ui/privacy_erase.html",
            r=found,
            contact=row,
            preview=preview,
            word=confirmation_word(found.contact_id),
            kept=erasure.KEPT_TABLES,
        )

    @bp.post("/requests/<int:request_id>/erase")
    @require("privacy.erase")
    async def erase(request_id: int) -> Any:
        found = await load_request(request_id)
        if found is None:
            return await not_found(f"data-subject request #{request_id}")
        if found.contact_id is None:
            return await refused(GatewayError(f"request #{request_id} names no contact"), 400)
        typed = " ".join((await request.form).get("confirm", "").split())
        if typed != confirmation_word(found.contact_id):
            return await refused(
                GatewayError(
                    f"type {confirmation_word(found.contact_id)} to confirm the erasure; "
                    "nothing was erased"
                ),
                400,
            )
        services = state().services
        store = services.store
        try:
            receipt = await store.write(
                "erase contact",
                erasure.execute_erasure_txn,
                store.sealer,
                request_id,
                actor=current().actor,
            )
        except GatewayError as exc:
            await security.audit_event(
                "privacy.erase",
                target=f"contact:{found.contact_id}",
                outcome="denied",
                detail={"request": request_id, "reason": str(exc)[:300]},
            )
            return await refused(exc)
        # After the commit: the contact's words leave the search index (search.db).
        await search.forget_contact(services, receipt.contact_id)
        return quart.redirect(quart.url_for("privacy.receipt", request_id=request_id), 303)

    @bp.get("/requests/<int:request_id>/receipt")
    @require("privacy.view")
    async def receipt(request_id: int) -> Any:
        found = await load_request(request_id)
        if found is None:
            return await not_found(f"data-subject request #{request_id}")
        outcome = found.outcome or {}
        if "erased" not in outcome:
            return await not_found(f"erasure receipt for request #{request_id} (not erased yet)")
        try:
            made = erasure.ErasureReceipt(**outcome)
        except TypeError:  # a receipt written by another version: show what it holds
            return await quart.render_template(
                "ui/privacy_receipt.html", r=found, receipt=None, outcome=outcome
            )
        if request.args.get("format") == "txt":
            response = quart.Response(made.to_text(), content_type="text/plain; charset=utf-8")
            name = re.sub(r"\D", "", str(request_id))
            response.headers["Content-Disposition"] = (
                f'attachment; filename="erasure-receipt-{name}.txt"'
            )
            return response
        return await quart.render_template(
            "ui/privacy_receipt.html", r=found, receipt=made, outcome=outcome
        )
