"""``[channels.NAME]`` with ``plugin = "twilio"``: credentials, senders, limits and voice."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.plugin import ChannelConfig
from gateway.secretref import Secret

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")


class TwilioConfig(ChannelConfig):
    """One Twilio account (and its numbers) as a channel: SMS/MMS both ways, calls answered.

    Webhooks are refused unless their ``X-Twilio-Signature`` verifies against ``auth_token``
    over the public URL Twilio was given (``webhook_base``, else ``[http] public_url`` +
    ``/webhooks/NAME``); the URL of the request as it reaches us (behind a proxy) is not used.
    """

    account_sid: str = Field(
        description="The Account SID (AC + 32 hex digits) from the Twilio Console home page."
    )
    auth_token: Secret = Field(
        description="The account's Auth Token, as a reference (env:NAME, credential:NAME...). "
        "Required: it signs every webhook, and unsigned requests are refused."
    )
    from_number: str | None = Field(
        None,
        description="Your Twilio number in E.164 form (+15017122661): the sender when a reply "
        "cannot go from the number the contact wrote to.",
    )
    messaging_service_sid: str | None = Field(
        None,
        description="A Messaging Service (MG...) to send through instead of one number; Twilio "
        "then picks the sender (sticky sender keeps it stable per contact).",
    )
    api_base: str = Field(
        "https://api.twilio.com",
        description="Twilio's REST API; change only for a test fake or a regional edge.",
    )
    webhook_base: str | None = Field(
        None,
        description="The public URL Twilio calls for this channel, without the trailing /sms "
        "(default: [http] public_url + /webhooks/NAME). Signatures are checked against it.",
    )
    timeout: float = Field(15.0, gt=0, description="Seconds one REST API call may take.")
    max_media_bytes: int = Field(
        5 * 1024 * 1024,
        ge=1024,
        description="Largest MMS attachment or voicemail recording downloaded (Twilio's MMS "
        "limit is 5 MB); larger ones are kept as a link only.",
    )
    media_timeout: float = Field(
        8.0,
        gt=0,
        le=14,
        description="Seconds all downloads for one webhook may take (Twilio waits 15 s for an "
        "answer); what is not fetched by then is kept as a link only.",
    )
    media_hosts: list[str] = Field(
        default_factory=lambda: [
            "https://mms.twiliocdn.com",
            "https://s3-external-1.amazonaws.com",
        ],
        description="Where Twilio redirects media downloads (https://*.example.com matches "
        "subdomains); only these hosts and api_base's are fetched from, and they are added to "
        "the outbound allowlist.",
    )
    # Twilio's published throughput: a US/Canada long code sends 1 message segment per second
    # (toll-free 3, other countries 10, short codes 100); faster requests only queue at Twilio.
    send_rate: float | None = Field(
        1.0,
        gt=0,
        description="Message segments per second for this sender (Twilio: long code 1, "
        "toll-free 3, international 10, short code 100).",
    )
    send_rate_per_chat: float | None = Field(
        1.0, gt=0, description="Messages per second to one phone number."
    )
    send_burst_per_chat: int = Field(
        1, ge=1, description="Messages one number may receive at once before the rate applies."
    )
    # Twilio answers STOP and START itself (default opt-out handling on US/Canada long codes and
    # toll-free numbers, Advanced Opt-Out on Messaging Services), and refuses what we send after
    # STOP (error 21610): our confirmation would be a duplicate at best and could never arrive
    # after STOP. Both words still reach the core as Inbound text, so the consent ledger records
    # them. Where Twilio does not handle them (some countries), set both replies.
    opt_out_reply: str = Field(
        "",
        description="Empty by default: Twilio itself confirms STOP by SMS, and refuses anything "
        "we send after it (error 21610). Set it where Twilio does not handle STOP.",
    )
    opt_in_reply: str = Field(
        "",
        description="Empty by default: Twilio itself confirms START. Set it where Twilio does "
        "not handle START.",
    )
    voice_greeting: str = Field(
        "Thank you for calling.",
        description="What a caller hears first (TwiML <Say>); empty: nothing.",
    )
    voice_language: str = Field("en-US", description="Language of <Say> (en-US, de-DE, ru-RU...).")
    voice_name: str | None = Field(
        None,
        description='The <Say> voice ("alice", "Polly.Joanna", "Google.de-DE-Standard-A"...); '
        "unset: Twilio's default for the language.",
    )
    forward_to: str | None = Field(
        None, description="Ring this number (E.164) after the greeting (TwiML <Dial>)."
    )
    dial_timeout: int = Field(
        20, ge=5, le=600, description="Seconds to ring forward_to before giving up."
    )
    record_voicemail: bool = Field(
        False,
        description="Take a voicemail (after the greeting, or when forward_to does not "
        "answer). Recordings are made only when this is true, always after recording_notice.",
    )
    recording_notice: str = Field(
        "This call is recorded. Please leave a message after the beep.",
        description="Played right before a voicemail is recorded; must not be empty when "
        "record_voicemail is true (callers must be told).",
    )
    voicemail_max_seconds: int = Field(
        120, ge=1, le=3600, description="Longest voicemail (TwiML <Record maxLength>)."
    )
    voicemail_goodbye: str = Field(
        "Thank you. Goodbye.",
        description="Said after a voicemail, or when nobody answered and no voicemail is taken.",
    )
    recording_format: Literal["mp3", "wav"] = Field(
        "mp3", description="Format of downloaded voicemails (mp3 is about 8x smaller)."
    )

    @field_validator("account_sid")
    @classmethod
    def _account_sid_shape(cls, value: str) -> str:
        if not _ACCOUNT_SID.fullmatch(value):
            raise ValueError("must be AC followed by 32 hex digits (Twilio Console, Account Info)")
        return value

    @field_validator("auth_token")
    @classmethod
    def _token_given(cls, token: Secret) -> Secret:
        if not token.deferred and not token.reveal().strip():
            # Fail closed: an empty token would make every webhook unverifiable.
            raise ValueError("the auth token is empty; Twilio signs every webhook with it")
        return token

    @field_validator("messaging_service_sid")
    @classmethod
    def _service_sid_shape(cls, value: str | None) -> str | None:
        if value is not None and not _SERVICE_SID.fullmatch(value):
            raise ValueError("must be MG followed by 32 hex digits (Messaging > Services)")
        return value

    @field_validator("from_number", "forward_to")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is not None and not E164.fullmatch(value):
            raise ValueError("must be a phone number in E.164 form, such as +15017122661")
        return value

    @field_validator("api_base", "webhook_base")
    @classmethod
    def _url_shape(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return None if value is None else value.rstrip("/")

    @field_validator("media_hosts")
    @classmethod
    def _hosts_are_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"{url!r}: give each media host as a URL (https://host)")
        return value

    @model_validator(mode="after")
    def _sender_and_consent(self) -> TwilioConfig:
        if self.from_number is None and self.messaging_service_sid is None:
            raise ValueError(
                "set from_number (your Twilio number, E.164) or messaging_service_sid (MG...): "
                "replies need a sender"
            )
        if self.record_voicemail and not self.recording_notice.strip():
            # Recording a caller unannounced is unlawful in many places (two-party consent).
            raise ValueError(
                "record_voicemail = true needs a recording_notice that tells callers they are "
                "recorded; it is played right before the beep"
            )
        return self
