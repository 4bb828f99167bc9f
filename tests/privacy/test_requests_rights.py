"""Rectification with history, restriction and objection, each completing its request."""

from __future__ import annotations

import pytest

from gateway.privacy import audit
from gateway.privacy import requests as reg
from gateway.privacy.consent_ledger import consent_status
from gateway.privacy.requests import RequestError
from gateway.privacy.rights import object_txn, rectification_history, rectify_txn, restrict_txn
from gateway.store.journal import next_pending_txn
from gateway.store.outbox import OptedOut, queue_notification_txn

from ._dsr import ACCOUNT, open_db, populate


@pytest.fixture
def d(tmp_path):
    d = open_db(tmp_path)
    yield d
    d.db.conn.close()


def verified(d, kind, contact_id):
    r = d.txn(reg.create_request_txn, kind=kind, channel="admin", actor="admin:a@example.com",
              contact_id=contact_id)  # fmt: skip
    d.txn(reg.verify_request_txn, r.id, verified=True, method="id document", actor="admin:a")
    return r


def test_rectification_keeps_the_old_values_and_completes_the_request(d):
    subject = populate(d)
    r = verified(d, "rectification", subject.contact_id)
    wa = subject.identity_ids[1]
    changes = d.txn(
        rectify_txn, subject.contact_id, actor="admin:a", display_name="  Anna   Example ",
        language="ru", identity_names={wa: "Anna (WhatsApp)"}, request_id=r.id,
    )  # fmt: skip
    assert [(c["field"], c["old"], c["new"]) for c in changes] == [
        ("display_name", "Ann Example", "Anna Example"),
        ("language", "en", "ru"),
        ("identity_display_name", "Ann Example WA", "Anna (WhatsApp)"),
    ]
    assert d.rows(
        "SELECT display_name, language FROM contacts WHERE id = ?", subject.contact_id
    ) == [("Anna Example", "ru")]
    history = rectification_history(d.conn, subject.contact_id)
    assert [(h["old_value"], h["request_id"]) for h in history] == [
        ("Ann Example", r.id), ("en", r.id), ("Ann Example WA", r.id)]  # fmt: skip
    done = reg.get_request(d.conn, r.id)
    assert done.status == "completed" and len(done.outcome["rectified"]) == 3
    entry = next(audit.entries(d.conn, action_prefix="privacy.rectify"))
    assert entry.detail["fields"] == ["display_name", "identity_display_name", "language"]
    assert "Ann" not in str(entry.detail)  # values stay in the history table, not the audit log
    # Unchanged values are no change; clearing is allowed.
    assert d.txn(rectify_txn, subject.contact_id, actor="cli:t", language="ru") == []
    (cleared,) = d.txn(rectify_txn, subject.contact_id, actor="cli:t", language="")
    assert cleared["new"] is None


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({}, "nothing to correct"),
        ({"language": "Russian!"}, "not a language code"),
        ({"display_name": "x" * 201}, "at most 200"),
        ({"identity_names": {999: "X"}}, "identity 999 is not one of"),
    ],
)
def test_bad_rectifications_change_nothing(d, fields, error):
    subject = populate(d)
    with pytest.raises(RequestError, match=error):
        d.txn(rectify_txn, subject.contact_id, actor="cli:t", **fields)
    assert rectification_history(d.conn, subject.contact_id) == []
    assert d.rows("SELECT display_name FROM contacts WHERE id = ?", subject.contact_id) == [
        ("Ann Example",)
    ]


def test_restriction_keeps_data_but_stops_ai_and_lifting_it(d):
    subject = populate(d)
    r = verified(d, "restriction", subject.contact_id)
    assert d.txn(restrict_txn, subject.contact_id, actor="admin:a", request_id=r.id)
    d.inbound("tg", "user-77731", "still there?", "user-77731-9")
    assert not d.txn(next_pending_txn, subject.conversation_id, 20, d.sealer).ai_allowed
    assert d.rows("SELECT count(*) FROM messages WHERE external_id = 'user-77731-9'") == [(1,)]
    assert reg.get_request(d.conn, r.id).status == "completed"
    assert not d.txn(restrict_txn, subject.contact_id, actor="admin:a")  # already
    assert d.txn(restrict_txn, subject.contact_id, actor="admin:a", lift=True, reason="resolved")
    assert d.txn(next_pending_txn, subject.conversation_id, 20, d.sealer).ai_allowed
    actions = [e.action for e in audit.entries(d.conn, target=f"contact:{subject.contact_id}")]
    assert actions == ["privacy.restrict", "privacy.restrict", "privacy.restrict.lift"]


def test_objection_switches_ai_off_and_withdraws_marketing_everywhere(d):
    subject = populate(d)
    r = verified(d, "objection", subject.contact_id)
    outcome = d.txn(object_txn, subject.contact_id, actor="admin:a", request_id=r.id)
    assert outcome == {"ai": "off", "marketing": "withdrawn", "identities": 2}
    status = consent_status(d.conn, subject.contact_id)
    assert status["ai_processing"].state == status["marketing"].state == "withdrawn"
    assert status["marketing"].evidence == f"request #{r.id}"
    with pytest.raises(OptedOut):
        d.txn(queue_notification_txn, "wa", ACCOUNT, "chat-+7900user-77731", "Sale", "k", d.sealer)
    d.inbound("wa", "+7900user-77731", "hi", "w-9")
    wa_conv = d.rows("SELECT id FROM conversations WHERE channel = 'wa'")[0][0]
    assert not d.txn(next_pending_txn, wa_conv, 20, d.sealer).ai_allowed
    assert reg.get_request(d.conn, r.id).outcome == outcome


def test_a_request_must_match_the_right_and_the_contact(d):
    subject = populate(d)
    other = populate(d, sender="user-55502", name="Bob")
    r = verified(d, "objection", other.contact_id)
    with pytest.raises(RequestError, match="about contact"):
        d.txn(object_txn, subject.contact_id, actor="cli:t", request_id=r.id)
    with pytest.raises(RequestError, match="asks for objection, not restriction"):
        d.txn(restrict_txn, other.contact_id, actor="cli:t", request_id=r.id)
    unverified = d.txn(reg.create_request_txn, kind="restriction", channel="cli", actor="cli:t",
                       contact_id=subject.contact_id)  # fmt: skip
    with pytest.raises(RequestError, match="not verified"):
        d.txn(restrict_txn, subject.contact_id, actor="cli:t", request_id=unverified.id)
    assert d.rows("SELECT sum(restricted) FROM contacts") == [(0,)]
