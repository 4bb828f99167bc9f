"""Schema migrations: numbered functions ``mNNN_verb_noun``, applied in order at start-up."""

from __future__ import annotations

import sqlite_utils
from sqlite_utils.migrations import Migrations

migrations = Migrations("gateway")


@migrations()
def m001_create_core_tables(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE contacts (
            id INTEGER PRIMARY KEY,
            display_name TEXT,
            language TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        -- One end user on one channel; several identities may belong to one contact.
        CREATE TABLE identities (
            id INTEGER PRIMARY KEY,
            contact_id INTEGER NOT NULL REFERENCES contacts(id),
            channel TEXT NOT NULL,
            external_id TEXT NOT NULL,
            display_name TEXT,
            created_at TEXT NOT NULL,
            UNIQUE (channel, external_id)
        );
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            channel TEXT NOT NULL,
            account TEXT NOT NULL,
            thread_key TEXT NOT NULL,
            contact_id INTEGER NOT NULL REFERENCES contacts(id),
            agent TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'open',
            created_at TEXT NOT NULL,
            last_message_at TEXT NOT NULL,
            UNIQUE (channel, account, thread_key)
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id),
            direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            text TEXT NOT NULL,
            external_id TEXT,
            author TEXT NOT NULL,             -- 'contact', 'ai', 'fallback', 'human'
            created_at TEXT NOT NULL,
            platform_sent_at TEXT
        );
        CREATE INDEX messages_conversation ON messages (conversation_id, id);
        -- The intake journal: one row per inbound message, committed before the platform
        -- gets its acknowledgement. dedupe_key = HMAC(channel, account, external id) so a
        -- platform retry is recognised even after the message itself is erased.
        CREATE TABLE journal (
            id INTEGER PRIMARY KEY,
            dedupe_key TEXT NOT NULL UNIQUE,
            channel TEXT NOT NULL,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id),
            message_id INTEGER REFERENCES messages(id) ON DELETE SET NULL,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
            received_at TEXT NOT NULL,
            done_at TEXT
        );
        CREATE INDEX journal_pending ON journal (conversation_id, id) WHERE state = 'pending';
        -- Replies, committed before they are sent; idempotency_key makes a re-run of the
        -- same work a no-op. state: pending -> sending -> sent | failed | unknown.
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            idempotency_key TEXT NOT NULL UNIQUE,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id),
            message_id INTEGER REFERENCES messages(id) ON DELETE SET NULL,
            channel TEXT NOT NULL,
            account TEXT NOT NULL,
            thread_key TEXT NOT NULL,
            text TEXT NOT NULL,
            reply_to_external_id TEXT,
            state TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'unknown')),
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            sent_at TEXT,
            external_id TEXT,
            last_error TEXT
        );
        CREATE INDEX outbox_open ON outbox (conversation_id, id) WHERE state IN ('pending', 'sending');
        -- Every attempt to deliver an outbox row and what came of it.
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            outbox_id INTEGER NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
            attempt INTEGER NOT NULL,
            at TEXT NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT
        );
        CREATE INDEX deliveries_outbox ON deliveries (outbox_id);
        CREATE TABLE channel_state (
            channel TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (channel, key)
        );
        """
    )


@migrations()
def m002_create_transfers(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        -- Every model call and every call the residency policy refused: who received which
        -- categories of data, where, on what basis. Never content.
        CREATE TABLE transfers (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            conversation_id INTEGER REFERENCES conversations(id) ON DELETE SET NULL,
            journal_id INTEGER,
            agent TEXT NOT NULL,
            provider TEXT NOT NULL,
            plugin TEXT NOT NULL,
            region TEXT NOT NULL,
            purpose TEXT NOT NULL,
            categories TEXT NOT NULL,          -- JSON list
            redacted INTEGER NOT NULL,
            legal_basis TEXT,
            bytes_out INTEGER NOT NULL,
            bytes_in INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT,
            duration_ms REAL NOT NULL
        );
        CREATE INDEX transfers_at ON transfers (at);
        CREATE INDEX transfers_conversation ON transfers (conversation_id);
        """
    )


@migrations()
def m003_add_ai_controls(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        -- "AI off" per contact and per conversation; a restricted contact (a data-subject
        -- restriction or objection) is never sent to a model.
        ALTER TABLE contacts ADD COLUMN ai_enabled INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE contacts ADD COLUMN restricted INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE conversations ADD COLUMN ai_enabled INTEGER NOT NULL DEFAULT 1;
        -- status: 'open' (the AI answers), 'handoff' (a person answers; the AI stays silent),
        -- 'closed'. Who changed it and why is kept in conversation_events.
        CREATE TABLE conversation_events (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            at TEXT NOT NULL,
            kind TEXT NOT NULL,            -- handoff, release, ai_off, ai_on, close
            actor TEXT NOT NULL,           -- 'contact', 'ai', 'cli', 'admin:<user>'
            reason TEXT
        );
        CREATE INDEX conversation_events_conversation ON conversation_events (conversation_id);
        """
    )


# Knowledge snippets (agents' documents, FTS5): the function lives beside the code that uses it.
from gateway.knowledge import m004_create_knowledge  # noqa: E402

migrations()(m004_create_knowledge)


@migrations()
def m005_add_message_analysis(db: sqlite_utils.Database) -> None:
    # The local analysis of each inbound message (intent, category, sentiment, urgency: labels
    # only, JSON) and, while a person has the conversation, suggested replies for them.
    db.execute("ALTER TABLE messages ADD COLUMN analysis TEXT")
    db.execute("ALTER TABLE messages ADD COLUMN suggestions TEXT")
