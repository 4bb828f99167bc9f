"""The SMTP half of :mod:`gateway.testing.mailserver`, run as its own process.

``python -m gateway.testing._mail_smtp CONFIG.json`` serves SMTP on two 127.0.0.1 ports (one with
STARTTLS, one with implicit TLS), both requiring AUTH against the same passwd-file Dovecot reads,
and delivers each message into the recipient's Maildir (the ``catch_all`` user's for an unknown
recipient, else 550), so Dovecot serves it over IMAP at once.

It prints one JSON line with its ports once both listen. Each delivered copy is recorded as
``LOG_DIR/SEQ.json`` (``{"seq", "rcpt", "mailbox", "mail_from", "path"}``) after the file is in
its Maildir and before the client gets its 250, so what a client sent is on record when its send
returns; the same JSON is then printed as a line, which wakes a parent waiting for mail.

aiosmtpd runs on asyncio, which is why this is a separate process: the daemon under test and the
test itself are trio.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import logging
import os
import ssl
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


def read_users(directory: Path) -> dict[str, str]:
    """The mailboxes: one passwd-file per address, ``ADDRESS:{PLAIN}PASSWORD::::``."""
    users = {}
    for path in directory.iterdir():
        if path.name.startswith("."):
            continue
        name, _, rest = path.read_text().partition(":")
        users[name.lower()] = rest.split(":", 1)[0].removeprefix("{PLAIN}")
    return users


class MaildirDelivery:
    """aiosmtpd handler: check AUTH, accept known recipients, write each copy into a Maildir."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.users_dir = Path(config["users_dir"])
        self.home = Path(config["home"])
        self.catch_all: str | None = config.get("catch_all")
        self.log_dir = Path(config["log_dir"])
        self.owner: tuple[int, int] | None = (
            (config["uid"], config["gid"]) if os.geteuid() == 0 and "uid" in config else None
        )
        self.seq = itertools.count(1)

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            known = read_users(self.users_dir).get(data.login.decode().lower())
            if known is not None and known == data.password.decode():
                return AuthResult(success=True, auth_data=data.login.decode())
        return AuthResult(success=False, handled=False)

    def _mailbox_of(self, address: str) -> str | None:
        address = address.lower()
        users = read_users(self.users_dir)
        if address in users:
            return address
        return self.catch_all if self.catch_all in users else None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self._mailbox_of(address) is None:
            return f"550 5.1.1 <{address}>: no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        for rcpt in envelope.rcpt_tos:
            owner = self._mailbox_of(rcpt)
            if owner is None:
                continue
            seq = next(self.seq)
            received = (
                f"Received: from {session.host_name or 'client'} by mailserver.test with ESMTP "
                f"for <{rcpt}>; {email.utils.formatdate()}\r\n"
            ).encode()
            maildir = self.home / owner / "Maildir"
            for sub in ("tmp", "new", "cur"):
                (maildir / sub).mkdir(parents=True, exist_ok=True)
            if self.owner is not None:
                # We run as root and Dovecot as its own user: hand the files over.
                for path in (
                    self.home / owner,
                    maildir,
                    *(maildir / s for s in "tmp new cur".split()),
                ):
                    os.chown(path, *self.owner)
            name = f"{int(time.time())}.S{seq:08d}P{os.getpid()}.mailserver"
            tmp = maildir / "tmp" / name
            tmp.write_bytes(received + content)
            if self.owner is not None:
                os.chown(tmp, *self.owner)
            final = maildir / "new" / name
            os.replace(tmp, final)  # Maildir: write in tmp/, rename into new/
            line = json.dumps(
                {
                    "seq": seq,
                    "rcpt": rcpt.lower(),
                    "mailbox": owner,
                    "mail_from": envelope.mail_from,
                    "path": str(final),
                }
            )
            # The record first (what the parent reads once the client has its 250), then a
            # line on stdout to wake it.
            (self.log_dir / f"{seq:08d}.json").write_text(line)
            print(line, flush=True)
        return "250 2.0.0 OK: delivered"


async def serve(config: dict[str, Any]) -> None:
    handler = MaildirDelivery(config)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(config["cert_file"])
    loop = asyncio.get_running_loop()
    hostname = "mailserver.test"

    def starttls_server() -> SMTP:
        return SMTP(
            handler,
            hostname=hostname,
            tls_context=tls,
            require_starttls=True,
            auth_required=True,
            authenticator=handler.authenticate,
        )

    def implicit_tls_server() -> SMTP:
        # The whole session is TLS already: aiosmtpd only knows about STARTTLS, so it must not
        # insist on it before AUTH.
        return SMTP(
            handler,
            hostname=hostname,
            auth_required=True,
            auth_require_tls=False,
            authenticator=handler.authenticate,
        )

    plain = await loop.create_server(
        starttls_server, "127.0.0.1", int(config.get("starttls_port", 0))
    )
    wrapped = await loop.create_server(
        implicit_tls_server, "127.0.0.1", int(config.get("tls_port", 0)), ssl=tls
    )
    ports = {
        "starttls_port": plain.sockets[0].getsockname()[1],
        "tls_port": wrapped.sockets[0].getsockname()[1],
    }
    print(json.dumps(ports), flush=True)
    async with plain, wrapped:
        # The parent closes our stdin to stop us (and kills us if that is not enough).
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.read()


def main() -> None:
    # Our own choices (AUTH over implicit TLS) make aiosmtpd warn on every connection.
    warnings.simplefilter("ignore")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    config = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
