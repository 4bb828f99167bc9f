"""Website form submissions: checked against the form's configured fields, stored in
``form_submissions`` (their own retention category, "forms"), honeypot hits counted as spam.

Throwaway addresses are refused with the list of the ``disposable-email-domains`` package (the
PyPI release of github.com/disposable-email-domains (MIT), a new release for each update of the list): a
domain is blocked if it or any parent domain is on the list.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import email_validator
import sqlite_utils

from gateway.devapi.config import FieldSpec, FormConfig
from gateway.devapi.schema import now
from gateway.privacy import audit

_TRUE = {"on", "true", "1", "yes"}
_FALSE = {"off", "false", "0", "no", ""}


@functools.cache
def _blocklist() -> frozenset[str]:
    from disposable_email_domains import blocklist

    return frozenset(blocklist)


def disposable(domain: str) -> bool:
    labels = domain.lower().rstrip(".").split(".")
    blocked = _blocklist()
    return any(".".join(labels[i:]) in blocked for i in range(len(labels) - 1))


@dataclasses.dataclass(frozen=True)
class Checked:
    data: dict[str, Any]
    errors: list[dict[str, str]]
    spam: bool


def _value(name: str, spec: FieldSpec, raw: Any, block_disposable: bool) -> tuple[Any, str | None]:
    """(clean value, None) or (None, what is wrong and the fix)."""
    if spec.type == "boolean":
        if isinstance(raw, bool):
            return raw, None
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE, None
        return None, "must be true or false (a checkbox: on, true, 1, yes / off, false, 0, no)"
    if spec.type == "integer":
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and re.fullmatch(r"-?[0-9]{1,18}", raw.strip()):
            value = int(raw.strip())
        else:
            return None, "must be a whole number, e.g. 42"
        if abs(value) >= 10**18:
            return None, "must be a whole number below 10^18"
        return value, None
    if not isinstance(raw, str):
        return None, f"must be text, not {type(raw).__name__}"
    try:
        raw.encode()
    except UnicodeEncodeError:
        return None, "must be valid Unicode text"
    if len(raw) > spec.max_length:
        return None, f"is {len(raw)} characters long; at most {spec.max_length} are accepted"
    if spec.type == "string" and ("\n" in raw or "\r" in raw):
        return None, "must be one line (no line breaks)"
    if spec.type == "email" and raw.strip():
        try:
            parsed = email_validator.validate_email(raw.strip(), check_deliverability=False)
        except email_validator.EmailNotValidError as exc:
            return None, f"is not an email address: {exc}"
        if block_disposable and disposable(parsed.ascii_domain):
            return None, (
                f"addresses at {parsed.ascii_domain} (a throwaway-mail service) are not "
                "accepted: use a permanent address"
            )
        return parsed.normalized, None
    if "\x00" in raw:
        return None, "must not contain NUL characters"
    return raw, None


def check_submission(form: FormConfig, raw: Mapping[str, Any]) -> Checked:
    """Validate a submission against the form's fields; ``spam`` when the honeypot is filled."""
    if form.honeypot is not None:
        trap = raw.get(form.honeypot)
        if trap not in (None, "", False):
            return Checked({}, [], spam=True)
    errors: list[dict[str, str]] = []
    allowed = sorted(form.fields)
    for name in raw:
        if name not in form.fields and name != form.honeypot:
            errors.append(
                {"field": str(name)[:64], "problem": f"unknown field; this form takes {allowed}"}
            )
    data: dict[str, Any] = {}
    for name, spec in form.fields.items():
        raw_value = raw.get(name)
        if raw_value is None or raw_value == "":
            if spec.required:
                errors.append({"field": name, "problem": f"is required: give a {spec.type}"})
            continue
        value, problem = _value(name, spec, raw_value, form.block_disposable)
        if problem is not None:
            errors.append({"field": name, "problem": problem})
        else:
            data[name] = value
    return Checked(data, errors, spam=False)


def store_submission_txn(
    db: sqlite_utils.Database, project_id: int, form: str, data: dict[str, Any], origin: str
) -> int:
    row_id = db.conn.execute(
        "INSERT INTO form_submissions (project_id, form, data, origin, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (project_id, form, json.dumps(data, ensure_ascii=False), origin, now()),
    ).lastrowid
    assert row_id is not None
    return row_id


def count_spam_txn(db: sqlite_utils.Database, form: str, origin: str) -> int:
    """Count a honeypot hit (nothing of it is stored) and audit it. Returns today's count."""
    day = dt.datetime.now(dt.UTC).date().isoformat()
    count: int = db.conn.execute(
        "INSERT INTO form_spam (form, day, count) VALUES (?, ?, 1) "
        "ON CONFLICT (form, day) DO UPDATE SET count = count + 1 RETURNING count",
        (form, day),
    ).fetchone()[0]
    audit.append_txn(
        db,
        actor="system",
        action="api.form.spam",
        target=f"form:{form}",
        outcome="denied",
        detail={"origin": origin, "spam_today": count},
    )
    return count


def submissions_page_txn(
    db: sqlite_utils.Database, project_id: int, form: str, after: int, limit: int
) -> list[dict[str, Any]]:
    rows = db.conn.execute(
        "SELECT id, data, origin, created_at, archived_at FROM form_submissions "
        "WHERE project_id = ? AND form = ? AND id > ? ORDER BY id LIMIT ?",
        (project_id, form, after, limit),
    ).fetchall()
    return [
        {
            "id": r[0],
            "data": json.loads(r[1]),
            "origin": r[2],
            "created_at": r[3],
            "archived_at": r[4],
        }
        for r in rows
    ]
