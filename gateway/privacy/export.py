"""Export (access + portability): one ZIP per data subject, machine-readable and documented.

Each data file comes as JSON (an array of objects) and CSV (one row per object; nested values
as JSON text) with the same fields, listed in :data:`FILES`; ``schema.json`` in the ZIP is the
JSON Schema of every JSON file and ``README.md`` explains them, ``summary.txt`` tells a person
what is held, why, who received it, for how long and where it came from. Attachments are the
opened (decrypted) files under ``files/``.

Memory stays bounded: messages are read a page at a time along the (conversation, id) index
(gateway.store.bodies.conversation_messages) and written as they come, once: the JSON goes straight into the ZIP while the CSV and the
analysis files are spooled to temporary files and copied in afterwards. The whole export reads
one snapshot (one read transaction), so it is consistent while messages keep arriving.

API::

    summary = write_export(conn, sealer, contact_id, dest, config=config, request_id=None)
    record_export_txn(db, summary, actor=..., request_id=None)   # audit (+ complete request)
    summary = await export_contact(services, contact_id, dest, actor=..., request_id=None)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gateway.privacy import audit
from gateway.privacy.consent_ledger import consent_history, consent_status
from gateway.privacy.export_schema import FILES, readme, schema
from gateway.privacy.export_summary import summary_text
from gateway.privacy.requests import RequestError, check_contact, list_requests, now
from gateway.privacy.rights import check_request, complete_request, rectification_history
from gateway.privacy.sealing import Sealer
from gateway.store.bodies import StoredMessage, conversation_messages

if TYPE_CHECKING:
    import sqlite_utils

    from gateway.config import GatewayConfig
    from gateway.services import Services

CHUNK = 1 << 16
PAGE = 1_000
"""Bytes copied at a time (spools into the ZIP, the checksum): memory stays flat."""


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    contact_id: int
    path: str
    created_at: str
    counts: dict[str, int]
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value


class _Table:
    """One data file being written: JSON into the ZIP (or a spool), CSV into a spool."""

    def __init__(self, name: str, json_out: IO[bytes]) -> None:
        self.name = name
        self.fields = [f[0] for f in FILES[name]["fields"]]
        self.json = io.TextIOWrapper(json_out, encoding="utf-8", newline="\n")
        self.spool = tempfile.TemporaryFile()
        self.csv_text = io.TextIOWrapper(self.spool, encoding="utf-8", newline="")
        self.csv = csv.writer(self.csv_text)
        self.csv.writerow(self.fields)
        self.rows = 0

    def add(self, row: dict[str, Any]) -> None:
        assert list(row) == self.fields, (self.name, list(row))
        self.json.write(("[\n" if self.rows == 0 else ",\n") + json.dumps(row, ensure_ascii=False))
        self.csv.writerow([_cell(row[f]) for f in self.fields])
        self.rows += 1

    def close_json(self) -> None:
        self.json.write("[]\n" if self.rows == 0 else "\n]\n")
        self.json.flush()
        self.json.detach()

    def copy_csv(self, zf: zipfile.ZipFile) -> None:
        self.csv_text.flush()
        self.csv_text.detach()
        self.spool.seek(0)
        with zf.open(f"{self.name}.csv", "w", force_zip64=True) as out:
            shutil.copyfileobj(self.spool, out, CHUNK)
        self.spool.close()


def _write_table(zf: zipfile.ZipFile, name: str, rows: Iterable[dict[str, Any]]) -> int:
    with zf.open(f"{name}.json", "w", force_zip64=True) as out:
        table = _Table(name, out)
        for row in rows:
            table.add(row)
        table.close_json()
    table.copy_csv(zf)
    return table.rows


def _dicts(conn: sqlite3.Connection, sql: str, *args: Any) -> Iterator[dict[str, Any]]:
    cursor = conn.execute(sql, args)
    names = [d[0] for d in cursor.description]
    for row in cursor:
        yield dict(zip(names, row, strict=True))


def _json_field(rows: Iterable[dict[str, Any]], *fields: str) -> Iterator[dict[str, Any]]:
    for row in rows:
        for field in fields:
            if isinstance(row[field], str):
                row[field] = json.loads(row[field])
        yield row


def _safe_name(attachment_id: int, filename: str | None, uuid: str) -> str:
    base = re.sub(r"[^\w.-]+", "_", Path(filename or "").name).strip("._") or uuid
    return f"files/{attachment_id}-{base[:80]}"


def _stream_messages(
    sealer: Sealer, conn: sqlite3.Connection, contact_id: int
) -> Iterator[StoredMessage]:
    """The contact's messages, conversation by conversation, oldest first, PAGE at a time.

    Not ``bodies.contact_messages``: its ORDER BY across conversations makes SQLite sort every
    row in a temporary b-tree, in memory with SQLCipher (TEMP_STORE=2): ~30 MB for 100k
    messages. Here each page follows the (conversation_id, id) index: nothing is sorted."""
    conversations = conn.execute(
        "SELECT id FROM conversations WHERE contact_id = ? ORDER BY id", (contact_id,)
    ).fetchall()
    for (conversation,) in conversations:
        ids = conn.execute(
            "SELECT id FROM messages WHERE conversation_id = ? ORDER BY id", (conversation,)
        )
        while page := ids.fetchmany(PAGE):
            yield from conversation_messages(
                sealer, conn, conversation, limit=len(page), before_id=page[-1][0] + 1
            )


def _messages(
    zf: zipfile.ZipFile, sealer: Sealer, conn: sqlite3.Connection, contact_id: int
) -> tuple[int, int]:
    """messages.json into the ZIP, messages.csv and analysis.* spooled: one pass."""
    analysis_json = tempfile.TemporaryFile()
    with zf.open("messages.json", "w", force_zip64=True) as out:
        messages = _Table("messages", out)
        analysis = _Table("analysis", analysis_json)
        for m in _stream_messages(sealer, conn, contact_id):
            labels = json.loads(m.analysis) if m.analysis else None
            messages.add(
                {
                    "id": m.id,
                    "conversation_id": m.conversation_id,
                    "direction": m.direction,
                    "author": m.author,
                    "text": m.text,
                    "created_at": m.created_at,
                    "external_id": m.external_id,
                    "analysis": labels,
                }
            )
            if labels is not None:
                analysis.add(
                    {"message_id": m.id, **{k: labels.get(k) for k in analysis.fields[1:]}}
                )
        messages.close_json()
        analysis.close_json()
    messages.copy_csv(zf)
    analysis_json.seek(0)
    with zf.open("analysis.json", "w") as out:
        shutil.copyfileobj(analysis_json, out, CHUNK)
    analysis_json.close()
    analysis.copy_csv(zf)
    return messages.rows, analysis.rows


def _attachments(
    zf: zipfile.ZipFile, sealer: Sealer, conn: sqlite3.Connection, contact_id: int
) -> list[dict[str, Any]]:
    """Write each opened file under files/ (one at a time); return the rows describing them."""
    rows = []
    for row in _dicts(
        conn,
        "SELECT id, message_id, event_id, conversation_id, kind, mime_type, filename, size, "
        "sha256, state, source_ref, category, created_at, uuid, path FROM attachments "
        "WHERE contact_id = ? ORDER BY id",
        contact_id,
    ):
        uuid, path = row.pop("uuid"), row.pop("path")
        row["file"] = None
        if row["state"] == "sealed" and path:
            row["file"] = _safe_name(row["id"], row["filename"], uuid)
            with zf.open(row["file"], "w", force_zip64=True) as out:
                out.write(sealer.open(conn, contact_id, uuid, Path(path)))
        rows.append(row)
    return rows


def write_export(
    conn: sqlite3.Connection,
    sealer: Sealer,
    contact_id: int,
    dest: Path,
    *,
    config: GatewayConfig | None = None,
    request_id: int | None = None,
) -> ExportSummary:
    """Write the contact's ZIP to ``dest`` (0600, replaced atomically). Read-only: audit it with
    :func:`record_export_txn`."""
    check_contact(conn, contact_id)
    check_request(conn, request_id, contact_id, ("access", "portability"))
    dest = Path(dest)
    if dest.suffix.lower() != ".zip":
        raise RequestError(f"the export is a ZIP file: name it *.zip, not {dest.name!r}")
    if not dest.parent.is_dir():
        raise RequestError(f"directory {dest.parent} does not exist")
    created = now()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    began = not conn.in_transaction
    if began:
        conn.execute("BEGIN")  # one snapshot for the whole export
    counts: dict[str, int] = {}
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with (
            os.fdopen(fd, "wb") as raw,
            zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf,
        ):
            convs = "SELECT id FROM conversations WHERE contact_id = ?"
            counts["contact"] = _write_table(
                zf,
                "contact",
                _dicts(
                    conn,
                    "SELECT id, display_name, language, created_at, updated_at, ai_enabled, "
                    "restricted FROM contacts WHERE id = ?",
                    contact_id,
                ),
            )
            counts["identities"] = _write_table(
                zf,
                "identities",
                _dicts(
                    conn,
                    "SELECT id, channel, external_id, display_name, created_at FROM identities "
                    "WHERE contact_id = ? ORDER BY id",
                    contact_id,
                ),
            )
            counts["conversations"] = _write_table(
                zf,
                "conversations",
                _dicts(
                    conn,
                    "SELECT id, channel, account, thread_key, agent, status, ai_enabled, "
                    "created_at, last_message_at FROM conversations WHERE contact_id = ? "
                    "ORDER BY id",
                    contact_id,
                ),
            )
            counts["messages"], counts["analysis"] = _messages(zf, sealer, conn, contact_id)
            counts["attachments"] = _write_table(
                zf, "attachments", _attachments(zf, sealer, conn, contact_id)
            )
            counts["events"] = _write_table(
                zf,
                "events",
                _json_field(
                    _dicts(
                        conn,
                        "SELECT id, conversation_id, at, kind, actor, reason, detail FROM "
                        f"conversation_events WHERE conversation_id IN ({convs}) ORDER BY id",
                        contact_id,
                    ),
                    "detail",
                ),
            )
            counts["consents"] = _write_table(zf, "consents", consent_history(conn, contact_id))
            counts["transfers"] = _write_table(
                zf,
                "transfers",
                _json_field(
                    _dicts(
                        conn,
                        "SELECT id, at, conversation_id, agent, provider, plugin, region, "
                        "purpose, categories, redacted, legal_basis, bytes_out, bytes_in, "
                        f"outcome FROM transfers WHERE conversation_id IN ({convs}) ORDER BY id",
                        contact_id,
                    ),
                    "categories",
                ),
            )
            counts["rectifications"] = _write_table(
                zf, "rectifications", rectification_history(conn, contact_id)
            )
            counts["requests"] = _write_table(
                zf,
                "requests",
                (
                    {f: r.to_json()[f] for f in (x[0] for x in FILES["requests"]["fields"])}
                    for r in list_requests(conn, open_only=False, contact_id=contact_id)
                ),
            )
            status = {p: s.to_json() for p, s in consent_status(conn, contact_id).items()}
            zf.writestr(
                "summary.txt",
                summary_text(conn, contact_id, counts, status, config, created, request_id),
            )
            zf.writestr("schema.json", json.dumps(schema(), indent=2, ensure_ascii=False) + "\n")
            zf.writestr("README.md", readme())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    finally:
        if began and conn.in_transaction:
            conn.rollback()
    digest = hashlib.sha256()
    with dest.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return ExportSummary(
        contact_id, str(dest), created, counts, dest.stat().st_size, digest.hexdigest()
    )


def record_export_txn(
    db: sqlite_utils.Database,
    summary: ExportSummary,
    *,
    actor: str,
    request_id: int | None = None,
) -> None:
    """Audit an export (and complete its request, with the summary as outcome)."""
    audit.append_txn(
        db,
        actor=actor,
        action="privacy.export",
        target=f"contact:{summary.contact_id}",
        detail={
            "request": request_id,
            "sha256": summary.sha256,
            "bytes": summary.bytes,
            **summary.counts,
        },
    )
    complete_request(db, request_id, actor, {"export": summary.to_json()})


async def export_contact(
    services: Services,
    contact_id: int,
    dest: Path,
    *,
    actor: str,
    request_id: int | None = None,
) -> ExportSummary:
    """Export from the running daemon (a reader thread), then audit it."""
    store = services.store

    def _export(db: sqlite_utils.Database) -> ExportSummary:
        return write_export(
            db.conn,
            store.sealer,
            contact_id,
            dest,
            config=services.config,
            request_id=request_id,
        )

    summary: ExportSummary = await store.read("export contact", _export)
    await store.write(
        "record export", record_export_txn, summary, actor=actor, request_id=request_id
    )
    return summary
