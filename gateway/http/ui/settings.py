"""``[admin_ui]``: sign-in, session and live-update settings of the admin UI (every key optional)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # gateway.config imports this module for its TOP_LEVEL table
    from gateway.config import GatewayConfig


class AdminUIConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    https: bool = Field(
        False,
        description="Browsers reach the admin UI over HTTPS (a TLS proxy in front): session "
        "cookies get Secure and the __Host- prefix. Also on for any request that arrives over "
        "TLS, or says X-Forwarded-Proto: https from one of trusted_proxies.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Proxy addresses whose X-Forwarded-Proto and X-Forwarded-For are believed "
        '(e.g. ["127.0.0.1"]); from anyone else those headers are ignored.',
    )
    session_idle_minutes: float = Field(
        30.0, gt=0, le=24 * 60, description="A session ends after this long without a request."
    )
    session_max_hours: float = Field(
        12.0, gt=0, le=7 * 24, description="A session ends this long after sign-in, however busy."
    )
    lockout_after: int = Field(
        5, ge=1, le=100, description="Failed sign-ins (password or code) before a lockout."
    )
    lockout_minutes: float = Field(
        15.0, gt=0, description="How long an account stays locked after lockout_after failures."
    )
    reveal_minutes: float = Field(
        15.0,
        gt=0,
        le=24 * 60,
        description="How long a reveal of a contact's personal data lasts in one session.",
    )
    invite_hours: float = Field(
        72.0, gt=0, description="How long an invitation's set-password link stays valid."
    )
    live_poll_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often live pages (inbox, conversation) look for new messages.",
    )
    search_index_seconds: float = Field(
        10.0,
        gt=0,
        description="How often new messages are added to the search index (a search also "
        "catches up first).",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address (e.g. 127.0.0.1)") from None
        return value


def ui_config(config: GatewayConfig) -> AdminUIConfig:
    """The running config's ``[admin_ui]`` table (defaults when absent)."""
    section = config.sections.get("admin_ui")
    return section if isinstance(section, AdminUIConfig) else AdminUIConfig.model_validate({})
