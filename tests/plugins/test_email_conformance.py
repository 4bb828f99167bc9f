"""The channel conformance suite against the email plugin and a real mail server (Dovecot IMAP +
an SMTP server delivering into its Maildirs) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import email.utils
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from gateway.secretref import Secret
from gateway.testing import conformance
from gateway.testing.context import MemoryChannelContext
from gateway.testing.mailserver import MailServer, open_mail_server
from plugins.email import EmailChannel

DOMAIN = "conformance.test"
OUTBOX = f"outbox@{DOMAIN}"
PASSWORD = "conformance-pw"


class _ConformanceEmail(EmailChannel):
    """The suite uses decimal thread keys and sender ids ("710001"): the harness writes from
    ``710001@conformance.test``, and only the shape of the keys is relaxed here (a digit local
    part is both the thread key and the sender id). Threading itself is tested in
    test_email_channel.py."""

    def thread_key_for(self, root: str, sender: str) -> str:
        local = sender.partition("@")[0]
        return local if local.isdigit() else super().thread_key_for(root, sender)

    def sender_id_for(self, address: str) -> str:
        local = address.partition("@")[0]
        return local if local.isdigit() else address


class EmailHarness:
    """Each ``open`` gets a fresh mailbox on one shared server; ``deliver`` APPENDs a mail to it
    (as a delivery agent would), replies are read from what the SMTP server delivered."""

    plugin_class = EmailChannel

    def __init__(
        self,
        server: MailServer,
        *,
        tls: str = "implicit",
        idle: bool = True,
        channel_class: type[EmailChannel] | None = None,
    ) -> None:
        self.server = server
        self.channel_class = channel_class or _ConformanceEmail
        self.tls = tls
        self.idle = idle
        self.mailbox = ""
        self.last: bytes | None = None
        self.counter = itertools.count(1)
        self.boxes = itertools.count(1)

    def raw_config(self) -> dict[str, Any]:
        port = self.server.imaps_port if self.tls == "implicit" else self.server.imap_port
        return {
            "plugin": "email",
            "address": self.mailbox or f"support@{DOMAIN}",
            "imap_host": "127.0.0.1",
            "imap_port": port,
            "imap_tls": self.tls,
            "imap_password": Secret(PASSWORD, "env:MAIL_PASSWORD"),
            "smtp_host": "127.0.0.1",
            "smtp_port": self.server.smtp_port,
            "smtp_tls": "starttls",
            "ca_file": str(self.server.ca_file),
            "idle": self.idle,
            "poll_interval": 0.2,
        }

    @contextlib.asynccontextmanager
    async def open(self, context: MemoryChannelContext) -> AsyncIterator[EmailChannel]:
        self.mailbox = f"support{next(self.boxes)}@{DOMAIN}"
        self.server.add_user(self.mailbox, PASSWORD)
        config = EmailChannel.Config.model_validate(self.raw_config())
        channel = self.channel_class(context.name, config, context)
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            yield channel
            nursery.cancel_scope.cancel()

    def _mail(self, thread_key: str, sender_id: str, text: str) -> bytes:
        n = next(self.counter)
        return (
            f"From: Tester {sender_id} <{sender_id}@{DOMAIN}>\r\n"
            f"To: {self.mailbox}\r\n"
            f"Subject: conformance {thread_key}\r\n"
            f"Date: {email.utils.formatdate()}\r\n"
            f"Message-ID: <{thread_key}.{n}@{DOMAIN}>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{text}\r\n"
        ).encode()

    async def deliver(self, thread_key: str, sender_id: str, text: str) -> None:
        self.last = self._mail(thread_key, sender_id, text)
        await self.server.append(self.mailbox, self.last)

    async def redeliver_last(self) -> None:
        assert self.last is not None
        await self.server.append(self.mailbox, self.last)  # the same mail, a second copy

    async def sent_texts(self, thread_key: str) -> list[str]:
        return [
            str(d.message().get_content()).strip()
            for d in self.server.received(f"{thread_key}@{DOMAIN}")
        ]


@pytest.mark.parametrize(("tls", "idle"), [("implicit", True), ("starttls", False)])
async def test_email_passes_conformance(tls: str, idle: bool) -> None:
    async with open_mail_server(catch_all=OUTBOX) as server:
        server.add_user(OUTBOX, PASSWORD)
        await conformance.check_channel(EmailHarness(server, tls=tls, idle=idle))


# -- the suite catches broken plugins -----------------------------------------------------------


class MarksBeforeStoring(_ConformanceEmail):
    """Broken: marks the mail as processed (and moves on) even when storing it failed."""

    async def _store(self, parsed: Any, raw: bytes) -> None:
        with contextlib.suppress(Exception):
            await super()._store(parsed, raw)


async def test_suite_catches_marking_an_unstored_mail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conformance, "STEP_TIMEOUT", 3.0)
    async with open_mail_server(catch_all=OUTBOX) as server:
        server.add_user(OUTBOX, PASSWORD)
        harness = EmailHarness(server, channel_class=MarksBeforeStoring)
        with pytest.raises(AssertionError, match=r"^check_accept_failure_not_lost: timed out"):
            await conformance.check_accept_failure_not_lost(harness)
