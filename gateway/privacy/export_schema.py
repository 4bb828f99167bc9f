"""The documented schema of a data-subject export: every file, every field, its type and meaning.

:data:`FILES` is the one source: the exporter writes exactly these fields in this order,
``schema.json`` (JSON Schema 2020-12, one array-of-objects schema per JSON file) and
``README.md`` in each ZIP are generated from it, and the tests validate real exports with it.
Types: JSON Schema type names; ``?`` after one means it may be null.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1
Field = tuple[str, str, str]

TIME = "UTC time, ISO 8601"
FILES: dict[str, dict[str, Any]] = {
    "contact": {
        "description": "You, as one contact (one row).",
        "fields": [
            ("id", "integer", "Your contact number with us."),
            ("display_name", "string?", "Your name as the platform gave it or as corrected."),
            ("language", "string?", "Your language, if known."),
            ("created_at", "string", f"When you first wrote ({TIME})."),
            ("updated_at", "string", f"When this record last changed ({TIME})."),
            ("ai_enabled", "integer", "1 if AI may answer you, 0 if it is switched off."),
            ("restricted", "integer", "1 if processing of your data is restricted."),
        ],
    },
    "identities": {
        "description": "Your accounts on each messaging channel.",
        "fields": [
            ("id", "integer", "Identity number."),
            ("channel", "string", "The channel (as configured, e.g. support_bot)."),
            ("external_id", "string", "Your user id on that platform."),
            ("display_name", "string?", "Your name on that platform."),
            ("created_at", "string", f"First seen ({TIME})."),
        ],
    },
    "conversations": {
        "description": "Your conversations (one per chat thread).",
        "fields": [
            ("id", "integer", "Conversation number."),
            ("channel", "string", "The channel."),
            ("account", "string", "Our account on the platform (bot, phone number)."),
            ("thread_key", "string", "The platform's chat or thread id."),
            ("agent", "string", "Which assistant configuration answered."),
            ("status", "string", "open (AI answers), handoff (a person answers) or closed."),
            ("ai_enabled", "integer", "1 if AI may answer in this conversation."),
            ("created_at", "string", f"Started ({TIME})."),
            ("last_message_at", "string", f"Last activity ({TIME})."),
        ],
    },
    "messages": {
        "description": "Every message, yours and ours, oldest first.",
        "fields": [
            ("id", "integer", "Message number."),
            ("conversation_id", "integer", "Its conversation (conversations.id)."),
            ("direction", "string", "in: from you; out: to you."),
            ("author", "string", "contact (you), ai, fallback, notice (automatic) or human."),
            ("text", "string", "The text."),
            ("created_at", "string", f"When we stored it ({TIME})."),
            ("external_id", "string?", "The platform's id for the message."),
            ("analysis", "object?", "Our automatic analysis of your message (see analysis)."),
        ],
    },
    "analysis": {
        "description": "The automatic, local analysis of each of your messages (no AI provider "
        "involved): what it is about and how urgent, used to route it.",
        "fields": [
            ("message_id", "integer", "The message (messages.id)."),
            ("intent", "string?", "question, complaint, order, greeting..."),
            ("category", "string?", "Topic, if one was recognised."),
            ("sentiment", "string?", "positive, neutral or negative."),
            ("urgency", "string?", "low, normal or high."),
            ("wants_human", "boolean?", "Whether you asked for a person."),
            ("confidence", "number?", "How sure the analysis was (0 to 1)."),
            ("language", "string?", "Detected language."),
        ],
    },
    "attachments": {
        "description": "Files you sent (and recordings); the files themselves are in files/.",
        "fields": [
            ("id", "integer", "Attachment number."),
            ("message_id", "integer?", "The message it came with."),
            ("event_id", "integer?", "The event it came with (a call's voicemail)."),
            ("conversation_id", "integer", "Its conversation."),
            ("kind", "string", "image, audio, video, document, sticker, other."),
            ("mime_type", "string?", "Its media type."),
            ("filename", "string?", "Its name as sent."),
            ("size", "integer?", "Size in bytes."),
            ("sha256", "string?", "SHA-256 of the file."),
            ("state", "string", "sealed (stored) or unavailable (could not be fetched)."),
            ("source_ref", "string?", "Where the platform kept it, when we could not fetch it."),
            ("category", "string", "Retention category."),
            ("created_at", "string", f"Stored ({TIME})."),
            ("file", "string?", "Path of the file in this ZIP."),
        ],
    },
    "events": {
        "description": "Things that happened in your conversations besides messages: calls, "
        "hand-overs to a person, failed deliveries.",
        "fields": [
            ("id", "integer", "Event number."),
            ("conversation_id", "integer", "Its conversation."),
            ("at", "string", f"When ({TIME})."),
            ("kind", "string", "call, handoff, release, ai_off, send_failed..."),
            ("actor", "string", "Who: contact, ai, gateway, platform, an operator."),
            ("reason", "string?", "Why, when recorded."),
            ("detail", "object?", "Details (e.g. a call's duration)."),
        ],
    },
    "consents": {
        "description": "Every consent given or withdrawn, per channel identity and purpose.",
        "fields": [
            ("id", "integer", "Record number."),
            ("identity_id", "integer", "The identity (identities.id)."),
            ("channel", "string", "Its channel."),
            ("purpose", "string", "service, marketing, ai_processing, or messages (STOP words)."),
            ("state", "string", "granted or withdrawn."),
            ("at", "string", f"When ({TIME})."),
            ("source", "string", "How: keyword:STOP, widget, gpc, api, admin, cli..."),
            ("evidence", "string?", "What proves it (a message number, a form version...)."),
        ],
    },
    "transfers": {
        "description": "Each time text from your conversations went to an AI provider (or was "
        "refused by the data-residency policy): who, where, which kinds of data, on what basis.",
        "fields": [
            ("id", "integer", "Transfer number."),
            ("at", "string", f"When ({TIME})."),
            ("conversation_id", "integer?", "The conversation."),
            ("agent", "string", "The assistant configuration."),
            ("provider", "string", "The provider as configured."),
            ("plugin", "string", "Its kind (openai, anthropic, local...)."),
            ("region", "string", "Where it processes data (local, EU, RU, US...)."),
            ("purpose", "string", "Why (e.g. reply)."),
            ("categories", "array", "Kinds of data sent (message_text, contact_names...)."),
            ("redacted", "integer", "1 if personal details were replaced by placeholders."),
            ("legal_basis", "string?", "The legal basis recorded."),
            ("bytes_out", "integer", "Bytes sent."),
            ("bytes_in", "integer", "Bytes received."),
            ("outcome", "string", "ok, error, refused..."),
        ],
    },
    "rectifications": {
        "description": "Corrections of your data, with the value before each one.",
        "fields": [
            ("id", "integer", "Correction number."),
            ("field", "string", "display_name, language or identity_display_name."),
            ("identity_id", "integer?", "The identity, for an identity's name."),
            ("old_value", "string?", "Before."),
            ("new_value", "string?", "After."),
            ("at", "string", f"When ({TIME})."),
            ("actor", "string", "Who made it."),
            ("request_id", "integer?", "The request it answered."),
        ],
    },
    "requests": {
        "description": "Your requests about your data and how they were handled.",
        "fields": [
            ("id", "integer", "Request number."),
            ("kind", "string", "access, portability, rectification, restriction, objection, "
             "erasure."),
            ("channel", "string", "How it reached us: chat, admin, cli, api."),
            ("received_at", "string", f"Received ({TIME})."),
            ("status", "string", "received, in_progress, scheduled, completed, refused, "
             "withdrawn."),
            ("verification", "string", "unverified, verified or failed."),
            ("gdpr_due", "string", "GDPR deadline (date)."),
            ("ru_due", "string", "152-FZ deadline (date)."),
            ("closed_at", "string?", f"Closed ({TIME})."),
        ],
    },
}  # fmt: skip


def _type(spec: str) -> str | list[str]:
    return [spec[:-1], "null"] if spec.endswith("?") else spec


def schema() -> dict[str, Any]:
    """JSON Schema of each JSON file of the export (by file name)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Sovereign Gateway data-subject export",
        "version": SCHEMA_VERSION,
        "files": {
            f"{name}.json": {
                "description": spec["description"],
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [f[0] for f in spec["fields"]],
                    "properties": {
                        field: {"type": _type(kind), "description": text}
                        for field, kind, text in spec["fields"]
                    },
                },
            }
            for name, spec in FILES.items()
        },
    }


def readme() -> str:
    lines = [
        "# Your data",
        "",
        "This archive holds everything we store about you. `summary.txt` explains it in plain "
        "words. Every data file comes twice, as JSON (`NAME.json`, an array of objects) and as "
        "CSV (`NAME.csv`, one row per object; nested values as JSON text), with the same fields. "
        "`schema.json` is the JSON Schema (2020-12) of every JSON file. Files you sent are in "
        "`files/`. Times are UTC, ISO 8601.",
        "",
    ]
    for name, spec in FILES.items():
        lines += [f"## {name}.json / {name}.csv", "", spec["description"], ""]
        lines += [f"- `{field}` ({kind}): {text}" for field, kind, text in spec["fields"]]
        lines.append("")
    return "\n".join(lines)
