"""``[channels.NAME]`` tables of the Messenger and Instagram plugins."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from gateway.plugin import ChannelConfig
from gateway.secretref import Secret

__all__ = ["InstagramConfig", "MessengerConfig", "MetaConfig"]

_VERSION_RE = re.compile(r"^v\d{1,3}\.\d{1,2}$")
_ID_RE = re.compile(r"^\d{1,30}$")


class MetaConfig(ChannelConfig):
    """Keys both Meta messaging plugins share."""

    app_secret: Secret = Field(
        description="The app secret (App Dashboard > App settings > Basic; for Instagram Login "
        "the Instagram app secret). Required: every webhook must carry its X-Hub-Signature-256, "
        "and requests without a valid one are refused."
    )
    verify_token: Secret = Field(
        description="A string you choose and also type into the webhook settings as 'Verify "
        "token'; Meta sends it once to check the callback URL."
    )
    api_version: str = Field("v23.0", description="Graph API version of every call (vNN.N).")
    max_media_bytes: int = Field(
        25 * 1024 * 1024,
        ge=0,
        description="Largest attachment downloaded from a webhook or uploaded in a send "
        "(Meta's limit: 25 MB). Larger inbound media is kept as a link only; 0 never downloads.",
    )
    request_timeout: float = Field(
        30.0, gt=0, description="Seconds one Graph API call or media download may take."
    )
    human_agent_tag: bool = Field(
        True,
        description="Send an operator's reply 24 h - 7 days after the contact's last message "
        "with the HUMAN_AGENT tag (the app needs Meta's Human Agent permission); false refuses "
        "it like any message outside the 24-hour window.",
    )
    send_rate_per_chat: float | None = Field(
        1.0,
        gt=0,
        description="Messages per second to one conversation (Meta rate-limits busy threads "
        "without publishing a figure).",
    )
    send_burst_per_chat: int = Field(
        3,
        ge=1,
        description="Messages one conversation may receive at once before the rate applies.",
    )

    @field_validator("app_secret", "verify_token")
    @classmethod
    def _not_empty(cls, secret: Secret) -> Secret:
        if not secret.deferred and not secret.reveal():
            # Fail closed: an empty app secret would sign nothing and check nothing.
            raise ValueError("must not be empty")
        return secret

    @field_validator("api_version")
    @classmethod
    def _version_shape(cls, value: str) -> str:
        if not _VERSION_RE.fullmatch(value):
            raise ValueError('api_version must look like "v23.0"')
        return value

    @field_validator("api_base", check_fields=False)
    @classmethod
    def _base_shape(cls, base: str) -> str:
        if not base.startswith(("https://", "http://")):
            raise ValueError("api_base must be an http(s) URL such as https://graph.facebook.com")
        return base.rstrip("/")

    @field_validator("media_hosts", check_fields=False)
    @classmethod
    def _hosts_shape(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not host.startswith(("https://", "http://")) or "/" in host.split("://", 1)[1]:
                raise ValueError(
                    f"{host!r}: media_hosts entries are scheme and host only, such as "
                    '"https://*.fbcdn.net"'
                )
        return hosts


def _check_id(value: str, what: str) -> str:
    if not _ID_RE.fullmatch(value):
        raise ValueError(f"{what} is the account's numeric id (digits only)")
    return value


class MessengerConfig(MetaConfig):
    """``[channels.NAME]`` with ``plugin = "messenger"``: a Facebook Page's Messenger inbox."""

    page_id: str = Field(description="The Facebook Page's id (Page > About > Page transparency).")
    page_access_token: Secret = Field(
        description="A Page access token with pages_messaging (App Dashboard > Messenger > "
        "Messenger API settings > Generate token), as a reference such as env:NAME."
    )
    api_base: str = Field(
        "https://graph.facebook.com", description="Graph API server; change only for a test fake."
    )
    media_hosts: list[str] = Field(
        default_factory=lambda: ["https://*.fbcdn.net", "https://*.fbsbx.com"],
        description="Where inbound attachments may be downloaded from (scheme and host, * for "
        "subdomains); also lets those hosts through the outbound allowlist.",
    )
    send_rate: float | None = Field(
        40.0,
        gt=0,
        description="Messages per second for the whole Page. The Send API takes 300 calls/s per "
        "Page (10/s with audio or video), but a Page sending over 40 messages/s hits Meta's "
        "high-volume limit and its inbox stops sending.",
    )

    @field_validator("page_id")
    @classmethod
    def _page_id(cls, value: str) -> str:
        return _check_id(value, "page_id")


class InstagramConfig(MetaConfig):
    """``[channels.NAME]`` with ``plugin = "instagram"``: an Instagram professional account's
    direct messages, through the Instagram API with Instagram Login (graph.instagram.com) or,
    with ``page_id`` and ``api_base = "https://graph.facebook.com"``, through its linked Page."""

    instagram_account_id: str = Field(
        description="The Instagram professional account's id (the entry.id of its webhooks)."
    )
    access_token: Secret = Field(
        description="An Instagram user access token with instagram_business_manage_messages "
        "(or, with page_id, the linked Page's access token), as a reference such as env:NAME."
    )
    page_id: str | None = Field(
        None,
        description="Only for Instagram messaging through a linked Facebook Page: that Page's id; "
        "sends then go to /{page_id}/messages.",
    )
    api_base: str = Field(
        "https://graph.instagram.com",
        description="https://graph.instagram.com (Instagram Login), or https://graph.facebook.com "
        "with page_id; change otherwise only for a test fake.",
    )
    media_hosts: list[str] = Field(
        default_factory=lambda: [
            "https://*.fbsbx.com",
            "https://*.fbcdn.net",
            "https://*.cdninstagram.com",
        ],
        description="Where inbound attachments may be downloaded from (scheme and host, * for "
        "subdomains); also lets those hosts through the outbound allowlist.",
    )
    send_rate: float | None = Field(
        20.0,
        gt=0,
        description="Messages per second for the account. The Send API takes 300 calls/s (10/s "
        "with audio or video), but an account over 72,000 messages an hour (20/s) hits Meta's "
        "high-volume limit and its inbox stops sending.",
    )

    @field_validator("instagram_account_id")
    @classmethod
    def _account_id(cls, value: str) -> str:
        return _check_id(value, "instagram_account_id")

    @field_validator("page_id")
    @classmethod
    def _page_id(cls, value: str | None) -> str | None:
        return None if value is None else _check_id(value, "page_id")
