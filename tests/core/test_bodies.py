"""Message text sealed per contact (gateway.store.bodies): stored only as ciphertext under the
contact's key, read back through the bodies functions, unreadable once the key is destroyed,
bound to its contact, and legacy plain rows sealed by the start-up job."""

from __future__ import annotations

import pytest

from gateway.errors import StoreError
from gateway.messages import Inbound
from gateway.store import open_store
from gateway.store.bodies import (
    SHREDDED,
    contact_messages,
    conversation_messages,
    message_text,
    register_sql_function,
    seal_legacy_txn,
)
from gateway.store.journal import (
    Intake,
    accept_txn,
    commit_reply_txn,
    history_txn,
    next_pending_txn,
)
from gateway.store.outbox import next_outbox_txn, queue_human_reply_txn

KEY = bytes(range(32))


def intake(external_id: str, text: str, sender: str) -> Intake:
    return Intake(
        f"k-{sender}-{external_id}",
        "tg",
        "default",
        Inbound(
            account="bot", external_id=external_id, thread_key=sender, sender_id=sender, text=text
        ),
    )


async def test_text_is_stored_sealed_and_read_back(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:
        sealer = store.sealer
        (a,) = await store.write("in", accept_txn, [intake("1", "my card is 4111", "u1")], sealer)
        work = await store.read("next", next_pending_txn, a.conversation_id, 10, sealer)
        assert [t.text for t in work.history] == ["my card is 4111"]
        await store.write("reply", commit_reply_txn, work, "noted", "ai", sealer)

        def raw(db):
            return db.conn.execute("SELECT text, body FROM messages ORDER BY id").fetchall()

        rows = await store.read("raw", raw)
        assert [text for text, _ in rows] == ["", ""]  # no plain text column content
        assert all(bytes(body).startswith(b"SGM1") for _, body in rows)
        assert b"4111" not in b"".join(bytes(body) for _, body in rows)
        outbox = await store.read("o", next_outbox_txn, a.conversation_id, sealer)
        assert outbox.text == "noted"
        history = await store.read("h", history_txn, "tg", "u1", 10, sealer)
        assert [h[2] for h in history] == ["my card is 4111", "noted"]

        def page(db):
            return conversation_messages(sealer, db.conn, a.conversation_id)

        assert [(m.direction, m.author, m.text) for m in await store.read("p", page)] == [
            ("in", "contact", "my card is 4111"),
            ("out", "ai", "noted"),
        ]


async def test_destroyed_key_makes_every_body_of_that_contact_unreadable(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:
        sealer = store.sealer
        a, b = await store.write(
            "in",
            accept_txn,
            [intake("1", "alice's secret", "u1"), intake("2", "bob", "u2")],
            sealer,
        )
        await store.write(
            "human", queue_human_reply_txn, a.conversation_id, "hi alice", "admin:x", "k1", sealer
        )

        def contact_of(db, conversation_id):
            return db.conn.execute(
                "SELECT contact_id FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()[0]

        alice = await store.read("c", contact_of, a.conversation_id)
        await store.write("shred", lambda db: sealer.destroy(db.conn, alice))

        def texts(db, contact):
            return [m.text for m in contact_messages(sealer, db.conn, contact)]

        assert await store.read("a", texts, alice) == [SHREDDED, SHREDDED]
        bob = await store.read("c", contact_of, b.conversation_id)
        assert await store.read("b", texts, bob) == ["bob"]
        # A fresh process (no key cache) cannot open them either.
    async with open_store(tmp_path / "g.db", KEY) as store:
        assert await store.read("a", texts_of(store.sealer), alice) == [SHREDDED, SHREDDED]


def texts_of(sealer):
    def read(db, contact):
        return [m.text for m in contact_messages(sealer, db.conn, contact)]

    return read


async def test_a_body_moved_to_another_contact_does_not_open(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:
        sealer = store.sealer
        a, b = await store.write(
            "in", accept_txn, [intake("1", "alice", "u1"), intake("2", "bob", "u2")], sealer
        )

        def move(db):
            body = db.conn.execute("SELECT body FROM messages WHERE id = ?", (a.message_id,))
            db.conn.execute(
                "UPDATE messages SET body = ? WHERE id = ?", (body.fetchone()[0], b.message_id)
            )

        await store.write("tamper", move)
        with pytest.raises(StoreError, match="does not open"):
            await store.read("t", lambda db: message_text(sealer, db.conn, b.message_id))


async def test_legacy_plain_rows_are_read_then_sealed_in_bounded_batches(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:
        sealer = store.sealer
        accepted = await store.write(
            "in", accept_txn, [intake(str(n), f"text {n}", "u1") for n in range(5)], sealer
        )

        def unseal_to_legacy(db):  # as rows written before sealing existed look
            for n, acc in enumerate(accepted):
                db.conn.execute(
                    "UPDATE messages SET text = ?, body = NULL WHERE id = ?",
                    (f"text {n}", acc.message_id),
                )

        await store.write("legacy", unseal_to_legacy)
        cid = accepted[0].conversation_id
        page = await store.read("p", lambda db: conversation_messages(sealer, db.conn, cid))
        assert [m.text for m in page] == [f"text {n}" for n in range(5)]
        after = 0
        calls = 0
        while after is not None:
            after = await store.write("seal", seal_legacy_txn, sealer, "messages", after, 2)
            calls += 1
        assert calls == 4  # 2 + 2 + 1 rows, then an empty batch says done

        def raw(db):
            register_sql_function(db.conn, sealer)
            return db.conn.execute(
                "SELECT m.text, m.body IS NOT NULL, open_body(c.contact_id, m.text, m.body) "
                "FROM messages m JOIN conversations c ON c.id = m.conversation_id ORDER BY m.id"
            ).fetchall()

        assert await store.read("raw", raw) == [("", 1, f"text {n}") for n in range(5)]
