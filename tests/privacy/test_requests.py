"""The request register: deadline clocks on known dates, extension rules, status history and
its audit trail, reminders, bad input."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.plugin import Registry
from gateway.privacy import audit
from gateway.privacy import requests as reg
from gateway.privacy.dsr_schema import privacy_config
from gateway.privacy.requests import RequestError
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider

from ._dsr import open_db, populate

D = dt.date
MSK = dt.timezone(dt.timedelta(hours=3))


@pytest.fixture
def d(tmp_path):
    d = open_db(tmp_path)
    yield d
    d.db.conn.close()


def new(d, **kw):
    kw.setdefault("kind", "access")
    kw.setdefault("channel", "cli")
    kw.setdefault("actor", "cli:test")
    kw.setdefault("requester", "Ann, ann@example.com")
    return d.txn(reg.create_request_txn, **kw)


def test_clocks_across_the_new_year_holidays():
    received = D(2026, 12, 28)  # a Monday; 31 December and 1-10 January are days off
    assert reg.gdpr_due(received) == D(2027, 1, 28)
    assert reg.ru_due(received) == D(2027, 1, 20)
    assert reg.ru_due(received, extended=True) == D(2027, 1, 27)
    assert reg.gdpr_due(received, 2) == D(2027, 3, 28)


def test_register_runs_both_clocks_from_the_local_date(d):
    # Friday 26 December 2025, 23:30 in Moscow (20:30 UTC): 29 and 30 December count, then
    # 31 December 2025 and 1-11 January 2026 are off (decree No. 1466 moved 3 January to 9).
    at = dt.datetime(2025, 12, 26, 23, 30, tzinfo=MSK)
    r = new(d, received_at=at, tz="Europe/Moscow")
    assert r.received_on == D(2025, 12, 26)
    assert r.received_at == "2025-12-26T20:30:00.000000+00:00"
    assert (r.gdpr_due, r.ru_due) == (D(2026, 1, 26), D(2026, 1, 21))
    assert not r.provisional and r.next_due == D(2026, 1, 21)
    assert r.days_left(D(2026, 1, 19)) == 2 and r.days_left(D(2026, 1, 22)) == -1
    assert new(d, received_at=at, tz="Asia/Tokyo").received_on == D(2025, 12, 27)


def test_received_date_is_the_configured_zone_s():
    # 23:30 UTC on 31 January is already 1 February in Moscow.
    late = dt.datetime(2026, 1, 31, 23, 30, tzinfo=dt.UTC)
    assert reg.local_date(late, "UTC") == D(2026, 1, 31)
    assert reg.local_date(late, "Europe/Moscow") == D(2026, 2, 1)
    assert reg.gdpr_due(D(2026, 1, 31)) == D(2026, 2, 28)  # no 31 February: the month's last day
    assert reg.gdpr_due(D(2028, 1, 31)) == D(2028, 2, 29)
    assert reg.gdpr_due(D(2026, 11, 30), 2) == D(2027, 2, 28)


def test_gdpr_extension_once_by_up_to_two_months_with_a_reason(d):
    r = new(d, received_at=dt.datetime(2025, 12, 26, 10, 0, tzinfo=MSK), tz="Europe/Moscow")
    with pytest.raises(RequestError, match="1 or 2 months"):
        d.txn(
            reg.extend_gdpr_txn,
            r.id,
            months=3,
            reason="complex",
            actor="cli:t",
            today=D(2026, 1, 5),
        )
    with pytest.raises(RequestError, match="reason"):
        d.txn(reg.extend_gdpr_txn, r.id, months=2, reason=" ", actor="cli:t", today=D(2026, 1, 5))
    with pytest.raises(RequestError, match="within the first month"):
        d.txn(reg.extend_gdpr_txn, r.id, months=1, reason="x", actor="cli:t", today=D(2026, 1, 27))
    r = d.txn(
        reg.extend_gdpr_txn, r.id, months=2, reason="12 000 messages to review", actor="cli:t",
        today=D(2026, 1, 26),
    )  # fmt: skip
    assert r.gdpr_due == D(2026, 3, 26) and r.gdpr_extension_months == 2
    with pytest.raises(RequestError, match="once"):
        d.txn(
            reg.extend_gdpr_txn, r.id, months=1, reason="more", actor="cli:t", today=D(2026, 2, 1)
        )
    assert reg.get_request(d.conn, r.id).gdpr_due == D(2026, 3, 26)


def test_152fz_extension_once_by_five_working_days_with_a_notice(d):
    r = new(d, received_at=dt.datetime(2025, 12, 26, 10, 0, tzinfo=MSK), tz="Europe/Moscow")
    with pytest.raises(RequestError, match="notice"):
        d.txn(reg.extend_ru_txn, r.id, notice="", actor="cli:t", today=D(2026, 1, 12))
    with pytest.raises(RequestError, match="passed on 2026-01-21"):
        d.txn(reg.extend_ru_txn, r.id, notice="sent", actor="cli:t", today=D(2026, 1, 22))
    r = d.txn(reg.extend_ru_txn, r.id, notice="letter 12/7 of 2026-01-12", actor="cli:t",
              today=D(2026, 1, 21))  # fmt: skip
    assert r.ru_due == D(2026, 1, 28) and r.ru_extension_notice == "letter 12/7 of 2026-01-12"
    with pytest.raises(RequestError, match="already extended"):
        d.txn(reg.extend_ru_txn, r.id, notice="again", actor="cli:t", today=D(2026, 1, 21))


def test_status_history_is_recorded_and_audited(d):
    subject = populate(d)
    r = new(d, kind="erasure", contact_id=subject.contact_id, requester=None)
    with pytest.raises(RequestError, match="not verified"):
        d.txn(reg.set_status_txn, r.id, "completed", actor="cli:t")
    d.txn(reg.verify_request_txn, r.id, verified=False, method="e-mail link", note="no answer",
          actor="cli:t")  # fmt: skip
    d.txn(reg.verify_request_txn, r.id, verified=True, method="id document", actor="cli:t")
    with pytest.raises(RequestError, match="already verified"):
        d.txn(reg.verify_request_txn, r.id, verified=True, method="again", actor="cli:t")
    d.txn(reg.set_status_txn, r.id, "in_progress", actor="cli:t", note="collecting")
    done = d.txn(reg.set_status_txn, r.id, "completed", actor="cli:t", outcome={"ok": 1})
    assert done.status == "completed" and done.closed_at and done.outcome == {"ok": 1}
    events = reg.request_events(d.conn, r.id)
    assert [e["event"] for e in events] == ["created", "failed", "verified", "status", "status"]
    assert [(e["from_status"], e["to_status"]) for e in events][-2:] == [
        ("received", "in_progress"),
        ("in_progress", "completed"),
    ]
    actions = [e.action for e in audit.entries(d.conn, target=f"request:{r.id}")]
    assert actions == [
        "privacy.request.created",
        "privacy.request.failed",
        "privacy.request.verified",
        "privacy.request.status",
        "privacy.request.status",
    ]
    assert audit.verify(d.conn).ok
    with pytest.raises(RequestError, match="already completed"):
        d.txn(reg.set_status_txn, r.id, "refused", actor="cli:t")


def test_refusal_needs_no_verification_and_closes(d):
    r = new(d)
    r = d.txn(reg.set_status_txn, r.id, "refused", actor="cli:t", note="manifestly unfounded")
    assert not r.is_open and reg.list_requests(d.conn) == []
    assert [x.id for x in reg.list_requests(d.conn, open_only=False)] == [r.id]


def test_chat_reference_makes_a_repeat_the_same_request(d):
    subject = populate(d)
    first = new(d, contact_id=subject.contact_id, source_ref="journal:7", requester=None)
    again = new(d, contact_id=subject.contact_id, source_ref="journal:7", requester=None)
    assert again.id == first.id and len(reg.list_requests(d.conn)) == 1


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"kind": "delete"}, "unknown request type 'delete'"),
        ({"channel": "fax"}, "unknown request channel"),
        ({"contact_id": 999, "requester": None}, "no contact with id 999"),
        ({"identity_id": 999}, "no identity with id 999"),
        ({"requester": "  "}, "needs the contact"),
        ({"received_at": dt.datetime(2026, 1, 1)}, "time zone"),
        ({"received_at": dt.datetime(2999, 1, 1, tzinfo=dt.UTC)}, "in the future"),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_stored(d, fields, error):
    with pytest.raises(RequestError, match=error):
        new(d, **fields)
    assert d.rows("SELECT count(*) FROM requests") == [(0,)]
    assert d.rows("SELECT count(*) FROM audit_log") == [(0,)]


def test_unknown_request_and_bad_transitions(d):
    with pytest.raises(RequestError, match="no data-subject request #5"):
        d.txn(reg.verify_request_txn, 5, verified=True, method="x", actor="cli:t")
    r = new(d)
    with pytest.raises(RequestError, match="unknown request status"):
        d.txn(reg.set_status_txn, r.id, "lost", actor="cli:t")
    with pytest.raises(RequestError, match="how the identity was checked"):
        d.txn(reg.verify_request_txn, r.id, verified=True, method=" ", actor="cli:t")


def test_reminders_once_a_day_for_due_and_overdue(d):
    old = new(d, received_at=dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC))
    soon = new(d, received_at=dt.datetime(2026, 1, 12, 9, 0, tzinfo=dt.UTC))
    later = new(d, received_at=dt.datetime(2026, 1, 25, 9, 0, tzinfo=dt.UTC))
    closed = new(d, received_at=dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC))
    d.txn(reg.set_status_txn, closed.id, "withdrawn", actor="cli:t")
    today = D(2026, 1, 26)
    # old: 152-FZ due 2026-01-23 (1-9 January are off); soon: due 2026-01-26; later: due 2026-02-06.
    due = reg.due_requests(d.conn, today, 3)
    assert [r.id for r in due] == [old.id, soon.id]
    reminded = d.txn(reg.remind_txn, today, 3)
    assert [r.id for r in reminded] == [old.id, soon.id]
    assert d.txn(reg.remind_txn, today, 3) == []  # once a day
    assert [r.id for r in d.txn(reg.remind_txn, today + dt.timedelta(days=1), 3)] == [
        old.id,
        soon.id,
    ]
    entries = list(audit.entries(d.conn, action_prefix="privacy.request.reminder"))
    assert len(entries) == 4
    assert entries[0].detail["overdue"] is True and entries[0].detail["days_left"] == -3
    assert later.id not in {int(e.target.split(":")[1]) for e in entries}


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('timezone = "Mars/Olympus"', "not a time zone name"),
        ('access_commands = ["mydata"]', "a slash and a word"),
        ('erasure_reply = "done {when}"', "unknown placeholder"),
        ('chat_erasure = "never"', "chat_erasure"),
        ("remind_days = -1", "remind_days"),
        ("colour = 1", "colour"),
    ],
)
def test_bad_privacy_config_names_the_key(tmp_path, line, error):
    path = tmp_path / "gateway.toml"
    path.write_text(f"[privacy]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, Registry())
    assert "[privacy]" in caught.value.render() and error in caught.value.render()


def test_privacy_defaults(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[privacy]\nchat_erasure = "immediate"\naccess_commands = ["/MyData"]\n'
        '[channels.t]\nplugin = "fake"\n[agents.default]\nprovider = "m"\n'
        '[providers.m]\nplugin = "fake"\n'
    )
    registry = Registry()
    registry.add("channel", "fake", FakeChannel)
    registry.add("llm", "fake", FakeProvider)
    settings = privacy_config(load_config(path, registry))
    assert settings.chat_erasure == "immediate" and settings.access_commands == ("/mydata",)
    assert privacy_config(None).erasure_commands == ("/forgetme",)
