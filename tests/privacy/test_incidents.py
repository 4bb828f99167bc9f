"""The incident register: GDPR 72 h and 152-FZ 24 h + 72 h clocks, notifications on time and
late, reminders once per stage (logged and audited) from the daemon's job, and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import cli
from gateway.keys import DATABASE_FILE
from gateway.privacy import audit, incidents
from gateway.privacy.incidents import IncidentError, NewIncident, parse_time
from gateway.store.db import connect
from gateway.store.migrations import migrations
from gateway.testing.daemon import open_gateway
from tests.privacy.test_backup_online import CONFIG as DAEMON_CONFIG
from tests.privacy.test_backup_support import master, opened, registry, write_config

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)


@pytest.fixture
def db(tmp_path):
    db = connect(tmp_path / "i.db", bytes(range(32)))
    migrations.apply(db)
    yield db
    db.conn.close()


def add(db, **overrides) -> int:
    fields = {
        "title": "laptop stolen",
        "description": "an unencrypted export of 120 contacts was on it",
        "detected_at": T0,
        "laws": ["gdpr", "152-fz"],
        "subjects_approx": 120,
        "data_categories": ["contact_details"],
    }
    fields.update(overrides)
    with db.conn:
        return incidents.add_incident_txn(db, NewIncident(**fields), actor="cli:dpo")


def states(db, incident_id: int, now: dt.datetime) -> dict[str, str]:
    incident = incidents.get_incident(db.conn, incident_id)
    return {c.clock.name: c.state for c in incident.clocks(now)}


def test_clocks_run_from_detection(db):
    number = add(db)
    incident = incidents.get_incident(db.conn, number)
    due = {c.clock.name: c.due_at for c in incident.clocks(T0)}
    assert due == {
        "gdpr": T0 + 72 * H,
        "rkn-24h": T0 + 24 * H,
        "rkn-72h": T0 + 72 * H,
        "subjects": None,
    }
    assert states(db, number, T0 + 23 * H) == {
        "gdpr": "due",
        "rkn-24h": "due",
        "rkn-72h": "due",
        "subjects": "open",
    }
    assert states(db, number, T0 + 24 * H)["rkn-24h"] == "overdue"
    clock = incident.clocks(T0 + 30 * H)[1]
    assert clock.describe(T0 + 30 * H) == ("OVERDUE since 2026-11-03T09:00:00+00:00 (6h00m ago)")
    assert incident.clocks(T0 + 30 * H)[0].describe(T0 + 30 * H).endswith("(42h00m left)")


def test_notifications_on_time_and_late(db):
    number = add(db)
    with db.conn:
        incidents.notify_txn(db, number, "rkn-24h", T0 + 20 * H, "RKN form #123", actor="cli:dpo")
        incidents.notify_txn(db, number, "gdpr", T0 + 80 * H, None, actor="cli:dpo")
    assert states(db, number, T0 + 100 * H) == {
        "gdpr": "notified late",
        "rkn-24h": "notified",
        "rkn-72h": "overdue",
        "subjects": "open",
    }
    actions = [(e.action, e.target, e.actor) for e in audit.entries(db.conn)]
    assert (
        actions
        == [("incident.add", f"incident:{number}", "cli:dpo")]
        + [("incident.notify", f"incident:{number}", "cli:dpo")] * 2
    )
    assert audit.verify(db.conn).ok


def test_only_the_laws_of_the_incident_have_clocks(db):
    number = add(db, laws=["152-fz"])
    assert set(states(db, number, T0)) == {"rkn-24h", "rkn-72h"}
    with pytest.raises(IncidentError, match="not under gdpr"):
        incidents.notify_txn(db, number, "gdpr", T0 + H, None, actor="cli:dpo")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"title": " "}, "needs a title and a description"),
        ({"laws": ["ccpa"]}, "laws must be some of gdpr, 152-fz"),
        ({"laws": []}, "laws must be some of"),
        ({"subjects_approx": -1}, "subjects_approx cannot be negative"),
        ({"occurred_at": T0 + H}, "occurred_at is after detected_at"),
    ],
)
def test_bad_incidents_are_refused_and_nothing_is_stored(db, change, message):
    with pytest.raises(IncidentError, match=message):
        add(db, **change)
    assert incidents.list_incidents(db.conn) == []
    assert list(audit.entries(db.conn)) == []


def test_bad_notifications_are_refused(db):
    number = add(db)
    with pytest.raises(IncidentError, match="before the incident was detected"):
        incidents.notify_txn(db, number, "gdpr", T0 - H, None, actor="x")
    with pytest.raises(IncidentError, match="unknown authority"):
        incidents.notify_txn(db, number, "fbi", T0 + H, None, actor="x")
    with pytest.raises(IncidentError, match="no incident 99"):
        incidents.notify_txn(db, 99, "gdpr", T0 + H, None, actor="x")


def test_reminders_once_per_stage(db):
    number = add(db)

    def remind(at: dt.datetime) -> list[tuple[str, str]]:
        with db.conn:
            return [(r.clock, r.stage) for r in incidents.remind_txn(db, at)]

    assert remind(T0 + 11 * H) == []
    assert remind(T0 + 12 * H) == [("rkn-24h", "half")]
    assert remind(T0 + 13 * H) == []  # already reminded at this stage
    assert remind(T0 + 20 * H) == [("rkn-24h", "final")]  # 4 h (a sixth) left
    assert remind(T0 + 24 * H) == [("rkn-24h", "overdue")]
    assert remind(T0 + 36 * H) == [("gdpr", "half"), ("rkn-72h", "half")]
    with db.conn:
        incidents.notify_txn(db, number, "gdpr", T0 + 50 * H, None, actor="cli:dpo")
    assert remind(T0 + 60 * H) == [("rkn-72h", "final")]  # gdpr was notified: silent
    with db.conn:
        incidents.close_txn(db, number, "resolved", actor="cli:dpo")
    assert remind(T0 + 80 * H) == []  # closed incidents are not reminded
    reminders = [e for e in audit.entries(db.conn) if e.action == "incident.reminder"]
    assert len(reminders) == 6 and all(e.actor == "system" for e in reminders)
    assert audit.verify(db.conn).ok


def test_a_late_record_reminds_of_the_latest_stage_only(db):
    add(db, detected_at=T0)
    with db.conn:
        got = incidents.remind_txn(db, T0 + 100 * H)
    assert sorted((r.clock, r.stage) for r in got) == [
        ("gdpr", "overdue"),
        ("rkn-24h", "overdue"),
        ("rkn-72h", "overdue"),
    ]
    assert "gateway incidents notify 1 --authority gdpr" in got[0].message()


async def test_the_daemon_job_logs_and_audits_reminders(tmp_path, caplog):
    async with open_gateway(DAEMON_CONFIG, registry(), tmp_path) as gw:
        services = gw.running.services
        job = services.scheduler.jobs["incident reminders"]
        assert (job.interval, job.first_after) == (900.0, 60.0)
        detected = dt.datetime.now(dt.UTC) - 40 * H
        number = await services.store.write(
            "incident",
            incidents.add_incident_txn,
            NewIncident("leak", "a misdirected export", detected, ["152-fz"]),
            actor="admin:dpo@example.com",
        )
        with caplog.at_level(logging.WARNING, logger="gateway.incidents"):
            await job.fn()
            await job.fn()  # the next run has nothing new to say
        entries = await services.store.read(
            "audit", lambda db: list(audit.entries(db.conn, target=f"incident:{number}"))
        )
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.incidents"]
    assert len(warnings) == 2 and all("OVERDUE" in w or "half" in w for w in warnings)
    assert any("rkn-24h" in w and "OVERDUE" in w for w in warnings)
    assert [(e.action, e.detail["clock"], e.detail["stage"]) for e in entries[1:]] == [
        ("incident.reminder", "rkn-24h", "overdue"),
        ("incident.reminder", "rkn-72h", "half"),
    ]


async def test_the_cli(tmp_path, capsys):
    config = write_config(tmp_path, '\n[privacy_record]\nlaws = ["152-fz"]\n')
    async with opened(config):
        pass  # a data directory with its database, as after a first start
    cfg = ["-c", str(tmp_path / "gateway.toml")]
    code = cli.main(
        ["incidents", "add", "--title", "mail to wrong list", "--description", "sent to 40",
         "--detected-at", "2026-11-02T12:00+03:00", "--subjects", "40",
         "--data-categories", "contact_details, message_text", "--cross-border",
         "--countries", "de", *cfg]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "incident 1 recorded" in out and "detected:     2026-11-02T09:00:00+00:00" in out
    assert "rkn-24h" in out and "gdpr" not in out  # [privacy_record] laws
    assert "cross-border: yes (DE)" in out
    assert cli.main(["incidents", "notify", "1", "--authority", "rkn-24h", "--at",
                     "2026-11-03T08:00Z", "--note", "form 77", *cfg]) == 0  # fmt: skip
    assert "notified at 2026-11-03T08:00:00+00:00" in capsys.readouterr().out
    assert cli.main(["incidents", "show", "1", "--json", *cfg]) == 0
    shown = json.loads(capsys.readouterr().out)
    clocks = {c["clock"]: c["state"] for c in shown["clocks"]}
    assert clocks == {"rkn-24h": "notified", "rkn-72h": "overdue"}
    assert shown["data_categories"] == ["contact_details", "message_text"]
    assert cli.main(["incidents", "list", *cfg]) == 0
    assert "rkn-24h: notified, rkn-72h: overdue" in capsys.readouterr().out
    # Bad input: a clear error, exit 2, nothing stored.
    assert cli.main(["incidents", "notify", "1", "--authority", "gdpr", *cfg]) == 2
    assert "not under gdpr" in capsys.readouterr().err
    assert cli.main(["incidents", "add", "--title", "x", "--description", "y",
                     "--detected-at", "yesterday", *cfg]) == 2  # fmt: skip
    assert "is not a time" in capsys.readouterr().err
    assert cli.main(["incidents", "show", "7", *cfg]) == 2
    assert "no incident 7" in capsys.readouterr().err
    assert cli.main(["incidents", "close", "1", *cfg]) == 0
    assert cli.main(["incidents", "list", "--open", *cfg]) == 0
    assert "no incidents recorded" in capsys.readouterr().out
    db = connect(config.data_dir / DATABASE_FILE, master(config).derive("sqlcipher"))
    try:
        actions = [e.action for e in audit.entries(db.conn)]
        assert actions == ["incident.add", "incident.notify", "incident.close"]
        assert all(e.actor.startswith("cli:") for e in audit.entries(db.conn))
    finally:
        db.conn.close()


@given(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2026, 1, 1),
                    timezones=st.timezones()))  # fmt: skip
def test_parse_time_round_trips_any_past_time(moment):
    text = moment.isoformat()
    parsed = parse_time(text, what="--at", now=T0)
    # The instant the text names (PEP 495: a time in a DST gap never compares equal across
    # zones, so compare with the fixed offset the text carries).
    assert parsed == dt.datetime.fromisoformat(text) and parsed.tzinfo == dt.UTC


@given(st.text(max_size=30))
def test_parse_time_refuses_garbage_clearly(text):
    try:
        parsed = parse_time(text, what="--at", now=T0)
    except IncidentError as exc:
        assert "--at" in str(exc)
    else:
        assert parsed.tzinfo == dt.UTC and parsed <= T0 + dt.timedelta(minutes=5)
