"""The developer API's tables (migration m015) and the small helpers its stores share."""

from __future__ import annotations

import datetime as dt
import secrets

import sqlite_utils

SERVER_KEY = "api-keys"
"""``store_keys`` row keying API-key hashes. In the database (not derived from the master key)
so a master-key rotation leaves every issued key valid."""


def m015_create_developer_api(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE api_projects (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,        -- the deep link's word: /start <name>
            title TEXT NOT NULL,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL
        );
        -- Keys are shown once; only HMAC-SHA256(server key, key) stays (gateway.devapi.keys).
        CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES api_projects(id) ON DELETE CASCADE,
            prefix TEXT NOT NULL UNIQUE,      -- the key's public part, e.g. sgw_k3m9x2pq
            hash BLOB NOT NULL,
            scopes TEXT NOT NULL,             -- JSON list
            rate TEXT,                        -- "10/s"; NULL: [api] default_rate
            label TEXT,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            last_used_at TEXT,
            revoked_at TEXT
        );
        -- End users who subscribed to a project (/start <project>); notifications go to the
        -- thread they subscribed from. Gone with the identity (erasure); kept when retention
        -- removes an old conversation (the consent outlives the chat history).
        CREATE TABLE api_subscriptions (
            id INTEGER PRIMARY KEY,
            public_id TEXT NOT NULL UNIQUE,   -- sub_...: what the API shows
            project_id INTEGER NOT NULL REFERENCES api_projects(id) ON DELETE CASCADE,
            identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
            channel TEXT NOT NULL,
            account TEXT NOT NULL,
            thread_key TEXT NOT NULL,
            journal_id INTEGER,               -- the /start message (a re-run answers the same)
            subscribed_at TEXT NOT NULL,
            UNIQUE (project_id, identity_id)
        );
        CREATE INDEX api_subscriptions_identity ON api_subscriptions (identity_id);
        -- A request's answer under its Idempotency-Key; status NULL while in progress.
        CREATE TABLE api_idempotency (
            project_id INTEGER NOT NULL REFERENCES api_projects(id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            status INTEGER,
            response TEXT,
            created_at TEXT NOT NULL,
            PRIMARY KEY (project_id, key)
        );
        CREATE TABLE api_notifications (
            id INTEGER PRIMARY KEY,
            public_id TEXT NOT NULL UNIQUE,   -- ntf_...
            project_id INTEGER NOT NULL REFERENCES api_projects(id) ON DELETE CASCADE,
            subscription_public_id TEXT NOT NULL,
            outbox_id INTEGER NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('notification', 'otp')),
            created_at TEXT NOT NULL
        );
        -- One-time codes: only a keyed hash of the code (gateway.devapi.otp).
        CREATE TABLE api_otp_codes (
            id INTEGER PRIMARY KEY,
            public_id TEXT NOT NULL UNIQUE,   -- otp_...
            project_id INTEGER NOT NULL REFERENCES api_projects(id) ON DELETE CASCADE,
            subscription_id INTEGER REFERENCES api_subscriptions(id) ON DELETE SET NULL,
            subscription_public_id TEXT NOT NULL,
            salt BLOB NOT NULL,
            hash BLOB NOT NULL,
            state TEXT NOT NULL DEFAULT 'active'
                CHECK (state IN ('active', 'verified', 'superseded', 'locked')),
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            verified_at TEXT,
            outbox_id INTEGER,
            scrubbed INTEGER NOT NULL DEFAULT 0  -- 1: the sent message's code is wiped
        );
        CREATE INDEX api_otp_subscription ON api_otp_codes (project_id, subscription_public_id, id);
        -- A chat dialogue in progress (/unsubscribe -> pick -> confirm), one per conversation.
        CREATE TABLE api_menus (
            conversation_id INTEGER PRIMARY KEY REFERENCES conversations(id) ON DELETE CASCADE,
            identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
            stage TEXT NOT NULL CHECK (stage IN ('pick', 'confirm', 'done')),
            choices TEXT NOT NULL,            -- JSON list of project ids, in the order shown
            project_id INTEGER,
            journal_id INTEGER NOT NULL,      -- the last message it answered...
            reply TEXT NOT NULL,              -- ...and how (a re-run answers the same)
            expires_at TEXT NOT NULL
        );
        -- Website form submissions: their own retention category ("forms").
        CREATE TABLE form_submissions (
            id INTEGER PRIMARY KEY,
            project_id INTEGER REFERENCES api_projects(id) ON DELETE CASCADE,
            form TEXT NOT NULL,
            data TEXT NOT NULL,               -- JSON object of the configured fields
            origin TEXT NOT NULL,
            created_at TEXT NOT NULL,
            archived_at TEXT
        );
        CREATE INDEX form_submissions_form ON form_submissions (project_id, form, id);
        CREATE INDEX form_submissions_created ON form_submissions (created_at);
        -- Honeypot hits per form and day: counted, never stored.
        CREATE TABLE form_spam (
            form TEXT NOT NULL,
            day TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (form, day)
        );
        """
    )
    db.execute(
        "INSERT OR IGNORE INTO store_keys (name, value, created_at) VALUES (?, ?, ?)",
        [SERVER_KEY, secrets.token_bytes(32), now()],
    )


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def at(seconds_from_now: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now)).isoformat(
        timespec="microseconds"
    )


def public_id(prefix: str) -> str:
    """An opaque id for the API (``sub_``, ``otp_``, ``ntf_``): 96 random bits, not a row count."""
    return f"{prefix}_{secrets.token_urlsafe(12)}"
