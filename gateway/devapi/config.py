"""The ``[api]`` table: the developer API's limits, one-time codes and website forms.

Imported by gateway.config (TOP_LEVEL), so it imports nothing of the gateway but pydantic.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
"""Project and form names: what a deep link (``/start acme``) and a URL carry unchanged."""
_RATE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$", re.IGNORECASE
)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclasses.dataclass(frozen=True)
class Rate:
    """``count`` requests per ``seconds``: a token bucket holding ``count`` (the burst),
    refilled at ``count / seconds`` per second."""

    count: float
    seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    @property
    def burst(self) -> float:
        return max(1.0, math.floor(self.count))

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h", 86400.0: "d"}[self.seconds]
        count = int(self.count) if self.count == int(self.count) else self.count
        return f"{count}/{unit}"


def parse_rate(text: str) -> Rate:
    """``"10/s"``, ``"600/min"``, ``"1000/h"``, ``"5000/day"`` -> Rate; ValueError otherwise."""
    match = _RATE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(
            f'{text!r} is not a rate: write COUNT/UNIT with a positive count, e.g. "10/s", '
            '"600/min", "1000/h", "5000/day"'
        )
    return Rate(float(match.group(1)), _UNITS[match.group(2)[0].lower()])


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Section):
    """One field of a website form."""

    type: Literal["string", "text", "email", "integer", "boolean"] = Field(
        "string",
        description='"string" (one line), "text" (several lines), "email", "integer" or '
        '"boolean" (a checkbox: "on", "true", "1", "yes").',
    )
    required: bool = Field(False, description="Refuse a submission without it.")
    max_length: int = Field(
        200, ge=1, le=100_000, description="Longest value in characters (text: give more)."
    )


class FormConfig(_Section):
    """``[api.forms.NAME]``: a form on a developer's site posting to /api/v1/forms/NAME."""

    project: str = Field(
        description="The project (gateway api projects add NAME) whose submissions these are; "
        "keys of that project with the forms scope read them."
    )
    allowed_origins: list[str] = Field(
        description='The sites whose pages may post (exact origins: "https://www.example.com"). '
        "Anything else is refused, also in the browser's CORS preflight."
    )
    fields: dict[str, FieldSpec] = Field(
        description='The form\'s fields: { email = { type = "email", required = true }, ... }. '
        "A submission with any other field is refused."
    )
    honeypot: str | None = Field(
        None,
        description="A field hidden from people by CSS: a submission that fills it in is "
        "answered as if accepted, then dropped and counted as spam.",
    )
    rate: str = Field("5/min", description="Submissions per client IP address.")
    origin_rate: str = Field("120/min", description="Submissions per origin (all visitors).")
    block_disposable: bool = Field(
        True,
        description="Refuse email fields at throwaway-mail domains (the disposable-email-domains "
        "list).",
    )
    redirect_to: str | None = Field(
        None,
        description="Where a browser goes after a plain HTML form post (303), e.g. a thank-you "
        "page; without it the answer is JSON.",
    )

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r} is not a project name (a-z, 0-9, _ and -)")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not re.match(r"^https?://[^/\s?#]+$", origin):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme and host (and port), no path, e.g. "
                    '"https://www.example.com"'
                )
        return [o.lower() for o in value]

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        if not value:
            raise ValueError("a form needs at least one field")
        for name in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$", name):
                raise ValueError(f"{name!r} is not a field name (letters, digits, _ . -)")
        return value

    @field_validator("rate", "origin_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    @model_validator(mode="after")
    def _honeypot(self) -> FormConfig:
        if self.honeypot is not None and self.honeypot in self.fields:
            raise ValueError(f"honeypot {self.honeypot!r} must not also be one of the fields")
        return self


class ApiSection(_Section):
    """``[api]``: the developer API under /api/v1 on the public bind."""

    enabled: bool = Field(True, description="false: /api/v1 answers 404 and chat /start is off.")
    default_rate: str = Field(
        "10/s", description="Requests per key unless the key has its own --rate."
    )
    max_page: int = Field(100, ge=1, le=1000, description="Most items one list page returns.")
    idempotency_hours: float = Field(
        24.0, gt=0, description="How long an Idempotency-Key's answer is kept for replays."
    )
    otp_length: int = Field(6, ge=4, le=10, description="Digits of a one-time code.")
    otp_ttl: int = Field(300, ge=30, le=3600, description="Seconds a one-time code is valid.")
    otp_max_attempts: int = Field(
        5, ge=1, le=20, description="Wrong codes before a code is locked (send a new one)."
    )
    otp_resend_after: int = Field(
        30, ge=0, description="Seconds before another code may go to the same subscriber."
    )
    otp_max_per_hour: int = Field(
        5, ge=1, description="Codes one subscriber may receive per hour (per project)."
    )
    otp_message: str = Field(
        "Your {project} code is {code}. It expires in {minutes} minutes. Do not share it.",
        description="The message carrying a code: {code}, {project} (its title), {minutes}.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses of reverse proxies whose X-Forwarded-For names the client "
        '(e.g. ["127.0.0.1"]); form rate limits count per client address.',
    )
    forms: dict[str, FormConfig] = Field(
        default_factory=dict, description="Website forms, one [api.forms.NAME] table each."
    )

    @field_validator("default_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("otp_message")
    @classmethod
    def _message(cls, value: str) -> str:
        if "{code}" not in value:
            raise ValueError("otp_message must contain {code}")
        try:
            value.format(code="1", project="p", minutes=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"otp_message may only use {{code}}, {{project}} and {{minutes}} ({exc})"
            ) from None
        return value

    @field_validator("forms")
    @classmethod
    def _forms(cls, value: dict[str, FormConfig]) -> dict[str, FormConfig]:
        for name in value:
            if not NAME.match(name):
                raise ValueError(f"form name {name!r}: use a-z, 0-9, _ and - (it is in the URL)")
        return value


def api_config(config: GatewayConfig) -> ApiSection:
    """The running config's ``[api]`` table (defaults when the file has none)."""
    section = config.sections.get("api")
    return section if isinstance(section, ApiSection) else ApiSection.model_validate({})
