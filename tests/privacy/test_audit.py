"""gateway.privacy.audit on a real SQLCipher database: the chain verifies; any edit, deletion or
insertion made with raw SQL is found at the right entry; truncation keeps an anchor; a second
writer cannot fork the chain; a cut-off head is caught with --expect-head."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.privacy import audit
from gateway.store.db import IntegrityError, connect
from gateway.store.migrations import migrations

KEY = bytes(range(32))


def new_db(path):
    db = connect(path, KEY)
    migrations.apply(db)
    return db


def fill(db, n: int) -> list[int]:
    ids = []
    with db.conn:
        for i in range(n):
            ids.append(
                audit.append_txn(
                    db,
                    actor=f"admin:user{i % 3}@example.com",
                    action=("privacy.erase", "login.ok", "conversation.reveal")[i % 3],
                    target=f"contact:{i}",
                    detail={"n": i, "why": "test"} if i % 2 else None,
                )
            )
    return ids


@pytest.fixture
def db(tmp_path):
    db = new_db(tmp_path / "a.db")
    yield db
    db.conn.close()


def test_append_and_verify(db):
    assert audit.verify(db.conn).ok and audit.verify(db.conn).checked == 0
    assert fill(db, 10) == list(range(1, 11))
    result = audit.verify(db.conn)
    assert result.ok and result.checked == 10 and result.head_id == 10
    assert result.head_hash == audit.head_txn(db)[1]
    assert "intact: 10 entries" in result.summary()
    first = next(audit.entries(db.conn))
    assert first.detail is None and first.actor == "admin:user0@example.com"
    assert next(audit.entries(db.conn, after_id=1)).detail == {"n": 1, "why": "test"}


def test_bad_entries_are_refused(db):
    with pytest.raises(ValueError, match="outcome"):
        audit.append_txn(db, actor="a", action="b", outcome="maybe")
    with pytest.raises(ValueError, match="actor and an action"):
        audit.append_txn(db, actor="", action="b")


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "'admin:mallory@example.com'"),
        ("action", "'login.ok'"),
        ("target", "'contact:999'"),
        ("target", "NULL"),
        ("outcome", "'denied'"),
        ("detail", '\'{"n": 5, "why": "nothing"}\''),
        ("at", "'2020-01-01T00:00:00+00:00'"),
    ],
)
def test_an_edited_field_is_found_at_its_entry(db, column, value):
    fill(db, 10)
    db.conn.execute(f"UPDATE audit_log SET {column} = {value} WHERE id = 6")
    db.conn.commit()
    result = audit.verify(db.conn)
    assert not result.ok and result.first_bad_id == 6
    assert "content was changed" in result.problem
    assert result.head_id == 5  # the last entry that still verifies
    assert "BROKEN at entry 6" in result.summary()


def test_an_edit_with_its_hash_recomputed_breaks_the_next_entry(db):
    fill(db, 10)
    row = db.conn.execute(
        "SELECT prev_hash, id, at, actor, action, target, outcome, detail FROM audit_log "
        "WHERE id = 4"
    ).fetchone()
    forged = audit.entry_hash(row[0], 4, row[2], "admin:mallory", row[4], row[5], row[6], row[7])
    db.conn.execute(
        "UPDATE audit_log SET actor = 'admin:mallory', hash = ? WHERE id = 4", (forged,)
    )
    db.conn.commit()
    result = audit.verify(db.conn)
    assert not result.ok and result.first_bad_id == 5
    assert "does not follow the previous entry" in result.problem


def test_a_deleted_entry_is_found(db):
    fill(db, 10)
    db.conn.execute("DELETE FROM audit_log WHERE id IN (4, 5)")
    db.conn.commit()
    result = audit.verify(db.conn)
    assert not result.ok and result.first_bad_id == 4
    assert "entries 4..5 are missing" in result.problem


def test_an_inserted_entry_is_found(db):
    fill(db, 5)
    head_id, head = audit.head_txn(db)
    # A well-formed row appended by hand (the hash is public) fits the chain...
    at = "2026-01-01T00:00:00+00:00"
    digest = audit.entry_hash(head, 6, at, "system", "login.ok", None, "ok", None)
    db.conn.execute(
        "INSERT INTO audit_log (id, at, actor, action, target, outcome, detail, prev_hash, hash) "
        "VALUES (6, ?, 'system', 'login.ok', NULL, 'ok', NULL, ?, ?)",
        (at, head, digest),
    )
    # ...but one slipped in between two entries does not.
    db.conn.execute(
        "INSERT INTO audit_log (id, at, actor, action, target, outcome, detail, prev_hash, hash) "
        "VALUES (100, ?, 'system', 'x', NULL, 'ok', NULL, 'f', 'f')",
        (at,),
    )
    db.conn.commit()
    result = audit.verify(db.conn)
    assert not result.ok and result.first_bad_id == 7
    assert "entries 7..99 are missing" in result.problem


def test_a_cut_off_head_is_caught_only_with_the_expected_head(db):
    fill(db, 10)
    noted = audit.head_txn(db)[1]
    db.conn.execute("DELETE FROM audit_log WHERE id > 7")
    db.conn.commit()
    assert audit.verify(db.conn).ok  # the rest of the chain is still valid
    result = audit.verify(db.conn, expect_head=noted)
    assert not result.ok and result.first_bad_id is None
    assert "is not in the log" in result.problem
    assert result.summary().startswith("audit log BROKEN: the expected head")
    assert audit.verify(db.conn, expect_head=audit.head_txn(db)[1]).ok


def test_a_second_writer_cannot_fork_the_chain(tmp_path):
    """Two connections (the daemon and a command) that read the same head: the second insert
    fails on the UNIQUE prev_hash, the chain stays linear, a retry appends after the first."""
    first = new_db(tmp_path / "a.db")
    second = connect(tmp_path / "a.db", KEY)
    try:
        fill(first, 3)
        _, head = audit.head_txn(second)
        with first.conn:
            audit.append_txn(first, actor="system", action="a.first")
        # The second writer builds on the head it read before the first one's append.
        at = "2026-01-01T00:00:00+00:00"
        with pytest.raises(IntegrityError, match="UNIQUE"), second.conn:
            second.conn.execute(
                "INSERT INTO audit_log (id, at, actor, action, target, outcome, detail, "
                "prev_hash, hash) VALUES (100, ?, 'cli:x', 'a.second', NULL, 'ok', NULL, ?, ?)",
                (at, head, audit.entry_hash(head, 100, at, "cli:x", "a.second", None, "ok", None)),
            )
        with second.conn:
            audit.append_txn(second, actor="cli:x", action="a.second")
        assert audit.verify(first.conn).ok
        assert [e.action for e in audit.entries(first.conn)][-2:] == ["a.first", "a.second"]
    finally:
        first.conn.close()
        second.conn.close()


def test_truncation_keeps_an_anchor_and_still_verifies(db):
    fill(db, 10)
    cutoff = db.conn.execute("SELECT at FROM audit_log WHERE id = 7").fetchone()[0]
    noted_old = db.conn.execute("SELECT hash FROM audit_log WHERE id = 6").fetchone()[0]
    with db.conn:
        removed = audit.truncate_before_txn(db, cutoff, actor="system")
    assert removed == 6
    ids = [e.id for e in audit.entries(db.conn)]
    assert ids == [7, 8, 9, 10, 11]  # 11: the truncation itself
    last = list(audit.entries(db.conn))[-1]
    assert last.action == "audit.truncate" and last.detail["removed"] == 6
    result = audit.verify(db.conn)
    assert result.ok and result.checked == 5 and result.head_id == 11
    # A head noted before the truncation that is now the anchor still counts as seen.
    assert audit.verify(db.conn, expect_head=noted_old).ok
    # Tampering after truncation is still found, and so is a forged anchor.
    db.conn.execute("UPDATE audit_anchor SET hash = ?", ("0" * 64,))
    db.conn.commit()
    bad = audit.verify(db.conn)
    assert not bad.ok and bad.first_bad_id == 7


def test_truncating_everything_then_appending(db):
    fill(db, 3)
    with db.conn:
        audit.truncate_before_txn(db, "9999", actor="system")
    assert [e.id for e in audit.entries(db.conn)] == [4]
    with db.conn:
        assert audit.append_txn(db, actor="system", action="after") == 5
    assert audit.verify(db.conn).ok
    db.conn.execute("DELETE FROM audit_anchor")
    db.conn.commit()
    result = audit.verify(db.conn)
    assert not result.ok and "entries 1..3 are missing" in result.problem


def test_entries_filters(db):
    fill(db, 9)
    assert [e.id for e in audit.entries(db.conn, action_prefix="privacy.")] == [1, 4, 7]
    assert [e.id for e in audit.entries(db.conn, actor="admin:user1@example.com")] == [2, 5, 8]
    assert [e.id for e in audit.entries(db.conn, target="contact:3")] == [4]
    assert [e.id for e in audit.entries(db.conn, limit=2, newest_first=True)] == [9, 8]
    assert list(audit.entries(db.conn, action_prefix="privacy%")) == []  # % is literal
    assert list(audit.entries(db.conn, since="9999")) == []


FIELDS = ["at", "actor", "action", "target", "outcome", "detail", "prev_hash", "hash"]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(min_value=1, max_value=12),
    data=st.data(),
)
def test_any_single_change_is_found_at_or_right_after_its_entry(tmp_path_factory, n, data):
    db = new_db(tmp_path_factory.mktemp("h") / "a.db")
    try:
        fill(db, n)
        victim = data.draw(st.integers(min_value=1, max_value=n))
        column = data.draw(st.sampled_from(FIELDS))
        value = data.draw(st.text(min_size=1, max_size=12))
        old = db.conn.execute(f"SELECT {column} FROM audit_log WHERE id = ?", (victim,)).fetchone()
        if old[0] == value:
            return
        db.conn.execute(f"UPDATE audit_log SET {column} = ? WHERE id = ?", (value, victim))
        db.conn.commit()
        result = audit.verify(db.conn)
        assert not result.ok
        assert result.first_bad_id == victim and result.head_id == victim - 1
        assert json.dumps(result.summary())
    finally:
        db.conn.close()
