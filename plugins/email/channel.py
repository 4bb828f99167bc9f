"""The email channel: new mail in one IMAP folder becomes conversations; replies go by SMTP.

Receiving (``run``): connect, select the folder, then take every message above the stored UID
high-water mark in UID order: download, parse (in the worker thread), store it, and only then
mark it (\\Seen + keyword) or move it, and only then advance the mark. A crash anywhere in
between re-reads the message after a restart and the journal drops the duplicate (its key is
the Message-ID), so nothing is lost and nothing is answered twice. The mark is kept per mailbox
and UIDVALIDITY; when the server renumbers (UIDVALIDITY changes) the folder is searched for
what we have not marked or moved yet. Then IDLE until the server reports new mail, where it
offers IDLE, else a poll every ``poll_interval`` seconds.

Automatic mail (bounces, out-of-office replies, mailing lists, read receipts) is stored as a
conversation event (``record_event``), not as a message: the core answers every message it
journals, and an event is never answered. Its text is kept as a sealed attachment.

Sending (``send``): one SMTP session per reply, threaded with In-Reply-To/References from the
thread's state; the Message-ID comes from the outbox idempotency key, so a resend after an
unknown outcome is the same message.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Any

import trio

from gateway.backoff import Backoff
from gateway.errors import PluginError, SendError, StoreError
from gateway.messages import Attachment, Event, Inbound, Outbound, SendResult
from gateway.plugin import ChannelContext

from . import convert
from .config import EmailConfig
from .convert import Limits, ParsedMail
from .imap import FETCH_BATCH, ImapSession, Mailbox, in_thread, is_connection_error
from .smtp import SmtpSession

RECENT_PER_THREAD = 5
"""How many received Message-IDs (with their references) a thread's state keeps for threading."""


@dataclasses.dataclass
class Cursor:
    """The UID high-water mark: every UID up to ``uid`` of this mailbox is stored and marked."""

    mailbox: str
    uidvalidity: int
    uid: int


class EmailChannel:
    """A mailbox as a gateway channel. See :class:`EmailConfig` for its settings."""

    Config = EmailConfig

    def __init__(
        self, name: str, config: EmailConfig | dict[str, Any], context: ChannelContext
    ) -> None:
        self.name = name
        self.config = (
            config if isinstance(config, EmailConfig) else EmailConfig.model_validate(config)
        )
        self.context = context
        self.log = context.log
        self.where = f"[channels.{name}]"
        self.account = self.config.address
        self.limits = Limits(
            max_attachment_bytes=self.config.max_attachment_bytes,
            max_attachments=self.config.max_attachments,
            max_text_chars=self.config.max_text_chars,
            strip_quoted=self.config.strip_quoted,
        )
        c = self.config
        self.mailbox_name = f"{c.imap_login}@{c.imap_host}:{c.port('imap')}/{c.imap_folder}"

    # -- identities (a subclass may change their shape, as the conformance harness does) --------

    def thread_key_for(self, root: str, sender: str) -> str:
        return convert.thread_key(root, sender)

    def sender_id_for(self, address: str) -> str:
        return address

    # -- receiving ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect (a failure here raises: the supervisor retries), then receive until
        cancelled, reconnecting with backoff when the connection breaks."""
        session: ImapSession | None = await self._connect()
        task_status.started()
        backoff = Backoff()
        try:
            while True:
                try:
                    if session is None:
                        session = await self._connect()
                    await self._receive(session, backoff)
                except PluginError:
                    raise
                except Exception as exc:
                    if not is_connection_error(exc):
                        raise
                    self.log.warning(
                        "%s IMAP connection lost (%s: %s); reconnecting",
                        self.where,
                        type(exc).__name__,
                        exc,
                    )
                    _drop(session)
                    session = None
                    await backoff.wait()
        finally:
            _drop(session)

    async def _connect(self) -> ImapSession:
        session = ImapSession(self.config, self.where)
        try:
            await in_thread(session.connect, session.abort)
        except PluginError:
            _drop(session)
            raise
        except BaseException as exc:
            _drop(session)
            if isinstance(exc, Exception) and is_connection_error(exc):
                raise PluginError(
                    f"{self.where} cannot reach IMAP {self.config.imap_host}:"
                    f"{self.config.port('imap')} ({type(exc).__name__}: {exc}): check imap_host, "
                    "imap_port and imap_tls"
                ) from exc
            raise
        return session

    async def _receive(self, session: ImapSession, backoff: Backoff) -> None:
        mailbox = session.mailbox
        assert mailbox is not None
        while True:
            try:
                cursor = await self._catch_up(session, mailbox)
                await self._follow(session, mailbox, cursor, backoff)
            except StoreError as exc:
                # Not marked, the mark not advanced: the same mail is taken again.
                self.log.warning(
                    "%s could not store a mail (%s); it stays in the mailbox, retrying",
                    self.where,
                    exc,
                )
                await backoff.wait()

    async def _follow(
        self, session: ImapSession, mailbox: Mailbox, cursor: Cursor, backoff: Backoff
    ) -> None:
        """Take new mail above the cursor as it comes, until something fails."""
        while True:
            uids = await in_thread(lambda: session.new_uids(cursor.uid), session.abort)
            for start in range(0, len(uids), FETCH_BATCH):
                batch = uids[start : start + FETCH_BATCH]
                sizes = await in_thread(functools.partial(session.sizes, batch), session.abort)
                for uid in batch:
                    await self._take(session, uid, sizes.get(uid, 0))
                    cursor.uid = uid
                    await self._save_cursor(cursor)
            backoff.reset()
            if uids:
                continue
            if self.config.idle and mailbox.can_idle:
                await in_thread(lambda: session.idle_wait(self.config.idle_timeout), session.abort)
            else:
                await trio.sleep(self.config.poll_interval)

    async def _catch_up(self, session: ImapSession, mailbox: Mailbox) -> Cursor:
        """The stored cursor, or after a first start / UIDVALIDITY change, a new one once the
        mail we have not handled yet is taken."""
        cursor = await self._load_cursor()
        if cursor is not None and cursor.mailbox == self.mailbox_name:
            if cursor.uidvalidity == mailbox.uidvalidity:
                return cursor
            self.log.warning(
                "%s UIDVALIDITY of %s changed (%d -> %d): the server renumbered its mail; "
                "taking every message not yet marked or moved (stored ones are recognised)",
                self.where,
                self.mailbox_name,
                cursor.uidvalidity,
                mailbox.uidvalidity,
            )
            only_unseen = False
        else:
            # A first start takes the unread mail; what was read before the gateway is left.
            only_unseen = True
        uids = await in_thread(
            lambda: session.unprocessed_uids(only_unseen=only_unseen), session.abort
        )
        for uid in uids:
            await self._take(session, uid, None)
        cursor = Cursor(self.mailbox_name, mailbox.uidvalidity, max([mailbox.uidnext - 1, *uids]))
        await self._save_cursor(cursor)
        return cursor

    async def _take(self, session: ImapSession, uid: int, size: int | None) -> None:
        """Store one mail, then mark or move it. StoreError leaves it untouched."""
        limit = self.config.max_message_bytes

        def fetch() -> tuple[ParsedMail, bytes] | None:
            known = size if size is not None else session.sizes([uid]).get(uid, 0)
            too_large = known > limit
            raw = session.fetch(uid, headers_only=too_large)
            if raw is None:
                return None
            if too_large:
                return convert.parse_headers_only(raw, known, limit), raw
            return convert.parse_mail(raw, self.limits), raw

        found = await in_thread(fetch, session.abort)
        if found is None:
            return  # expunged by someone else meanwhile
        parsed, raw = found
        await self._store(parsed, raw)
        await in_thread(lambda: session.mark_processed([uid]), session.abort)

    async def _store(self, parsed: ParsedMail, raw: bytes) -> None:
        automatic = parsed.automatic
        if parsed.sender == self.config.address:
            automatic = "own_mail"  # a copy of our own: never answer ourselves
        if automatic is not None:
            await self.context.record_event(self._event(parsed, raw, automatic))
            return
        key = await self._thread_of(parsed)
        await self._remember(key, parsed)
        await self.context.accept(
            Inbound(
                account=self.account,
                external_id=parsed.external_id,
                thread_key=key,
                sender_id=self.sender_id_for(parsed.sender),
                text=parsed.text,
                sender_name=parsed.sender_name,
                language=parsed.language,
                sent_at=parsed.sent_at,
                attachments=parsed.attachments,
                metadata={"subject": parsed.subject, "message_id": parsed.message_id},
            )
        )

    def _event(self, parsed: ParsedMail, raw: bytes, kind: str) -> Event:
        # A bounce names our message (in its References or the returned headers): file it in
        # that thread. Otherwise the thread is the automatic mail's own.
        ours = convert.our_thread(parsed.references, self.config.domain) or _our_thread_in(
            raw, self.config.domain
        )
        sender = parsed.sender or "unknown@invalid"
        key = ours or self.thread_key_for(parsed.root, sender)
        text = parsed.text.encode()
        attachments = (
            Attachment("document", "text/plain", "message.txt", data=text),
            *parsed.attachments,
        )
        return Event(
            account=self.account,
            thread_key=key,
            sender_id=self.sender_id_for(sender),
            kind=kind,
            event_key=parsed.external_id,
            detail=convert.describe(parsed),
            sender_name=parsed.sender_name,
            attachments=attachments if text else tuple(parsed.attachments),
        )

    async def _thread_of(self, parsed: ParsedMail) -> str:
        ours = convert.our_thread(parsed.references, self.config.domain)
        if ours is not None:
            state = await self._thread_state(ours)
            if state is not None and state.get("contact") == parsed.sender:
                return ours
        return self.thread_key_for(parsed.root, parsed.sender)

    async def _remember(self, key: str, parsed: ParsedMail) -> None:
        """Where replies in this thread go and what they thread on (before accept: a reply can
        only be sent after the message is stored)."""
        state = await self._thread_state(key) or {}
        recent = [r for r in state.get("recent", []) if r[0] != parsed.message_id]
        recent.append([parsed.message_id, list(parsed.references)])
        state.update(
            contact=parsed.sender,
            to=parsed.reply_to,
            name=parsed.sender_name,
            subject=state.get("subject") or parsed.subject,
            root=state.get("root") or parsed.root,
            recent=recent[-RECENT_PER_THREAD:],
        )
        await self.context.set_state(f"thread:{key}", json.dumps(state, ensure_ascii=False))

    async def _thread_state(self, key: str) -> dict[str, Any] | None:
        value = await self.context.get_state(f"thread:{key}")
        return json.loads(value) if value else None

    async def _load_cursor(self) -> Cursor | None:
        value = await self.context.get_state("cursor")
        if not value:
            return None
        data = json.loads(value)
        return Cursor(str(data["mailbox"]), int(data["uidvalidity"]), int(data["uid"]))

    async def _save_cursor(self, cursor: Cursor) -> None:
        await self.context.set_state("cursor", json.dumps(dataclasses.asdict(cursor)))

    def blueprint(self) -> None:
        """No HTTP routes: mail comes by IMAP."""
        return None

    # -- sending --------------------------------------------------------------------------------

    async def send(self, outbound: Outbound) -> SendResult:
        """Send the reply to the thread's correspondent, threaded; SendError on failure."""
        state = await self._thread_state(outbound.thread_key)
        if state is None or not state.get("to"):
            raise SendError(
                f"no mail address is known for thread {outbound.thread_key} (no mail of it was "
                "received by this channel)",
                permanent=True,
            )
        message_id = convert.our_message_id(
            outbound.thread_key,
            f"{self.name}\0{outbound.account}\0{outbound.idempotency_key}",
            self.config.domain,
        )
        message = convert.compose(
            sender=self.config.address,
            sender_name=self.config.display_name,
            to=state["to"],
            to_name=state.get("name"),
            subject=state.get("subject") or "",
            message_id=message_id,
            references=_chain(state, outbound.reply_to_external_id),
            text=outbound.text,
            attachments=outbound.attachments,
            automated=outbound.author != "human",
        )
        smtp = SmtpSession(self.config, self.where)
        await in_thread(lambda: smtp.send(message, self.config.address, state["to"]), smtp.abort)
        return SendResult(external_id=message_id)

    async def check(self) -> str:
        """For ``gateway doctor``: log in to IMAP (select the folder) and to SMTP."""
        session = await self._connect()
        try:
            mailbox = session.mailbox
            assert mailbox is not None
            summary = await in_thread(session.summary, session.abort)
        except Exception as exc:
            raise PluginError(f"{self.where} IMAP: {type(exc).__name__}: {exc}") from exc
        finally:
            _drop(session)
        smtp = SmtpSession(self.config, self.where)
        smtp_summary = await in_thread(smtp.check, smtp.abort)
        c = self.config
        idle = "IDLE" if mailbox.can_idle else f"no IDLE: polling every {c.poll_interval:g} s"
        return (
            f"IMAP {c.imap_login}@{c.imap_host}:{c.port('imap')} ({c.imap_tls}, {idle}): "
            f"{summary}; {smtp_summary}"
        )

    async def aclose(self) -> None:
        """Nothing to release (a connection lives only inside run or one send)."""
        await trio.lowlevel.checkpoint()


def _chain(state: dict[str, Any], reply_to: str | None) -> list[str]:
    """References for a reply to ``reply_to`` (default: the newest mail of the thread)."""
    recent = state.get("recent") or []
    entry = next((r for r in recent if r[0] and r[0] == reply_to), None)
    if entry is None and recent:
        entry = recent[-1]
    if entry is None or not entry[0]:
        root = state.get("root")
        return [root] if root and not root.startswith("sha256:") else []
    return [*entry[1], entry[0]]


_OUR_ID_IN_RAW = re.compile(rb"<sgw\.([0-9a-f]{32})\.[0-9a-f]{8,64}@([^<>\s]+)>")


def _our_thread_in(raw: bytes, domain: str) -> str | None:
    for found in _OUR_ID_IN_RAW.finditer(raw[: 4 * 1024 * 1024]):
        if found.group(2).decode(errors="replace").lower() == domain.lower():
            return found.group(1).decode()
    return None


def _drop(session: ImapSession | None) -> None:
    """Close without waiting for the server (no LOGOUT round trip): safe while cancelled."""
    if session is None:
        return
    session.abort()
    client, session.client = session.client, None
    if client is not None:
        try:
            client.shutdown()
        except Exception:  # the socket is gone either way
            pass
