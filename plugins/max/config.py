"""``[channels.NAME]`` with ``plugin = "max"``: a bot on the Max messenger (platform-api.max.ru)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.plugin import ChannelConfig
from gateway.secretref import Secret
from gateway.tls import check_ca_file

__all__ = ["MaxConfig"]

# POST /subscriptions: "5-256 characters. Only characters A-Z, a-z, 0-9, _ and - are allowed."
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{5,256}$")


class MaxConfig(ChannelConfig):
    """One Max bot (created on business.max.ru; the token is under Chat bots > Settings).

    Long polling (``GET /updates``) is the default and needs no public URL. In webhook mode Max
    posts every update to ``{[http] public_url}/webhooks/NAME`` with ``X-Max-Bot-Api-Secret``;
    requests without the right secret are refused, and the mode does not start without one.
    """

    token: Secret = Field(
        description="The bot's access token, as a reference (env:NAME, credential:NAME...). "
        "Sent only in the Authorization header, only to api_base."
    )
    mode: Literal["polling", "webhook"] = Field(
        "polling",
        description='"polling" fetches updates with GET /updates (no public URL needed); '
        '"webhook" has Max post them to [http] public_url + /webhooks/NAME (Max requires HTTPS '
        "on port 80, 8080, 443, 8443 or 16384-32383).",
    )
    api_base: str = Field(
        "https://platform-api.max.ru",
        description="The Bot API host; change only if Max moves it or for a test fake.",
    )
    webhook_secret: Secret | None = Field(
        None,
        description="Required in webhook mode: Max sends it as X-Max-Bot-Api-Secret with every "
        "update and other requests are refused. 5-256 characters A-Z a-z 0-9 _ -.",
    )
    register_webhook: bool = Field(
        True,
        description="Webhook mode: subscribe {public_url}/webhooks/NAME through POST "
        "/subscriptions at start (false: you subscribe the URL yourself). Polling mode removes "
        "subscriptions at start, since Max serves GET /updates only to a bot without one.",
    )
    poll_timeout: int = Field(
        30, ge=1, le=90, description="Seconds one long poll waits for updates (Max: at most 90)."
    )
    ca_file: Path | None = Field(
        None,
        description="A PEM file of extra CA certificates trusted for calls to Max (its "
        "certificates chain to the Russian Trusted Root CA, which most systems lack). "
        "Absolute path; used for api_base and media downloads only.",
    )
    media_hosts: list[str] = Field(
        default_factory=lambda: ["https://*.oneme.ru", "https://*.okcdn.ru", "https://*.mycdn.me"],
        description="Where inbound files may be downloaded from (https://*.example.com for "
        "subdomains); a file elsewhere is kept as a link. Also added to the outbound allowlist.",
    )
    max_media_bytes: int = Field(
        20 * 1024 * 1024,
        gt=0,
        le=2 * 1024 * 1024 * 1024,
        description="Largest inbound file downloaded and sealed; bigger ones are kept as links.",
    )
    request_timeout: float = Field(
        20.0,
        gt=0,
        description="Seconds one API call (other than a long poll) or download may take.",
    )
    callback_notification: str = Field(
        "✓",
        min_length=1,
        max_length=200,
        description="The one-time notice Max shows a user who pressed an inline button (every "
        "press is answered through POST /answers once it is stored).",
    )
    send_rate: float | None = Field(
        25.0,
        gt=0,
        description="Messages per second the bot may send (Max allows 30 requests/s per bot in "
        "all; the rest is left for polls and button answers).",
    )

    @field_validator("token")
    @classmethod
    def _token_given(cls, token: Secret) -> Secret:
        if not token.deferred and not token.reveal().strip():
            raise ValueError("the Max bot token is empty; check the reference")
        return token

    @field_validator("webhook_secret")
    @classmethod
    def _secret_shape(cls, secret: Secret | None) -> Secret | None:
        if secret is not None and not secret.deferred and not _SECRET_RE.fullmatch(secret.reveal()):
            raise ValueError(
                "Max accepts only 5-256 characters A-Z, a-z, 0-9, _ and - in a webhook secret"
            )
        return secret

    @field_validator("api_base")
    @classmethod
    def _base_shape(cls, base: str) -> str:
        if not base.startswith(("https://", "http://")):
            raise ValueError("api_base must be an http(s) URL such as https://platform-api.max.ru")
        return base.rstrip("/")

    @field_validator("media_hosts")
    @classmethod
    def _hosts_shape(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not host.startswith(("https://", "http://")) or "/" in host.split("://", 1)[1]:
                raise ValueError(
                    f"{host!r}: media_hosts entries are scheme and host only, such as "
                    '"https://*.oneme.ru"'
                )
        return hosts

    @field_validator("ca_file")
    @classmethod
    def _ca_loadable(cls, path: Path | None) -> Path | None:
        return check_ca_file(path, "/usr/local/share/ca-certificates/russian_trusted_root_ca.pem")

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> MaxConfig:
        if self.mode == "webhook" and self.webhook_secret is None:
            # Fail closed: without a secret anyone who learns the URL could post updates.
            raise ValueError(
                'mode = "webhook" requires webhook_secret (a reference such as '
                '"env:MAX_WEBHOOK_SECRET"); without it anyone who finds the webhook URL could '
                "post messages as any user"
            )
        return self
