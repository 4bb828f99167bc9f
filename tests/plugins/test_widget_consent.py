"""The GPC signal in the real consent ledger: record_consent_signal_txn on an encrypted store."""

from __future__ import annotations

import pytest

from gateway.store import open_store
from gateway.store.journal import now, thread_txn_part
from gateway.store.records import (
    consent_ledger_txn,
    record_consent,
    record_consent_signal_txn,
)

KEY = bytes(range(32))


def identity_txn(db, channel: str, sender: str) -> int:
    _, identity_id, _ = thread_txn_part(
        db.conn, channel, "default", channel, sender, sender, None, None, now()
    )
    return identity_id


async def test_gpc_is_recorded_once_per_state_for_known_identities_only(tmp_path):
    signal = ("marketing", "withdrawn", "gpc")
    async with open_store(tmp_path / "gateway.db", KEY) as store:
        unknown = await store.write("gpc", record_consent_signal_txn, "web", "vstranger", *signal)
        known = await store.write("identity", identity_txn, "web", "vknown")
        await store.write("identity", identity_txn, "other", "vknown")  # same id, other channel
        first = await store.write("gpc", record_consent_signal_txn, "web", "vknown", *signal)
        again = await store.write("gpc", record_consent_signal_txn, "web", "vknown", *signal)
        # A later opt-in for marketing (a form, say), then the browser's signal again.
        await store.write(
            "grant",
            lambda db: record_consent(db.conn, known, "granted", "form", purpose="marketing"),
        )
        after_grant = await store.write("gpc", record_consent_signal_txn, "web", "vknown", *signal)
        ledger = await store.read("ledger", consent_ledger_txn)
        contacts = await store.read("count", lambda db: db["contacts"].count)
        with pytest.raises(ValueError, match="granted' or 'withdrawn"):
            await store.write(
                "bad", record_consent_signal_txn, "web", "vknown", "marketing", "off", "gpc"
            )
    assert (unknown, first, again, after_grant) == (False, True, True, True)
    assert [
        (r["channel"], r["sender_id"], r["purpose"], r["state"], r["source"]) for r in ledger
    ] == [
        ("web", "vknown", "marketing", "withdrawn", "gpc"),
        ("web", "vknown", "marketing", "granted", "form"),
        ("web", "vknown", "marketing", "withdrawn", "gpc"),
    ]
    assert contacts == 2  # the unknown visitor got no contact
