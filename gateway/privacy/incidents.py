"""The incident register: personal-data breaches, with the notification clocks the law sets.

Clocks run from ``detected_at`` (when the controller became aware of the breach):

- ``gdpr``: the supervisory authority within 72 hours (GDPR Art. 33(1));
- ``rkn-24h``: Roskomnadzor's first notice within 24 hours (152-FZ Art. 21(3.1)(1));
- ``rkn-72h``: Roskomnadzor, the results of the internal investigation within 72 hours
  (152-FZ Art. 21(3.1)(2));
- ``subjects``: the data subjects, without undue delay when the risk to them is high (GDPR
  Art. 34): no fixed deadline, recorded when done.

An incident is under the laws given when it is recorded (default ``[privacy_record] laws``);
each clock of those laws is *due* (with the time left), *overdue*, *notified* or *notified
late*. The daemon checks every 15 minutes and logs a warning and an audit entry once at each
stage of a clock left unnotified: half the time gone, the last sixth left, overdue. Every change
to the register is audited.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import Any

import sqlite_utils

from gateway.errors import GatewayError
from gateway.privacy import audit

log = logging.getLogger("gateway.incidents")

REMINDER_INTERVAL = 900.0
LAWS = ("gdpr", "152-fz")


@dataclasses.dataclass(frozen=True)
class Clock:
    name: str
    law: str
    hours: float | None
    """None: no fixed deadline ("without undue delay")."""
    recipient: str


CLOCKS = {
    c.name: c
    for c in (
        Clock("gdpr", "gdpr", 72, "the supervisory authority (GDPR Art. 33(1))"),
        Clock("rkn-24h", "152-fz", 24, "Roskomnadzor, first notice (152-FZ Art. 21(3.1)(1))"),
        Clock(
            "rkn-72h",
            "152-fz",
            72,
            "Roskomnadzor, results of the investigation (152-FZ Art. 21(3.1)(2))",
        ),
        Clock("subjects", "gdpr", None, "the data subjects if the risk is high (GDPR Art. 34)"),
    )
}


class IncidentError(GatewayError):
    """A bad incident record or notification (the message says which field and why)."""


def m014_create_incidents(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        -- Personal-data breaches (gateway.privacy.incidents). Lists are JSON; times ISO UTC.
        -- laws: which notification regimes apply ("gdpr", "152-fz").
        CREATE TABLE incidents (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            description TEXT NOT NULL,
            detected_at TEXT NOT NULL,
            occurred_at TEXT,
            data_categories TEXT NOT NULL DEFAULT '[]',
            subject_categories TEXT NOT NULL DEFAULT '[]',
            subjects_approx INTEGER,
            records_approx INTEGER,
            consequences TEXT,
            measures TEXT,
            cross_border INTEGER NOT NULL DEFAULT 0,
            countries TEXT NOT NULL DEFAULT '[]',
            laws TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
            closed_at TEXT,
            recorded_at TEXT NOT NULL,
            recorded_by TEXT NOT NULL
        );
        -- Each notification made (the first one per clock stops it; later ones add to it).
        CREATE TABLE incident_notifications (
            id INTEGER PRIMARY KEY,
            incident_id INTEGER NOT NULL REFERENCES incidents(id),
            clock TEXT NOT NULL,
            notified_at TEXT NOT NULL,
            note TEXT,
            recorded_at TEXT NOT NULL,
            recorded_by TEXT NOT NULL
        );
        CREATE INDEX incident_notifications_incident ON incident_notifications (incident_id);
        -- Reminders already given, so each stage of a clock is reminded once.
        CREATE TABLE incident_reminders (
            incident_id INTEGER NOT NULL REFERENCES incidents(id),
            clock TEXT NOT NULL,
            stage TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (incident_id, clock, stage)
        );
        """
    )


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


def parse_time(text: str, *, what: str, now: dt.datetime | None = None) -> dt.datetime:
    """``now`` or ISO 8601; a time without an offset is the machine's local time."""
    current = now or dt.datetime.now(dt.UTC)
    if text.strip().lower() == "now":
        return current
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise IncidentError(
            f"{what} {text!r} is not a time: use ISO 8601 such as 2026-11-24T09:30+03:00 "
            "(without an offset: this machine's local time), or now"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    if moment > current + dt.timedelta(minutes=5):
        raise IncidentError(f"{what} {iso(moment)} is in the future")
    return moment.astimezone(dt.UTC)


# Recording ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NewIncident:
    title: str
    description: str
    detected_at: dt.datetime
    laws: Sequence[str]
    occurred_at: dt.datetime | None = None
    data_categories: Sequence[str] = ()
    subject_categories: Sequence[str] = ()
    subjects_approx: int | None = None
    records_approx: int | None = None
    consequences: str | None = None
    measures: str | None = None
    cross_border: bool = False
    countries: Sequence[str] = ()

    def check(self) -> None:
        if not self.title.strip() or not self.description.strip():
            raise IncidentError("an incident needs a title and a description of what happened")
        bad = [law for law in self.laws if law not in LAWS]
        if bad or not self.laws:
            raise IncidentError(f"laws must be some of {', '.join(LAWS)} (got {list(self.laws)})")
        for name in ("subjects_approx", "records_approx"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise IncidentError(f"{name} cannot be negative")
        if self.occurred_at is not None and self.occurred_at > self.detected_at:
            raise IncidentError("occurred_at is after detected_at: it cannot be")


def add_incident_txn(db: sqlite_utils.Database, new: NewIncident, *, actor: str) -> int:
    new.check()
    now = iso(dt.datetime.now(dt.UTC))
    cursor = db.conn.execute(
        "INSERT INTO incidents (title, description, detected_at, occurred_at, data_categories, "
        "subject_categories, subjects_approx, records_approx, consequences, measures, "
        "cross_border, countries, laws, recorded_at, recorded_by) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            new.title.strip(),
            new.description.strip(),
            iso(new.detected_at),
            iso(new.occurred_at) if new.occurred_at else None,
            json.dumps(list(new.data_categories)),
            json.dumps(list(new.subject_categories)),
            new.subjects_approx,
            new.records_approx,
            new.consequences,
            new.measures,
            int(new.cross_border),
            json.dumps(list(new.countries)),
            json.dumps(sorted(set(new.laws))),
            now,
            actor,
        ),
    )
    incident_id = int(cursor.lastrowid or 0)
    audit.append_txn(
        db,
        actor=actor,
        action="incident.add",
        target=f"incident:{incident_id}",
        detail={
            "detected_at": iso(new.detected_at),
            "laws": sorted(set(new.laws)),
            "subjects_approx": new.subjects_approx,
            "records_approx": new.records_approx,
            "cross_border": new.cross_border,
        },
    )
    return incident_id


def notify_txn(
    db: sqlite_utils.Database,
    incident_id: int,
    clock: str,
    at: dt.datetime,
    note: str | None,
    *,
    actor: str,
) -> None:
    """Record that ``clock``'s recipient was notified at ``at``."""
    incident = get_incident(db.conn, incident_id)
    if clock not in CLOCKS:
        raise IncidentError(f"unknown authority {clock!r}; use one of {', '.join(CLOCKS)}")
    if CLOCKS[clock].law not in incident.laws:
        raise IncidentError(
            f"incident {incident_id} is not under {CLOCKS[clock].law} (its laws: "
            f"{', '.join(incident.laws)}), so {clock} does not apply"
        )
    if at < incident.detected_at:
        raise IncidentError(
            f"--at {iso(at)} is before the incident was detected ({iso(incident.detected_at)})"
        )
    db.conn.execute(
        "INSERT INTO incident_notifications (incident_id, clock, notified_at, note, "
        "recorded_at, recorded_by) VALUES (?, ?, ?, ?, ?, ?)",
        (incident_id, clock, iso(at), note, iso(dt.datetime.now(dt.UTC)), actor),
    )
    audit.append_txn(
        db,
        actor=actor,
        action="incident.notify",
        target=f"incident:{incident_id}",
        detail={"clock": clock, "notified_at": iso(at)},
    )


def close_txn(db: sqlite_utils.Database, incident_id: int, note: str | None, *, actor: str) -> None:
    incident = get_incident(db.conn, incident_id)
    if incident.status == "closed":
        raise IncidentError(f"incident {incident_id} is already closed")
    db.conn.execute(
        "UPDATE incidents SET status = 'closed', closed_at = ? WHERE id = ?",
        (iso(dt.datetime.now(dt.UTC)), incident_id),
    )
    audit.append_txn(
        db,
        actor=actor,
        action="incident.close",
        target=f"incident:{incident_id}",
        detail={"note": note} if note else None,
    )


# Reading -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClockState:
    clock: Clock
    due_at: dt.datetime | None
    notified_at: dt.datetime | None
    state: str
    """'due', 'overdue', 'notified', 'notified late', or 'open' (no fixed deadline)."""

    def describe(self, now: dt.datetime) -> str:
        if self.notified_at is not None:
            return f"{self.state} at {iso(self.notified_at)}"
        if self.due_at is None:
            return "no fixed deadline (without undue delay); not notified"
        left = self.due_at - now
        if left.total_seconds() >= 0:
            return f"due by {iso(self.due_at)} ({_span(left)} left)"
        return f"OVERDUE since {iso(self.due_at)} ({_span(-left)} ago)"


def _span(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


@dataclasses.dataclass(frozen=True)
class Incident:
    id: int
    title: str
    description: str
    detected_at: dt.datetime
    occurred_at: dt.datetime | None
    data_categories: list[str]
    subject_categories: list[str]
    subjects_approx: int | None
    records_approx: int | None
    consequences: str | None
    measures: str | None
    cross_border: bool
    countries: list[str]
    laws: list[str]
    status: str
    closed_at: str | None
    recorded_at: str
    recorded_by: str
    notifications: list[dict[str, Any]]

    def clocks(self, now: dt.datetime) -> list[ClockState]:
        states = []
        for clock in CLOCKS.values():
            if clock.law not in self.laws:
                continue
            due = self.detected_at + dt.timedelta(hours=clock.hours) if clock.hours else None
            times = [n["notified_at"] for n in self.notifications if n["clock"] == clock.name]
            notified = dt.datetime.fromisoformat(min(times)) if times else None
            if notified is not None:
                state = "notified late" if due is not None and notified > due else "notified"
            elif due is None:
                state = "open"
            else:
                state = "overdue" if now >= due else "due"
            states.append(ClockState(clock, due, notified, state))
        return states

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("detected_at", "occurred_at"):
            data[key] = iso(data[key]) if data[key] else None
        data["clocks"] = [
            {
                "clock": c.clock.name,
                "to": c.clock.recipient,
                "due_at": iso(c.due_at) if c.due_at else None,
                "notified_at": iso(c.notified_at) if c.notified_at else None,
                "state": c.state,
            }
            for c in self.clocks(now)
        ]
        return data


_COLUMNS = (
    "id, title, description, detected_at, occurred_at, data_categories, subject_categories, "
    "subjects_approx, records_approx, consequences, measures, cross_border, countries, laws, "
    "status, closed_at, recorded_at, recorded_by"
)


def _incident(conn: Any, row: tuple[Any, ...]) -> Incident:
    notes = [
        {"clock": c, "notified_at": at, "note": note, "recorded_by": by}
        for c, at, note, by in conn.execute(
            "SELECT clock, notified_at, note, recorded_by FROM incident_notifications "
            "WHERE incident_id = ? ORDER BY notified_at, id",
            (row[0],),
        )
    ]
    return Incident(
        row[0],
        row[1],
        row[2],
        dt.datetime.fromisoformat(row[3]),
        dt.datetime.fromisoformat(row[4]) if row[4] else None,
        json.loads(row[5]),
        json.loads(row[6]),
        row[7],
        row[8],
        row[9],
        row[10],
        bool(row[11]),
        json.loads(row[12]),
        json.loads(row[13]),
        row[14],
        row[15],
        row[16],
        row[17],
        notes,
    )


def get_incident(conn: Any, incident_id: int) -> Incident:
    row = conn.execute(f"SELECT {_COLUMNS} FROM incidents WHERE id = ?", (incident_id,)).fetchone()
    if row is None:
        raise IncidentError(f"no incident {incident_id} (gateway incidents list shows them)")
    return _incident(conn, row)


def list_incidents(conn: Any, *, open_only: bool = False) -> list[Incident]:
    where = " WHERE status = 'open'" if open_only else ""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM incidents{where} ORDER BY id").fetchall()
    return [_incident(conn, row) for row in rows]


# Reminders ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reminder:
    incident_id: int
    clock: str
    stage: str
    due_at: dt.datetime

    def message(self) -> str:
        what = {"half": "half the time is gone", "final": "the last sixth of the time is left"}
        state = what.get(self.stage, "OVERDUE")
        return (
            f"incident {self.incident_id}: notification to {CLOCKS[self.clock].recipient} "
            f"due by {iso(self.due_at)}: {state}; record it with `gateway incidents notify "
            f"{self.incident_id} --authority {self.clock} --at TIME`"
        )


def _stage(clock: ClockState, now: dt.datetime, detected: dt.datetime) -> str | None:
    if clock.due_at is None or clock.notified_at is not None:
        return None
    if now >= clock.due_at:
        return "overdue"
    window = clock.due_at - detected
    if clock.due_at - now <= window / 6:
        return "final"
    if now - detected >= window / 2:
        return "half"
    return None


def remind_txn(db: sqlite_utils.Database, now: dt.datetime) -> list[Reminder]:
    """Reminders due at ``now`` that were not given yet; records and audits each."""
    reminders = []
    for incident in list_incidents(db.conn, open_only=True):
        for clock in incident.clocks(now):
            stage = _stage(clock, now, incident.detected_at)
            if stage is None or clock.due_at is None:
                continue
            cursor = db.conn.execute(
                "INSERT OR IGNORE INTO incident_reminders (incident_id, clock, stage, at) "
                "VALUES (?, ?, ?, ?)",
                (incident.id, clock.clock.name, stage, iso(now)),
            )
            if not cursor.rowcount:
                continue
            reminder = Reminder(incident.id, clock.clock.name, stage, clock.due_at)
            audit.append_txn(
                db,
                actor="system",
                action="incident.reminder",
                target=f"incident:{incident.id}",
                detail={"clock": clock.clock.name, "stage": stage, "due_at": iso(clock.due_at)},
            )
            reminders.append(reminder)
    return reminders
