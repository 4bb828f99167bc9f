"""A customer writes to the support mailbox and the whole gateway answers by mail: real config
loader, SQLCipher store, pipeline, email plugin and OpenAI plugin, against a real IMAP/SMTP server
(Dovecot + an SMTP server delivering into its Maildirs) and the fake OpenAI server on 127.0.0.1."""

from __future__ import annotations

import email.message
import email.utils
from pathlib import Path

import trio

from gateway.plugin import load_registry
from gateway.testing.daemon import http_config, open_gateway, openai_agent_config, sql, table_count
from gateway.testing.fake_openai import open_fake_openai
from gateway.testing.mailserver import MailServer, open_mail_server

SUPPORT = "support@example.test"
CUSTOMER = "kari@customer.test"
ENV = {"MAIL_PASSWORD": "support-pw", "OPENAI_API_KEY": "sk-e2e"}


def config(server: MailServer, llm_base: str) -> str:
    return (
        http_config(0, public_url=False)
        + f"""
[channels.support_mail]
plugin = "email"
address = "{SUPPORT}"
display_name = "Example Support"
imap_host = "127.0.0.1"
imap_port = {server.imaps_port}
imap_password = "env:MAIL_PASSWORD"
smtp_host = "127.0.0.1"
smtp_port = {server.smtp_port}
ca_file = "{server.ca_file}"
"""
        + openai_agent_config(llm_base)
    )


def customer_mail(
    message_id: str, text: str, *, refs: tuple[str, ...] = (), headers: str = ""
) -> bytes:
    thread = ""
    if refs:
        thread = f"References: {' '.join(f'<{r}>' for r in refs)}\r\nIn-Reply-To: <{refs[-1]}>\r\n"
    return (
        f"From: Kari Nordmann <{CUSTOMER}>\r\nTo: {SUPPORT}\r\nSubject: Order 1042\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{message_id}>\r\n{thread}{headers}"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
    ).encode()


def message_id(message: email.message.EmailMessage) -> str:
    return str(message["Message-ID"]).strip().strip("<>")


async def test_mail_is_answered_by_mail_in_one_thread_and_automatic_mail_is_not(
    tmp_path: Path,
) -> None:
    async with open_mail_server({SUPPORT: ENV["MAIL_PASSWORD"], CUSTOMER: "c"}) as server:
        async with open_fake_openai() as llm:
            text = config(server, llm.base_url)
            async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
                await server.append(SUPPORT, customer_mail("q1@customer.test", "Where is it?"))
                with trio.fail_after(20):
                    (first,) = await server.wait_received(CUSTOMER, 1)
                assert str(first.get_content()).strip() == "echo: Where is it?"
                assert first["Subject"] == "Re: Order 1042"
                assert str(first["In-Reply-To"]).strip() == "<q1@customer.test>"
                assert first["Auto-Submitted"] == "auto-replied"
                ours = message_id(first)

                # The customer answers the reply: the same conversation, the model sees both.
                await server.append(
                    SUPPORT,
                    customer_mail("q2@customer.test", "Thanks!", refs=("q1@customer.test", ours)),
                )
                with trio.fail_after(20):
                    second = (await server.wait_received(CUSTOMER, 2))[1]
                assert str(second.get_content()).strip() == "echo: Thanks!"
                assert str(second["References"]).split() == [
                    "<q1@customer.test>",
                    f"<{ours}>",
                    "<q2@customer.test>",
                ]
                history = [m["content"] for m in llm.requests[-1]["messages"][1:]]
                assert history == ["Where is it?", "echo: Where is it?", "Thanks!"]

                # An out-of-office reply and a bounce: stored, never answered. The question
                # after them is answered, so by then the conversation's lane is past them.
                await server.append(
                    SUPPORT,
                    customer_mail(
                        "oof@customer.test",
                        "I am away until Monday.",
                        refs=("q1@customer.test", message_id(second)),
                        headers="Auto-Submitted: auto-replied\r\n",
                    ),
                )
                await server.append(SUPPORT, bounce_of(message_id(second)))
                await server.append(
                    SUPPORT,
                    customer_mail("q3@customer.test", "Also: invoice?", refs=("q1@customer.test",)),
                )
                with trio.fail_after(20):
                    await server.wait_received(CUSTOMER, 3)
                await gw.wait_idle()
                assert len(server.received(CUSTOMER)) == 3
                assert await table_count(gw, "conversations") == 1
                assert await table_count(gw, "journal") == 3
                events = await sql(
                    gw, "SELECT kind, json_extract(detail, '$.reason') FROM conversation_events"
                )
                assert sorted(events) == [
                    ("auto_reply", "Auto-Submitted: auto-replied"),
                    ("bounce", "multipart/report (a delivery status notification)"),
                ]
                assert await table_count(gw, "attachments") == 2  # their texts, sealed
                stored = await sql(gw, "SELECT count(*) FROM messages WHERE direction = 'in'")
                assert stored == [(3,)]

            # Restart on the same data: nothing is read (or answered) again.
            async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
                await server.append(SUPPORT, customer_mail("q4@customer.test", "Hello again"))
                with trio.fail_after(20):
                    fourth = (await server.wait_received(CUSTOMER, 4))[3]
                await gw.wait_idle()
                assert str(fourth.get_content()).strip() == "echo: Hello again"
                assert len(server.received(CUSTOMER)) == 4
                assert await table_count(gw, "journal") == 4
                assert gw.running.pipeline.counters["duplicates"] == 0
                assert await table_count(gw, "conversations") == 2  # a new thread


def bounce_of(our_id: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.customer.test (Mail Delivery System)\r\nReturn-Path: <>\r\n"
        f"To: {SUPPORT}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <bounce1@mx.customer.test>\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nMailbox full.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        f"Final-Recipient: rfc822; {CUSTOMER}\r\nAction: failed\r\nStatus: 5.2.2\r\n"
        f"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <{our_id}>\r\n--b--\r\n"
    ).encode()
