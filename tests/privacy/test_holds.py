"""Legal holds: held data is skipped by every category and counted in the act; holds are
audited, need a reason and an existing target, and once released the data goes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.privacy import audit, retention_sweep
from gateway.privacy.holds import HoldError, add_hold_txn, is_held, list_holds, release_hold_txn
from gateway.privacy.retention_builtin import MESSAGE_CONTENT
from gateway.privacy.retention_categories import Scope
from tests.privacy.test_retention import Env, ago, attach_txn, by_name, open_env, seed


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_env(tmp_path) as e:
        yield e


async def add(env: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("reason", "claim 2026-17")
    kwargs.setdefault("author", "cli:dpo")
    return await env.store.write("hold", lambda db: add_hold_txn(db, **kwargs))


async def test_held_contacts_and_conversations_are_skipped_by_every_category(env):
    held_contact = await seed(env, days=400)
    await seed(env, days=400, contact_id=held_contact.contact_id)  # their second conversation
    held_conversation = await seed(env, days=400)
    free = await seed(env, days=400)
    for seeded in (held_contact, held_conversation, free):
        await env.store.write("a", attach_txn, env.store.sealer, seeded, days=400)
    await add(env, contact_id=held_contact.contact_id)
    await add(env, conversation_id=held_conversation.conversation_id)
    result = await env.sweep()
    found = by_name(result)
    # Three conversations of held data (two of the held contact's, one held conversation):
    # each category counts its own rows of them.
    assert found["message_content"].held == 3 * 3 and found["message_content"].records == 3
    assert found["attachments"].held == 2 and found["attachments"].records == 1
    assert found["delivery_log"].held == 3 and found["delivery_log"].records == 1
    assert found["conversation_metadata"].held == 3
    assert found["conversation_metadata"].records == 1
    assert result.held == sum(c.held for c in result.categories)
    remaining = {r[0] for r in await env.rows("SELECT id FROM conversations")}
    assert free.conversation_id not in remaining
    assert held_conversation.conversation_id in remaining
    assert held_contact.conversation_id in remaining
    assert (
        await env.one(
            "SELECT count(*) FROM messages WHERE redacted_at IS NULL AND conversation_id = ?",
            held_conversation.conversation_id,
        )
        == 3
    )
    act = await env.one("SELECT held FROM retention_acts WHERE id = ?", result.act_id)
    assert act == result.held


async def test_a_released_hold_lets_the_next_sweep_take_the_data(env):
    seeded = await seed(env, days=100)
    hold = await add(env, conversation_id=seeded.conversation_id)
    first = await env.sweep(only=["message_content"])
    assert by_name(first)["message_content"].records == 0
    released = await env.store.write(
        "release",
        lambda db: release_hold_txn(db, hold.id, reason="claim settled", author="cli:dpo"),
    )
    assert released.released_by == "cli:dpo" and released.release_reason == "claim settled"
    second = await env.sweep(only=["message_content"])
    assert by_name(second)["message_content"].records == 3
    holds = await env.store.read("l", lambda db: list_holds(db.conn, include_released=True))
    assert [(h.id, h.active) for h in holds] == [(hold.id, False)]
    assert await env.store.read("l", lambda db: list_holds(db.conn)) == []


async def test_hold_changes_are_audited(env):
    seeded = await seed(env, days=1)
    hold = await add(env, contact_id=seeded.contact_id, reason="court order 12")
    await env.store.write(
        "release", lambda db: release_hold_txn(db, hold.id, reason="lifted", author="admin:x")
    )
    entries = await env.store.read(
        "audit", lambda db: list(audit.entries(db.conn, action_prefix="retention.hold"))
    )
    assert [(e.action, e.actor, e.target, e.detail) for e in entries] == [
        (
            "retention.hold.add",
            "cli:dpo",
            f"contact:{seeded.contact_id}",
            {"hold": hold.id, "reason": "court order 12"},
        ),
        (
            "retention.hold.release",
            "admin:x",
            f"contact:{seeded.contact_id}",
            {"hold": hold.id, "reason": "lifted"},
        ),
    ]


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"contact_id": 999}, "no contact 999"),
        ({"conversation_id": 999}, "no conversation 999"),
        ({"contact_id": 1, "reason": "  "}, "reason is required"),
        ({}, "exactly one"),
        ({"contact_id": 1, "conversation_id": 1}, "exactly one"),
    ],
)
async def test_bad_holds_are_refused_and_nothing_changes(env, kwargs, problem):
    await seed(env, days=1)
    audit_before = await env.one("SELECT count(*) FROM audit_log")
    with pytest.raises(HoldError, match=problem):
        await add(env, **kwargs)
    assert await env.one("SELECT count(*) FROM legal_holds") == 0
    assert await env.one("SELECT count(*) FROM audit_log") == audit_before


async def test_releasing_twice_or_an_unknown_hold_is_refused(env):
    seeded = await seed(env, days=1)
    hold = await add(env, contact_id=seeded.contact_id)

    def release(hold_id: int, reason: str = "done") -> Any:
        return env.store.write(
            "r", lambda db: release_hold_txn(db, hold_id, reason=reason, author="cli:dpo")
        )

    with pytest.raises(HoldError, match="reason is required"):
        await release(hold.id, "")
    await release(hold.id)
    with pytest.raises(HoldError, match="already released"):
        await release(hold.id)
    with pytest.raises(HoldError, match="no legal hold 77"):
        await release(77)


async def test_is_held_covers_a_contacts_conversations(env):
    seeded = await seed(env, days=1)
    other = await seed(env, days=1)

    def check(**kwargs: Any) -> Any:
        return env.store.read("h", lambda db: is_held(db.conn, **kwargs))

    assert not await check(conversation_id=seeded.conversation_id)
    await add(env, contact_id=seeded.contact_id)
    assert await check(conversation_id=seeded.conversation_id)
    assert await check(contact_id=seeded.contact_id)
    assert not await check(conversation_id=other.conversation_id)


async def test_a_hold_on_one_conversation_keeps_its_contact_from_erasure(env):
    held = await seed(env, days=1200)
    await seed(env, days=1200, contact_id=held.contact_id)
    gone = await seed(env, days=1200)
    await add(env, conversation_id=held.conversation_id)
    result = await env.sweep(only=["inactive_contacts"])
    contacts = by_name(result)["inactive_contacts"]
    assert contacts.held == 1
    if contacts.status == "skipped":  # the data-subject eraser is not installed
        assert "eraser" in contacts.reason
        return
    assert contacts.status == "done" and contacts.kept == {}
    assert contacts.subjects == {f"contact:{gone.contact_id}": 1}
    erased = await env.rows("SELECT id FROM contacts WHERE erased_at IS NOT NULL")
    assert erased == [(gone.contact_id,)]


async def test_a_hold_placed_after_a_batch_was_read_still_wins(env):
    """The sweep reads a batch on a reader, then removes it on the writer: the writer re-checks
    holds (and expiry) in its own transaction."""
    seeded = await seed(env, days=100)
    scope = Scope(now=ago(0), cutoff=ago(90), channel_cutoffs={})
    ids = await env.store.read("page", retention_sweep._page_txn, MESSAGE_CONTENT, scope, 0, 100)
    assert ids == seeded.message_ids
    await add(env, contact_id=seeded.contact_id)
    done = await env.store.write("apply", retention_sweep._apply_txn, MESSAGE_CONTENT, scope, ids)
    assert done == {}
    assert await env.one("SELECT count(*) FROM messages WHERE redacted_at IS NOT NULL") == 0
