"""The IMAP side: one blocking imapclient connection, driven from trio through worker threads.

imapclient (BSD licence; IDLE, MOVE, UIDPLUS, STARTTLS) is blocking, so every call runs in
``trio.to_thread.run_sync`` through :func:`in_thread`: on cancellation the trio side returns at
once and shuts the socket down, which makes the blocked call in the thread fail promptly instead
of holding a thread (and a server connection) for up to an IDLE period.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import imapclient
import imapclient.exceptions
import trio

from gateway.errors import PluginError

from .config import EmailConfig

T = TypeVar("T")

FETCH_BATCH = 50


class MailboxGone(Exception):
    """The connection broke; reconnect and carry on."""


async def in_thread(fn: Callable[[], T], abort: Callable[[], None]) -> T:
    """Run blocking ``fn`` in a worker thread; if cancelled, call ``abort`` (close the socket)
    so the thread ends soon, and let the cancellation through."""
    try:
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
    except trio.Cancelled:
        abort()
        raise


@dataclasses.dataclass(frozen=True)
class Mailbox:
    """The selected folder's identity and state."""

    uidvalidity: int
    uidnext: int
    can_idle: bool
    can_move: bool


class ImapSession:
    """One IMAP connection. Not thread-safe: one call at a time (the channel's run loop)."""

    def __init__(self, config: EmailConfig, where: str) -> None:
        self.config = config
        self.where = where
        self.client: imapclient.IMAPClient | None = None
        self.mailbox: Mailbox | None = None

    # -- connection -----------------------------------------------------------------------------

    def connect(self) -> Mailbox:
        """Connect, log in, select the folder (creating processed_folder if needed)."""
        config = self.config
        host, port = config.imap_host, config.port("imap")
        try:
            client = imapclient.IMAPClient(
                host,
                port,
                ssl=config.imap_tls == "implicit",
                ssl_context=config.ssl_context(),
                timeout=config.timeout,
            )
            self.client = client
            if config.imap_tls == "starttls":
                client.starttls(config.ssl_context())
            client.login(config.imap_login, config.imap_password.reveal())
            selected = client.select_folder(config.imap_folder)
            capabilities = {c.upper() for c in client.capabilities()}
            if config.processed == "move" and config.processed_folder:
                if not client.folder_exists(config.processed_folder):
                    client.create_folder(config.processed_folder)
        except imapclient.exceptions.LoginError as exc:
            raise PluginError(
                f"{self.where} the IMAP server {host}:{port} refused the login of "
                f"{config.imap_login!r} ({_text(exc)}): check imap_username and imap_password "
                "(many providers want an app password)"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise PluginError(
                f"{self.where} the certificate of {host}:{port} is not trusted "
                f"({exc.verify_message}): fix imap_host, or set ca_file to the PEM of the CA "
                "that issued it"
            ) from exc
        except imapclient.exceptions.IMAPClientError as exc:
            raise PluginError(
                f"{self.where} IMAP {host}:{port}: {_text(exc)} (check imap_folder "
                f"{config.imap_folder!r}, processed_folder and imap_tls)"
            ) from exc
        self.mailbox = Mailbox(
            uidvalidity=int(selected.get(b"UIDVALIDITY", 0)),
            uidnext=int(selected.get(b"UIDNEXT", 0)),
            can_idle=b"IDLE" in capabilities,
            can_move=b"MOVE" in capabilities,
        )
        return self.mailbox

    def abort(self) -> None:
        """From any thread: break the connection so a blocked call returns."""
        client = self.client
        if client is None:
            return
        with contextlib.suppress(Exception):
            client.socket().shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            client.socket().settimeout(2.0)
            client.logout()
        with contextlib.suppress(Exception):
            client.shutdown()

    def _client(self) -> imapclient.IMAPClient:
        if self.client is None:
            raise MailboxGone("not connected")
        return self.client

    # -- reading --------------------------------------------------------------------------------

    def new_uids(self, after: int) -> list[int]:
        """UIDs above ``after``, not flagged \\Deleted, ascending."""
        client = self._client()
        client.noop()  # lets the server report mail that arrived since the last command
        found = client.search(["UID", f"{after + 1}:*", "NOT", "DELETED"])
        return sorted(u for u in found if u > after)  # "n:*" always matches the highest UID

    def unprocessed_uids(self, *, only_unseen: bool) -> list[int]:
        """First start or a UIDVALIDITY change: what has not been handled by us (not yet
        keyword-marked in mark mode; everything left in the folder in move mode)."""
        criteria: list[Any] = ["NOT", "DELETED"]
        if only_unseen:
            criteria.append("UNSEEN")
        if self.config.processed == "mark":
            criteria += ["UNKEYWORD", self.config.processed_keyword]
        return sorted(self._client().search(criteria))

    def sizes(self, uids: list[int]) -> dict[int, int]:
        answer = self._client().fetch(uids, ["RFC822.SIZE"])
        return {uid: int(data.get(b"RFC822.SIZE", 0)) for uid, data in answer.items()}

    def fetch(self, uid: int, *, headers_only: bool = False) -> bytes | None:
        """The mail (or just its header); None if it vanished meanwhile (expunged elsewhere)."""
        item = "BODY.PEEK[HEADER]" if headers_only else "BODY.PEEK[]"
        answer = self._client().fetch([uid], [item])
        data = answer.get(uid, {})
        raw = data.get(b"BODY[HEADER]" if headers_only else b"BODY[]")
        return bytes(raw) if raw is not None else None

    # -- marking --------------------------------------------------------------------------------

    def mark_processed(self, uids: list[int]) -> None:
        """After the mail is stored: flag it (\\Seen + keyword) or move it."""
        client = self._client()
        config = self.config
        if config.processed == "mark":
            client.add_flags(uids, [b"\\Seen", config.processed_keyword.encode()], silent=True)
            return
        assert config.processed_folder is not None
        client.add_flags(uids, [b"\\Seen"], silent=True)
        if self.mailbox is not None and self.mailbox.can_move:
            client.move(uids, config.processed_folder)
            return
        client.copy(uids, config.processed_folder)
        client.add_flags(uids, [b"\\Deleted"], silent=True)
        if b"UIDPLUS" in {c.upper() for c in client.capabilities()}:
            client.uid_expunge(uids)
        else:
            client.expunge()

    # -- waiting --------------------------------------------------------------------------------

    def idle_wait(self, timeout: float) -> bool:
        """IDLE until the server reports a change or ``timeout`` passes; True on a change."""
        client = self._client()
        client.idle()
        try:
            responses = client.idle_check(timeout=timeout)
        finally:
            client.idle_done()
        return bool(responses)

    def summary(self) -> str:
        """For ``gateway doctor``: how many messages the folder holds."""
        status = self._client().folder_status(self.config.imap_folder, ["MESSAGES", "UNSEEN"])
        return (
            f"{int(status.get(b'MESSAGES', 0))} messages ({int(status.get(b'UNSEEN', 0))} unseen) "
            f"in {self.config.imap_folder}"
        )


def _text(exc: BaseException) -> str:
    text = str(exc)
    found = re.match(r"^b['\"](.*)['\"]$", text)
    return found.group(1) if found else text


def is_connection_error(exc: BaseException) -> bool:
    """Network trouble worth a reconnect (not a refused login or a bad config)."""
    return isinstance(
        exc,
        OSError
        | EOFError
        | MailboxGone
        | imapclient.exceptions.IMAPClientAbortError
        | imapclient.exceptions.IMAPClientError,
    ) and not isinstance(exc, PluginError)
