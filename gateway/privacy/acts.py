"""Destruction acts: what each retention sweep removed, on what basis, with the audit extract.

One act per sweep (dry runs too, marked as such), kept in ``retention_acts`` and written as JSON
and HTML files (``[retention] acts_dir``). The content follows what 152-FZ acts must state
(Roskomnadzor order No. 179 of 28.10.2022): the operator, the information system, whose data
(subjects by contact id), which categories, how many records, the method, the reason (the policy
key and value and the legal basis), the date, who ran it, and the extract of the event log for
the run. A PDF is not produced: no well-kept permissive PDF library is among the dependencies;
print the HTML to PDF from a browser if one is needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jinja2
import sqlite_utils

from gateway.errors import GatewayError
from gateway.privacy import audit

ACT_TITLE = "Act of destruction of personal data"


@dataclasses.dataclass(frozen=True)
class ActSummary:
    id: int
    started_at: str
    finished_at: str | None
    state: str
    dry_run: bool
    actor: str
    policy_version: str
    records: int
    held: int


def list_acts(db: sqlite_utils.Database, limit: int = 50) -> list[ActSummary]:
    rows = db.conn.execute(
        "SELECT id, started_at, finished_at, state, dry_run, actor, policy_version, records, "
        "held FROM retention_acts ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [ActSummary(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7], r[8]) for r in rows]


def load_act(db: sqlite_utils.Database, act_id: int) -> dict[str, Any]:
    """The act as a document (what the JSON file holds)."""
    conn = db.conn
    row = conn.execute(
        "SELECT id, started_at, finished_at, state, dry_run, actor, policy_version, policy, "
        "legal_basis, categories, records, held, audit_first_id, audit_last_id "
        "FROM retention_acts WHERE id = ?",
        (act_id,),
    ).fetchone()
    if row is None:
        raise GatewayError(f"no retention act #{act_id} (see `gateway retention acts`)")
    (
        _id,
        started,
        finished,
        state,
        dry_run,
        actor,
        version,
        policy,
        basis,
        cats,
        records,
        held,
        first,
        last,
    ) = row
    policy_data = json.loads(policy)
    subjects: dict[str, dict[str, int]] = {}
    for category, subject, n in conn.execute(
        "SELECT category, subject, records FROM retention_act_subjects WHERE act_id = ? "
        "ORDER BY subject, category",
        (act_id,),
    ):
        subjects.setdefault(subject or "(no person)", {})[category] = n
    target = f"retention-act:{act_id}"
    extract = [
        e.to_json()
        for e in audit.entries(conn, after_id=(first or 1) - 1)
        if (last is None or e.id <= last)
        and (e.target == target or (e.action == "audit.truncate" and e.actor == actor))
    ]
    holds = [
        dict(
            zip(
                ("id", "contact_id", "conversation_id", "reason", "author", "created_at"),
                h,
                strict=True,
            )
        )
        for h in conn.execute(
            "SELECT id, contact_id, conversation_id, reason, author, created_at FROM legal_holds "
            "WHERE created_at <= ? AND (released_at IS NULL OR released_at > ?) ORDER BY id",
            (finished or started, started),
        )
    ]
    return {
        "act": {
            "id": act_id,
            "title": ACT_TITLE + (" (dry run: nothing was destroyed)" if dry_run else ""),
            "dry_run": bool(dry_run),
            "state": state,
            "started_at": started,
            "finished_at": finished,
            "performed_by": actor,
        },
        "operator": policy_data.get("operator") or "",
        "information_system": policy_data.get("system_name") or "",
        "legal_basis": basis,
        "policy": {"version": version, "settings": policy_data},
        "totals": {"records": records, "held": held},
        "categories": json.loads(cats),
        "subjects": subjects,
        "legal_holds": holds,
        "audit_extract": extract,
    }


def render_json(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, indent=2, sort_keys=False) + "\n"


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ d.act.title }} No. {{ d.act.id }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #111; }
table { border-collapse: collapse; width: 100%; margin: .5em 0 1.5em; }
th, td { border: 1px solid #999; padding: .25em .5em; text-align: left; vertical-align: top; }
td.n { text-align: right; } .dry { color: #a00; font-weight: bold; }
code { font-size: 12px; word-break: break-all; }
</style></head><body>
<h1>{{ d.act.title }} No. {{ d.act.id }}</h1>
{% if d.act.dry_run %}<p class="dry">Dry run: this act lists what would be destroyed;
nothing was changed.</p>{% endif %}
<table>
<tr><th>Operator</th><td>{{ d.operator or "(not set: [retention] operator)" }}</td></tr>
<tr><th>Information system</th><td>{{ d.information_system }}</td></tr>
<tr><th>Started / finished</th><td>{{ d.act.started_at }} / {{ d.act.finished_at or "-" }}
 ({{ d.act.state }})</td></tr>
<tr><th>Performed by</th><td>{{ d.act.performed_by }} (automatic retention sweep)</td></tr>
<tr><th>Legal basis</th><td>{{ d.legal_basis }}</td></tr>
<tr><th>Policy version</th><td><code>{{ d.policy.version }}</code></td></tr>
<tr><th>Records {{ "that would be " if d.act.dry_run }}destroyed</th>
<td>{{ d.totals.records }} ({{ d.totals.held }} held back by legal holds)</td></tr>
</table>
<h2>Categories</h2>
<table><tr><th>Category</th><th>Data and method</th><th>Basis</th><th>Older than</th>
<th>Records</th><th>Held</th><th>Status</th></tr>
{% for c in d.categories %}<tr><td>{{ c.title }}</td><td>{{ c.action }}: {{ c.what }}</td>
<td><code>{{ c.basis }}</code></td><td>{{ c.cutoff or "never" }}</td>
<td class="n">{{ c.records }}</td><td class="n">{{ c.held }}</td>
<td>{{ c.status }}{% if c.reason %}: {{ c.reason }}{% endif %}
{% for why, n in c.kept.items() %}<br>kept {{ n }}: {{ why }}{% endfor %}</td></tr>
{% endfor %}</table>
<h2>Subjects</h2>
{% if d.subjects %}<table><tr><th>Subject</th><th>Records per category</th></tr>
{% for s, per in d.subjects.items() %}<tr><td>{{ s }}</td><td>{% for c, n in per.items() %}
{{ c }}: {{ n }}{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>
{% endfor %}</table>{% else %}<p>None{{ " (not listed in a dry run)" if d.act.dry_run }}.</p>
{% endif %}
<h2>Legal holds in force</h2>
{% if d.legal_holds %}<table><tr><th>Hold</th><th>On</th><th>Reason</th><th>By</th>
<th>Since</th></tr>{% for h in d.legal_holds %}<tr><td>{{ h.id }}</td>
<td>{{ "contact %s"|format(h.contact_id) if h.contact_id else "conversation %s"|format(
h.conversation_id) }}</td><td>{{ h.reason }}</td><td>{{ h.author }}</td>
<td>{{ h.created_at }}</td></tr>{% endfor %}</table>{% else %}<p>None.</p>{% endif %}
<h2>Extract of the audit log</h2>
<table><tr><th>Id</th><th>At</th><th>Actor</th><th>Action</th><th>Outcome</th><th>Detail</th>
<th>Hash</th></tr>{% for e in d.audit_extract %}<tr><td>{{ e.id }}</td><td>{{ e.at }}</td>
<td>{{ e.actor }}</td><td>{{ e.action }}</td><td>{{ e.outcome }}</td>
<td><code>{{ e.detail|tojson }}</code></td><td><code>{{ e.hash }}</code></td></tr>
{% endfor %}</table>
<p>Signature of the responsible person: ______________________ Date: ____________</p>
</body></html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def render_html(document: dict[str, Any]) -> str:
    return _ENV.from_string(_TEMPLATE).render(d=document)


def render(document: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return render_json(document)
    if fmt == "html":
        return render_html(document)
    raise GatewayError(f"unknown act format {fmt!r}: use html or json")


def write_files(document: dict[str, Any], folder: Path) -> list[Path]:
    """Write ``act-<id>.json`` and ``.html`` (0600, folder 0700); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for fmt in ("json", "html"):
        path = folder / f"act-{document['act']['id']:06d}.{fmt}"
        write_private(path, render(document, fmt))
        written.append(path)
    return written


def write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as file:
        file.write(text.encode())
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
