"""``[channels.NAME]`` with ``plugin = "whatsapp"``: the official WhatsApp Business Cloud API."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.plugin import ChannelConfig
from gateway.secretref import Secret

__all__ = ["WhatsAppConfig", "WindowTemplate"]

_VERSION = re.compile(r"^v\d{1,3}\.\d{1,2}$")


class WindowTemplate(BaseModel):
    """An approved message template sent instead of free-form text outside the 24-hour window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="The template's name in WhatsApp Manager.")
    language: str = Field(
        "en_US", min_length=2, description="The template language code (en_US, de, pt_BR...)."
    )
    body_parameter: bool = Field(
        False,
        description="true: the reply text fills the template's single body variable {{1}} "
        "(whitespace folded to single spaces, as Meta requires); false: sent as approved.",
    )


class WhatsAppConfig(ChannelConfig):
    """One WhatsApp business phone number.

    Meta posts webhooks to ``{[http] public_url}/webhooks/NAME``: give that URL and
    ``verify_token`` in the App Dashboard (WhatsApp > Configuration) and subscribe the
    ``messages`` field. Every POST must carry a valid ``X-Hub-Signature-256`` made with
    ``app_secret``; there is no way to switch that check off.
    """

    phone_number_id: str = Field(
        description="The business number's id (App Dashboard > WhatsApp > API Setup), not the "
        "phone number itself."
    )
    access_token: Secret = Field(
        description="A system user access token with whatsapp_business_messaging, as a "
        "reference (env:NAME, credential:NAME...)."
    )
    app_secret: Secret = Field(
        description="The Meta app's secret (App settings > Basic): every webhook POST is "
        "checked against it and refused without a valid signature."
    )
    verify_token: Secret = Field(
        description="A random string of yours, also typed into the App Dashboard: Meta's "
        "subscription handshake (GET) must present it."
    )
    api_base: str = Field(
        "https://graph.facebook.com", description="Graph API host; change only for a test fake."
    )
    api_version: str = Field("v23.0", description='Graph API version, "vNN.N".')
    window_template: WindowTemplate | None = Field(
        None,
        description="Sent in place of a reply to a contact who last wrote more than 24 hours "
        'ago (or never): { name = "...", language = "en_US", body_parameter = false }. '
        "Without it such replies fail with a clear error.",
    )
    max_media_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        le=100 * 1024 * 1024,
        description="Largest inbound file downloaded and kept; bigger ones are recorded as "
        "unavailable.",
    )
    media_hosts: list[str] = Field(
        default_factory=lambda: ["https://lookaside.fbsbx.com"],
        description="Hosts Meta serves media downloads from (https://*.example.com for "
        "subdomains). The access token is only ever sent to these and api_base, and the "
        "outbound allowlist admits them.",
    )
    request_timeout: float = Field(
        20.0, gt=0, description="Seconds one Graph API call or media download may take."
    )
    send_rate: float | None = Field(
        80.0,
        gt=0,
        description="Messages per second for the number (Cloud API default throughput: 80).",
    )
    send_rate_per_chat: float | None = Field(
        1 / 6,
        gt=0,
        description="Messages per second to one user (Meta's pair rate limit: about one "
        "message every 6 s).",
    )
    send_burst_per_chat: int = Field(
        5, ge=1, description="Messages one user may receive at once before the rate applies."
    )

    @field_validator("phone_number_id")
    @classmethod
    def _digits(cls, value: str) -> str:
        if not value.isdigit():
            raise ValueError(
                "phone_number_id is the numeric id Meta shows under WhatsApp > API Setup "
                '(e.g. "106540352242922"), not the phone number'
            )
        return value

    @field_validator("access_token", "app_secret", "verify_token")
    @classmethod
    def _not_empty(cls, secret: Secret) -> Secret:
        if not secret.deferred and not secret.reveal():
            raise ValueError("must not be empty")
        return secret

    @field_validator("api_base")
    @classmethod
    def _base_shape(cls, base: str) -> str:
        if not base.startswith(("https://", "http://")):
            raise ValueError("api_base must be an http(s) URL such as https://graph.facebook.com")
        return base.rstrip("/")

    @field_validator("api_version")
    @classmethod
    def _version_shape(cls, version: str) -> str:
        if not _VERSION.fullmatch(version):
            raise ValueError('api_version looks like "v23.0"')
        return version

    @field_validator("media_hosts")
    @classmethod
    def _hosts_shape(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not host.startswith(("https://", "http://")):
                raise ValueError(f"{host!r}: give each media host as a URL, https://host")
        return hosts
