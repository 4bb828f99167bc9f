"""The register of data-subject requests, with their two deadline clocks.

A request is one person asking to exercise a right (``kind``): access, portability,
rectification, restriction, objection or erasure. It arrives through a ``channel`` (``admin``
UI, ``cli``, ``chat`` command, developer ``api``), is verified (``unverified`` -> ``verified`` |
``failed``, with the method and a note), moves through ``received`` -> ``in_progress`` /
``scheduled`` -> ``completed`` | ``refused`` | ``withdrawn``, and every change is a row in
``request_events`` and an audit entry, in the same transaction.

Two clocks run from the calendar date it was received on (``[privacy] timezone``):

- **GDPR** (art. 12(3)): one month, to the same date of the next month (the month's last day
  when there is none: 31 Jan -> 28/29 Feb). It may be extended once by one or two more months,
  with a reason, decided before the month runs out. A deadline on a weekend is not moved to the
  next working day (Regulation 1182/71 would allow it): the earlier date is the safe one.
- **152-FZ** (art. 14 part 3, art. 20): ten working days on the Russian calendar
  (:mod:`gateway.privacy.calendar_ru`), counted from the day after receipt; extendable once by
  five working days with a reasoned notice to the subject (the notice is recorded). The law's
  shorter clocks for some acts (seven working days to correct data) are not modelled: the
  ten-day clock is the one an operator is reminded of.

Python API (the admin UI, the developer API and the chat commands call these; every ``*_txn``
runs inside ``Store.write`` or a CLI transaction and audits itself)::

    create_request_txn(db, kind=, channel=, actor=, contact_id=, identity_id=, requester=,
                       details=, source_ref=, received_at=, tz=) -> Request
    verify_request_txn(db, request_id, *, verified: bool, method, note, actor) -> Request
    extend_gdpr_txn(db, request_id, *, months, reason, actor, today=None) -> Request
    extend_ru_txn(db, request_id, *, notice, actor, today=None) -> Request
    set_status_txn(db, request_id, status, *, actor, note=None, outcome=None) -> Request
    get_request(conn, request_id) -> Request            (LookupError if unknown)
    list_requests(conn, *, open_only=True, contact_id=None) -> list[Request]
    request_events(conn, request_id) -> list[dict]
    due_requests(conn, today, within_days) -> list[Request]   (open, nearest deadline first)
    remind_txn(db, today, within_days) -> list[Request]       (the reminder job's work)

From async code in the daemon (admin UI, developer API), with ``services`` (gateway.services)::

    await dsr_daemon.create_request(services, kind=, channel=, actor=, contact_id=, ...)
    await export.export_contact(services, contact_id, Path("x.zip"), actor=, request_id=)
    await dsr_daemon.erase_contact(services, contact_id, actor=, basis=, request_id=)
    await services.store.write("verify", verify_request_txn, request_id, verified=True, ...)

Carrying a request out lives beside the data it touches: :mod:`gateway.privacy.export`
(``export_contact``), :mod:`gateway.privacy.erasure` (``erase_contact_txn``,
``execute_erasure_txn``), :mod:`gateway.privacy.rights` (rectify, restrict, object) and
:mod:`gateway.privacy.consent_ledger`. Bad input raises :class:`RequestError` (a GatewayError
whose message names the problem and the fix) and changes nothing.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import json
import sqlite3
import zoneinfo
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.privacy import audit, calendar_ru

if TYPE_CHECKING:
    import sqlite_utils

KINDS = ("access", "portability", "rectification", "restriction", "objection", "erasure")
CHANNELS = ("admin", "cli", "chat", "api")
STATUSES = ("received", "in_progress", "scheduled", "completed", "refused", "withdrawn")
OPEN = ("received", "in_progress", "scheduled")
RU_DAYS = 10
RU_EXTENSION_DAYS = 5
GDPR_MAX_EXTENSION_MONTHS = 2
_NEXT = {
    "received": {"in_progress", "scheduled", "completed", "refused", "withdrawn"},
    "in_progress": {"scheduled", "completed", "refused", "withdrawn"},
    "scheduled": {"in_progress", "completed", "refused", "withdrawn"},
}


class RequestError(GatewayError):
    """A data-subject request operation that cannot be done as asked (nothing was changed)."""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def add_months(day: dt.date, months: int) -> dt.date:
    month0 = day.month - 1 + months
    year, month = day.year + month0 // 12, month0 % 12 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def gdpr_due(received_on: dt.date, extension_months: int = 0) -> dt.date:
    return add_months(received_on, 1 + extension_months)


def ru_due(received_on: dt.date, extended: bool = False) -> dt.date:
    return calendar_ru.add_working_days(
        received_on, RU_DAYS + (RU_EXTENSION_DAYS if extended else 0)
    )


def local_date(at: dt.datetime, tz: str) -> dt.date:
    return at.astimezone(zoneinfo.ZoneInfo(tz)).date()


@dataclasses.dataclass(frozen=True)
class Request:
    id: int
    kind: str
    channel: str
    contact_id: int | None
    identity_id: int | None
    requester: str | None
    details: dict[str, Any] | None
    source_ref: str | None
    received_at: str
    received_on: dt.date
    status: str
    verification: str
    verification_method: str | None
    verification_note: str | None
    verified_at: str | None
    verified_by: str | None
    gdpr_due: dt.date
    gdpr_extension_months: int
    gdpr_extension_reason: str | None
    ru_due: dt.date
    ru_extension_notice: str | None
    execute_after: str | None
    closed_at: str | None
    outcome: dict[str, Any] | None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @property
    def next_due(self) -> dt.date:
        """The earlier of the two deadlines."""
        return min(self.gdpr_due, self.ru_due)

    @property
    def provisional(self) -> bool:
        """The 152-FZ deadline falls in a year whose day transfers are not decreed yet."""
        return not all(
            calendar_ru.is_certain(y) for y in range(self.received_on.year, self.ru_due.year + 1)
        )

    def days_left(self, today: dt.date) -> int:
        return (self.next_due - today).days

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("received_on", "gdpr_due", "ru_due"):
            data[key] = data[key].isoformat()
        data["open"] = self.is_open
        data["ru_due_provisional"] = self.provisional
        return data


_COLUMNS = (
    "id, kind, channel, contact_id, identity_id, requester, details, source_ref, received_at, "
    "received_on, status, verification, verification_method, verification_note, verified_at, "
    "verified_by, gdpr_due, gdpr_extension_months, gdpr_extension_reason, ru_due, "
    "ru_extension_notice, execute_after, closed_at, outcome"
)


def _request(row: tuple[Any, ...]) -> Request:
    values = list(row)
    values[6] = json.loads(values[6]) if values[6] else None
    values[9] = dt.date.fromisoformat(values[9])
    values[16] = dt.date.fromisoformat(values[16])
    values[19] = dt.date.fromisoformat(values[19])
    values[23] = json.loads(values[23]) if values[23] else None
    return Request(*values)


def get_request(conn: sqlite3.Connection, request_id: int) -> Request:
    row = conn.execute(f"SELECT {_COLUMNS} FROM requests WHERE id = ?", (request_id,)).fetchone()
    if row is None:
        raise LookupError(f"no data-subject request #{request_id} (see `gateway requests list`)")
    return _request(row)


def list_requests(
    conn: sqlite3.Connection, *, open_only: bool = True, contact_id: int | None = None
) -> list[Request]:
    where, args = [], []
    if open_only:
        where.append("status IN ('received', 'in_progress', 'scheduled')")
    if contact_id is not None:
        where.append("contact_id = ?")
        args.append(contact_id)
    sql = f"SELECT {_COLUMNS} FROM requests"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return [_request(r) for r in conn.execute(sql + " ORDER BY id", args)]


def due_requests(conn: sqlite3.Connection, today: dt.date, within_days: int) -> list[Request]:
    """Open requests whose nearest deadline is within ``within_days`` of ``today`` (or passed),
    nearest first."""
    found = [r for r in list_requests(conn) if r.days_left(today) <= within_days]
    return sorted(found, key=lambda r: (r.next_due, r.id))


def request_events(conn: sqlite3.Connection, request_id: int) -> list[dict[str, Any]]:
    keys = ("id", "at", "actor", "event", "from_status", "to_status", "note")
    rows = conn.execute(
        "SELECT id, at, actor, event, from_status, to_status, note FROM request_events "
        "WHERE request_id = ? ORDER BY id",
        (request_id,),
    ).fetchall()
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _event(
    db: sqlite_utils.Database,
    request: Request,
    event: str,
    *,
    actor: str,
    to_status: str | None = None,
    note: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    db.conn.execute(
        "INSERT INTO request_events (request_id, at, actor, event, from_status, to_status, note) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (request.id, now(), actor, event, request.status, to_status or request.status, note),
    )
    audit.append_txn(
        db,
        actor=actor,
        action=f"privacy.request.{event}",
        target=f"request:{request.id}",
        detail={
            "kind": request.kind,
            "contact": request.contact_id,
            "status": to_status or request.status,
            **(detail or {}),
        },
    )


def create_request_txn(
    db: sqlite_utils.Database,
    *,
    kind: str,
    channel: str,
    actor: str,
    contact_id: int | None = None,
    identity_id: int | None = None,
    requester: str | None = None,
    details: dict[str, Any] | None = None,
    source_ref: str | None = None,
    received_at: dt.datetime | None = None,
    tz: str = "UTC",
    verification_note: str | None = None,
) -> Request:
    """Register a request. ``source_ref`` (e.g. ``journal:<id>`` for a chat command) makes a
    repeat return the first one. Needs a contact, an identity or a requester description.
    ``verification_note``: what is known of the requester's identity so far (still unverified)."""
    conn = db.conn
    if kind not in KINDS:
        raise RequestError(f"unknown request type {kind!r}; one of: {', '.join(KINDS)}")
    if channel not in CHANNELS:
        raise RequestError(f"unknown request channel {channel!r}; one of: {', '.join(CHANNELS)}")
    if source_ref is not None:
        row = conn.execute("SELECT id FROM requests WHERE source_ref = ?", (source_ref,)).fetchone()
        if row is not None:
            return get_request(conn, row[0])
    if identity_id is not None:
        found = conn.execute(
            "SELECT contact_id FROM identities WHERE id = ?", (identity_id,)
        ).fetchone()
        if found is None:
            raise RequestError(f"no identity with id {identity_id}")
        if contact_id is not None and contact_id != found[0]:
            raise RequestError(
                f"identity {identity_id} belongs to contact {found[0]}, not {contact_id}"
            )
        contact_id = found[0]
    if contact_id is not None:
        check_contact(conn, contact_id)
    elif not (requester and requester.strip()):
        raise RequestError(
            "a request needs the contact it is about (--contact ID) or who asked (--requester)"
        )
    received = received_at or dt.datetime.now(dt.UTC)
    if received.tzinfo is None:
        raise RequestError("received_at needs a time zone (e.g. 2026-12-28T10:00:00+03:00)")
    if received > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5):
        raise RequestError(f"received_at {received.isoformat()} is in the future")
    day = local_date(received, tz)
    request_id = conn.execute(
        "INSERT INTO requests (kind, channel, contact_id, identity_id, requester, details, "
        "source_ref, received_at, received_on, gdpr_due, ru_due, verification_note) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            kind,
            channel,
            contact_id,
            identity_id,
            requester.strip() if requester else None,
            json.dumps(details, ensure_ascii=False, sort_keys=True) if details else None,
            source_ref,
            received.astimezone(dt.UTC).isoformat(timespec="microseconds"),
            day.isoformat(),
            gdpr_due(day).isoformat(),
            ru_due(day).isoformat(),
            verification_note,
        ),
    ).lastrowid
    assert request_id is not None
    request = get_request(conn, request_id)
    _event(
        db,
        request,
        "created",
        actor=actor,
        detail={
            "channel": channel,
            "gdpr_due": request.gdpr_due.isoformat(),
            "ru_due": request.ru_due.isoformat(),
        },
    )
    return request


def check_contact(conn: sqlite3.Connection, contact_id: int, *, allow_erased: bool = False) -> None:
    row = conn.execute("SELECT erased_at FROM contacts WHERE id = ?", (contact_id,)).fetchone()
    if row is None:
        raise RequestError(f"no contact with id {contact_id} (see `gateway conversations list`)")
    if row[0] is not None and not allow_erased:
        raise RequestError(
            f"contact {contact_id} was erased at {row[0]}; nothing of theirs is left"
        )


def _open_request(conn: sqlite3.Connection, request_id: int) -> Request:
    try:
        request = get_request(conn, request_id)
    except LookupError as exc:
        raise RequestError(str(exc)) from None
    if not request.is_open:
        raise RequestError(
            f"request #{request_id} is already {request.status} (closed {request.closed_at})"
        )
    return request


def verify_request_txn(
    db: sqlite_utils.Database,
    request_id: int,
    *,
    verified: bool,
    method: str,
    note: str | None = None,
    actor: str,
) -> Request:
    """Record the outcome of checking the requester's identity (``method``: e.g. 'platform
    identity', 'id document', 'e-mail link'). A failed check can be followed by another."""
    request = _open_request(db.conn, request_id)
    if not method.strip():
        raise RequestError("say how the identity was checked (--method)")
    if request.verification == "verified":
        raise RequestError(
            f"request #{request_id} is already verified ({request.verification_method})"
        )
    outcome = "verified" if verified else "failed"
    db.conn.execute(
        "UPDATE requests SET verification = ?, verification_method = ?, verification_note = ?, "
        "verified_at = ?, verified_by = ? WHERE id = ?",
        (outcome, method.strip(), note, now(), actor, request_id),
    )
    _event(db, request, outcome, actor=actor, note=note, detail={"method": method.strip()})
    return get_request(db.conn, request_id)


def _today(tz: str, today: dt.date | None) -> dt.date:
    return today or local_date(dt.datetime.now(dt.UTC), tz)


def extend_gdpr_txn(
    db: sqlite_utils.Database,
    request_id: int,
    *,
    months: int,
    reason: str,
    actor: str,
    today: dt.date | None = None,
    tz: str = "UTC",
) -> Request:
    """Extend the GDPR clock once by one or two months (art. 12(3)), with the reason, before
    the first month runs out."""
    request = _open_request(db.conn, request_id)
    if months not in range(1, GDPR_MAX_EXTENSION_MONTHS + 1):
        raise RequestError(f"the GDPR deadline extends by 1 or 2 months, not {months}")
    if not reason.strip():
        raise RequestError("an extension needs its reason (--reason), which is told to the subject")
    if request.gdpr_extension_months:
        raise RequestError(
            f"request #{request_id}'s GDPR deadline was already extended by "
            f"{request.gdpr_extension_months} month(s); it can be extended once"
        )
    day = _today(tz, today)
    if day > request.gdpr_due:
        raise RequestError(
            f"the GDPR deadline passed on {request.gdpr_due}; an extension must be decided "
            "within the first month (art. 12(3))"
        )
    due = gdpr_due(request.received_on, months)
    db.conn.execute(
        "UPDATE requests SET gdpr_due = ?, gdpr_extension_months = ?, gdpr_extension_reason = ?, "
        "gdpr_extended_at = ? WHERE id = ?",
        (due.isoformat(), months, reason.strip(), now(), request_id),
    )
    _event(
        db,
        request,
        "extended_gdpr",
        actor=actor,
        note=reason.strip(),
        detail={"months": months, "gdpr_due": due.isoformat()},
    )
    return get_request(db.conn, request_id)


def extend_ru_txn(
    db: sqlite_utils.Database,
    request_id: int,
    *,
    notice: str,
    actor: str,
    today: dt.date | None = None,
    tz: str = "UTC",
) -> Request:
    """Extend the 152-FZ clock once by five working days; ``notice`` is the reasoned notice sent
    to the subject (its text or where it was sent), recorded."""
    request = _open_request(db.conn, request_id)
    if not notice.strip():
        raise RequestError(
            "a 152-FZ extension needs the reasoned notice sent to the subject (--notice)"
        )
    if request.ru_extension_notice:
        raise RequestError(f"request #{request_id}'s 152-FZ deadline was already extended")
    day = _today(tz, today)
    if day > request.ru_due:
        raise RequestError(
            f"the 152-FZ deadline passed on {request.ru_due}; it can only be extended before"
        )
    due = ru_due(request.received_on, extended=True)
    db.conn.execute(
        "UPDATE requests SET ru_due = ?, ru_extension_notice = ?, ru_extended_at = ? WHERE id = ?",
        (due.isoformat(), notice.strip(), now(), request_id),
    )
    _event(
        db,
        request,
        "extended_ru",
        actor=actor,
        note=notice.strip(),
        detail={"working_days": RU_EXTENSION_DAYS, "ru_due": due.isoformat()},
    )
    return get_request(db.conn, request_id)


def set_status_txn(
    db: sqlite_utils.Database,
    request_id: int,
    status: str,
    *,
    actor: str,
    note: str | None = None,
    outcome: dict[str, Any] | None = None,
    execute_after: str | None = None,
) -> Request:
    """Move a request on. Completing one needs it verified (a refusal or a withdrawal does not);
    ``outcome`` (JSON: a receipt, an export summary) is kept with it."""
    if status not in STATUSES:
        raise RequestError(f"unknown request status {status!r}; one of: {', '.join(STATUSES)}")
    request = _open_request(db.conn, request_id)
    if status not in _NEXT[request.status]:
        raise RequestError(f"request #{request_id} cannot go from {request.status} to {status}")
    if status in ("completed", "scheduled") and request.verification != "verified":
        raise RequestError(
            f"request #{request_id} is not verified ({request.verification}): check who asked "
            f"first (`gateway requests verify {request_id} --method ...`)"
        )
    closing = status not in OPEN
    db.conn.execute(
        "UPDATE requests SET status = ?, closed_at = ?, outcome = coalesce(?, outcome), "
        "execute_after = coalesce(?, execute_after) WHERE id = ?",
        (
            status,
            now() if closing else None,
            json.dumps(outcome, ensure_ascii=False, sort_keys=True, default=str)
            if outcome
            else None,
            execute_after,
            request_id,
        ),
    )
    _event(db, request, "status", actor=actor, to_status=status, note=note)
    return get_request(db.conn, request_id)


def remind_txn(db: sqlite_utils.Database, today: dt.date, within_days: int) -> list[Request]:
    """Audit a reminder (once a day per request) for every open request due within
    ``within_days`` or overdue; returns them for the caller to log."""
    reminded = []
    for request in due_requests(db.conn, today, within_days):
        row = db.conn.execute(
            "SELECT reminded_on FROM requests WHERE id = ?", (request.id,)
        ).fetchone()
        if row[0] == today.isoformat():
            continue
        db.conn.execute(
            "UPDATE requests SET reminded_on = ? WHERE id = ?", (today.isoformat(), request.id)
        )
        audit.append_txn(
            db,
            actor="system",
            action="privacy.request.reminder",
            target=f"request:{request.id}",
            detail={
                "kind": request.kind,
                "gdpr_due": request.gdpr_due.isoformat(),
                "ru_due": request.ru_due.isoformat(),
                "days_left": request.days_left(today),
                "overdue": request.days_left(today) < 0,
            },
        )
        reminded.append(request)
    return reminded
