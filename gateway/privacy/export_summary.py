"""``summary.txt`` of an export: what is held about the person, why, who received it, for how
long and where it came from, in plain words (GDPR art. 15(1); 152-FZ art. 14 part 7)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from gateway.privacy.dsr_schema import privacy_config

if TYPE_CHECKING:
    from gateway.config import GatewayConfig


def _recipients(config: GatewayConfig | None) -> list[str]:
    if config is None:
        return ["(the configuration was not available when this export was made)"]
    lines = []
    for name, entry in sorted(config.providers.items()):
        provider = entry.config
        region = getattr(provider, "region", "?")
        personal = getattr(provider, "personal_data", True)
        how = (
            "may receive personal details"
            if personal
            else "receives text with personal details replaced by placeholders"
        )
        where = "on our own servers" if region == "local" else f"region {region}"
        lines.append(f"- AI provider {name} ({entry.plugin.name}), {where}: {how}.")
    if config.local_only:
        lines.append("- No text leaves our servers for a non-local provider (local_only).")
    for name, channel in sorted(config.channels.items()):
        lines.append(
            f"- Messaging platform of channel {name} ({channel.plugin.name}): carries the "
            "messages between you and us."
        )
    return lines or ["- Nobody outside our servers."]


def _retention(config: GatewayConfig | None) -> list[str]:
    section: Any = config.sections.get("retention") if config is not None else None
    if section is None or not hasattr(section, "model_dump"):
        return [
            "- Until you ask us to erase it, or our retention policy removes it (ask us for its "
            "periods)."
        ]
    lines = []
    for key, value in section.model_dump().items():
        lines.append(f"- {key}: {value}")
    return lines


def summary_text(
    conn: sqlite3.Connection,
    contact_id: int,
    counts: dict[str, int],
    consent: dict[str, dict[str, Any]],
    config: GatewayConfig | None,
    created: str,
    request_id: int | None,
) -> str:
    privacy = privacy_config(config)
    channels = sorted(
        {
            r[0]
            for r in conn.execute(
                "SELECT channel FROM identities WHERE contact_id = ?", (contact_id,)
            )
        }
    )
    span = conn.execute(
        "SELECT min(m.created_at), max(m.created_at) FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id WHERE c.contact_id = ?",
        (contact_id,),
    ).fetchone()
    providers = conn.execute(
        "SELECT provider, region, count(*) FROM transfers WHERE conversation_id IN "
        "(SELECT id FROM conversations WHERE contact_id = ?) GROUP BY provider, region "
        "ORDER BY provider",
        (contact_id,),
    ).fetchall()

    def state(purpose: str) -> str:
        value = str(consent.get(purpose, {}).get("state"))
        return {"granted": "you agreed", "withdrawn": "you said no"}.get(value, "not asked")

    lines = [
        "YOUR DATA: SUMMARY",
        "",
        f"Exported {created} (UTC) for contact {contact_id}"
        + (f", answering your request #{request_id}" if request_id else "")
        + ".",
        f"Responsible for your data: {privacy.controller or 'the operator of this service'}.",
    ]
    if privacy.privacy_contact:
        lines.append(f"Questions about your data: {privacy.privacy_contact}.")
    lines += [
        "",
        "WHAT WE HOLD",
        f"- {counts.get('identities', 0)} account(s) on: {', '.join(channels) or 'none'}",
        f"- {counts.get('conversations', 0)} conversation(s), {counts.get('messages', 0)} "
        "message(s)" + (f" from {span[0][:10]} to {span[1][:10]}" if span[0] else ""),
        f"- {counts.get('attachments', 0)} file(s), {counts.get('events', 0)} event(s) (calls, "
        "hand-overs)",
        f"- {counts.get('analysis', 0)} automatic analyses of your messages",
        f"- {counts.get('consents', 0)} consent record(s), {counts.get('requests', 0)} request(s)",
        "",
        "WHERE IT CAME FROM",
        "- From you: what you wrote and sent us, through the channels above.",
        "- From the messaging platform: your user id and the name on your profile.",
        "",
        "WHY WE USE IT (PURPOSES)",
        "- To answer your messages (service; the basis is our contract with you or your request).",
        f"- AI processing: drafting answers with the AI providers below ({state('ai_processing')}).",
        f"- Marketing: messages we start ourselves ({state('marketing')}).",
        "- Security and legal duties: audit log and the register of requests like this one.",
        "",
        "WHO RECEIVES IT (RECIPIENTS)",
        *_recipients(config),
    ]
    if providers:
        lines.append("- In fact, text from your conversations went to:")
        lines += [f"    {p} (region {r}): {n} time(s)" for p, r, n in providers]
    lines += [
        "",
        "HOW LONG WE KEEP IT (RETENTION)",
        *_retention(config),
        "",
        "YOUR RIGHTS",
        "- Ask for this copy again (access, portability), have data corrected (rectification), "
        "restricted, object to its use, or have it erased. In a chat you can write "
        + " or ".join(privacy.access_commands + privacy.erasure_commands or ("to us",))
        + ".",
        "",
        "The files in this archive are described in README.md and schema.json.",
    ]
    return "\n".join(lines) + "\n"
