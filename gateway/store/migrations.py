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


@migrations()
def m006_add_channel_records(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        -- What an outbox row is for: 'reply' (an answer to the contact's own message),
        -- 'transactional' (a confirmation the contact asked for, e.g. of an opt-out),
        -- 'notification' (initiated by us: refused once the contact opted out).
        ALTER TABLE outbox ADD COLUMN purpose TEXT NOT NULL DEFAULT 'reply';
        -- The platform's latest word on a sent message: delivered, read, failed.
        ALTER TABLE outbox ADD COLUMN platform_status TEXT;
        ALTER TABLE outbox ADD COLUMN platform_status_at TEXT;
        CREATE INDEX outbox_external ON outbox (channel, external_id) WHERE external_id IS NOT NULL;
        -- Events that are not messages (a call, a failed send) carry JSON details; event_key
        -- makes a platform's repeated callbacks about one event update one row.
        ALTER TABLE conversation_events ADD COLUMN detail TEXT;
        ALTER TABLE conversation_events ADD COLUMN event_key TEXT;
        CREATE UNIQUE INDEX conversation_events_key ON conversation_events (event_key)
            WHERE event_key IS NOT NULL;
        -- The consent ledger: append-only; an identity's current state per purpose is its
        -- latest row. source: 'keyword:STOP', 'gpc', 'admin:<user>', 'api', ...
        CREATE TABLE consents (
            id INTEGER PRIMARY KEY,
            identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
            purpose TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('granted', 'withdrawn')),
            at TEXT NOT NULL,
            source TEXT NOT NULL,
            detail TEXT
        );
        CREATE INDEX consents_identity ON consents (identity_id, purpose, id);
        -- Per-contact file keys, wrapped (see gateway.privacy.sealing). destroyed_at set and
        -- wrapped emptied = crypto-shredded.
        CREATE TABLE contact_keys (
            contact_id INTEGER PRIMARY KEY REFERENCES contacts(id),
            wrapped BLOB NOT NULL,
            created_at TEXT NOT NULL,
            destroyed_at TEXT
        );
        -- Files that came with messages or calls. path is NULL when the platform's copy could
        -- not be fetched (state 'unavailable'; source_ref says where it was).
        CREATE TABLE attachments (
            id INTEGER PRIMARY KEY,
            uuid TEXT NOT NULL UNIQUE,
            message_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
            event_id INTEGER REFERENCES conversation_events(id) ON DELETE CASCADE,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id),
            contact_id INTEGER NOT NULL REFERENCES contacts(id),
            category TEXT NOT NULL DEFAULT 'attachments',   -- retention category
            kind TEXT NOT NULL,
            mime_type TEXT,
            filename TEXT,
            size INTEGER,
            sha256 TEXT,
            path TEXT,
            source_ref TEXT,
            state TEXT NOT NULL CHECK (state IN ('sealed', 'unavailable')),
            created_at TEXT NOT NULL
        );
        CREATE INDEX attachments_message ON attachments (message_id);
        CREATE INDEX attachments_contact ON attachments (contact_id);
        """
    )


@migrations()
def m007_create_users(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        -- People who sign in to the admin UI. password_hash is Argon2id; totp_secret is the
        -- RFC 6238 seed (the database is encrypted); totp_last_step stops a code being used twice;
        -- recovery codes are SHA-256 hashes (each random 50 bits+), removed when used.
        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            email TEXT NOT NULL UNIQUE,
            display_name TEXT,
            role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'agent', 'auditor')),
            password_hash TEXT NOT NULL,
            password_changed_at TEXT NOT NULL,
            totp_secret TEXT,
            totp_confirmed_at TEXT,
            totp_last_step INTEGER,
            recovery_codes TEXT NOT NULL DEFAULT '[]',
            failed_logins INTEGER NOT NULL DEFAULT 0,
            locked_until TEXT,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            deactivated_at TEXT
        );
        """
    )


@migrations()
def m008_create_store_keys(db: sqlite_utils.Database) -> None:
    # Keys that must outlive a master-key rotation, kept inside the encrypted database:
    # 'contact-wrap' wraps the per-contact file keys (rotated with the master key: every
    # contact key is re-wrapped), 'dedupe' keys the journal's dedupe hashes (never rotated: a
    # platform retry after a rotation must still be recognised).
    db.execute(
        "CREATE TABLE store_keys (name TEXT PRIMARY KEY, value BLOB NOT NULL, "
        "created_at TEXT NOT NULL)"
    )


@migrations()
def m009_create_early_statuses(db: sqlite_utils.Database) -> None:
    # A platform may report "sent"/"delivered" for a message before our send call returned and
    # its id was stored; such statuses wait here (a day at most) and are applied once it is.
    db.execute(
        "CREATE TABLE early_statuses (id INTEGER PRIMARY KEY, channel TEXT NOT NULL, "
        "external_id TEXT NOT NULL, status TEXT NOT NULL, at TEXT, detail TEXT, "
        "received_at TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX early_statuses_message ON early_statuses (channel, external_id)")


# The hash-chained audit log (gateway.privacy.audit).
from gateway.privacy.audit import m010_create_audit_log  # noqa: E402

migrations()(m010_create_audit_log)


@migrations()
def m011_add_sealed_bodies(db: sqlite_utils.Database) -> None:
    # Message and reply text sealed per contact (gateway.store.bodies); text '' for such rows.
    db.execute("ALTER TABLE messages ADD COLUMN body BLOB")
    db.execute("ALTER TABLE outbox ADD COLUMN body BLOB")


# Retention: legal holds, destruction acts, redacted_at (gateway.privacy.retention).
from gateway.privacy.retention import m012_create_retention  # noqa: E402

migrations()(m012_create_retention)


# Data-subject requests: the register, rectification history, opt-out suppressions, erased_at.
from gateway.privacy.dsr_schema import m013_create_requests  # noqa: E402

migrations()(m013_create_requests)


# The incident register (gateway.privacy.incidents).
from gateway.privacy.incidents import m014_create_incidents  # noqa: E402

migrations()(m014_create_incidents)


# Developer API: projects, keys, subscriptions, codes, forms (gateway.devapi.schema).
from gateway.devapi.schema import m015_create_developer_api  # noqa: E402

migrations()(m015_create_developer_api)


# Admin UI: sessions, invitations, conversation assignee (gateway.http.ui.sessions).
from gateway.http.ui.sessions import m016_create_admin_ui  # noqa: E402

migrations()(m016_create_admin_ui)


# The vault (secrets) and the admin UI's config tables (gateway.vault, gateway.managed).
from gateway.vault import m017_create_vault  # noqa: E402

migrations()(m017_create_vault)


# Retention acts record the process running them; a killed sweep's act is reaped (issue #9).
from gateway.privacy.retention import m018_record_sweep_runners  # noqa: E402

migrations()(m018_record_sweep_runners)


@migrations()
def m019_index_last_inbound(db: sqlite_utils.Database) -> None:
    """A conversation's last inbound time (the platforms' 24-hour reply windows), asked at every
    delivery, read from one index entry: it was the max over every message of the conversation
    (bench/soak.py: the writer spent half its time there by 110k messages over 1,000 chats)."""
    db.conn.execute(
        "CREATE INDEX IF NOT EXISTS messages_last_inbound ON messages "
        "(conversation_id, coalesce(platform_sent_at, created_at)) WHERE direction = 'in'"
    )
