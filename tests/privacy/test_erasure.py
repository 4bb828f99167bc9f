"""Erasure on a real SQLCipher store: nothing of the subject findable in any table or on disk,
the key destroyed, a platform retry creating nothing, the receipt, and bad input refused with
nothing changed."""

from __future__ import annotations

import json

import pytest

from gateway.privacy import audit
from gateway.privacy import requests as reg
from gateway.privacy.consent_ledger import is_suppressed
from gateway.privacy.erasure import (
    KEPT_TABLES,
    erase_contact_txn,
    execute_erasure_txn,
    sweep_residue_txn,
)
from gateway.privacy.holds import add_hold_txn, release_hold_txn
from gateway.privacy.requests import RequestError
from gateway.privacy.sealing import KeyDestroyed
from gateway.privacy.shredding import read_tombstones
from gateway.store.bodies import SHREDDED, contact_messages, register_sql_function
from gateway.store.journal import commit_reply_txn, next_pending_txn
from gateway.store.outbox import mark_sending_txn, record_attempt_txn

from ._dsr import open_db, populate


@pytest.fixture
def d(tmp_path):
    d = open_db(tmp_path)
    yield d
    d.db.conn.close()


def all_values(d):
    """(table, column, value) for every value of every table."""
    for (table,) in d.rows(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%'"
    ):
        cursor = d.conn.execute(f'SELECT * FROM "{table}"')
        names = [c[0] for c in cursor.description]
        for row in cursor:
            for name, value in zip(names, row, strict=True):
                if value is not None:
                    yield table, name, value


def findings(d, needles):
    found = []
    for table, column, value in all_values(d):
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        found += [(table, column, n) for n in needles if n in text]
    return found


def erase(d, contact_id, **kw):
    kw.setdefault("actor", "cli:test")
    kw.setdefault("basis", "test")
    return d.txn(erase_contact_txn, d.sealer, contact_id, **kw)


def test_erasure_leaves_nothing_findable(d):
    subject = populate(d)
    other = populate(d, sender="user-55502", name="Bob Bystander")
    d.txn(
        reg.create_request_txn, kind="erasure", channel="chat", actor="contact:1",
        contact_id=subject.contact_id, identity_id=subject.identity_ids[0],
        requester="Ann Example <ann@example.com>", details={"said": "forget me"},
    )  # fmt: skip
    files_before = sorted(p.name for p in d.sealer.root.rglob("*.sealed"))
    assert len(files_before) == 4
    needles = subject.texts + subject.names + subject.external_ids + ["passport user-77731.jpg"]
    assert findings(d, subject.names + subject.external_ids)  # the scan does find them before
    receipt = erase(d, subject.contact_id)

    assert findings(d, needles) == []
    # Bodies are sealed, so also read every message and reply text that can still be opened.
    register_sql_function(d.conn, d.sealer)
    opened = d.rows(
        "SELECT open_body(c.contact_id, m.text, m.body) FROM messages m JOIN conversations c "
        "ON c.id = m.conversation_id UNION ALL SELECT open_body(c.contact_id, o.text, o.body) "
        "FROM outbox o JOIN conversations c ON c.id = o.conversation_id"
    )
    assert any("Bob Bystander" in row[0] for row in opened)
    assert not [row for row in opened for n in needles if n in row[0]]
    assert findings(d, other.names + other.external_ids)  # the bystander is untouched
    files_after = sorted(p.name for p in d.sealer.root.rglob("*.sealed"))
    assert len(files_after) == 2 and set(files_after) < set(files_before)
    for path in d.sealer.root.rglob("*"):
        if path.is_file():
            assert subject.file_bytes not in path.read_bytes()
    # Only the documented tombstones still name the contact id.
    for (table,) in d.rows("SELECT name FROM sqlite_master WHERE type = 'table'"):
        columns = {r[1] for r in d.rows(f'PRAGMA table_info("{table}")')}
        if "contact_id" in columns and table not in ("conversations", *KEPT_TABLES):
            rows = d.rows(
                f'SELECT count(*) FROM "{table}" WHERE contact_id = ?', subject.contact_id
            )
            assert rows == [(0,)], table
    assert d.rows("SELECT display_name, language, erased_at IS NOT NULL, restricted FROM contacts "
                  "WHERE id = ?", subject.contact_id) == [(None, None, 1, 1)]  # fmt: skip
    assert d.rows(
        "SELECT count(*) FROM conversations WHERE contact_id = ? AND thread_key NOT LIKE 'erased:%'",
        subject.contact_id,
    ) == [(0,)]
    # Crypto-shredded: the key is gone, in the row and in the sealer's cache.
    assert d.rows(
        "SELECT length(wrapped), destroyed_at IS NOT NULL FROM contact_keys WHERE contact_id = ?",
        subject.contact_id,
    ) == [(0, 1)]
    with pytest.raises(KeyDestroyed):
        d.sealer.cached_key(d.conn, subject.contact_id, create=True)
    assert list(contact_messages(d.sealer, d.conn, subject.contact_id)) == []
    bob = [m.text for m in contact_messages(d.sealer, d.conn, other.contact_id)]
    assert any("my card is" in t for t in bob) and SHREDDED not in bob
    # Kept: dedupe hashes (journal), de-linked transfers, the request (requester cleared), audit.
    assert d.rows("SELECT count(*), count(message_id) FROM journal j JOIN conversations c ON "
                  "c.id = j.conversation_id WHERE c.contact_id = ?", subject.contact_id) == [(4, 0)]  # fmt: skip
    assert d.rows("SELECT count(*) FROM transfers WHERE conversation_id IS NULL") == [(1,)]
    (request,) = reg.list_requests(d.conn, contact_id=subject.contact_id)
    assert request.requester is None and request.details is None and request.identity_id is None
    assert receipt.key_destroyed and receipt.files_deleted == 2
    tombstones = read_tombstones(d.root / "shredded")
    assert set(tombstones) == {subject.contact_id} and None not in tombstones[subject.contact_id]
    assert audit.verify(d.conn).ok
    assert d.rows("PRAGMA secure_delete") == [(1,)]


def test_platform_retry_after_erasure_creates_nothing(d):
    subject = populate(d)
    erase(d, subject.contact_id)
    counts = {t: d.rows(f"SELECT count(*) FROM {t}")[0][0] for t in (
        "contacts", "identities", "conversations", "messages", "journal", "attachments")}  # fmt: skip
    again = d.inbound("tg", "user-77731", "hello again, resent", "user-77731-1")
    assert again.duplicate
    assert {t: d.rows(f"SELECT count(*) FROM {t}")[0][0] for t in counts} == counts
    # A new message from the same person is a new contact, with a new id and key.
    fresh = d.inbound("tg", "user-77731", "hi, it's me, new", "user-77731-99", name="Ann")
    assert not fresh.duplicate
    (new_contact,) = d.rows(
        "SELECT contact_id FROM conversations WHERE id = ?", fresh.conversation_id
    )[0]
    assert new_contact != subject.contact_id
    assert [m.text for m in contact_messages(d.sealer, d.conn, new_contact)] == ["hi, it's me, new"]
    # The opt-out outlived the erasure as a keyed hash only.
    assert is_suppressed(d.conn, "tg", "user-77731")
    assert not is_suppressed(d.conn, "tg", "user-99999")


def test_receipt_says_what_went_and_what_stayed(d, tmp_path):
    subject = populate(d)
    r = d.txn(reg.create_request_txn, kind="erasure", channel="cli", actor="cli:t",
              contact_id=subject.contact_id)  # fmt: skip
    d.txn(reg.verify_request_txn, r.id, verified=True, method="id document", actor="cli:t")
    receipt = d.txn(execute_erasure_txn, d.sealer, r.id, actor="cli:t")
    assert receipt.request_id == r.id and "art. 17" in receipt.basis
    assert receipt.erased["messages"] == 5
    assert receipt.erased["attachments"] == 2 and receipt.erased["identities"] == 2
    assert receipt.erased["conversation events"] == 1 and receipt.erased["consent records"] == 1
    assert receipt.erased["outbox"] == 1 and receipt.erased["deliveries"] == 1
    kept = {k["what"]: k["count"] for k in receipt.kept}
    assert kept["keyed hashes of platform message ids"] == 4
    assert kept["data-subject request records"] == 1
    assert kept["keyed hashes of identities that opted out of marketing"] == 1
    text = receipt.to_text()
    assert "messages: 5" in text and "key of your messages and files was destroyed" in text
    assert "legal obligation" in text
    done = reg.get_request(d.conn, r.id)
    assert done.status == "completed" and done.outcome == json.loads(json.dumps(receipt.to_json()))
    entry = next(audit.entries(d.conn, action_prefix="privacy.erase"))
    assert entry.target == f"contact:{subject.contact_id}" and entry.detail["messages"] == 5
    assert "Ann" not in json.dumps(entry.detail)


def snapshot(d):
    return sorted(all_values(d), key=repr), sorted(p.name for p in d.sealer.root.rglob("*"))


def test_bad_input_changes_nothing(d):
    subject = populate(d)
    before = snapshot(d)
    with pytest.raises(RequestError, match="no contact with id 999"):
        erase(d, 999)
    with pytest.raises(RequestError, match="basis"):
        erase(d, subject.contact_id, basis=" ")
    hold = d.txn(add_hold_txn, conversation_id=subject.conversation_id, reason="court case 17",
                 author="cli:lawyer")  # fmt: skip
    held = snapshot(d)
    with pytest.raises(RequestError, match="legal hold.*court case 17"):
        erase(d, subject.contact_id)
    assert snapshot(d) == held
    d.txn(release_hold_txn, hold.id, reason="case closed", author="cli:lawyer")
    erase(d, subject.contact_id)
    erased = snapshot(d)
    with pytest.raises(RequestError, match="already erased"):
        erase(d, subject.contact_id)
    assert snapshot(d) == erased and before != erased


def test_erasure_request_must_be_verified_and_an_erasure(d):
    subject = populate(d)
    access = d.txn(reg.create_request_txn, kind="access", channel="cli", actor="cli:t",
                   contact_id=subject.contact_id)  # fmt: skip
    with pytest.raises(RequestError, match="asks for access, not erasure"):
        d.txn(execute_erasure_txn, d.sealer, access.id, actor="cli:t")
    r = d.txn(reg.create_request_txn, kind="erasure", channel="cli", actor="cli:t",
              contact_id=subject.contact_id)  # fmt: skip
    with pytest.raises(RequestError, match="not verified"):
        d.txn(execute_erasure_txn, d.sealer, r.id, actor="cli:t")
    assert d.rows("SELECT erased_at FROM contacts WHERE id = ?", subject.contact_id) == [(None,)]


def test_other_features_tables_are_erased_too(d):
    """A table a later feature adds with a contact_id column is swept and named in the receipt."""
    subject = populate(d)
    with d.conn:
        d.conn.execute("CREATE TABLE loyalty (id INTEGER PRIMARY KEY, contact_id INTEGER, pts INT)")
        d.conn.execute("INSERT INTO loyalty (contact_id, pts) VALUES (?, 10), (999, 5)",
                       (subject.contact_id,))  # fmt: skip
    receipt = erase(d, subject.contact_id)
    assert receipt.erased["loyalty rows"] == 1
    assert d.rows("SELECT contact_id FROM loyalty") == [(999,)]


def test_a_reply_in_flight_is_emptied_then_swept_once_sent(d):
    subject = populate(d)
    d.inbound("tg", "user-77731", "one more", "user-77731-8")
    work = d.txn(next_pending_txn, subject.conversation_id, 20, d.sealer)
    outbox_id = d.txn(commit_reply_txn, work, "Sure, Ann", "ai", d.sealer)
    attempt = d.txn(mark_sending_txn, outbox_id)  # the send is on its way to the platform
    receipt = erase(d, subject.contact_id)
    kept = {k["what"]: k["count"] for k in receipt.kept}
    assert kept["replies being sent at the moment of erasure"] == 1
    assert d.rows("SELECT text, body, thread_key FROM outbox") == [("", None, "erased")]
    # The send returns: its outcome is recorded as usual (no broken reference), then swept.
    d.txn(record_attempt_txn, outbox_id, attempt, "sent", external_id="out-late")
    assert d.txn(sweep_residue_txn, d.sealer) == 1  # the outbox row (its delivery with it)
    assert d.rows("SELECT count(*) FROM outbox") == [(0,)]
    assert d.rows("SELECT count(*) FROM deliveries") == [(0,)]
    assert d.txn(sweep_residue_txn, d.sealer) == 0
