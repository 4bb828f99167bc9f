"""Residency policy: which provider regions may receive which categories of data.

A model call sends data out of the gateway. Before each call the agent asks :func:`decide`
whether the provider (its ``region`` and ``personal_data`` flag) may receive what the request
carries; the answer is to send as is, to send a redacted copy, or not to call at all.

Data categories (one word for one thing, across config, transfer log and UI):

- ``message_text``: the conversation's words (every call carries them);
- ``contact_names``: names of people found in the text;
- ``contact_details``: phone numbers, emails, payment cards, IBANs, national ids, addresses;
- ``attachments``: files (not sent to models yet).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CATEGORIES = ("message_text", "contact_names", "contact_details", "attachments")
LOCAL = "local"


class ResidencyPolicy(BaseModel):
    """``residency = { message_text = ["local", "EU"], contact_details = ["local"] }``.

    Each key lists the regions that may receive that category; a missing key allows every
    region. A channel's policy and its agent's policy both apply (the stricter wins).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_text: list[str] | None = Field(
        None, description="Regions that may receive message text."
    )
    contact_names: list[str] | None = Field(None, description="Regions that may receive names.")
    contact_details: list[str] | None = Field(
        None, description="Regions that may receive phones, emails, cards, ids, addresses."
    )
    attachments: list[str] | None = Field(None, description="Regions that may receive files.")

    def allows(self, category: str, region: str) -> bool:
        regions: list[str] | None = getattr(self, category)
        return regions is None or region in regions


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Literal["send", "redact", "refuse"]
    categories: tuple[str, ...]
    """What the call will carry (after redaction when action is "redact")."""
    reason: str


def decide(
    *,
    region: str,
    personal_data: bool,
    found: Collection[str],
    policies: Iterable[ResidencyPolicy | None],
    local_only: bool,
) -> Decision:
    """Decide one model call. ``found``: the personal-data categories detected in the request."""
    active = [p for p in policies if p is not None]
    if local_only and region != LOCAL:
        return Decision("refuse", (), f'local_only is set and the provider region is "{region}"')
    if not all(p.allows("message_text", region) for p in active):
        return Decision("refuse", (), f'the residency policy keeps message text out of "{region}"')
    personal = [c for c in CATEGORIES if c in found and c != "message_text"]
    forbidden = [c for c in personal if not all(p.allows(c, region) for p in active)]
    if not personal:
        return Decision("send", ("message_text",), "no personal data found")
    if not personal_data:
        return Decision("redact", ("message_text",), "the provider may not see personal data")
    if forbidden:
        return Decision(
            "redact",
            ("message_text",),
            f'the policy keeps {", ".join(forbidden)} out of "{region}"',
        )
    return Decision("send", ("message_text", *personal), "allowed by policy")
