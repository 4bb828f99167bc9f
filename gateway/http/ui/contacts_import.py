"""CSV import of contacts with their consent basis: a preview of every problem first, then one
transaction.

The file (UTF-8, a header row; comma, semicolon or tab separated) has the columns::

    channel,external_id,display_name,language,basis,evidence

``channel`` (a configured channel), ``external_id`` (the platform's user id) and ``basis`` are
required. ``basis`` is what the consent ledger records for the new contact, with the source
``admin:<email>`` and the evidence ``CSV import <file> line <n>: <evidence>``:

- ``consent``: the person agreed to be contacted: service and marketing granted (``evidence``
  required: where and when they agreed, GDPR art. 7(1));
- ``contract`` or ``legitimate_interest``: service granted, nothing recorded for marketing;
- ``withdrawn``: the person opted out: marketing withdrawn (they are never sent notifications).

The preview lists per line: a missing channel or external id, an unknown channel, a bad basis,
consent without evidence, a bad language code, a duplicate (earlier in the file, or an existing
contact). Nothing is written until the import, which checks again inside its transaction
(``contacts_import_txn``): rows with problems are skipped only when asked, else nothing is
imported. The import is audited once (``contacts.import``, with counts) and each consent record
by the ledger (``consent.grant`` / ``consent.withdraw``).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
from collections.abc import Iterable, Sequence
from typing import Any

import quart
import sqlite_utils
from quart import Blueprint, request

from gateway.errors import GatewayError
from gateway.http.ui.security import current, require, state
from gateway.privacy import audit
from gateway.privacy.consent_ledger import grant_consent_txn, withdraw_consent_txn
from gateway.privacy.rights import LANGUAGE, MAX_NAME
from gateway.store.journal import now

COLUMNS = ("channel", "external_id", "display_name", "language", "basis", "evidence")
REQUIRED = ("channel", "external_id", "basis")
BASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "consent": ("granted", ("service", "marketing")),
    "contract": ("granted", ("service",)),
    "legitimate_interest": ("granted", ("service",)),
    "withdrawn": ("withdrawn", ("marketing",)),
}
MAX_ROWS = 20_000
MAX_CELL = 300
SHOWN_ERRORS = 500


class ImportRefused(GatewayError):
    """The file has problems and skipping them was not asked for: nothing was imported."""

    def __init__(self, checked: Checked) -> None:
        super().__init__(
            f"{checked.bad_lines} line(s) have problems; nothing was imported (fix them, or "
            "tick the box to import only the lines without problems)"
        )
        self.checked = checked


@dataclasses.dataclass(frozen=True)
class ImportRow:
    line: int
    channel: str
    external_id: str
    display_name: str | None
    language: str | None
    basis: str
    evidence: str | None


@dataclasses.dataclass(frozen=True)
class RowError:
    line: int
    column: str
    problem: str


@dataclasses.dataclass
class Checked:
    rows: list[ImportRow]
    """Rows without a problem."""
    errors: list[RowError]
    lines: int
    """Data lines read (blank ones not counted)."""
    file_error: str | None = None

    @property
    def bad_lines(self) -> int:
        return len({e.line for e in self.errors})

    def bases(self) -> dict[str, int]:
        return dict(collections.Counter(r.basis for r in self.rows))


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GatewayError(
            f"the file is not UTF-8 text (byte {exc.start}): save it as CSV UTF-8"
        ) from None


def _dialect(text: str) -> type[csv.Dialect] | csv.Dialect:
    header = text.split("\n", 1)[0]
    try:
        return csv.Sniffer().sniff(header, delimiters=",;\t")
    except csv.Error:
        return csv.excel


def parse_csv(data: bytes, channels: Iterable[str]) -> Checked:
    """Read and check a file without the database (``channels``: the configured ones)."""
    known = set(channels)
    try:
        text = _decode(data)
    except GatewayError as exc:
        return Checked([], [], 0, str(exc))
    reader = csv.reader(io.StringIO(text, newline=""), _dialect(text))
    header = [h.strip().lower().replace(" ", "_") for h in next(reader, [])]
    if not any(header):
        return Checked([], [], 0, f"the file is empty; the header is: {','.join(COLUMNS)}")
    unknown = [h for h in header if h not in COLUMNS]
    missing = [c for c in REQUIRED if c not in header]
    if missing or unknown:
        problem = (f"unknown column(s) {', '.join(map(repr, unknown))}; " if unknown else "") + (
            f"missing column(s) {', '.join(missing)}; " if missing else ""
        )
        return Checked([], [], 0, f"{problem}the header is: {','.join(COLUMNS)}")
    rows: list[ImportRow] = []
    errors: list[RowError] = []
    seen: dict[tuple[str, str], int] = {}
    lines = 0
    for number, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        lines += 1
        if lines > MAX_ROWS:
            return Checked([], [], lines, f"more than {MAX_ROWS} lines: split the file")
        values = {h: (cells[i].strip() if i < len(cells) else "") for i, h in enumerate(header)}
        problems = _check(values, known)
        key = (values["channel"], values["external_id"])
        if all(key) and key in seen:
            problems.append(("external_id", f"duplicate of line {seen[key]}"))
        elif all(key):
            seen[key] = number
        if problems:
            errors += [RowError(number, column, problem) for column, problem in problems]
            continue
        rows.append(
            ImportRow(
                number,
                values["channel"],
                values["external_id"],
                " ".join(values.get("display_name", "").split()) or None,
                values.get("language") or None,
                values["basis"].lower(),
                values.get("evidence") or None,
            )
        )
    return Checked(rows, errors, lines)


def _check(values: dict[str, str], known: set[str]) -> list[tuple[str, str]]:
    problems = []
    channel, external_id = values["channel"], values["external_id"]
    if not channel:
        problems.append(("channel", "missing channel"))
    elif channel not in known:
        problems.append(
            ("channel", f"no channel {channel[:40]!r} is configured ({', '.join(sorted(known))})")
        )
    if not external_id:
        problems.append(("external_id", "missing external id (the platform's user id)"))
    basis = values["basis"].lower()
    if basis not in BASES:
        problems.append(
            ("basis", f"bad basis {values['basis'][:40]!r}: use one of {', '.join(BASES)}")
        )
    elif basis == "consent" and not values.get("evidence"):
        problems.append(("evidence", "consent needs its evidence (where and when they agreed)"))
    language = values.get("language", "")
    if language and not LANGUAGE.match(language):
        problems.append(("language", f"{language[:20]!r} is not a language code (en, ru, pt-BR)"))
    if len(values.get("display_name", "")) > MAX_NAME:
        problems.append(("display_name", f"longer than {MAX_NAME} characters"))
    for column, value in values.items():
        if column != "display_name" and len(value) > MAX_CELL:
            problems.append((column, f"longer than {MAX_CELL} characters"))
    return problems


def existing_txn(db: sqlite_utils.Database, rows: Sequence[ImportRow]) -> list[RowError]:
    """Rows whose identity is already a contact's."""
    errors = []
    for start in range(0, len(rows), 400):
        chunk = rows[start : start + 400]
        terms = " OR ".join("(channel = ? AND external_id = ?)" for _ in chunk)
        args = [v for r in chunk for v in (r.channel, r.external_id)]
        found = {
            (c, e): k
            for c, e, k in db.conn.execute(
                f"SELECT channel, external_id, contact_id FROM identities WHERE {terms}", args
            )
        }
        for r in chunk:
            if (r.channel, r.external_id) in found:
                contact = found[(r.channel, r.external_id)]
                errors.append(RowError(r.line, "external_id", f"duplicate: contact {contact}"))
    return errors


def check_txn(db: sqlite_utils.Database, checked: Checked) -> Checked:
    """The file's own problems plus the rows that already exist."""
    existing = existing_txn(db, checked.rows)
    bad = {e.line for e in existing}
    errors = sorted([*checked.errors, *existing], key=lambda e: e.line)
    return Checked([r for r in checked.rows if r.line not in bad], errors, checked.lines)


def contacts_import_txn(
    db: sqlite_utils.Database,
    checked: Checked,
    *,
    email: str,
    filename: str,
    skip_errors: bool,
) -> Checked:
    """Import the rows (checked again here, in the transaction); returns what was imported."""
    if checked.file_error:
        raise GatewayError(checked.file_error)
    final = check_txn(db, checked)
    if final.errors and not skip_errors:
        raise ImportRefused(final)
    conn = db.conn
    actor = f"admin:{email}"
    ts = now()
    for row in final.rows:
        contact_id = conn.execute(
            "INSERT INTO contacts (display_name, language, created_at, updated_at) "
            "VALUES (?, ?, ?, ?)",
            (row.display_name, row.language, ts, ts),
        ).lastrowid
        assert contact_id is not None
        conn.execute(
            "INSERT INTO identities (contact_id, channel, external_id, display_name, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (contact_id, row.channel, row.external_id, row.display_name, ts),
        )
        state_, purposes = BASES[row.basis]
        record = grant_consent_txn if state_ == "granted" else withdraw_consent_txn
        evidence = f"CSV import {filename} line {row.line} (basis {row.basis})" + (
            f": {row.evidence}" if row.evidence else ""
        )
        for purpose in purposes:
            record(db, contact_id, purpose, actor, evidence, actor=actor)
    audit.append_txn(
        db,
        actor=actor,
        action="contacts.import",
        target=None,
        detail={
            "file": filename,
            "lines": final.lines,
            "imported": len(final.rows),
            "skipped": final.bad_lines,
            "bases": final.bases(),
        },
    )
    return final


async def _form_file() -> tuple[bytes, str]:
    files = await request.files
    upload = files.get("file")
    if upload is not None and upload.filename:
        data: bytes = upload.read()
        return data, upload.filename
    form = await request.form
    return form.get("csv", "").encode(), form.get("filename", "") or "pasted.csv"


def _filename(name: str) -> str:
    return "".join(c for c in name if c.isalnum() or c in "._- ")[:100] or "upload.csv"


async def _page(status: int = 200, **context: Any) -> quart.Response:
    checked: Checked | None = context.get("checked")
    body = await quart.render_template(
        "ui/contacts_import.html",
        **{
            "checked": None,
            "done": None,
            "refused": None,
            "csv_text": "",
            "filename": "",
            **context,
        },
        errors=checked.errors[:SHOWN_ERRORS] if checked else [],
        columns=COLUMNS,
        bases=BASES,
    )
    return quart.Response(body, status=status)


def register(bp: Blueprint) -> None:
    @bp.get("/import")
    @require("contacts.import")
    async def import_form() -> Any:
        return await _page()

    @bp.post("/import/preview")
    @require("contacts.import")
    async def import_preview() -> Any:
        data, name = await _form_file()
        services = state().services
        checked = parse_csv(data, services.config.channels)
        if checked.file_error is None:
            checked = await services.store.read("import check", check_txn, checked)
        return await _page(
            200 if checked.file_error is None else 400,
            checked=checked,
            csv_text=data.decode("utf-8", "replace"),
            filename=_filename(name),
        )

    @bp.post("/import")
    @require("contacts.import")
    async def import_contacts() -> Any:
        form = await request.form
        text, name = form.get("csv", ""), _filename(form.get("filename", ""))
        services = state().services
        checked = parse_csv(text.encode(), services.config.channels)
        session = current()
        try:
            done = await services.store.write(
                "contacts import",
                lambda db: contacts_import_txn(
                    db,
                    checked,
                    email=session.email,
                    filename=name,
                    skip_errors=form.get("skip_errors") == "1",
                ),
            )
        except ImportRefused as exc:
            return await _page(
                409, checked=exc.checked, csv_text=text, filename=name, refused=str(exc)
            )
        except GatewayError as exc:
            return await _page(400, checked=Checked([], [], 0, str(exc)))
        return await _page(done=done, filename=name)
