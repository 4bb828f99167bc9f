"""Notifications (messages we initiate) are refused contact-wide: STOP on one channel stops
them on every channel of that contact until START anywhere, and a restricted contact gets
none; a notification queued earlier is not sent once that changes."""

from __future__ import annotations

import pytest

from gateway.messages import Inbound
from gateway.store import open_store
from gateway.store.journal import Intake, accept_txn
from gateway.store.outbox import OptedOut, next_outbox_txn, queue_notification_txn

KEY = bytes(range(32))


def intake(channel: str, external_id: str, text: str, consent: str | None = None) -> Intake:
    return Intake(
        f"k-{channel}-{external_id}",
        channel,
        "default",
        Inbound(account="acc", external_id=external_id, thread_key="t1", sender_id="s1", text=text),
        consent,
    )


async def test_stop_on_one_channel_stops_notifications_on_all_of_the_contacts_channels(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:
        sealer = store.sealer
        sms, tg = await store.write(
            "in", accept_txn, [intake("sms", "1", "hi"), intake("tg", "1", "hi")], sealer
        )

        def same_person(db):  # an operator linked the two identities to one contact
            keep = db.conn.execute(
                "SELECT contact_id FROM conversations WHERE id = ?", (sms.conversation_id,)
            ).fetchone()[0]
            db.conn.execute("UPDATE identities SET contact_id = ?", (keep,))
            db.conn.execute("UPDATE conversations SET contact_id = ?", (keep,))

        await store.write("link", same_person)
        queued, tg_conversation, _ = await store.write(
            "n", queue_notification_txn, "tg", "acc", "t1", "news", "n1", sealer
        )
        await store.write("stop", accept_txn, [intake("sms", "2", "STOP", "withdrawn")], sealer)
        with pytest.raises(OptedOut, match="unsubscribed"):
            await store.write("n", queue_notification_txn, "tg", "acc", "t1", "more", "n2", sealer)
        # The one queued before STOP is not sent either.
        item = await store.read("o", next_outbox_txn, tg_conversation, sealer)
        assert item.id == queued and item.opted_out and "unsubscribed" in item.refusal
        # START on Telegram: the latest word anywhere wins.
        await store.write("start", accept_txn, [intake("tg", "2", "START", "granted")], sealer)
        await store.write("n", queue_notification_txn, "tg", "acc", "t1", "back", "n3", sealer)


async def test_a_restricted_contact_gets_no_notification(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:
        sealer = store.sealer
        (acc,) = await store.write("in", accept_txn, [intake("tg", "1", "hi")], sealer)
        await store.write(
            "n", queue_notification_txn, "tg", "acc", "t1", "queued before", "n1", sealer
        )
        await store.write(
            "restrict", lambda db: db.conn.execute("UPDATE contacts SET restricted = 1")
        )
        with pytest.raises(OptedOut, match="restricted"):
            await store.write("n", queue_notification_txn, "tg", "acc", "t1", "x", "n2", sealer)
        item = await store.read("o", next_outbox_txn, acc.conversation_id, sealer)
        assert item.opted_out and "GDPR Art. 18" in item.refusal
