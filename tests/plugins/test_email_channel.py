"""The email plugin against a real mail server on 127.0.0.1 (gateway.testing.mailserver):
threading, marking and moving, restarts, automatic mail, limits, TLS and login errors, doctor."""

from __future__ import annotations

import contextlib
import email.utils
import itertools
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import psutil
import pydantic
import pytest
import trio

from gateway.errors import PluginError, SendError
from gateway.messages import Outbound, utcnow
from gateway.secretref import Secret
from gateway.testing.context import MemoryChannelContext
from gateway.testing.daemon import free_port
from gateway.testing.mailserver import MailServer, open_mail_server
from plugins.email import EmailChannel
from plugins.email.convert import our_thread, thread_key

SUPPORT = "support@example.test"
CUSTOMER = "kari@customer.test"
STRANGER = "mallory@elsewhere.test"
PASSWORD = "pw-123"
_ids = itertools.count(1)


def config(server: MailServer, **overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "plugin": "email",
        "address": SUPPORT,
        "display_name": "Example Support",
        "imap_host": "127.0.0.1",
        "imap_port": server.imaps_port,
        "imap_password": Secret(PASSWORD, "env:MAIL_PASSWORD"),
        "smtp_host": "127.0.0.1",
        "smtp_port": server.smtp_port,
        "ca_file": str(server.ca_file),
        "poll_interval": 0.2,
    }
    table.update(overrides)
    return table


def mail(
    sender: str = CUSTOMER,
    text: str = "Hello, where is my order?",
    *,
    subject: str = "Order 1042",
    message_id: str | None = None,
    references: tuple[str, ...] = (),
    extra: str = "",
) -> tuple[str, bytes]:
    message_id = message_id or f"m{next(_ids)}@customer.test"
    refs = ""
    if references:
        refs = f"References: {' '.join(f'<{r}>' for r in references)}\r\n"
        refs += f"In-Reply-To: <{references[-1]}>\r\n"
    raw = (
        f"From: Kari <{sender}>\r\nTo: {SUPPORT}\r\nSubject: {subject}\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{message_id}>\r\n{refs}{extra}"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
    )
    return message_id, raw.encode()


@contextlib.asynccontextmanager
async def mail_server() -> AsyncIterator[MailServer]:
    async with open_mail_server({SUPPORT: PASSWORD, CUSTOMER: "c", STRANGER: "s"}) as server:
        yield server


@contextlib.asynccontextmanager
async def running(
    server: MailServer, context: MemoryChannelContext, **overrides: Any
) -> AsyncIterator[EmailChannel]:
    channel = EmailChannel("mail", config(server, **overrides), context)
    async with trio.open_nursery() as nursery:
        await nursery.start(channel.run)
        yield channel
        nursery.cancel_scope.cancel()


class Context(MemoryChannelContext):
    """MemoryChannelContext whose ``wait_for`` also wakes on channel state writes (the UID mark
    is how a test knows a mail was stored *and* marked)."""

    def __init__(self) -> None:
        super().__init__("mail")
        self._state_written = trio.Condition()

    async def set_state(self, key: str, value: str) -> None:
        await super().set_state(key, value)
        async with self._state_written:
            self._state_written.notify_all()

    async def wait_state(self, predicate: Callable[[], bool]) -> None:
        async with self._state_written:
            while not predicate():
                await self._state_written.wait()


def cursor_uid(context: MemoryChannelContext) -> int:
    """The UID high-water mark the channel stored (-1: none yet)."""
    value = context.state.get("cursor")
    return int(json.loads(value)["uid"]) if value else -1


def reply(inbound: Any, text: str, key: str, author: str = "ai") -> Outbound:
    return Outbound(
        1,
        key,
        inbound.account,
        inbound.thread_key,
        text,
        reply_to_external_id=inbound.external_id,
        author=author,
        last_inbound_at=utcnow(),
    )


async def test_one_thread_is_one_conversation_and_replies_thread() -> None:
    context = Context()
    async with mail_server() as server, running(server, context) as channel:
        first_id, raw = mail()
        await server.append(SUPPORT, raw)
        (first,) = await context.wait_inbound(1)
        assert first.thread_key == thread_key(first_id, CUSTOMER)
        assert (first.sender_id, first.sender_name, first.account) == (CUSTOMER, "Kari", SUPPORT)
        assert first.external_id == first_id and first.text == "Hello, where is my order?"

        result = await channel.send(reply(first, "It ships today.", "reply:1"))
        with trio.fail_after(10):
            (sent,) = await server.wait_received(CUSTOMER, 1)
        ours = str(sent["Message-ID"]).strip().strip("<>")
        assert result.external_id == ours and our_thread([ours], "example.test") == first.thread_key
        assert sent["Subject"] == "Re: Order 1042"
        assert str(sent["In-Reply-To"]).strip() == f"<{first_id}>"
        assert str(sent["References"]).split() == [f"<{first_id}>"]
        assert sent["From"] == "Example Support <support@example.test>"
        assert sent["Auto-Submitted"] == "auto-replied"
        assert str(sent.get_content()).strip() == "It ships today."

        # The same outbox row again (an unknown outcome retried): the same message.
        again = await channel.send(reply(first, "It ships today.", "reply:1"))
        assert again.external_id == result.external_id

        # The customer answers our reply: the same conversation, found from References...
        _, raw = mail(text="Thanks!", references=(first_id, ours), subject="Re: Order 1042")
        await server.append(SUPPORT, raw)
        # ... and from a client that sends only In-Reply-To (our id carries the thread).
        _, raw = mail(text="One more thing", references=(ours,))
        await server.append(SUPPORT, raw)
        # A stranger who quotes the same ids gets a conversation of their own.
        _, raw = mail(STRANGER, "let me in", references=(first_id, ours))
        await server.append(SUPPORT, raw)
        received = await context.wait_inbound(4)
        assert [m.thread_key for m in received[1:3]] == [first.thread_key] * 2
        assert received[3].thread_key not in (first.thread_key, "")
        assert received[3].sender_id == STRANGER

        # A reply by an operator to the newest mail threads under the whole chain.
        await channel.send(reply(received[1], "You are welcome.", "reply:2", author="human"))
        with trio.fail_after(10):
            messages = await server.wait_received(CUSTOMER, 3)
        human = messages[-1]
        assert "Auto-Submitted" not in human
        assert str(human["References"]).split() == [
            f"<{first_id}>",
            f"<{ours}>",
            f"<{received[1].external_id}>",
        ]


async def test_mark_mode_flags_and_restart_reads_nothing_twice() -> None:
    context = Context()
    async with mail_server() as server:
        # Before the first start: one mail already read by a person, one unread.
        await server.append(SUPPORT, mail(text="old and read")[1], flags=["\\Seen"])
        await server.append(SUPPORT, mail(text="old and unread")[1])
        async with running(server, context):
            await context.wait_inbound(1)
            await server.append(SUPPORT, mail(text="new")[1])
            await context.wait_state(lambda: cursor_uid(context) == 3)  # stored and marked
        assert [m.text for m in context.inbound] == ["old and unread", "new"]
        flags = {uid: f for uid, f, _ in await server.fetch(SUPPORT)}
        assert "GatewayProcessed" not in flags[1]
        assert {"\\Seen", "GatewayProcessed"} <= set(flags[2]) and "GatewayProcessed" in flags[3]

        # Restart on the same state: nothing is read again, new mail is.
        await server.append(SUPPORT, mail(text="while stopped")[1])
        async with running(server, context):
            await context.wait_inbound(3)
            await server.append(SUPPORT, mail(text="after restart")[1])
            await context.wait_state(lambda: cursor_uid(context) == 5)
        assert [m.text for m in context.inbound][2:] == ["while stopped", "after restart"]
        assert context.duplicates == []


async def test_stored_but_not_marked_is_taken_again_as_a_duplicate() -> None:
    """The crash window: accepted, then the connection broke before the mail was marked."""

    class LosesConnectionAfterStoring(EmailChannel):
        broke = False

        async def _store(self, parsed: Any, raw: bytes) -> None:
            await super()._store(parsed, raw)
            if not self.broke:
                type(self).broke = True
                raise ConnectionResetError("simulated: the connection broke after accept")

    context = Context()
    async with mail_server() as server:
        channel = LosesConnectionAfterStoring("mail", config(server), context)
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            await server.append(SUPPORT, mail(text="only once")[1])
            await context.wait_state(lambda: cursor_uid(context) == 1)
            nursery.cancel_scope.cancel()
        assert len(context.duplicates) == 1  # taken again after the reconnect
        assert [m.text for m in context.inbound] == ["only once"]
        ((_, flags, _),) = await server.fetch(SUPPORT)
        assert "GatewayProcessed" in flags


async def test_move_mode_moves_after_storing_and_survives_uidvalidity_change() -> None:
    context = Context()
    overrides = {"processed": "move", "processed_folder": "Gateway/Done", "idle": False}
    async with mail_server() as server:
        async with running(server, context, **overrides):
            await server.append(SUPPORT, mail(text="move me")[1])
            await context.wait_inbound(1)
            await context.wait_state(lambda: cursor_uid(context) == 1)
        # The cursor is saved after the move: the folder is empty by then.
        assert await server.fetch(SUPPORT) == []
        ((_, flags, moved),) = await server.fetch(SUPPORT, folder="Gateway/Done")
        assert "\\Seen" in flags and str(moved.get_content()).strip() == "move me"

        # The server renumbered (as after a rebuilt index): what is left is taken, once.
        cursor = json.loads(context.state["cursor"])
        context.state["cursor"] = json.dumps({**cursor, "uidvalidity": cursor["uidvalidity"] + 1})
        await server.append(SUPPORT, mail(text="left in the folder")[1])
        async with running(server, context, **overrides):
            await context.wait_inbound(2)
        assert [m.text for m in context.inbound] == ["move me", "left in the folder"]


async def test_automatic_mail_is_stored_as_an_event_never_as_a_message() -> None:
    context = Context()
    async with mail_server() as server, running(server, context) as channel:
        first_id, raw = mail()
        await server.append(SUPPORT, raw)
        (first,) = await context.wait_inbound(1)
        sent = await channel.send(reply(first, "Hello!", "reply:1"))
        assert sent.external_id is not None
        bounce = (
            "From: MAILER-DAEMON@mx.test\r\nReturn-Path: <>\r\nTo: support@example.test\r\n"
            "Subject: Undelivered Mail\r\nMessage-ID: <dsn1@mx.test>\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nCould not deliver.\r\n"
            "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.test\r\n\r\n"
            "Final-Recipient: rfc822; kari@customer.test\r\nAction: failed\r\nStatus: 5.2.2\r\n"
            f"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <{sent.external_id}>\r\n"
            "--b--\r\n"
        ).encode()
        _, vacation = mail(
            text="I am away",
            references=(first_id, sent.external_id),
            extra="Auto-Submitted: auto-replied\r\n",
        )
        own = f"From: {SUPPORT}\r\nMessage-ID: <own@x>\r\n\r\nmy own mail\r\n".encode()
        for raw in (bounce, vacation, own):
            await server.append(SUPPORT, raw)
        await server.append(SUPPORT, mail(text="a real question")[1])
        await context.wait_inbound(2)
        assert [m.text for m in context.inbound] == ["Hello, where is my order?", "a real question"]
        kinds = [(e.kind, e.thread_key) for e in context.events]
        assert kinds == [
            ("bounce", first.thread_key),  # filed under the thread of the mail that bounced
            ("auto_reply", first.thread_key),
            ("own_mail", thread_key("own@x", SUPPORT)),
        ]
        bounced = context.events[0]
        assert bounced.detail["status"] == "5.2.2" and bounced.detail["reason"].startswith(
            "multipart"
        )
        assert bounced.event_key == "dsn1@mx.test"
        assert bounced.attachments[0].data == b"Could not deliver."


async def test_too_large_mail_is_a_note_and_still_marked() -> None:
    context = Context()
    async with mail_server() as server, running(server, context, max_message_bytes=2000):
        await server.append(SUPPORT, mail(text="x" * 5000)[1])
        (big,) = await context.wait_inbound(1)
        assert (
            big.text.startswith("[This email is 0.0 MB, over the 0 MB limit")
            and not big.attachments
        )
        await context.wait_state(lambda: cursor_uid(context) == 1)
        ((_, flags, _),) = await server.fetch(SUPPORT)
    assert "GatewayProcessed" in flags


async def test_plain_imap_only_on_loopback_and_starttls_polling() -> None:
    with pytest.raises(pydantic.ValidationError, match='imap_tls = "none" would send the password'):
        EmailChannel.Config.model_validate(
            {
                "plugin": "email",
                "address": SUPPORT,
                "imap_host": "mail.example.com",
                "imap_tls": "none",
                "imap_password": Secret("x"),
                "smtp_host": "smtp.example.com",
            }
        )
    with pytest.raises(pydantic.ValidationError, match="needs processed_folder"):
        EmailChannel.Config.model_validate(
            {
                "plugin": "email",
                "address": SUPPORT,
                "imap_host": "h",
                "processed": "move",
                "imap_password": Secret("x"),
                "smtp_host": "h",
            }
        )
    context = Context()
    async with mail_server() as server:
        for tls in ("none", "starttls"):
            async with running(
                server, context, imap_tls=tls, imap_port=server.imap_port, idle=False
            ):
                await server.append(SUPPORT, mail(text=f"over {tls}")[1])
                await context.wait_for(
                    lambda t=tls: any(m.text == f"over {t}" for m in context.inbound)
                )


async def test_tls_and_login_errors_name_the_fix() -> None:
    context = Context()
    async with mail_server() as server:
        untrusted = EmailChannel("mail", config(server, ca_file=None), context)
        with pytest.raises(PluginError, match=r"not trusted .*set ca_file"):
            await untrusted.run()
        wrong = EmailChannel("mail", config(server, imap_password=Secret("nope")), context)
        with pytest.raises(PluginError, match=r"refused the login .*imap_password"):
            await wrong.run()
        channel = EmailChannel("mail", config(server), context)
        summary = await channel.check()
        assert summary.startswith(f"IMAP {SUPPORT}@127.0.0.1:{server.imaps_port} (implicit, IDLE)")
        assert f"SMTP 127.0.0.1:{server.smtp_port} (starttls" in summary
        bad_smtp = EmailChannel("mail", config(server, smtp_password=Secret("nope")), context)
        with pytest.raises(PluginError, match="refused the SMTP login"):
            await bad_smtp.check()


async def test_send_failures_say_whether_the_mail_may_have_gone() -> None:
    context = Context()
    async with mail_server() as server, running(server, context) as channel:
        await server.append(SUPPORT, mail(sender="nobody@unknown.test")[1])
        (inbound,) = await context.wait_inbound(1)
        with pytest.raises(SendError) as refused:
            await channel.send(reply(inbound, "hi", "reply:9"))  # no such mailbox: 550
        assert refused.value.permanent and not refused.value.uncertain
        assert "550" in str(refused.value)
        with pytest.raises(SendError, match="no mail address is known") as unknown:
            await channel.send(Outbound(2, "k", SUPPORT, "f" * 32, "hi"))
        assert unknown.value.permanent
        down = EmailChannel("mail", config(server, smtp_port=free_port()), context)
        with pytest.raises(SendError) as no_server:
            await down.send(reply(inbound, "hi", "reply:10"))
        assert not no_server.value.uncertain and not no_server.value.permanent


async def test_mail_server_leaves_nothing_behind() -> None:
    async with mail_server() as server:
        root, pids = server.root, list(server.pids)
        assert len(pids) == 2 and root.is_dir()
    assert not root.exists()
    left = []
    for process in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            # Zombies do not count: children of Dovecot's master go to init, which reaps them.
            if os.getpgid(process.pid) in pids and process.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(process.pid)
    assert left == []
