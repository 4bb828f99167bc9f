"""Mail <-> gateway messages, as pure functions: RFC 5322 bytes in, :class:`ParsedMail` out, and
the reply as an ``EmailMessage``. No I/O; nothing here raises on malformed mail.

Threads. A thread's root is the first Message-ID of ``References`` (else ``In-Reply-To``, else
the mail's own id); the conversation's ``thread_key`` is a hash of that root *and the sender's
address*, so a stranger who learns a thread's Message-IDs cannot write into someone else's
conversation (and read its history in the AI's answers). Our own Message-IDs carry the thread
key (``<sgw.KEY.HASH@domain>``), so a reply to one of ours finds its thread even from a client
that sends only ``In-Reply-To``; the channel accepts that key only from the thread's own
correspondent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.header
import email.message
import email.policy
import email.utils
import hashlib
import re
from collections.abc import Sequence
from email.message import EmailMessage, Message
from typing import Any

from gateway.messages import Attachment

from .text import html_to_text, strip_quoted, truncate, unflow

_ID = re.compile(r"<([^<>\s]{1,900})>")
_OURS = re.compile(r"^sgw\.([0-9a-f]{32})\.[0-9a-f]{8,64}@(.+)$")
_NO_REPLY = re.compile(
    r"^(?:mailer-daemon|postmaster|no-?reply|do-?not-?reply|bounces?)(?:[+.-].*)?$", re.I
)
_RE = re.compile(r"^\s*(?:re|aw|sv|antw|ответ|res|rif)\s*(?:\[\d+\])?\s*:", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Limits:
    max_attachment_bytes: int = 10 * 1024 * 1024
    max_attachments: int = 20
    max_text_chars: int = 20000
    strip_quoted: bool = True


@dataclasses.dataclass(frozen=True)
class ParsedMail:
    """What the channel needs of one mail."""

    message_id: str
    """Without angle brackets; "" when the mail has none."""
    external_id: str
    """The journal key: the Message-ID, else a hash of the whole mail."""
    sender: str
    """The From address, lower-cased ("" if there is none)."""
    sender_name: str | None
    reply_to: str
    """Where a reply goes: Reply-To if given, else From."""
    subject: str
    references: tuple[str, ...]
    """The parent chain, oldest first: References, then In-Reply-To if not already in it."""
    sent_at: dt.datetime | None
    text: str
    attachments: tuple[Attachment, ...]
    automatic: str | None
    """Why no one should answer it ("bounce", "auto_reply", "mailing_list", "read_receipt",
    "no_sender"), or None for a person's mail."""
    reason: str | None = None
    """The header or sign that made it automatic (for the stored event)."""
    detail: tuple[tuple[str, str], ...] = ()
    """A bounce's delivery status fields (Status, Action, Final-Recipient, Diagnostic-Code)."""
    language: str | None = None

    @property
    def root(self) -> str:
        return self.references[0] if self.references else (self.message_id or self.external_id)


def thread_key(root: str, sender: str) -> str:
    """The conversation key of a thread, for one correspondent (see the module docstring)."""
    return hashlib.sha256(f"{root}\0{sender.lower()}".encode()).hexdigest()[:32]


def our_message_id(key: str, idempotency: str, domain: str) -> str:
    """The Message-ID (no brackets) of a mail we send: the same for the same outbox key, so a
    resend after an unknown outcome is the same message to the recipient's client."""
    digest = hashlib.sha256(idempotency.encode()).hexdigest()[:24]
    return f"sgw.{key}.{digest}@{domain}"


def our_thread(references: Sequence[str], domain: str) -> str | None:
    """The thread key carried by one of our Message-IDs among ``references`` (newest first)."""
    for ref in reversed(references):
        found = _OURS.match(ref)
        if found and found.group(2).lower() == domain.lower():
            return found.group(1)
    return None


def parse_mail(raw: bytes, limits: Limits = Limits()) -> ParsedMail:
    """Parse one mail; never raises (broken parts are skipped, broken headers read raw)."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
    except Exception:  # the parser is lenient; this is for the unforeseen
        msg = EmailMessage()
    message_id = _first_id(_header(msg, "Message-ID"))
    external_id = message_id or "sha256:" + hashlib.sha256(raw).hexdigest()
    sender_name, sender = _address(_header(msg, "From"))
    if not sender:
        sender_name, sender = _address(_header(msg, "Sender"))
    _, reply_to = _address(_header(msg, "Reply-To"))
    references = [m.group(1) for m in _ID.finditer(_header(msg, "References"))][-50:]
    parent = _first_id(_header(msg, "In-Reply-To"))
    if parent and parent not in references:
        references.append(parent)
    references = [r for r in references if r != message_id]
    automatic, reason = classify(msg, sender)
    notes: list[str] = []
    text, body_parts = _body(msg, limits)
    attachments = _attachments(msg, body_parts, limits, notes)
    if notes:
        text = (text + "\n\n" + "\n".join(notes)).strip()
    return ParsedMail(
        message_id=message_id,
        external_id=external_id,
        sender=sender,
        sender_name=sender_name or None,
        reply_to=reply_to or sender,
        subject=_clean(_header(msg, "Subject"))[:500],
        references=tuple(references),
        sent_at=_date(_header(msg, "Date")),
        text=truncate(text, limits.max_text_chars),
        attachments=tuple(attachments),
        automatic=automatic,
        reason=reason,
        detail=_delivery_status(msg) if automatic == "bounce" else (),
        language=(_header(msg, "Content-Language").split(",")[0].strip()[:16] or None),
    )


def parse_headers_only(raw_headers: bytes, size: int, limit: int) -> ParsedMail:
    """A mail too large to download: its headers, and a note in place of the text."""
    parsed = parse_mail(raw_headers + b"\r\n\r\n")
    note = (
        f"[This email is {size / 1_048_576:.1f} MB, over the {limit / 1_048_576:.0f} MB limit "
        "(max_message_bytes): it was not downloaded and is still in the mailbox.]"
    )
    return dataclasses.replace(parsed, text=note, attachments=())


# -- automatic mail --------------------------------------------------------------------------------


def classify(msg: Message, sender: str) -> tuple[str | None, str | None]:
    """(kind, reason) for mail no one should answer; (None, None) for a person's mail."""
    content_type = _header(msg, "Content-Type").lower()
    if content_type.startswith("multipart/report"):
        if "disposition-notification" in content_type:
            return "read_receipt", "multipart/report; report-type=disposition-notification"
        return "bounce", "multipart/report (a delivery status notification)"
    local = sender.partition("@")[0]
    if local.lower() in ("mailer-daemon", "postmaster"):
        return "bounce", f"sent by {local.lower()}"
    if _header(msg, "Return-Path").strip() == "<>":
        return "bounce", "empty Return-Path (null sender)"
    auto = _header(msg, "Auto-Submitted").split(";")[0].strip().lower()
    if auto and auto != "no":
        return "auto_reply", f"Auto-Submitted: {auto}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Auto-Reply"):
        if _header(msg, name):
            return "auto_reply", name
    precedence = _header(msg, "Precedence").strip().lower()
    if precedence in ("auto_reply", "bulk", "junk", "list"):
        kind = "auto_reply" if precedence == "auto_reply" else "mailing_list"
        return kind, f"Precedence: {precedence}"
    if _header(msg, "List-Id") or _header(msg, "List-Unsubscribe"):
        return "mailing_list", "List-Id" if _header(msg, "List-Id") else "List-Unsubscribe"
    if not sender:
        return "no_sender", "no From address to answer"
    if _NO_REPLY.match(local):
        return "auto_reply", f"sent from a no-reply address ({local.lower()})"
    return None, None


def _delivery_status(msg: Message) -> tuple[tuple[str, str], ...]:
    wanted = ("action", "status", "final-recipient", "diagnostic-code", "remote-mta")
    found: dict[str, str] = {}
    try:
        for part in msg.walk():
            if part.get_content_type() != "message/delivery-status":
                continue
            payload = part.get_payload()
            blocks = payload if isinstance(payload, list) else []
            if isinstance(payload, str):
                blocks = [email.message_from_string(b) for b in re.split(r"\n\s*\n", payload)]
            for block in blocks:
                if not isinstance(block, Message):
                    continue
                for key, value in block.items():
                    if key.lower() in wanted and key.lower() not in found:
                        found[key.lower()] = _clean(str(value))[:300]
    except Exception:
        pass
    return tuple(found.items())


# -- bodies and attachments --------------------------------------------------------------------------


def _body(msg: Message, limits: Limits) -> tuple[str, set[int]]:
    """The text of the mail, and the ids of the parts it came from (not attachments)."""
    plain = html = None
    for part in _walk(msg):
        if part.is_multipart() or _is_attachment(part):
            continue
        kind = part.get_content_type()
        if kind == "text/plain" and plain is None:
            plain = part
        elif kind == "text/html" and html is None:
            html = part
    if plain is not None:
        text = _decoded(plain)
        params = {
            k.lower(): str(v).lower() for k, v in plain.get_params(header="content-type") or []
        }
        if params.get("format") == "flowed":
            text = unflow(text, delsp=params.get("delsp") == "yes")
        text = text.replace("\r\n", "\n").strip()
        if limits.strip_quoted:
            text = strip_quoted(text)
    elif html is not None:
        text = html_to_text(_decoded(html), drop_quotes=limits.strip_quoted)
        if limits.strip_quoted:
            text = strip_quoted(text)
    else:
        text = ""
    used = {id(p) for p in (plain, html) if p is not None}
    return text.strip(), used


def _attachments(
    msg: Message, body_parts: set[int], limits: Limits, notes: list[str]
) -> list[Attachment]:
    found: list[Attachment] = []
    for part in _walk(msg):
        if id(part) in body_parts or part.is_multipart():
            continue
        kind = part.get_content_type()
        if kind.startswith("text/") and not _is_attachment(part):
            continue  # a second text alternative
        if kind in ("message/delivery-status", "message/disposition-notification"):
            continue
        name = _filename(part, kind)
        data = _payload_bytes(part)
        if data is None:
            continue
        if len(found) >= limits.max_attachments:
            notes.append(f"[attachment {name} left out: more than {limits.max_attachments}]")
            continue
        if len(data) > limits.max_attachment_bytes:
            notes.append(
                f"[attachment {name} ({len(data) / 1_048_576:.1f} MB) left out: larger than "
                "max_attachment_bytes]"
            )
            continue
        major = kind.split("/")[0]
        found.append(
            Attachment(
                kind=major if major in ("image", "audio", "video") else "document",  # type: ignore[arg-type]
                mime_type=kind,
                filename=name,
                data=data,
            )
        )
    return found


def _walk(msg: Message) -> list[Message]:
    """Every part, depth-first, not descending into attached mails (message/rfc822)."""
    out: list[Message] = []
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack and len(out) < 500:
        part, depth = stack.pop()
        out.append(part)
        try:
            if part.get_content_type() == "message/rfc822" and part is not msg:
                continue
            children = part.get_payload() if part.is_multipart() else []
        except Exception:
            continue
        if isinstance(children, list) and depth < 20:
            stack.extend((c, depth + 1) for c in reversed(children) if isinstance(c, Message))
    return out


def _is_attachment(part: Message) -> bool:
    try:
        disposition = (part.get_content_disposition() or "").lower()
    except Exception:
        disposition = ""
    return disposition == "attachment" or (disposition == "inline" and bool(part.get_filename()))


def _filename(part: Message, kind: str) -> str:
    try:
        name = part.get_filename() or ""
    except Exception:
        name = ""
    name = re.sub(r"[\x00-\x1f/\\]+", "_", _clean(name)).strip(" .")[:200]
    if not name:
        extension = {"message/rfc822": ".eml", "text/plain": ".txt", "text/html": ".html"}
        name = "attachment" + extension.get(kind, "")
    return name


def _payload_bytes(part: Message) -> bytes | None:
    try:
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0].as_bytes(policy=email.policy.SMTP)
            return None
        data = part.get_payload(decode=True)
    except Exception:
        return None
    return data if isinstance(data, bytes) else None


def _decoded(part: Message) -> str:
    data = _payload_bytes(part) or b""
    charset = "utf-8"
    try:
        charset = part.get_content_charset() or "utf-8"
        return data.decode(charset, errors="replace")
    except (LookupError, ValueError):
        return data.decode("utf-8", errors="replace")


# -- headers -----------------------------------------------------------------------------------------


def _header(msg: Message, name: str) -> str:
    """A header as text, "" if absent; a header the policy cannot parse is read raw."""
    try:
        value = msg.get(name)
        return "" if value is None else str(value)
    except Exception:
        for key, raw in msg.raw_items():
            if key.lower() == name.lower():
                return _clean(str(raw))
        return ""


def _clean(value: str) -> str:
    try:
        if "=?" in value:
            value = str(email.header.make_header(email.header.decode_header(value)))
    except Exception:
        pass
    return re.sub(r"\s+", " ", value).strip()


def _address(value: str) -> tuple[str, str]:
    try:
        name, address = email.utils.parseaddr(value)
    except Exception:
        return "", ""
    address = address.strip().lower()
    if "@" not in address or " " in address or len(address) > 320:
        return "", ""
    return _clean(name)[:200], address


def _first_id(value: str) -> str:
    found = _ID.search(value)
    if found:
        return found.group(1)
    token = value.strip()
    return token if token and " " not in token and len(token) <= 900 else ""


def _date(value: str) -> dt.datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except Exception:
        return None
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


# -- replies -----------------------------------------------------------------------------------------


def _one_line(value: str) -> str:
    """A header value: every kind of line break (what ``str.splitlines`` breaks on) a space."""
    return " ".join(value.splitlines()).strip()


def reply_subject(subject: str) -> str:
    subject = _one_line(subject) or "(no subject)"
    return subject if _RE.match(subject) else f"Re: {subject}"


def compose(
    *,
    sender: str,
    sender_name: str | None,
    to: str,
    to_name: str | None,
    subject: str,
    message_id: str,
    references: Sequence[str],
    text: str,
    attachments: Sequence[Attachment] = (),
    automated: bool = True,
    date: dt.datetime | None = None,
) -> EmailMessage:
    """The reply as a MIME message. ``references`` ends with the mail it answers.

    ``automated`` (the AI's and the gateway's own messages, not an operator's) adds
    ``Auto-Submitted: auto-replied`` (RFC 3834) and Microsoft's ``X-Auto-Response-Suppress``, so
    the customer's out-of-office replies do not answer the AI, which keeps two robots from
    writing to each other forever."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = email.utils.formataddr((_one_line(sender_name or ""), sender))
    msg["To"] = email.utils.formataddr((_one_line(to_name or ""), to))
    msg["Subject"] = reply_subject(subject)
    msg["Date"] = email.utils.format_datetime(date or dt.datetime.now(dt.UTC))
    msg["Message-ID"] = f"<{message_id}>"
    refs = [r for r in references if r][-20:]
    if references and references[0] and references[0] not in refs:
        refs = [references[0], *refs[1:]]  # keep the root when trimming (RFC 5322 3.6.4)
    if refs:
        msg["In-Reply-To"] = f"<{refs[-1]}>"
        msg["References"] = " ".join(f"<{r}>" for r in refs)
    if automated:
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(text)
    for item in attachments:
        if item.data is None:
            continue
        maintype, _, subtype = (item.mime_type or "application/octet-stream").partition("/")
        msg.add_attachment(
            item.data,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=item.filename or "attachment",
        )
    return msg


def describe(parsed: ParsedMail) -> dict[str, Any]:
    """The stored event's detail for an automatic mail (no body: that goes sealed)."""
    detail: dict[str, Any] = {
        "reason": parsed.reason,
        "from": parsed.sender,
        "subject": parsed.subject[:200],
        "message_id": parsed.message_id or None,
    }
    detail.update(parsed.detail)
    return detail
