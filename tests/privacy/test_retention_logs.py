"""Retention of logs and accounts against a real SQLCipher store with fixed times: the delivery
and transfer logs, operator accounts, and the audit log (whose hash chain still verifies)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.privacy import audit
from tests.privacy.test_retention import Env, ago, by_name, open_env, seed


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_env(tmp_path) as e:
        yield e


# Delivery log, transfer log ----------------------------------------------------------------------


async def test_delivery_log_and_reply_status_detail_go_after_180_days(env):
    old = await seed(env, days=10, delivery_days=181)
    new = await seed(env, days=10, delivery_days=179)
    result = await env.sweep(only=["delivery_log"])
    assert by_name(result)["delivery_log"].records == 1
    assert await env.rows("SELECT outbox_id FROM deliveries") == [(new.outbox_ids[0],)]
    assert await env.rows(
        "SELECT platform_status, platform_status_at, last_error, state FROM outbox WHERE id = ?",
        old.outbox_ids[0],
    ) == [(None, None, None, "sent")]
    assert (
        await env.one("SELECT platform_status FROM outbox WHERE id = ?", new.outbox_ids[0])
        == "read"
    )


async def test_transfer_log_goes_after_its_period(env):
    seeded = await seed(env, days=1)

    def transfers_txn(db: Any) -> None:
        for days, conversation in ((366, seeded.conversation_id), (366, None), (30, None)):
            db.conn.execute(
                "INSERT INTO transfers (at, conversation_id, agent, provider, plugin, region, "
                "purpose, categories, redacted, bytes_out, bytes_in, outcome, duration_ms) "
                "VALUES (?, ?, 'default', 'faq', 'faq', 'local', 'reply', '[]', 0, 1, 1, 'ok', 1)",
                (ago(days), conversation),
            )

    await env.store.write("t", transfers_txn)
    result = await env.sweep(only=["transfer_log"])
    assert by_name(result)["transfer_log"].records == 2
    assert await env.rows("SELECT at FROM transfers") == [(ago(30),)]


# Accounts, audit log ----------------------------------------------------------------------------


async def test_accounts_deactivated_long_ago_are_deleted(env):
    def users_txn(db: Any) -> None:
        for email, deactivated in (
            ("gone@example.com", ago(91)),
            ("left@example.com", ago(30)),
            ("here@example.com", None),
        ):
            db.conn.execute(
                "INSERT INTO users (email, role, password_hash, password_changed_at, created_at, "
                "created_by, deactivated_at) VALUES (?, 'agent', 'x', ?, ?, 'cli', ?)",
                (email, ago(500), ago(500), deactivated),
            )

    await env.store.write("u", users_txn)
    result = await env.sweep(only=["accounts"])
    accounts = by_name(result)["accounts"]
    assert accounts.records == 1 and list(accounts.subjects) == ["user:1"]
    emails = {r[0] for r in await env.rows("SELECT email FROM users")}
    assert emails == {"left@example.com", "here@example.com"}


def backdated_audit_txn(db: Any, days: list[float]) -> None:
    """Audit entries written at earlier times, chained as append_txn would have chained them."""
    conn = db.conn
    last_id, prev = audit.head_txn(db)
    for i, d in enumerate(days, start=1):
        entry_id, at = last_id + i, ago(d)
        digest = audit.entry_hash(
            prev, entry_id, at, "admin:a@example.com", "login.ok", None, "ok", None
        )
        conn.execute(
            "INSERT INTO audit_log (id, at, actor, action, target, outcome, detail, prev_hash, "
            "hash) VALUES (?, ?, 'admin:a@example.com', 'login.ok', NULL, 'ok', NULL, ?, ?)",
            (entry_id, at, prev, digest),
        )
        prev = digest


async def test_audit_log_is_truncated_after_a_year_and_the_chain_still_verifies(env):
    await env.store.write("audit", backdated_audit_txn, [400, 380, 366, 300, 10])
    result = await env.sweep(only=["audit_log"])
    assert by_name(result)["audit_log"].records == 3
    ats = [r[0] for r in await env.rows("SELECT at FROM audit_log ORDER BY id")]
    assert ats[:2] == [ago(300), ago(10)]
    check = await env.store.read("verify", lambda db: audit.verify(db.conn))
    assert check.ok, check.summary()
    actions = [r[0] for r in await env.rows("SELECT action FROM audit_log ORDER BY id")]
    assert "audit.truncate" in actions
