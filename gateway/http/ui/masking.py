"""Personal data as the admin UI shows it by default: masked. Pure functions.

Names keep their first letter (``Ola Nordmann`` → ``O•• N•••••••``), platform ids and phone
numbers their last two characters (``•••67``), and message text goes through the agent's
redactor (phones, emails, cards, national ids, configured names and patterns, and the contact's
own name), which leaves ``<PHONE_1>``-style placeholders. A reveal (audited, with a reason)
shows the originals for a while.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.config import AgentConfig, redactor_for
from gateway.privacy.redaction import PlaceholderMap, Redactor

DOT = "\u2022"


def mask_name(name: str | None) -> str:
    if not name or not name.strip():
        return "(no name)"
    return " ".join(word[0] + DOT * min(len(word) - 1, 8) for word in name.split())


def mask_id(value: str | None) -> str:
    if not value:
        return ""
    return DOT * 3 + value[-2:] if len(value) > 4 else DOT * len(value)


def text_redactor(agent: AgentConfig | None, contact_names: Iterable[str | None]) -> Redactor:
    """The agent's redactor (its patterns and names) that also knows the contact's names."""
    names = [n for n in contact_names if n]
    if agent is None:
        return Redactor(names=names)
    return redactor_for(agent.model_copy(update={"redact_names": [*agent.redact_names, *names]}))


def mask_text(redactor: Redactor, text: str) -> str:
    """One message's text with its personal data replaced by placeholders."""
    return redactor.redact(text, PlaceholderMap())
