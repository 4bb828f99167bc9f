"""Consent purposes: a withdrawal holds at once on every channel of the contact; AI processing
withdrawn means AI off; marketing withdrawn stops notifications; sources, evidence, audit."""

from __future__ import annotations

import pytest

from gateway.privacy import audit
from gateway.privacy.consent_ledger import (
    consent_history,
    consent_status,
    grant_consent_txn,
    withdraw_consent_txn,
)
from gateway.privacy.erasure import erase_contact_txn
from gateway.privacy.requests import RequestError
from gateway.store.journal import next_pending_txn
from gateway.store.outbox import OptedOut, queue_notification_txn

from ._dsr import ACCOUNT, open_db, populate


@pytest.fixture
def d(tmp_path):
    d = open_db(tmp_path)
    yield d
    d.db.conn.close()


def notify(d, channel, thread, key):
    return d.txn(queue_notification_txn, channel, ACCOUNT, thread, "Sale!", key, d.sealer)


def test_marketing_withdrawal_holds_on_every_channel_at_once(d):
    subject = populate(d)
    wa_thread = "chat-+7900user-77731"
    with pytest.raises(OptedOut):  # STOP on Telegram holds on WhatsApp too: contact-wide
        notify(d, "wa", wa_thread, "before")
    withdraw_consent_txn_result = d.txn(
        withdraw_consent_txn, subject.contact_id, "marketing", "widget:preferences-v2",
        "form 2026-11-20 checkbox unticked",
    )  # fmt: skip
    assert withdraw_consent_txn_result == 2
    with pytest.raises(OptedOut):
        notify(d, "wa", wa_thread, "after")
    status = consent_status(d.conn, subject.contact_id)
    assert status["marketing"].state == "withdrawn"
    assert set(status["marketing"].identities.values()) == {"withdrawn"}
    assert status["marketing"].evidence == "form 2026-11-20 checkbox unticked"
    d.txn(grant_consent_txn, subject.contact_id, "marketing", "admin:dpo@example.com", "signed")
    notify(d, "wa", wa_thread, "granted again")
    assert consent_status(d.conn, subject.contact_id)["marketing"].state == "granted"
    entries = list(audit.entries(d.conn, target=f"contact:{subject.contact_id}"))
    assert [(e.actor, e.action, e.detail["source"]) for e in entries] == [
        (f"contact:{subject.contact_id}", "consent.withdraw", "widget"),
        ("admin:dpo@example.com", "consent.grant", "admin"),
    ]


def test_a_stop_word_on_one_channel_shows_for_the_contact(d):
    subject = populate(d)  # said STOP on Telegram only
    status = consent_status(d.conn, subject.contact_id)["marketing"]
    assert status.state == "withdrawn" and status.source == "keyword:STOP"
    assert sorted(status.identities.values(), key=str) == [None, "withdrawn"]


def test_ai_processing_withdrawn_switches_ai_off_for_the_contact(d):
    subject = populate(d)
    d.inbound("tg", "user-77731", "a new question", "user-77731-9")
    assert d.txn(next_pending_txn, subject.conversation_id, 20, d.sealer).ai_allowed
    d.txn(withdraw_consent_txn, subject.contact_id, "ai_processing", "gpc", "Sec-GPC: 1")
    assert d.rows("SELECT ai_enabled FROM contacts WHERE id = ?", subject.contact_id) == [(0,)]
    assert not d.txn(next_pending_txn, subject.conversation_id, 20, d.sealer).ai_allowed
    d.txn(grant_consent_txn, subject.contact_id, "ai_processing", "api:key-3", "POST /consents")
    assert d.txn(next_pending_txn, subject.conversation_id, 20, d.sealer).ai_allowed
    history = consent_history(d.conn, subject.contact_id)
    assert [(h["purpose"], h["state"], h["source"]) for h in history[-4:]] == [
        ("ai_processing", "withdrawn", "gpc"),
        ("ai_processing", "withdrawn", "gpc"),
        ("ai_processing", "granted", "api:key-3"),
        ("ai_processing", "granted", "api:key-3"),
    ]


def test_service_consent_is_recorded_per_identity(d):
    subject = populate(d)
    assert consent_status(d.conn, subject.contact_id)["service"].state is None
    d.txn(grant_consent_txn, subject.contact_id, "service", "keyword:START", "message:1")
    assert consent_status(d.conn, subject.contact_id)["service"].state == "granted"


@pytest.mark.parametrize(
    ("contact", "purpose", "source", "error"),
    [
        (None, "newsletter", "cli", "unknown consent purpose 'newsletter'"),
        (None, "marketing", "email", "unknown consent source 'email'"),
        (404, "marketing", "cli", "no contact with id 404"),
    ],
)
def test_bad_consent_input_changes_nothing(d, contact, purpose, source, error):
    subject = populate(d)
    before = d.rows("SELECT count(*) FROM consents")
    with pytest.raises(RequestError, match=error):
        d.txn(withdraw_consent_txn, contact or subject.contact_id, purpose, source)
    assert d.rows("SELECT count(*) FROM consents") == before
    assert d.rows("SELECT ai_enabled FROM contacts WHERE id = ?", subject.contact_id) == [(1,)]


def test_an_erased_contact_has_no_consent_to_change(d):
    subject = populate(d)
    d.txn(erase_contact_txn, d.sealer, subject.contact_id, actor="cli:t", basis="test")
    with pytest.raises(RequestError, match="was erased"):
        d.txn(withdraw_consent_txn, subject.contact_id, "marketing", "cli")
    assert consent_status(d.conn, subject.contact_id)["marketing"].state is None
