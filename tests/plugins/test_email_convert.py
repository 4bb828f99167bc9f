"""The email plugin's pure converters: sample mails as common clients and mail systems write them
(tests/plugins/payloads/email/*.eml), the reply we compose, and Hypothesis on odd MIME."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.messages import Attachment
from plugins.email.convert import (
    Limits,
    compose,
    our_message_id,
    our_thread,
    parse_headers_only,
    parse_mail,
    reply_subject,
    thread_key,
)
from plugins.email.text import html_to_text, strip_quoted, truncate, unflow

PAYLOADS = Path(__file__).parent / "payloads" / "email"
OUR_THREAD = "0123456789abcdef0123456789abcdef"


def sample(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


# -- person's mail -----------------------------------------------------------------------------


def test_gmail_reply_keeps_only_the_new_text_and_threads_on_the_root() -> None:
    mail = parse_mail(sample("gmail_alternative_reply.eml"))
    assert mail.text == "Thanks! The tracking number does not work in the carrier's site though."
    assert mail.automatic is None
    assert (mail.sender, mail.sender_name) == ("kari.nordmann@gmail.com", "Kari Nordmann")
    assert mail.message_id == mail.external_id == "CAF=second-Xy7u@mail.gmail.com"
    assert mail.subject == "Re: Order 1042 has not arrived"
    # References first, then In-Reply-To; the root is the first reference.
    assert mail.root == "sgw.00000000000000000000000000000000.aaaaaaaaaaaaaaaaaaaaaaaa@example.com"
    assert mail.references[-1].startswith(f"sgw.{OUR_THREAD}.")
    assert our_thread(mail.references, "example.com") == OUR_THREAD
    assert our_thread(mail.references, "elsewhere.test") is None
    assert mail.sent_at is not None and mail.sent_at.utcoffset() is not None


def test_outlook_html_only_reduced_to_text_without_the_quoted_mail() -> None:
    mail = parse_mail(sample("outlook_html_only.eml"))
    assert mail.text == (
        "Hello,\n\nCould you send the invoice again with our VAT number NL123456789B01?\n\n"
        "- Order 1042\n- Order 1043\n\n"
        "See our portal (https://contoso.nl/orders). Met vriendelijke groet,\nPiet Jansen"
    )
    assert "Dear Piet" not in mail.text and "Sent:" not in mail.text
    assert mail.sender_name == "Jansen, Piet" and mail.language == "nl-NL"


def test_flowed_russian_reply_unwrapped_signature_and_quote_cut() -> None:
    mail = parse_mail(sample("thunderbird_flowed_ru.eml"))
    assert mail.text == (
        "Здравствуйте! Когда будет доставка? Это очень длинная строка, которую "
        "Thunderbird разбил мягким переносом."
    )
    assert mail.sender_name == "Иван Петров" and mail.subject == "Re: Доставка"
    assert mail.language == "ru"


def test_attachments_carry_their_bytes_and_inline_images_count() -> None:
    mail = parse_mail(sample("attachments.eml"))
    assert mail.text == "O produto chegou partido, veja as fotos.\n\n[foto]"
    kinds = [(a.kind, a.mime_type, a.filename) for a in mail.attachments]
    assert kinds == [
        ("image", "image/png", "foto1.png"),
        ("document", "application/pdf", "fatura.pdf"),
    ]
    assert mail.attachments[1].data is not None and mail.attachments[1].data.startswith(b"%PDF")


def test_attachment_limits_leave_a_note() -> None:
    mail = parse_mail(sample("attachments.eml"), Limits(max_attachment_bytes=75, max_attachments=1))
    assert [a.filename for a in mail.attachments] == ["foto1.png"]
    assert "[attachment fatura.pdf left out: more than 1]" in mail.text
    small = parse_mail(sample("attachments.eml"), Limits(max_attachment_bytes=10))
    assert small.attachments == ()
    assert (
        "[attachment foto1.png (0.0 MB) left out: larger than max_attachment_bytes]" in small.text
    )


def test_a_mail_too_large_is_a_note_with_its_headers() -> None:
    raw = sample("attachments.eml")
    header = raw.split(b"\n\n", 1)[0]
    mail = parse_headers_only(header, 31_000_000, 25 * 1024 * 1024)
    assert mail.external_id == "att-1@example.pt" and mail.sender == "ana@example.pt"
    assert mail.text.startswith("[This email is 29.6 MB, over the 25 MB limit (max_message_bytes)")
    assert mail.attachments == ()


def test_long_text_is_cut_with_a_note() -> None:
    raw = b"From: a@b.test\r\nMessage-ID: <long@b.test>\r\n\r\n" + b"word " * 10000
    mail = parse_mail(raw, Limits(max_text_chars=500))
    assert len(mail.text) <= 500 and mail.text.endswith("more than max_text_chars]")


def test_mail_without_message_id_is_keyed_by_its_content() -> None:
    raw = b"From: a@b.test\r\nSubject: hi\r\n\r\nhello\r\n"
    first, again = parse_mail(raw), parse_mail(raw)
    assert first.message_id == "" and first.external_id.startswith("sha256:")
    assert first.external_id == again.external_id
    assert parse_mail(raw + b"!").external_id != first.external_id


# -- automatic mail ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "reason"),
    [
        ("dsn_bounce.eml", "bounce", "multipart/report (a delivery status notification)"),
        ("vacation_autoreply.eml", "auto_reply", "Auto-Submitted: auto-replied"),
        ("mailing_list.eml", "mailing_list", "Precedence: bulk"),
        ("gmail_alternative_reply.eml", None, None),
    ],
)
def test_automatic_mail_is_recognised(name: str, kind: str | None, reason: str | None) -> None:
    mail = parse_mail(sample(name))
    assert (mail.automatic, mail.reason) == (kind, reason)


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ("From: MAILER-DAEMON@mx.test", "bounce"),
        ("From: postmaster@mx.test", "bounce"),
        ("From: a@b.test\r\nReturn-Path: <>", "bounce"),
        ("From: a@b.test\r\nAuto-Submitted: auto-generated", "auto_reply"),
        ("From: a@b.test\r\nAuto-Submitted: no", None),
        ("From: a@b.test\r\nX-Autoreply: yes", "auto_reply"),
        ("From: a@b.test\r\nPrecedence: auto_reply", "auto_reply"),
        ("From: a@b.test\r\nPrecedence: list", "mailing_list"),
        ("From: a@b.test\r\nList-Id: <x.b.test>", "mailing_list"),
        ("From: noreply@shop.test", "auto_reply"),
        (
            "From: a@b.test\r\nContent-Type: multipart/report; report-type=disposition-notification"
            '; boundary="x"',
            "read_receipt",
        ),
        ("Subject: nobody sent this", "no_sender"),
        ("From: a@b.test", None),
    ],
)
def test_automatic_signs(headers: str, kind: str | None) -> None:
    raw = f"{headers}\r\nMessage-ID: <x@b.test>\r\n\r\nbody\r\n".encode()
    assert parse_mail(raw).automatic == kind


def test_bounce_keeps_the_delivery_status() -> None:
    detail = dict(parse_mail(sample("dsn_bounce.eml")).detail)
    assert detail["status"] == "5.1.1" and detail["action"] == "failed"
    assert detail["final-recipient"] == "rfc822; nobody@example.org"
    assert "User unknown" in detail["diagnostic-code"]


# -- text helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "quoted",
    [
        "On Mon, 1 Jan 2024 at 10:00, Support <s@x.test> wrote:\n> old",
        "On Mon, 1 Jan 2024 at 10:00, Support <\ns@x.test> wrote:\n> old",
        "01.01.2024 10:00, Support пишет:\n> old",
        "El lun, 1 ene 2024 a las 10:00, Support escribió:\n> old",
        "Em seg., 1 de jan. de 2024 às 10:00, Support escreveu:\n> old",
        "-----Original Message-----\nFrom: Support\nSent: Monday\nold",
        "From: Support <s@x.test>\nSent: Monday, 1 January 2024 10:00\nTo: me\nold",
        "> old line\n> more old",
        "-- \nMy Signature\n+1 555",
    ],
)
def test_strip_quoted_cuts_each_style(quoted: str) -> None:
    assert strip_quoted(f"New answer here.\n\n{quoted}") == "New answer here."


def test_strip_quoted_keeps_inline_answers_and_all_quoted_mail() -> None:
    inline = "> question one\nanswer one\n> question two\nanswer two"
    assert strip_quoted(inline) == inline
    assert strip_quoted("> only a quote") == "> only a quote"


def test_html_to_text_structure() -> None:
    markup = (
        "<html><head><title>t</title><style>p{}</style></head><body><script>x()</script>"
        "<h1>Title</h1><p>One&nbsp;two <b>three</b></p><ul><li>a</li><li>b</li></ul>"
        '<p><a href="https://x.test/p">link</a> <a href="https://x.test/q">https://x.test/q</a>'
        '</p><blockquote type="cite">old mail</blockquote><pre>  keep\n  lines</pre></body></html>'
    )
    assert html_to_text(markup) == (
        "Title\n\nOne two three\n\n- a\n- b\n\nlink (https://x.test/p) https://x.test/q\n"
        "keep\nlines"
    )
    assert "old mail" in html_to_text(markup, drop_quotes=False)


def test_unflow_and_truncate() -> None:
    assert unflow("one \ntwo\n>quoted \n>more") == "one two\n>quoted >more"
    assert unflow("a \nb", delsp=True) == "ab"
    assert unflow(" >stuffed") == ">stuffed"
    assert truncate("short", 100) == "short"


# -- replies -----------------------------------------------------------------------------------


def test_compose_threads_and_marks_automated_replies() -> None:
    mid = our_message_id(OUR_THREAD, "support\0a@x.test\0reply:7", "example.com")
    assert mid == our_message_id(OUR_THREAD, "support\0a@x.test\0reply:7", "example.com")
    assert mid != our_message_id(OUR_THREAD, "support\0a@x.test\0reply:8", "example.com")
    msg = compose(
        sender="support@example.com",
        sender_name="Example Support",
        to="kari@example.org",
        to_name="Kari",
        subject="Order 1042",
        message_id=mid,
        references=["root@x", "parent@x"],
        text="Hello Kari ✓",
        attachments=[Attachment("document", "application/pdf", "a.pdf", data=b"%PDF-1.4")],
    )
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["Subject"] == "Re: Order 1042"
    assert parsed["From"] == "Example Support <support@example.com>"
    assert parsed["In-Reply-To"] == "<parent@x>"
    assert parsed["References"] == "<root@x> <parent@x>"
    assert str(parsed["Message-ID"]).strip() == f"<{mid}>"  # long ids are folded: legal
    assert parsed["Auto-Submitted"] == "auto-replied"
    body = parsed.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "Hello Kari ✓"
    assert [a.get_filename() for a in parsed.iter_attachments()] == ["a.pdf"]
    # An operator's reply is not automatic; the root survives trimming of a long chain.
    human = compose(
        sender="s@x.test",
        sender_name=None,
        to="t@x.test",
        to_name=None,
        subject="Re: q",
        message_id="m@x.test",
        references=[f"r{i}@x" for i in range(40)],
        text="hi",
        automated=False,
    )
    refs = str(human["References"]).split()
    assert "Auto-Submitted" not in human and len(refs) == 20
    assert refs[0] == "<r0@x>" and refs[-1] == "<r39@x>" and human["Subject"] == "Re: q"


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Hello", "Re: Hello"),
        ("RE: Hello", "RE: Hello"),
        ("Aw: Hallo", "Aw: Hallo"),
        ("Ответ: да", "Ответ: да"),
        ("", "Re: (no subject)"),
    ],
)
def test_reply_subject(subject: str, expected: str) -> None:
    assert reply_subject(subject) == expected


def test_thread_key_depends_on_root_and_sender() -> None:
    key = thread_key("root@x", "A@x.test")
    assert key == thread_key("root@x", "a@x.test") and len(key) == 32
    assert key != thread_key("root@x", "b@x.test") and key != thread_key("other@x", "a@x.test")


# -- Hypothesis ----------------------------------------------------------------------------------

_header_names = st.sampled_from(
    [
        "From",
        "To",
        "Subject",
        "Message-ID",
        "References",
        "In-Reply-To",
        "Date",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "Auto-Submitted",
        "List-Id",
        "Reply-To",
        "Return-Path",
        "Precedence",
        "X-Weird",
    ]
)
_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "multipart/mixed; boundary=b",
            "multipart/alternative; boundary=b",
            "multipart/report; report-type=delivery-status; boundary=b",
            "text/html; charset=koi8-r",
            "text/plain; charset=x-unknown; format=flowed",
            "base64",
            "quoted-printable",
            "message/rfc822",
            "=?utf-8?b?!!!?=",
            "=?bogus?q?x?=",
            "<a@b> <c@d",
            "attachment; filename=",
            "Mon, 99 Foo 2024 99:99:99 +9999",
            'a@b.test, <c@d>, "x" <>',
        ]
    ),
)
_parts = st.lists(
    st.tuples(st.lists(st.tuples(_header_names, _values), max_size=4), st.binary(max_size=200)),
    max_size=4,
)


@st.composite
def mime_like(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.tuples(_header_names, _values), max_size=10))
    lines = [f"{name}: {value}" for name, value in headers]
    raw = "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n"
    for part_headers, body in draw(_parts):
        raw += b"--b\r\n" + "\r\n".join(f"{n}: {v}" for n, v in part_headers).encode(
            "utf-8", "surrogateescape"
        )
        raw += b"\r\n\r\n" + body + b"\r\n"
    if draw(st.booleans()):
        raw += b"--b--\r\n"
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mime_like(), st.binary(max_size=2000)))
def test_parse_never_raises_and_keeps_its_promises(raw: bytes) -> None:
    mail = parse_mail(raw, Limits(max_text_chars=300))
    assert mail.external_id
    assert mail.external_id == (mail.message_id or mail.external_id)
    assert " " not in mail.message_id and len(mail.external_id) <= 900
    assert mail.sender == "" or ("@" in mail.sender and mail.sender == mail.sender.lower())
    assert len(mail.text) <= 300
    assert mail.message_id not in mail.references
    assert all(a.data is not None for a in mail.attachments)
    assert mail.root
    assert (mail.automatic is None) == (mail.reason is None)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_html_and_quote_helpers_never_raise(text: str) -> None:
    html_to_text(text)
    html_to_text(f"<div><p>{text}</blockquote></table><li>{text}")
    kept = strip_quoted(text)
    assert kept.strip() or not text.strip()


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=300).filter(lambda t: t.strip()), st.text(max_size=60))
def test_compose_then_parse_round_trip(text: str, subject: str) -> None:
    msg = compose(
        sender="s@x.test",
        sender_name="S",
        to="t@y.test",
        to_name=None,
        subject=subject,
        message_id="id1@x.test",
        references=["root@y.test"],
        text=text,
    )
    mail = parse_mail(msg.as_bytes(), Limits(strip_quoted=False, max_text_chars=10_000))
    assert mail.message_id == "id1@x.test" and mail.references == ("root@y.test",)
    assert mail.sender == "s@x.test" and mail.automatic == "auto_reply"
    assert mail.text == text.replace("\r\n", "\n").replace("\r", "\n").strip()
