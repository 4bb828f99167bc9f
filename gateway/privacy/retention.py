"""Retention: how long each category of data is kept, and the sweep that enforces it.

``[retention]`` in the config sets the days per category (``message_content_days = 90``...),
``[retention.channels.NAME]`` overrides them for one channel; 0 keeps a category forever. The
daemon sweeps on its scheduler (``sweep_interval_hours``), ``gateway retention run`` from a
shell; both go through :func:`gateway.privacy.retention_sweep.sweep`, in bounded batches that
skip data under a legal hold (gateway.privacy.holds) and end with a destruction act
(gateway.privacy.acts). The categories themselves are in gateway.privacy.retention_builtin and
any feature's module (gateway.privacy.retention_categories).

This module holds the config section and the schema only, so that gateway.config and the
migrations import it without an import cycle.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gateway.errors import ConfigError

if TYPE_CHECKING:
    # Not at run time: gateway.config imports this module (its [retention] section), and
    # sqlite_utils must not be imported before the SQLCipher shim (gateway.store.db).
    import sqlite_utils

    from gateway.config import GatewayConfig

log = logging.getLogger("gateway.retention")

DEFAULT_BASIS = (
    "Storage limitation: personal data are kept no longer than their purpose requires "
    "(GDPR Art. 5(1)(e); 152-FZ Art. 5(7) and Art. 21(4))"
)

# Per-category day keys, with the defaults (common practice in the seed policies).
_DAYS: dict[str, tuple[int, str, bool]] = {
    # key: (default days, description, may be set per channel)
    "message_content_days": (
        90,
        "Message and reply text (and its AI analysis) is anonymised this many days after the "
        "conversation's last message; the rows stay as metadata.",
        True,
    ),
    "attachments_days": (90, "Received files: sealed file and record deleted.", True),
    "conversation_metadata_days": (
        365,
        "Inactive conversations are deleted with every message row, reply and event in them.",
        True,
    ),
    "delivery_log_days": (180, "Delivery attempts and platform statuses of replies.", True),
    "call_logs_days": (90, "Call and voicemail events with their recordings.", True),
    "transfer_log_days": (365, "Records of data sent to model providers.", True),
    "form_submissions_active_days": (
        30,
        "Form submissions stay active this long, then are archived.",
        False,
    ),
    "form_submissions_archive_days": (180, "Archived form submissions are then deleted.", False),
    "inactive_contacts_days": (
        1095,
        "A contact who has not written for this long is erased (crypto-shredded).",
        True,
    ),
    "accounts_days": (90, "Admin/developer accounts deactivated this long ago are deleted.", False),
    "audit_log_days": (365, "Audit log entries (the chain keeps its anchor).", False),
}
CHANNEL_KEYS = tuple(k for k, (_d, _t, per_channel) in _DAYS.items() if per_channel)


class ChannelRetention(BaseModel):
    """``[retention.channels.NAME]``: days for this channel's data; unset keys use ``[retention]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_content_days: int | None = Field(None, ge=0)
    attachments_days: int | None = Field(None, ge=0)
    conversation_metadata_days: int | None = Field(None, ge=0)
    delivery_log_days: int | None = Field(None, ge=0)
    call_logs_days: int | None = Field(None, ge=0)
    transfer_log_days: int | None = Field(None, ge=0)
    inactive_contacts_days: int | None = Field(None, ge=0)


def _days(key: str) -> Any:
    default, description, _ = _DAYS[key]
    return Field(default, ge=0, description=f"{description} Default {default}; 0 keeps forever.")


class RetentionSection(BaseModel):
    """``[retention]``: every key has a default, so a config without the table sweeps with them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Sweep on the daemon's scheduler.")
    sweep_interval_hours: float = Field(
        24.0, gt=0, description="Hours between sweeps (restart to change)."
    )
    batch_size: int = Field(
        500, ge=1, le=10_000, description="Rows deleted or anonymised per write transaction."
    )
    live_share: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="The share of time a sweep leaves to live traffic: after each batch it "
        "waits share/(1-share) times as long as the batch took (0.5: as long; 0: no pause).",
    )
    legal_basis: str = Field(
        DEFAULT_BASIS, min_length=1, description="The basis written into each destruction act."
    )
    operator: str = Field(
        "",
        description="Who processes the data (name and address), for the destruction acts.",
    )
    system_name: str = Field(
        "Sovereign Gateway", description="The information system named in the acts."
    )
    acts_dir: Path = Field(
        Path("retention-acts"),
        description="Where each act is written as JSON and HTML (relative: in data_dir).",
    )
    message_content_days: int = _days("message_content_days")
    attachments_days: int = _days("attachments_days")
    conversation_metadata_days: int = _days("conversation_metadata_days")
    delivery_log_days: int = _days("delivery_log_days")
    call_logs_days: int = _days("call_logs_days")
    transfer_log_days: int = _days("transfer_log_days")
    form_submissions_active_days: int = _days("form_submissions_active_days")
    form_submissions_archive_days: int = _days("form_submissions_archive_days")
    inactive_contacts_days: int = _days("inactive_contacts_days")
    accounts_days: int = _days("accounts_days")
    audit_log_days: int = _days("audit_log_days")
    channels: dict[str, ChannelRetention] = Field(
        default_factory=dict,
        description="Per channel: [retention.channels.NAME] with any of the *_days keys that "
        "concern one channel's data.",
    )

    @field_validator("channels", mode="before")
    @classmethod
    def _channel_tables(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, dict):
            return value
        known = (info.context or {}).get("channels")
        for name, table in value.items():
            if known is not None and name not in known:
                raise ValueError(channel_problem(name, known))
            if not isinstance(table, dict):
                raise ValueError(f"[retention.channels.{name}] must be a table of *_days keys")
            for key in table:
                if key not in CHANNEL_KEYS:
                    raise ValueError(key_problem(name, key))
        return value

    def days(self, key: str, channel: str | None = None) -> int:
        """The days in force for ``key`` (on ``channel``, if it overrides them)."""
        if channel is not None and channel in self.channels:
            own = getattr(self.channels[channel], key, None)
            if own is not None:
                return int(own)
        return int(getattr(self, key))

    def overrides(self, key: str) -> dict[str, int]:
        """Channels whose days for ``key`` differ from the global value."""
        result = {}
        for name, table in self.channels.items():
            own = getattr(table, key, None)
            if own is not None and own != getattr(self, key):
                result[name] = int(own)
        return result

    def version(self) -> str:
        """The policy version: a hash of the effective settings (defaults included)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def channel_problem(name: str, known: Any) -> str:
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"[retention.channels.{name}] names no configured channel; {hint}channels: " + (
        ", ".join(names) or "(none)"
    )


def key_problem(channel: str, key: str) -> str:
    if key in _DAYS:
        return f"[retention.channels.{channel}]: {key} cannot be set per channel (set it in [retention])"
    close = difflib.get_close_matches(key, CHANNEL_KEYS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"[retention.channels.{channel}]: unknown retention key {key!r}; {hint}"
        "per-channel keys: " + ", ".join(CHANNEL_KEYS)
    )


def retention_config(config: GatewayConfig) -> RetentionSection:
    """The ``[retention]`` section of a loaded config (defaults when the file has none)."""
    section = config.sections.get("retention")
    if isinstance(section, RetentionSection):
        return section
    return RetentionSection.model_validate({})


def check_channels(config: GatewayConfig) -> None:
    """ConfigError (file, table, line) when ``[retention.channels.NAME]`` names no channel.

    The config loader validates sections before channels, so the section cannot check this
    itself unless the loader passes channel names in its validation context."""
    section = retention_config(config)
    for name in section.channels:
        if name not in config.channels:
            table = f"retention.channels.{name}"
            raise ConfigError(
                f"no channel {name!r} is configured",
                file=config.source,
                table=table,
                line=_line_of(config.source, table),
                fix="use one of: " + (", ".join(sorted(config.channels)) or "(no channels)"),
            )


def _line_of(source: str, table: str) -> int | None:
    try:
        lines = Path(source).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    pattern = re.compile(r"^\[\s*" + r"\s*\.\s*".join(map(re.escape, table.split("."))) + r"\s*\]")
    for number, line in enumerate(lines, start=1):
        if pattern.match(line.strip()):
            return number
    return None


def acts_directory(config: GatewayConfig) -> Path:
    folder = retention_config(config).acts_dir.expanduser()
    return folder if folder.is_absolute() else config.data_dir / folder


def m012_create_retention(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        -- Anonymised by retention: text and body emptied, analysis cleared, at this time.
        ALTER TABLE messages ADD COLUMN redacted_at TEXT;
        ALTER TABLE outbox ADD COLUMN redacted_at TEXT;
        -- Legal holds: data of a contact or a conversation that no sweep may touch while
        -- released_at is NULL. No foreign keys: a hold's record outlives the data.
        CREATE TABLE legal_holds (
            id INTEGER PRIMARY KEY,
            contact_id INTEGER,
            conversation_id INTEGER,
            reason TEXT NOT NULL,
            author TEXT NOT NULL,
            created_at TEXT NOT NULL,
            released_at TEXT,
            released_by TEXT,
            release_reason TEXT,
            CHECK ((contact_id IS NULL) <> (conversation_id IS NULL))
        );
        -- Deleting a conversation or a message makes SQLite look up every row that refers to
        -- it (foreign keys, ON DELETE SET NULL): without these, each deletion scanned the
        -- whole journal and outbox. The anonymiser finds a message's outbox copy by message_id.
        CREATE INDEX IF NOT EXISTS journal_message ON journal (message_id);
        CREATE INDEX IF NOT EXISTS journal_conversation ON journal (conversation_id);
        CREATE INDEX IF NOT EXISTS outbox_message ON outbox (message_id);
        CREATE INDEX IF NOT EXISTS outbox_conversation ON outbox (conversation_id);
        CREATE INDEX IF NOT EXISTS attachments_conversation ON attachments (conversation_id);
        CREATE INDEX IF NOT EXISTS attachments_event ON attachments (event_id);
        CREATE INDEX IF NOT EXISTS conversations_contact ON conversations (contact_id);
        CREATE INDEX legal_holds_contact ON legal_holds (contact_id);
        CREATE INDEX legal_holds_conversation ON legal_holds (conversation_id);
        -- One row per sweep (dry runs too): the destruction act (gateway.privacy.acts).
        CREATE TABLE retention_acts (
            id INTEGER PRIMARY KEY,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'interrupted')),
            dry_run INTEGER NOT NULL,
            actor TEXT NOT NULL,
            policy_version TEXT NOT NULL,
            policy TEXT NOT NULL,              -- JSON: the effective [retention] settings
            legal_basis TEXT NOT NULL,
            categories TEXT NOT NULL DEFAULT '[]',  -- JSON: per category what went
            records INTEGER NOT NULL DEFAULT 0,
            held INTEGER NOT NULL DEFAULT 0,
            audit_first_id INTEGER,
            audit_last_id INTEGER
        );
        -- Whose data an act destroyed: subject ('contact:12', 'user:3') and count per category.
        CREATE TABLE retention_act_subjects (
            act_id INTEGER NOT NULL REFERENCES retention_acts(id),
            category TEXT NOT NULL,
            subject TEXT NOT NULL,
            records INTEGER NOT NULL,
            PRIMARY KEY (act_id, category, subject)
        );
        """
    )


def install(services: Any) -> None:
    """Register the sweep on the scheduler (gateway.features)."""
    from gateway.privacy.retention_sweep import scheduled_sweep

    check_channels(services.config)
    interval = retention_config(services.config).sweep_interval_hours * 3600
    services.scheduler.every(
        "retention sweep",
        interval,
        functools.partial(scheduled_sweep, services),
        first_after=min(interval, 600.0),
    )


def m018_record_sweep_runners(db: sqlite_utils.Database) -> None:
    """Which process runs each act (``boot id:pid:start ticks``), so that the next sweep can
    close an act whose process was killed instead of leaving it 'running' for ever."""
    db.conn.execute("ALTER TABLE retention_acts ADD COLUMN runner TEXT")
