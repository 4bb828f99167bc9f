"""PUBLIC: a real IMAP and SMTP server on 127.0.0.1, for testing mail channels without a mock.

::

    async with open_mail_server({"support@example.test": "pw"}, catch_all="out@example.test") as mail:
        uid = await mail.append("support@example.test", raw_bytes)       # a mail arrives
        (reply,) = await mail.wait_received("customer@example.org", 1)  # what was sent by SMTP

IMAP is Dovecot (Debian ``dovecot-imapd``), started from a config generated in a fresh temporary
directory: passwd-file logins, Maildir storage, a certificate issued by a throwaway CA
(:attr:`MailServer.ca_file`, for the client's ``ca_file``), ``imap_port`` (plain, STARTTLS
offered) and ``imaps_port`` (implicit TLS). IDLE is on, and Dovecot checks for new mail every
second while idling.

SMTP is a small aiosmtpd server in its own process (:mod:`gateway.testing._mail_smtp`):
``smtp_port`` insists on STARTTLS, ``smtps_port`` is implicit TLS; both require AUTH with a
mailbox's address and password, and deliver into the recipients' Maildirs, so a message sent by
SMTP can be read back by IMAP. A recipient that has no mailbox goes to ``catch_all`` if given,
else is refused with 550.

Everything runs unprivileged: as the invoking user, or as Dovecot's ``dovecot`` user when the
tests run as root. On exit both process groups are killed and the directory removed.
Standalone: ``python -m gateway.testing.mailserver --user a@example.test:pw``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import email
import email.message
import email.policy
import json
import os
import pwd
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from gateway.testing.daemon import free_port

__all__ = ["Delivery", "MailServer", "MailServerError", "dovecot_binary", "open_mail_server"]

START_TIMEOUT = 15.0


class MailServerError(RuntimeError):
    """The test mail server cannot start (Dovecot missing, a process died)."""


def dovecot_binary() -> str:
    """Path of Dovecot's master binary; MailServerError saying what to install if absent."""
    found = shutil.which("dovecot", path=f"/usr/sbin:/usr/local/sbin:{os.environ.get('PATH', '')}")
    if found is None:
        raise MailServerError(
            "Dovecot is not installed: run scripts/install-test-deps.sh "
            "(or apt-get install dovecot-imapd)"
        )
    return found


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One copy the SMTP server delivered, in delivery order (``seq`` from 1)."""

    seq: int
    rcpt: str
    mailbox: str
    mail_from: str
    path: Path
    raw: bytes

    def message(self) -> email.message.EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed


class MailServer:
    """A running server. Built by :func:`open_mail_server`; see the module docstring."""

    host = "127.0.0.1"

    def __init__(self, root: Path, owner: tuple[int, int] | None, catch_all: str | None) -> None:
        self.root = root
        self.ca_file = root / "ca.pem"
        self.users_dir = root / "users"
        self.catch_all = catch_all
        self.imap_port = free_port()
        self.imaps_port = free_port()
        self.smtp_port = 0
        self.smtps_port = 0
        self.passwords: dict[str, str] = {}
        self.log_dir = root / "delivered"
        self.pids: list[int] = []
        """Dovecot's master and the SMTP server (each leads its own process group)."""
        self._owner = owner
        self._changed = trio.Condition()

    # -- mailboxes ------------------------------------------------------------------------------

    def add_user(self, address: str, password: str) -> None:
        """Create a mailbox, usable at once.

        One passwd-file per mailbox (``users/ADDRESS``): Dovecot checks a changed passwd-file
        at most once a second, so a mailbox added to a shared file could stay unknown."""
        address = address.lower()
        if not re.fullmatch(r"[^\s:@/]+@[^\s:@/]+", address) or ":" in password:
            raise ValueError(f"unusable test mailbox {address!r} (or a ':' in its password)")
        self.passwords[address] = password
        tmp = self.users_dir / f".{address}.tmp"
        tmp.write_text(f"{address}:{{PLAIN}}{password}::::\n")
        self._chown(tmp)
        os.replace(tmp, self.users_dir / address)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's certificate (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @contextlib.contextmanager
    def imap(self, address: str, *, folder: str | None = "INBOX") -> Iterator[Any]:
        """A logged-in ``imapclient.IMAPClient`` over implicit TLS, ``folder`` selected.
        Blocking: call it from ``trio.to_thread.run_sync`` in trio code."""
        import imapclient

        client = imapclient.IMAPClient(
            self.host, self.imaps_port, ssl=True, ssl_context=self.ssl_context(), timeout=10
        )
        try:
            client.login(address.lower(), self.passwords[address.lower()])
            if folder is not None:
                client.select_folder(folder)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    async def append(
        self, address: str, raw: bytes, *, folder: str = "INBOX", flags: Sequence[str] = ()
    ) -> int:
        """Put ``raw`` into a mailbox's folder as a new message (IMAP APPEND); return its UID."""

        def append() -> int:
            with self.imap(address, folder=None) as client:
                answer = client.append(folder, raw, flags=[f.encode() for f in flags])
            found = re.search(rb"APPENDUID \d+ (\d+)", answer)
            assert found, f"Dovecot did not report the UID: {answer!r}"
            return int(found.group(1))

        return await trio.to_thread.run_sync(append)

    async def fetch(
        self, address: str, *, folder: str = "INBOX"
    ) -> list[tuple[int, tuple[str, ...], email.message.EmailMessage]]:
        """Every message of a folder as ``(uid, flags, message)``, by UID."""

        def fetch() -> list[tuple[int, tuple[str, ...], email.message.EmailMessage]]:
            with self.imap(address, folder=folder) as client:
                uids = client.search()
                found = client.fetch(uids, ["FLAGS", "BODY.PEEK[]"]) if uids else {}
            result = []
            for uid, data in sorted(found.items()):
                flags = tuple(f.decode() for f in data[b"FLAGS"])
                message = email.message_from_bytes(data[b"BODY[]"], policy=email.policy.default)
                assert isinstance(message, email.message.EmailMessage)
                result.append((uid, flags, message))
            return result

        return await trio.to_thread.run_sync(fetch)

    def received(self, address: str | None = None) -> list[Delivery]:
        """What the SMTP server delivered (to ``address``, or to anyone), in order. Complete as
        of any SMTP client's 250: the server records a delivery before it answers."""
        found = []
        for record in sorted(self.log_dir.glob("*.json")):
            item = json.loads(record.read_text())
            if address is None or item["rcpt"] == address.lower():
                path = Path(item.pop("path"))
                found.append(Delivery(path=path, raw=path.read_bytes(), **item))
        return found

    async def wait_received(
        self, address: str | None, count: int
    ) -> list[email.message.EmailMessage]:
        """Wait until ``count`` messages were delivered to ``address`` (None: to anyone).
        Bound it with ``trio.fail_after`` in the test."""
        async with self._changed:
            while len(self.received(address)) < count:
                await self._changed.wait()
        return [d.message() for d in self.received(address)]

    # -- processes ------------------------------------------------------------------------------

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, *self._owner)

    def _write_files(self, users: Mapping[str, str]) -> None:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost", "mailserver.test")
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.root / "server.pem"))
        ca.cert_pem.write_to_path(str(self.ca_file))
        (self.root / "home").mkdir()
        self.users_dir.mkdir()
        self.log_dir.mkdir()
        for address, password in users.items():
            self.add_user(address, password)
        uid, gid = self._owner or (os.getuid(), os.getgid())
        user = pwd.getpwuid(uid).pw_name
        group = _group_name(gid)
        (self.root / "dovecot.conf").write_text(
            _DOVECOT_CONF.format(
                root=self.root,
                user=user,
                group=group,
                uid=uid,
                gid=gid,
                imap_port=self.imap_port,
                imaps_port=self.imaps_port,
            )
        )
        (self.root / "smtp.json").write_text(
            json.dumps(
                {
                    "users_dir": str(self.users_dir),
                    "home": str(self.root / "home"),
                    "catch_all": self.catch_all,
                    "log_dir": str(self.log_dir),
                    "cert_file": str(self.root / "server.pem"),
                    "uid": uid,
                    "gid": gid,
                }
            )
        )
        for path in (self.root, *self.root.iterdir(), *self.users_dir.iterdir()):
            self._chown(path)

    async def _run_dovecot(self, *, task_status: trio.TaskStatus[None]) -> None:
        options: dict[str, Any] = {}
        if self._owner is not None:
            options = {"user": self._owner[0], "group": self._owner[1], "extra_groups": []}
        process = await trio.lowlevel.open_process(
            [dovecot_binary(), "-F", "-c", str(self.root / "dovecot.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            **options,
        )
        self.pids.append(process.pid)
        try:
            assert process.stderr is not None
            async with contextlib.aclosing(_lines(process.stderr)) as lines:
                log: list[str] = []
                # Dovecot binds its listeners before it logs "starting up".
                with trio.move_on_after(START_TIMEOUT):
                    async for line in lines:
                        log.append(line)
                        if "starting up" in line:
                            break
                if not log or "starting up" not in log[-1]:
                    raise MailServerError("Dovecot did not start:\n" + "\n".join(log[-20:]))
                task_status.started()
                async for line in lines:  # keep the pipe drained; show what went wrong
                    if "Error" in line or "Fatal" in line:
                        print(f"dovecot: {line}", file=sys.stderr)
        finally:
            with trio.CancelScope(shield=True):
                await _stop_group(process)

    async def _run_smtp(self, *, task_status: trio.TaskStatus[None]) -> None:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gateway.testing._mail_smtp", str(self.root / "smtp.json")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.pids.append(process.pid)
        try:
            assert process.stdout is not None
            async with contextlib.aclosing(_lines(process.stdout)) as lines:
                with trio.move_on_after(START_TIMEOUT):
                    async for line in lines:
                        ports = json.loads(line)
                        self.smtp_port, self.smtps_port = ports["starttls_port"], ports["tls_port"]
                        break
                if not self.smtp_port:
                    raise MailServerError("the SMTP server did not start (see its stderr above)")
                task_status.started()
                async for _line in lines:  # one per delivery: wake the waiters
                    async with self._changed:
                        self._changed.notify_all()
        finally:
            with trio.CancelScope(shield=True):
                if process.stdin is not None:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await process.stdin.aclose()
                await _stop_group(process)


@contextlib.asynccontextmanager
async def open_mail_server(
    users: Mapping[str, str] | None = None, *, catch_all: str | None = None
) -> AsyncIterator[MailServer]:
    """Start Dovecot and the SMTP server with mailboxes ``users`` (address -> password); yield
    the :class:`MailServer`; stop both and remove every file on exit. ``catch_all`` names a
    mailbox (add it to ``users``) that receives SMTP mail for addresses without one."""
    dovecot_binary()
    owner = None
    if os.geteuid() == 0:
        # Dovecot as root would still run mail access as a user; run all of it as one.
        entry = pwd.getpwnam("dovecot")
        owner = (entry.pw_uid, entry.pw_gid)
    root = Path(tempfile.mkdtemp(prefix="gateway-mail-"))
    try:
        server = MailServer(root, owner, catch_all)
        server._write_files(dict(users or {}))
        async with trio.open_nursery() as nursery:
            await nursery.start(server._run_dovecot)
            await nursery.start(server._run_smtp)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncGenerator[str, None]:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode(errors="replace")


async def _stop_group(process: trio.Process) -> None:
    """SIGTERM the process group, SIGKILL it after 5 s, and SIGKILL whatever is left of it at
    the end: nothing stays behind. (Dovecot's master, signalled with its children, exits at
    once; stopping it alone takes it about a second.)"""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    with trio.move_on_after(5.0):
        await process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


_DOVECOT_CONF = """\
# Generated by gateway.testing.mailserver: a throwaway server on 127.0.0.1.
base_dir = {root}/run
state_dir = {root}/state
log_path = /dev/stderr
protocols = imap
listen = 127.0.0.1
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = {uid}
last_valid_uid = {uid}
ssl = yes
ssl_cert = <{root}/server.pem
ssl_key = <{root}/server.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {root}/users/%Lu
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%Lu
}}
mail_location = maildir:~/Maildir
mailbox_idle_check_interval = 1 secs
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0600
  }}
}}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--user", action="append", default=[], help="ADDRESS:PASSWORD (repeatable)")
    parser.add_argument("--catch-all", help="mailbox for SMTP mail to unknown addresses")
    args = parser.parse_args(argv)
    users = dict(u.split(":", 1) for u in args.user)

    async def serve() -> None:
        async with open_mail_server(users, catch_all=args.catch_all) as server:
            print(
                f"IMAP 127.0.0.1:{server.imap_port} (STARTTLS), :{server.imaps_port} (TLS); "
                f"SMTP :{server.smtp_port} (STARTTLS), :{server.smtps_port} (TLS); "
                f"CA {server.ca_file}; Ctrl-C stops",
                flush=True,
            )
            await trio.sleep_forever()

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve)


if __name__ == "__main__":
    main()
