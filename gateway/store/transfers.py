"""The transfer log: one row per model call (or refused call)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import sqlite_utils

from gateway.store.journal import now

if TYPE_CHECKING:
    from gateway.pipeline.agent import Transfer


def record_transfer_txn(
    db: sqlite_utils.Database, conversation_id: int, journal_id: int, agent: str, t: Transfer
) -> None:
    db.conn.execute(
        "INSERT INTO transfers (at, conversation_id, journal_id, agent, provider, plugin, region, "
        "purpose, categories, redacted, legal_basis, bytes_out, bytes_in, outcome, detail, "
        "duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            now(),
            conversation_id,
            journal_id,
            agent,
            t.provider,
            t.plugin,
            t.region,
            t.purpose,
            json.dumps(list(t.categories)),
            int(t.redacted),
            t.legal_basis,
            t.bytes_out,
            t.bytes_in,
            t.outcome,
            t.detail or None,
            t.duration_ms,
        ),
    )
