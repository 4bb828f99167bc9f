"""``[channels.NAME]`` with ``plugin = "email"``: one mailbox, read by IMAP, answered by SMTP."""

from __future__ import annotations

import email.utils
import ssl
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.plugin import ChannelConfig
from gateway.secretref import Secret
from gateway.tls import check_ca_file

Tls = Literal["implicit", "starttls", "none"]

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
DEFAULT_PORTS = {
    "imap": {"implicit": 993, "starttls": 143, "none": 143},
    "smtp": {"implicit": 465, "starttls": 587, "none": 25},
}


class EmailConfig(ChannelConfig):
    """One mailbox as a channel: new mail in ``imap_folder`` is read, stored and answered by
    SMTP, threaded so that one email thread is one conversation."""

    address: str = Field(
        description="The mailbox's address: the From of every reply (e.g. support@example.com)."
    )
    display_name: str | None = Field(
        None, description='The name shown with the address in replies (e.g. "Example Support").'
    )
    imap_host: str = Field(description="IMAP server host name (e.g. imap.example.com).")
    imap_port: int | None = Field(
        None, gt=0, lt=65536, description="IMAP port (default 993 with implicit TLS, else 143)."
    )
    imap_tls: Tls = Field(
        "implicit",
        description='"implicit" (TLS from the start, port 993), "starttls" (port 143, upgraded '
        'before login) or "none" (only for a server on 127.0.0.1).',
    )
    imap_username: str | None = Field(None, description="IMAP login (default: address).")
    imap_password: Secret = Field(
        description="IMAP password or app password, as a reference (env:NAME, credential:NAME...)."
    )
    imap_folder: str = Field("INBOX", description="The folder new mail is read from.")
    processed: Literal["mark", "move"] = Field(
        "mark",
        description='What happens to a message once it is stored: "mark" flags it \\Seen and '
        'with processed_keyword; "move" moves it to processed_folder.',
    )
    processed_keyword: str = Field(
        "GatewayProcessed",
        pattern=r"^\$?[A-Za-z0-9_.-]{1,64}$",
        description="The IMAP keyword set on processed mail (mark mode).",
    )
    processed_folder: str | None = Field(
        None,
        description='Where processed mail goes in move mode (created if missing), e.g. "Gateway".',
    )
    idle: bool = Field(
        True, description="Wait for new mail with IMAP IDLE where the server offers it."
    )
    idle_timeout: float = Field(
        600.0,
        ge=10,
        le=1740,
        description="Seconds one IDLE lasts before it is renewed (RFC 2177: under 29 minutes).",
    )
    poll_interval: float = Field(
        60.0, ge=0.1, description="Seconds between checks for new mail when IDLE is not used."
    )
    smtp_host: str = Field(description="SMTP server host name (e.g. smtp.example.com).")
    smtp_port: int | None = Field(
        None,
        gt=0,
        lt=65536,
        description="SMTP port (default 587 with STARTTLS, 465 with implicit TLS, 25 with none).",
    )
    smtp_tls: Tls = Field(
        "starttls",
        description='"starttls" (port 587), "implicit" (port 465) or "none" (only for a server '
        "on 127.0.0.1).",
    )
    smtp_username: str | None = Field(None, description="SMTP login (default: the IMAP login).")
    smtp_password: Secret | None = Field(
        None, description="SMTP password as a reference (default: the IMAP password)."
    )
    ca_file: Path | None = Field(
        None,
        description="A PEM file of CA certificates trusted for IMAP and SMTP on top of the "
        "system's (a private CA, a test server). Absolute path.",
    )
    timeout: float = Field(30.0, gt=0, description="Seconds one IMAP or SMTP exchange may take.")
    max_message_bytes: int = Field(
        25 * 1024 * 1024,
        gt=0,
        description="Larger mail is not downloaded: it is stored as a note (the mail stays in the "
        "mailbox) for a person to read.",
    )
    max_attachment_bytes: int = Field(
        10 * 1024 * 1024,
        gt=0,
        description="Larger attachments are left out (the text says so); smaller ones are sealed "
        "and stored.",
    )
    max_attachments: int = Field(20, ge=0, description="At most this many attachments a mail.")
    max_text_chars: int = Field(
        20000, ge=100, description="Longer texts are cut (with a note) before the agent sees them."
    )
    strip_quoted: bool = Field(
        True,
        description="Cut quoted earlier mail and signatures from replies (the conversation "
        "already holds them).",
    )

    @field_validator("address")
    @classmethod
    def _address_shape(cls, value: str) -> str:
        name, addr = email.utils.parseaddr(value)
        if name or addr != value.strip() or "@" not in addr or " " in addr:
            raise ValueError(
                f"{value!r} is not a bare email address such as support@example.com "
                "(put the name in display_name)"
            )
        return addr.lower()

    @field_validator("ca_file")
    @classmethod
    def _ca_loadable(cls, path: Path | None) -> Path | None:
        return check_ca_file(path)

    @model_validator(mode="after")
    def _consistent(self) -> EmailConfig:
        for kind, host, tls in (
            ("imap", self.imap_host, self.imap_tls),
            ("smtp", self.smtp_host, self.smtp_tls),
        ):
            if tls == "none" and host.lower() not in LOOPBACK:
                raise ValueError(
                    f'{kind}_tls = "none" would send the password and every mail in clear text; '
                    f"it is allowed only with {kind}_host = 127.0.0.1, ::1 or localhost (a server "
                    f'on this machine). Use {kind}_tls = "implicit" or "starttls"'
                )
        if self.processed == "move":
            if not self.processed_folder:
                raise ValueError(
                    'processed = "move" needs processed_folder, the folder processed mail goes to '
                    '(e.g. "Gateway"; it is created if missing)'
                )
            if self.processed_folder == self.imap_folder:
                raise ValueError("processed_folder must differ from imap_folder")
        return self

    # -- derived ---------------------------------------------------------------------------------

    @property
    def imap_login(self) -> str:
        return self.imap_username or self.address

    @property
    def smtp_login(self) -> str:
        return self.smtp_username or self.imap_login

    @property
    def smtp_secret(self) -> Secret:
        return self.smtp_password or self.imap_password

    def port(self, kind: Literal["imap", "smtp"]) -> int:
        given = self.imap_port if kind == "imap" else self.smtp_port
        tls = self.imap_tls if kind == "imap" else self.smtp_tls
        return given or DEFAULT_PORTS[kind][tls]

    @property
    def domain(self) -> str:
        """The domain of our Message-IDs: the address's."""
        return self.address.rpartition("@")[2]

    def ssl_context(self) -> ssl.SSLContext:
        """The system's CA certificates plus ``ca_file``; hostnames are checked."""
        context = ssl.create_default_context()
        if self.ca_file is not None:
            context.load_verify_locations(cafile=str(self.ca_file))
        return context
