"""sd_notify: tell systemd (``Type=notify``) that the gateway is ready, stopping, or still alive.

A tiny client of the protocol in sd_notify(3): one datagram of ``KEY=VALUE`` lines to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).
Without ``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op. A failed send is logged
and never raised: the daemon must not stop because its supervisor could not be told something.

Sends are non-blocking (``MSG_DONTWAIT``) so they never stall the event loop; systemd reads its
notification socket promptly and gives it a large receive buffer, so a dropped message means
something is already badly wrong and the log says so.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

import trio

log = logging.getLogger("gateway.notify")


def notify(message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (newline-separated ``KEY=VALUE`` assignments) to ``$NOTIFY_SOCKET``.

    Returns whether it was sent; False when not under systemd or on any error (logged).
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        # systemd 254+ may also hand out vsock: addresses (VMs); not needed on a host.
        log.warning("sd_notify: unsupported NOTIFY_SOCKET address %r; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.send(message.encode(), socket.MSG_DONTWAIT)
    except Exception as exc:  # never into the daemon: see the module docstring
        log.warning("sd_notify: could not send %r to %s: %s", message, env["NOTIFY_SOCKET"], exc)
        return False
    return True


def _status(text: str) -> str:
    # One line: a newline would end the STATUS= assignment and start another.
    return "STATUS=" + " ".join(text.split())


def notify_ready(status: str = "", *, environ: Mapping[str, str] | None = None) -> bool:
    """READY=1: start-up finished (systemd then starts units ordered after this one)."""
    return notify("READY=1\n" + _status(status) if status else "READY=1", environ=environ)


def notify_stopping(status: str = "", *, environ: Mapping[str, str] | None = None) -> bool:
    """STOPPING=1: shutdown began (the drain may take up to ``shutdown_grace``)."""
    return notify("STOPPING=1\n" + _status(status) if status else "STOPPING=1", environ=environ)


def notify_status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """STATUS=: the one line ``systemctl status`` shows."""
    return notify(_status(text), environ=environ)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3)
    advises), or None when systemd asked for no watchdog, or asked another process for it."""
    env = os.environ if environ is None else environ
    if not env.get("NOTIFY_SOCKET"):
        return None
    pid = env.get("WATCHDOG_PID", "")
    try:
        if pid and int(pid) != os.getpid():
            return None
        usec = int(env.get("WATCHDOG_USEC", "") or 0)
    except ValueError:
        log.warning("sd_notify: ignoring malformed WATCHDOG_USEC/WATCHDOG_PID")
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


async def run_watchdog(
    *,
    environ: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send WATCHDOG=1 every ``WATCHDOG_USEC/2`` while the event loop runs; return at once when
    no watchdog is wanted. A ping comes from a trio task, so a loop blocked for longer than
    ``WatchdogSec=`` (a sync call that hangs) stops the pings and systemd restarts the gateway."""
    interval = watchdog_interval(environ)
    task_status.started()
    if interval is None:
        return
    log.debug("sd_notify: watchdog ping every %.3fs", interval)
    while True:
        notify("WATCHDOG=1", environ=environ)
        await trio.sleep(interval)
