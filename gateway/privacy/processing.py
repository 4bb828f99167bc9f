"""The record of processing activities (GDPR Art. 30(1)), generated, never hand-kept.

From the config: the controller (``[privacy_record]``), purposes, categories of data subjects
(one source per channel) and of personal data, recipients (model providers with their region,
whether they may see personal data, the residency policies that bind them; the messaging
platforms), retention periods (``[retention]``, when configured) and the security measures in
force. From the database: the transfer log (which providers actually received data, how often,
which categories, where, what was refused) with every transfer out of the home jurisdiction
(``[privacy_record] home_country``) flagged, the admin accounts and the audit chain's state.

``build_record`` gives a JSON-ready dict; ``document`` turns it into sections that
gateway.privacy.report_render writes as Markdown or HTML.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway import __version__
from gateway.privacy import audit
from gateway.privacy.report_render import Document, Section, Table

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

EU = set("AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE".split())
EEA = EU | {"IS", "LI", "NO"}

DEFAULT_PURPOSES = [
    "Answering the messages of customers and prospects on the configured channels "
    "(support, sales, service notices)",
    "Automated answers by AI agents, with hand-over to staff",
    "Keeping the record of consents and opt-outs",
    "Security of the service: access control, audit log, backups",
]
DEFAULT_SUBJECTS = ["Customers and prospects who write to us on a channel"]


class PrivacyRecordSection(BaseModel):
    """``[privacy_record]``: who the controller is and where "abroad" begins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    controller_name: str = Field(
        "", description="The controller (company name and address). Default: [privacy] controller."
    )
    controller_contact: str = Field("", description="How to reach the controller (e-mail, phone).")
    representative: str = Field(
        "", description="The representative in the EU (GDPR Art. 27) or in Russia, if any."
    )
    dpo_name: str = Field("", description="The data protection officer (or 152-FZ responsible).")
    dpo_contact: str = Field(
        "", description="The DPO's contact. Default: [privacy] privacy_contact."
    )
    home_country: str = Field(
        "EU",
        description='The home jurisdiction: "EU", "RU" or a country code ("DE"); a provider region '
        "outside it is a transfer abroad.",
    )
    laws: list[Literal["gdpr", "152-fz"]] = Field(
        ["gdpr", "152-fz"], description="The laws incidents are notified under by default."
    )
    purposes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PURPOSES), description="Purposes of the processing."
    )
    subject_categories: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SUBJECTS),
        description="Categories of data subjects (besides one line per channel).",
    )
    transfer_safeguards: dict[str, str] = Field(
        default_factory=dict,
        description="Safeguards per provider region for transfers abroad, e.g. "
        '{ US = "EU SCCs 2021/914 + DPA" }.',
    )

    @field_validator("home_country")
    @classmethod
    def _country(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z]{2}", value):
            raise ValueError(f'{value!r} is not "EU" or a two-letter country code such as "RU"')
        return value.upper()


def record_config(config: GatewayConfig | None) -> PrivacyRecordSection:
    section = config.sections.get("privacy_record") if config is not None else None
    if isinstance(section, PrivacyRecordSection):
        return section
    return PrivacyRecordSection.model_validate({})


def is_abroad(region: str, home: str) -> bool | None:
    """Whether a provider region is outside ``home`` (None: the region is not stated)."""
    region = region.strip().upper()
    if region in ("LOCAL", home):
        return False
    if region in ("", "UNSPECIFIED"):
        return None
    if home == "EU" and region in EEA or home in EU and region == "EU":
        return False
    return True


IDENTIFIERS = {
    "telegram": "Telegram user id, username, display name",
    "whatsapp": "phone number (WhatsApp id), profile name",
    "messenger": "page-scoped Facebook user id, name",
    "instagram": "Instagram-scoped user id, username",
    "twilio": "phone number; call records, recordings and voicemail",
    "webchat": "browser session id (cookie), the name a visitor gives",
    "max": "MAX user id, name",
    "email": "e-mail address, name",
}
DATA_CATEGORIES = [
    "Message content (text; sealed per contact at rest)",
    "Attachments: files, images, voice notes (sealed per contact at rest)",
    "Conversation metadata: channel, times, status, hand-overs",
    "Identifiers on each channel (see the data subjects above)",
    "Personal data people write in messages: names, phones, e-mails, card and ID numbers",
    "Automated analysis labels: intent, category, sentiment, urgency",
    "Consent and opt-out records with their evidence",
    "Delivery log and platform statuses",
]


def build_record(
    config: GatewayConfig, conn: sqlite3.Connection, *, since: str | None = None
) -> dict[str, Any]:
    rc = record_config(config)
    privacy: Any = config.sections.get("privacy")
    home = rc.home_country
    channels = [
        {
            "name": name,
            "plugin": entry.plugin.name,
            "enabled": entry.config.enabled,
            "agent": entry.config.agent,
            "identifiers": IDENTIFIERS.get(entry.plugin.name, "the platform's user id and name"),
        }
        for name, entry in config.channels.items()
    ]
    providers = []
    for name, entry in config.providers.items():
        agents = [a for a, ag in config.agents.items() if name in (ag.provider, *ag.failover)]
        residency = {}
        for agent in agents:
            policy = config.agents[agent].residency
            if policy is not None:
                residency[agent] = policy.model_dump(exclude_none=True)
        region = entry.config.region
        providers.append(
            {
                "name": name,
                "plugin": entry.plugin.name,
                "region": region,
                "personal_data": entry.config.personal_data,
                "legal_basis": entry.config.legal_basis,
                "agents": agents,
                "residency": residency,
                "abroad": is_abroad(region, home) if not config.local_only else False,
                "safeguard": rc.transfer_safeguards.get(region.upper()),
            }
        )
    return {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "gateway_version": __version__,
        "config": config.source,
        "controller": {
            "name": rc.controller_name or getattr(privacy, "controller", ""),
            "contact": rc.controller_contact,
            "representative": rc.representative,
            "dpo": rc.dpo_name,
            "dpo_contact": rc.dpo_contact or getattr(privacy, "privacy_contact", ""),
        },
        "home_country": home,
        "purposes": rc.purposes,
        "subjects": {"categories": rc.subject_categories, "channels": channels},
        "data_categories": DATA_CATEGORIES,
        "recipients": {
            "providers": providers,
            "platforms": sorted({c["plugin"] for c in channels if c["plugin"] != "webchat"}),
        },
        "transfers": transfer_summary(conn, home, since=since),
        "retention": retention_periods(config),
        "security": security_measures(config, conn),
    }


def transfer_summary(conn: sqlite3.Connection, home: str, *, since: str | None) -> dict[str, Any]:
    """Who actually received data, from the transfer log (never content)."""
    rows = conn.execute(
        "SELECT provider, plugin, region, outcome, categories, count(*), sum(redacted), "
        "min(at), max(at) FROM transfers WHERE at >= ? "
        "GROUP BY provider, plugin, region, outcome, categories",
        (since or "",),
    ).fetchall()
    by: dict[tuple[str, str, str], dict[str, Any]] = {}
    for provider, plugin, region, outcome, categories, n, redacted, first, last in rows:
        item = by.setdefault(
            (provider, plugin, region),
            {
                "provider": provider,
                "plugin": plugin,
                "region": region,
                "abroad": is_abroad(region, home),
                "calls": 0,
                "refused": 0,
                "failed": 0,
                "redacted": 0,
                "categories": set(),
                "first": first,
                "last": last,
            },
        )
        if outcome == "refused":
            item["refused"] += n
        else:
            item["calls" if outcome == "ok" else "failed"] += n
            item["categories"].update(json.loads(categories or "[]"))
        item["redacted"] += int(redacted or 0)
        item["first"], item["last"] = min(item["first"], first), max(item["last"], last)
    items = sorted(by.values(), key=lambda i: (i["provider"], i["region"]))
    for item in items:
        item["categories"] = sorted(item["categories"])
    return {
        "since": since,
        "providers": items,
        "abroad": [i for i in items if i["abroad"] is not False and (i["calls"] or i["failed"])],
    }


def retention_periods(config: GatewayConfig) -> dict[str, Any] | None:
    """``[retention]`` read defensively (its model belongs to the retention feature)."""
    section: Any = config.sections.get("retention")
    if not isinstance(section, BaseModel):
        return None
    fields = type(section).model_fields
    periods = [
        {
            "category": key.removesuffix("_days").replace("_", " "),
            "days": value,
            "rule": fields[key].description or "",
        }
        for key, value in section.model_dump().items()
        if key.endswith("_days") and isinstance(value, int)
    ]
    overrides = []
    channels = getattr(section, "channels", {}) or {}
    for name, table in dict(channels).items():
        for key, value in (table.model_dump(exclude_none=True) if table else {}).items():
            overrides.append(
                {"channel": name, "category": key.removesuffix("_days"), "days": value}
            )
    return {
        "enabled": getattr(section, "enabled", True),
        "periods": periods,
        "channel_overrides": overrides,
    }


def security_measures(config: GatewayConfig, conn: sqlite3.Connection) -> list[str]:
    from gateway.privacy import backup

    key_source = (
        f"the reference {config.gateway.master_key.split(':', 1)[0]}: in the config"
        if config.gateway.master_key
        else "a systemd credential, $GATEWAY_MASTER_KEY or a 0600 key file"
    )
    measures = [
        "Encryption at rest: the whole database is SQLCipher (AES-256) under a key derived "
        f"from the master key; the master key comes from {key_source}, never the config file",
        "Per-contact sealing: message bodies and attachments are AES-256-GCM under each "
        "contact's own key; erasure destroys the key (crypto-shredding, old backups included)",
    ]
    public_url = config.http.public_url or ""
    if public_url.startswith("https://"):
        measures.append(f"Transport: TLS on the public endpoint ({public_url})")
    else:
        measures.append(
            "Transport: WARNING no https public_url is configured; terminate TLS in front of "
            f"the public bind ({config.http.public_bind})"
        )
    measures.append(
        f"Admin interface on its own bind ({config.http.admin_bind}); the control socket is "
        "0600 in the 0700 data directory"
    )
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "users" in tables:
        roles = conn.execute(
            "SELECT role, count(*), sum(totp_confirmed_at IS NOT NULL) FROM users "
            "WHERE deactivated_at IS NULL GROUP BY role ORDER BY role"
        ).fetchall()
        summary = ", ".join(f"{n} {role} ({int(t or 0)} with TOTP)" for role, n, t in roles)
        measures.append(
            "Access control: named admin users with roles, Argon2id passwords and TOTP; "
            f"active: {summary or 'none yet'}"
        )
    check = audit.verify(conn)
    measures.append(
        "Audit: every admin and privacy action in a hash-chained log; now "
        + ("intact" if check.ok else "BROKEN")
        + f" ({check.checked} entries, head {check.head_hash[:16]})"
    )
    residency = (
        "local_only: no request leaves for a non-local model"
        if config.local_only
        else (
            "residency policies per agent and channel; redaction of personal data before providers "
            "that may not see it"
        )
    )
    measures.append(f"Data minimisation towards model providers: {residency}")
    measures.append(
        "Outbound allowlist: the daemon resolves only hosts named in the config "
        f"({len(config.outbound_hosts())} hosts)"
    )
    cfg = backup.backup_config(config)
    latest = list(backup.list_backups(backup.backup_dir(config)))
    measures.append(
        "Backups: encrypted snapshots with a checksummed manifest "
        + (f"every {cfg.interval_hours:g} h, {cfg.keep} kept" if cfg.interval_hours else "(manual)")
        + (f"; latest {latest[-1].name}" if latest else "; none found in the backup folder")
    )
    return measures


def _yes(value: bool | None) -> str:
    return "unknown (region not stated)" if value is None else ("yes" if value else "no")


def document(record: dict[str, Any]) -> Document:
    """The record as sections, in the order of GDPR Art. 30(1)(a)-(g)."""
    c = record["controller"]
    controller = [
        f"Controller: {c['name'] or '(set [privacy_record] controller_name)'}",
        f"Contact: {c['contact'] or '-'}",
        f"Representative: {c['representative'] or '-'}",
        f"Data protection officer: {c['dpo'] or '-'} ({c['dpo_contact'] or '-'})",
    ]
    subjects = record["subjects"]
    providers = record["recipients"]["providers"]
    transfers = record["transfers"]
    home = record["home_country"]
    sections = [
        Section("Controller", [controller]),
        Section("Purposes of the processing", [record["purposes"]]),
        Section(
            "Categories of data subjects",
            [
                subjects["categories"],
                Table(
                    ("Channel", "Platform", "Identifiers held", "Agent", "Enabled"),
                    [
                        (ch["name"], ch["plugin"], ch["identifiers"], ch["agent"], ch["enabled"])
                        for ch in subjects["channels"]
                    ],
                ),
            ],
        ),
        Section("Categories of personal data", [record["data_categories"]]),
        Section(
            "Recipients",
            [
                "Model providers (processors) configured:",
                Table(
                    (
                        "Provider",
                        "Plugin",
                        "Region",
                        f"Abroad (home {home})",
                        "Personal data",
                        "Legal basis",
                        "Agents",
                        "Residency policy",
                    ),
                    [
                        (
                            p["name"],
                            p["plugin"],
                            p["region"],
                            _yes(p["abroad"]),
                            "unredacted" if p["personal_data"] else "redacted only",
                            p["legal_basis"] or "-",
                            ", ".join(p["agents"]) or "-",
                            json.dumps(p["residency"]) if p["residency"] else "-",
                        )
                        for p in providers
                    ],
                ),
                "Messaging platforms (operators of the channels, for the messages they carry): "
                + (", ".join(record["recipients"]["platforms"]) or "none"),
            ],
        ),
        Section(
            "Transfers to model providers (from the transfer log)",
            [
                f"Since {transfers['since'] or 'the start of the log'}; never content.",
                Table(
                    (
                        "Provider",
                        "Region",
                        "Abroad",
                        "Calls",
                        "Failed",
                        "Refused by policy",
                        "Redacted",
                        "Categories",
                        "First",
                        "Last",
                    ),
                    [
                        (
                            t["provider"],
                            t["region"],
                            _yes(t["abroad"]),
                            t["calls"],
                            t["failed"],
                            t["refused"],
                            t["redacted"],
                            ", ".join(t["categories"]),
                            t["first"][:10],
                            t["last"][:10],
                        )
                        for t in transfers["providers"]
                    ],
                ),
            ],
        ),
        Section(
            "Transfers to third countries",
            [
                [
                    f"{t['provider']} in {t['region']}: {t['calls'] + t['failed']} calls with "
                    f"{', '.join(t['categories']) or 'no categories'}; safeguard: "
                    + next(
                        (
                            p["safeguard"]
                            for p in providers
                            if p["name"] == t["provider"] and p["safeguard"]
                        ),
                        "NOT DOCUMENTED (set [privacy_record] transfer_safeguards)",
                    )
                    for t in transfers["abroad"]
                ]
                or [f"None recorded outside {home}."]
            ],
        ),
        Section("Time limits for erasure", _retention_blocks(record["retention"])),
        Section("Technical and organisational security measures", [record["security"]]),
    ]
    return Document(
        "Record of processing activities (GDPR Art. 30)",
        f"Generated {record['generated_at']} by Sovereign Gateway {record['gateway_version']} "
        f"from {record['config']} and the transfer log.",
        sections,
    )


def _retention_blocks(retention: dict[str, Any] | None) -> list[Any]:
    if retention is None:
        return ["No [retention] section: data are kept until erased on request."]
    blocks: list[Any] = [
        Table(
            ("Category", "Days (0: kept)", "Rule"),
            [(p["category"], p["days"], p["rule"]) for p in retention["periods"]],
        )
    ]
    if retention["channel_overrides"]:
        blocks.append(
            Table(
                ("Channel", "Category", "Days"),
                [(o["channel"], o["category"], o["days"]) for o in retention["channel_overrides"]],
            )
        )
    if not retention["enabled"]:
        blocks.append("WARNING: the retention sweep is switched off ([retention] enabled = false).")
    return blocks
