"""Retention categories against a real SQLCipher store, with fixed times: each category removes
what expired and nothing else, per-channel settings override the global ones, a dry run changes
nothing, and sealed files go from disk with their records."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig, load_config
from gateway.keys import DATABASE_FILE, load_master_key
from gateway.messages import Attachment
from gateway.plugin import load_registry
from gateway.privacy import retention_sweep
from gateway.privacy.retention_builtin import INACTIVE_CONTACTS
from gateway.privacy.retention_categories import Scope
from gateway.privacy.retention_sweep import SweepResult, sweep
from gateway.store import Store, open_store
from gateway.store.bodies import seal_text
from gateway.store.records import store_attachments

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
"""The sweeps' clock: every row's time is set relative to it."""

BASE_CONFIG = """
[gateway]
data_dir = "data"
[channels.web]
plugin = "webchat"
[channels.shop]
plugin = "webchat"
[agents.default]
provider = "faq"
[providers.faq]
plugin = "faq"
"""


def ago(days: float) -> str:
    return (NOW - dt.timedelta(days=days)).isoformat(timespec="microseconds")


@dataclasses.dataclass
class Env:
    config: GatewayConfig
    store: Store
    path: Path

    async def sweep(self, **kwargs: Any) -> SweepResult:
        kwargs.setdefault("now", NOW)
        return await sweep(self.store, self.config, sealer=self.store.sealer, **kwargs)

    async def rows(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = await self.store.read(
            "test", lambda db: db.conn.execute(query, args).fetchall()
        )
        return rows

    async def one(self, query: str, *args: Any) -> Any:
        return (await self.rows(query, *args))[0][0]

    async def execute(self, query: str, *args: Any) -> None:
        await self.store.write("test", lambda db: db.conn.execute(query, args))


def write_config(directory: Path, extra: str = "") -> Path:
    path = directory / "gateway.toml"
    path.write_text(BASE_CONFIG + extra)
    return path


@contextlib.asynccontextmanager
async def open_env(directory: Path, extra: str = "") -> AsyncIterator[Env]:
    """A config (two webchat channels, ``extra`` appended) and the daemon's encrypted store."""
    config = load_config(write_config(directory, extra), load_registry())
    master = load_master_key(config.data_dir, create=True)
    path = config.data_dir / DATABASE_FILE
    async with open_store(
        path, master.derive("sqlcipher"), dedupe_seed=master.derive("dedupe")
    ) as store:
        yield Env(config, store, path)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_env(tmp_path) as e:
        yield e


@dataclasses.dataclass
class Seeded:
    contact_id: int
    conversation_id: int
    message_ids: list[int]
    outbox_ids: list[int]


_counter = iter(range(1, 10**9))


def seed_txn(
    db: Any,
    sealer: Any,
    *,
    channel: str = "web",
    days: float,
    texts: tuple[str, ...] = ("my card is 4111 1111 1111 1111", "thanks"),
    contact_id: int | None = None,
    delivery_days: float | None = None,
) -> Seeded:
    """A conversation whose last message was ``days`` before NOW: inbound messages with sealed
    bodies and analysis, one sent reply (outbox + delivery log), like the pipeline leaves them."""
    conn = db.conn
    n = next(_counter)
    at = ago(days)
    if contact_id is None:
        contact_id = conn.execute(
            "INSERT INTO contacts (display_name, created_at, updated_at) VALUES (?, ?, ?)",
            (f"Person {n}", at, at),
        ).lastrowid
        conn.execute(
            "INSERT INTO identities (contact_id, channel, external_id, created_at) "
            "VALUES (?, ?, ?, ?)",
            (contact_id, channel, f"user-{n}", at),
        )
    conversation_id = conn.execute(
        "INSERT INTO conversations (channel, account, thread_key, contact_id, agent, created_at, "
        "last_message_at) VALUES (?, 'acct', ?, ?, 'default', ?, ?)",
        (channel, f"thread-{n}", contact_id, at, at),
    ).lastrowid
    message_ids = []
    for i, text in enumerate(texts):
        message_ids.append(
            conn.execute(
                "INSERT INTO messages (conversation_id, direction, text, body, external_id, "
                "author, created_at, analysis, suggestions) VALUES (?, 'in', '', ?, ?, "
                "'contact', ?, ?, ?)",
                (
                    conversation_id,
                    seal_text(sealer, conn, contact_id, text),
                    f"ext-{n}-{i}",
                    at,
                    json.dumps({"intent": "payment"}),
                    json.dumps(["Sure"]),
                ),
            ).lastrowid
        )
        conn.execute(
            "INSERT INTO journal (dedupe_key, channel, conversation_id, message_id, state, "
            "received_at, done_at) VALUES (?, ?, ?, ?, 'done', ?, ?)",
            (f"dk-{n}-{i}", channel, conversation_id, message_ids[-1], at, at),
        )
    reply_id = conn.execute(
        "INSERT INTO messages (conversation_id, direction, text, body, author, created_at) "
        "VALUES (?, 'out', '', ?, 'ai', ?)",
        (conversation_id, seal_text(sealer, conn, contact_id, "Your card ends 1111"), at),
    ).lastrowid
    message_ids.append(reply_id)
    outbox_id = conn.execute(
        "INSERT INTO outbox (idempotency_key, conversation_id, message_id, channel, account, "
        "thread_key, text, body, state, attempts, created_at, updated_at, sent_at, external_id, "
        "platform_status, platform_status_at, last_error) VALUES (?, ?, ?, ?, 'acct', ?, '', ?, "
        "'sent', 1, ?, ?, ?, ?, 'read', ?, 'timeout on first try')",
        (
            f"idem-{n}",
            conversation_id,
            reply_id,
            channel,
            f"thread-{n}",
            seal_text(sealer, conn, contact_id, "Your card ends 1111"),
            at,
            at,
            at,
            f"out-{n}",
            at,
        ),
    ).lastrowid
    d_at = ago(days if delivery_days is None else delivery_days)
    conn.execute(
        "INSERT INTO deliveries (outbox_id, attempt, at, outcome, detail) VALUES (?, 1, ?, 'sent', NULL)",
        (outbox_id, d_at),
    )
    assert contact_id is not None and conversation_id is not None and outbox_id is not None
    return Seeded(contact_id, conversation_id, message_ids, [outbox_id])


async def seed(env: Env, **kwargs: Any) -> Seeded:
    result: Seeded = await env.store.write("seed", seed_txn, env.store.sealer, **kwargs)
    return result


def attach_txn(
    db: Any,
    sealer: Any,
    seeded: Seeded,
    *,
    days: float,
    category: str = "attachments",
    event_id: int | None = None,
) -> tuple[int, Path]:
    (att_id,) = store_attachments(
        db.conn,
        sealer,
        (Attachment(kind="image", data=b"\x89PNG secret scan", mime_type="image/png"),),
        conversation_id=seeded.conversation_id,
        contact_id=seeded.contact_id,
        message_id=None if event_id else seeded.message_ids[0],
        event_id=event_id,
        category=category,
    )
    db.conn.execute("UPDATE attachments SET created_at = ? WHERE id = ?", (ago(days), att_id))
    path = db.conn.execute("SELECT path FROM attachments WHERE id = ?", (att_id,)).fetchone()[0]
    return att_id, Path(path)


def by_name(result: SweepResult) -> dict[str, Any]:
    return {c.name: c for c in result.categories}


# Message content ---------------------------------------------------------------------------------


async def test_message_content_is_anonymised_after_inactivity_and_recent_content_kept(env):
    old = await seed(env, days=91)
    recent = await seed(env, days=89)
    result = await env.sweep(only=["message_content"])
    content = by_name(result)["message_content"]
    assert content.status == "done" and content.records == len(old.message_ids)
    assert content.subjects == {f"contact:{old.contact_id}": len(old.message_ids)}
    rows = await env.rows(
        "SELECT text, body, analysis, suggestions, redacted_at FROM messages "
        "WHERE conversation_id = ?",
        old.conversation_id,
    )
    assert rows == [("", None, None, None, NOW.isoformat(timespec="microseconds"))] * len(rows)
    # The rows stay as metadata: direction, author, times, external ids.
    assert (
        await env.one(
            "SELECT count(*) FROM messages WHERE conversation_id = ? AND external_id IS NOT NULL",
            old.conversation_id,
        )
        == 2
    )
    assert await env.rows(
        "SELECT text, body IS NULL, redacted_at IS NOT NULL FROM outbox WHERE id = ?",
        old.outbox_ids[0],
    ) == [("", 1, 1)]
    kept = await env.rows(
        "SELECT body IS NOT NULL, analysis IS NOT NULL, redacted_at FROM messages "
        "WHERE conversation_id = ?",
        recent.conversation_id,
    )
    assert kept[0] == (1, 1, None) and all(r[0] and r[2] is None for r in kept)
    # A second sweep finds nothing more.
    again = await env.sweep(only=["message_content"])
    assert by_name(again)["message_content"].records == 0


async def test_a_channel_setting_overrides_the_global_one(tmp_path):
    extra = "[retention]\nmessage_content_days = 60\n[retention.channels.shop]\nmessage_content_days = 10\n"
    async with open_env(tmp_path, extra) as env:
        shop = await seed(env, channel="shop", days=11)
        web = await seed(env, channel="web", days=11)
        web_old = await seed(env, channel="web", days=61)
        result = await env.sweep(only=["message_content"])
        content = by_name(result)["message_content"]
        assert content.channel_days == {"shop": 10} and content.days == 60
        assert content.to_json()["basis"] == (
            "message_content_days = 60; [retention.channels.shop] message_content_days = 10"
        )
        redacted = {
            r[0]
            for r in await env.rows(
                "SELECT DISTINCT conversation_id FROM messages WHERE redacted_at IS NOT NULL"
            )
        }
        assert redacted == {shop.conversation_id, web_old.conversation_id}
        assert web.conversation_id not in redacted


async def test_zero_days_keeps_a_category_forever(tmp_path):
    async with open_env(tmp_path, "[retention]\nmessage_content_days = 0\n") as env:
        await seed(env, days=5000)
        result = await env.sweep(only=["message_content"])
        content = by_name(result)["message_content"]
        assert content.status == "skipped" and "forever" in content.reason
        assert await env.one("SELECT count(*) FROM messages WHERE redacted_at IS NOT NULL") == 0


# Attachments, call logs, voicemail ----------------------------------------------------------------


async def test_attachments_are_deleted_from_disk_with_their_records(env):
    seeded = await seed(env, days=1)  # an active conversation: only the file's age counts
    old_id, old_path = await env.store.write("a", attach_txn, env.store.sealer, seeded, days=91)
    new_id, new_path = await env.store.write("a", attach_txn, env.store.sealer, seeded, days=5)
    voice_id, voice_path = await env.store.write(
        "a", attach_txn, env.store.sealer, seeded, days=91, category="voicemail"
    )
    assert old_path.exists() and new_path.exists()
    result = await env.sweep(only=["attachments"])
    assert by_name(result)["attachments"].records == 1
    assert not old_path.exists() and new_path.exists() and voice_path.exists()
    ids = {r[0] for r in await env.rows("SELECT id FROM attachments")}
    assert ids == {new_id, voice_id}


async def test_call_logs_and_voicemail_recordings_go_after_their_period(env):
    seeded = await seed(env, days=1)

    def events_txn(db: Any) -> list[int]:
        ids = []
        for kind, days in (("call", 91), ("voicemail", 91), ("call", 10), ("handoff", 400)):
            ids.append(
                db.conn.execute(
                    "INSERT INTO conversation_events (conversation_id, at, kind, actor, detail) "
                    "VALUES (?, ?, ?, 'contact', '{\"from\": \"+15550100\"}')",
                    (seeded.conversation_id, ago(days), kind),
                ).lastrowid
            )
        return ids

    old_call, old_voicemail, new_call, handoff = await env.store.write("ev", events_txn)
    _, recording = await env.store.write(
        "a",
        attach_txn,
        env.store.sealer,
        seeded,
        days=91,
        category="voicemail",
        event_id=old_voicemail,
    )
    _, loose = await env.store.write(
        "a", attach_txn, env.store.sealer, seeded, days=95, category="voicemail"
    )
    result = await env.sweep(only=["call_logs", "voicemail"])
    found = by_name(result)
    assert found["call_logs"].records == 2 and found["voicemail"].records == 1
    assert not recording.exists() and not loose.exists()
    left = {r[0] for r in await env.rows("SELECT id FROM conversation_events")}
    assert left == {new_call, handoff}  # other events are conversation metadata
    assert await env.one("SELECT count(*) FROM attachments") == 0


# Conversation metadata ---------------------------------------------------------------------------


async def test_long_inactive_conversations_are_deleted_with_everything_in_them(env):
    old = await seed(env, days=366)
    busy = await seed(env, days=400)
    recent = await seed(env, days=300, contact_id=old.contact_id)
    _, file = await env.store.write("a", attach_txn, env.store.sealer, old, days=366)
    # Unanswered work in progress keeps a conversation, however old.
    await env.execute(
        "UPDATE journal SET state = 'pending' WHERE conversation_id = ?", busy.conversation_id
    )
    result = await env.sweep(only=["conversation_metadata"])
    meta = by_name(result)["conversation_metadata"]
    assert meta.records == 1 and meta.subjects == {f"contact:{old.contact_id}": 1}
    assert not file.exists()
    assert {r[0] for r in await env.rows("SELECT id FROM conversations")} == {
        busy.conversation_id,
        recent.conversation_id,
    }
    for table in ("messages", "journal", "outbox", "attachments"):
        assert (
            await env.one(
                f"SELECT count(*) FROM {table} WHERE conversation_id = ?", old.conversation_id
            )
            == 0
        ), table
    assert (
        await env.one("SELECT count(*) FROM deliveries WHERE outbox_id = ?", old.outbox_ids[0]) == 0
    )
    # The contact stays (the inactive-contacts category decides about people).
    assert await env.one("SELECT count(*) FROM contacts WHERE id = ?", old.contact_id) == 1


# Inactive contacts -------------------------------------------------------------------------------


async def test_inactive_contacts_use_the_data_subject_eraser(env):
    gone = await seed(env, days=1100)
    await seed(env, days=1000)  # inactive, but not for long enough
    both = await seed(env, days=1100)
    await seed(env, days=5, contact_id=both.contact_id)  # wrote again recently elsewhere
    # The selection: only the contact silent everywhere for longer than the period.
    scope = Scope(now=ago(0), cutoff=ago(1095), channel_cutoffs={})
    selected = await env.store.read(
        "page", retention_sweep._page_txn, INACTIVE_CONTACTS, scope, 0, 100
    )
    assert selected == [gone.contact_id]
    result = await env.sweep(only=["inactive_contacts"])
    contacts = by_name(result)["inactive_contacts"]
    if importlib.util.find_spec("gateway.privacy.erasure") is None:
        assert contacts.status == "skipped" and "eraser" in contacts.reason
    else:
        assert contacts.status == "done", contacts.reason
        assert contacts.subjects == {f"contact:{gone.contact_id}": 1}
        again = await env.store.read(
            "page", retention_sweep._page_txn, INACTIVE_CONTACTS, scope, 0, 100
        )
        assert again == []  # erased contacts no longer match


# Dry run ----------------------------------------------------------------------------------------


async def snapshot(env: Env) -> dict[str, list[tuple[Any, ...]]]:
    tables = [
        "contacts",
        "conversations",
        "messages",
        "outbox",
        "deliveries",
        "journal",
        "attachments",
        "conversation_events",
        "transfers",
        "users",
    ]
    return {t: await env.rows(f"SELECT * FROM {t} ORDER BY rowid") for t in tables}


async def test_a_dry_run_changes_nothing_and_counts_what_the_sweep_then_removes(env):
    for days in (91, 200, 400):
        seeded = await seed(env, days=days)
        await env.store.write("a", attach_txn, env.store.sealer, seeded, days=days)
    await seed(env, days=3)
    before = await snapshot(env)
    files = sorted((env.config.data_dir / "attachments").rglob("*.sealed"))
    preview = await env.sweep(dry_run=True)
    assert await snapshot(env) == before
    assert sorted((env.config.data_dir / "attachments").rglob("*.sealed")) == files
    assert all(c.status in ("dry-run", "skipped") for c in preview.categories)
    assert preview.records > 0
    real = await env.sweep()
    # Categories run in order, and an earlier one can take rows a later one counted (a
    # conversation's attachments go before the conversation), so compare the first ones.
    for name in ("message_content", "attachments", "delivery_log"):
        assert by_name(real)[name].records == by_name(preview)[name].records, name
    acts = await env.rows("SELECT id, dry_run, state FROM retention_acts ORDER BY id")
    assert acts == [(preview.act_id, 1, "done"), (real.act_id, 0, "done")]


async def test_small_batches_cover_everything_in_several_transactions(tmp_path):
    async with open_env(tmp_path, "[retention]\nbatch_size = 3\n") as env:
        seeded = await seed(env, days=100, texts=tuple(f"m{i}" for i in range(10)))
        writes = env.store.stats["writes"]
        result = await env.sweep(only=["message_content"], write_files=False)
        assert by_name(result)["message_content"].records == 11
        assert env.store.stats["writes"] - writes >= 4 + 3  # 4 batches + act start/category/end
        assert (
            await env.one(
                "SELECT count(*) FROM messages WHERE conversation_id = ? AND redacted_at IS NULL",
                seeded.conversation_id,
            )
            == 0
        )
