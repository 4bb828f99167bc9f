"""Data-subject requests: the ``[privacy]`` config section and the tables (migration m013).

Kept apart from :mod:`gateway.privacy.requests` so that gateway.config and the migrations can
import it without pulling in the store (no import cycle, nothing imported before the SQLCipher
shim).
"""

from __future__ import annotations

import zoneinfo
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    import sqlite_utils

    from gateway.config import GatewayConfig

PLACEHOLDERS = {"id": 1, "due": "2026-01-31", "channel": "telegram"}


class PrivacyConfig(BaseModel):
    """``[privacy]``: how data-subject requests arrive by chat, and their deadline clocks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    access_commands: tuple[str, ...] = Field(
        ("/mydata",),
        description="Chat commands with which an end user asks for their data (an access "
        "request, channel 'chat'). Empty: none. Read at start-up (a reload does not change them).",
    )
    erasure_commands: tuple[str, ...] = Field(
        ("/forgetme",),
        description="Chat commands with which an end user asks to be erased. Empty: none.",
    )
    chat_erasure: Literal["operator", "immediate"] = Field(
        "operator",
        description='"operator": an erasure asked for in chat waits until an operator verifies '
        "it (`gateway requests verify ID`) and runs it (`gateway erase CONTACT --request ID`). "
        '"immediate": the platform identity the request came from is its verification; the '
        "erasure runs as soon as the confirmation reply was sent.",
    )
    timezone: str = Field(
        "UTC",
        description="The time zone whose calendar date a request was received on (deadlines "
        'are counted in days from it), e.g. "Europe/Moscow".',
    )
    remind_days: int = Field(
        3, ge=0, le=60, description="Log and audit a reminder when a deadline is this close."
    )
    reminder_interval: float = Field(
        3600.0, gt=0, description="Seconds between checks of deadlines (one reminder a day each)."
    )
    erasure_check_interval: float = Field(
        10.0,
        gt=0,
        description="Seconds between checks for erasures waiting for their confirmation to be "
        "sent (chat_erasure = immediate).",
    )
    controller: str = Field(
        "",
        description="Who is responsible for the data (name, address), for the summary in "
        "every export.",
    )
    privacy_contact: str = Field(
        "", description="Where a data subject writes about their data (e-mail of the DPO)."
    )
    access_reply: str = Field(
        "We have received your request #{id} for a copy of your data. To protect you, a person "
        "first checks that this chat is really yours; you will get an answer by {due}.",
        description="Reply to an access command; {id} request number, {due} deadline date.",
    )
    erasure_reply: str = Field(
        "We have received your request #{id} to erase your data. A person checks that this chat "
        "is really yours, then everything we hold about you is erased (at the latest by {due}).",
        description="Reply to an erasure command when chat_erasure = operator.",
    )
    erasure_immediate_reply: str = Field(
        "Your data is being erased now (request #{id}). This is the last message you get from us "
        "here; if you write again, we start with no memory of you.",
        description="Reply to an erasure command when chat_erasure = immediate.",
    )
    pending_reply: str = Field(
        "Your request #{id} is already being handled; the answer is due by {due}.",
        description="Reply when the same kind of request from this contact is still open.",
    )

    @field_validator("access_commands", "erasure_commands")
    @classmethod
    def _commands(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not name.startswith("/") or len(name) < 2 or " " in name:
                raise ValueError(
                    f"a chat command is a slash and a word, like /mydata, not {name!r}"
                )
        return tuple(name.lower() for name in value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f'{value!r} is not a time zone name (e.g. "Europe/Moscow")') from None
        return value

    @field_validator("access_reply", "erasure_reply", "erasure_immediate_reply", "pending_reply")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(**PLACEHOLDERS)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"unknown placeholder or stray brace ({exc}); use {{id}}, {{due}}, {{channel}}"
            ) from None
        return value


def privacy_config(config: GatewayConfig | None) -> PrivacyConfig:
    """The ``[privacy]`` section of a loaded config (defaults when absent or ``config`` is None)."""
    section: Any = config.sections.get("privacy") if config is not None else None
    return section if isinstance(section, PrivacyConfig) else PrivacyConfig.model_validate({})


def m013_create_requests(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        -- An erased contact stays as an anonymised row (no name, no language) so its id is
        -- never reused: a new contact with that id would meet the destroyed key.
        ALTER TABLE contacts ADD COLUMN erased_at TEXT;
        CREATE INDEX contacts_erased ON contacts (erased_at) WHERE erased_at IS NOT NULL;
        -- The register of data-subject requests. contact_id is NULL while the requester is not
        -- matched to a contact; requester is what they gave (a name, an e-mail). Dates are
        -- ISO; *_due are the last day (inclusive) of each clock.
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('access', 'portability', 'rectification',
                'restriction', 'objection', 'erasure')),
            channel TEXT NOT NULL CHECK (channel IN ('admin', 'cli', 'chat', 'api')),
            contact_id INTEGER REFERENCES contacts(id),
            identity_id INTEGER REFERENCES identities(id) ON DELETE SET NULL,
            requester TEXT,
            details TEXT,
            source_ref TEXT UNIQUE,
            received_at TEXT NOT NULL,
            received_on TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'received' CHECK (status IN ('received', 'in_progress',
                'scheduled', 'completed', 'refused', 'withdrawn')),
            verification TEXT NOT NULL DEFAULT 'unverified'
                CHECK (verification IN ('unverified', 'verified', 'failed')),
            verification_method TEXT,
            verification_note TEXT,
            verified_at TEXT,
            verified_by TEXT,
            gdpr_due TEXT NOT NULL,
            gdpr_extension_months INTEGER NOT NULL DEFAULT 0,
            gdpr_extension_reason TEXT,
            gdpr_extended_at TEXT,
            ru_due TEXT NOT NULL,
            ru_extension_notice TEXT,
            ru_extended_at TEXT,
            execute_after TEXT,
            reminded_on TEXT,
            closed_at TEXT,
            outcome TEXT
        );
        CREATE INDEX requests_open ON requests (status)
            WHERE status IN ('received', 'in_progress', 'scheduled');
        CREATE INDEX requests_contact ON requests (contact_id);
        -- Every change of a request (status, verification, extension, reminder), with who.
        CREATE TABLE request_events (
            id INTEGER PRIMARY KEY,
            request_id INTEGER NOT NULL REFERENCES requests(id),
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            event TEXT NOT NULL,
            from_status TEXT,
            to_status TEXT,
            note TEXT
        );
        CREATE INDEX request_events_request ON request_events (request_id, id);
        -- Rectification history: the value before each correction (erased with the contact).
        CREATE TABLE rectifications (
            id INTEGER PRIMARY KEY,
            contact_id INTEGER NOT NULL REFERENCES contacts(id),
            identity_id INTEGER REFERENCES identities(id) ON DELETE CASCADE,
            field TEXT NOT NULL,
            old_value TEXT,
            new_value TEXT,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            request_id INTEGER REFERENCES requests(id)
        );
        CREATE INDEX rectifications_contact ON rectifications (contact_id, id);
        -- Opt-outs that outlive an erasure: a keyed hash of (channel, platform user id) and the
        -- purpose withdrawn, nothing else (gateway.privacy.consent_ledger).
        CREATE TABLE consent_suppressions (
            hash TEXT NOT NULL,
            purpose TEXT NOT NULL,
            since TEXT NOT NULL,
            PRIMARY KEY (hash, purpose)
        );
        """
    )
