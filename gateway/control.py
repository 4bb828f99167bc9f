"""The daemon's control socket: ``<data_dir>/control.sock``, mode 0600.

Command-line tools that must act inside the running daemon (``gateway keys rotate`` re-keys the
open database) send one JSON line and read one JSON line back. Who may connect is decided by the
file system: the socket belongs to the service's user in its 0700 data directory, so only that
user and root reach it, the same people who can read the key and the database anyway.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger("gateway.control")

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    """The daemon could not be reached, or refused the request (the message says why)."""


async def serve_control(
    path: Path,
    handlers: Mapping[str, Handler],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve requests ``{"op": NAME, ...}`` by ``handlers[NAME]`` until cancelled."""
    with contextlib.suppress(FileNotFoundError):
        await trio.Path(path).unlink()  # a socket left by a killed daemon
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(8)
    listener = trio.SocketListener(sock)
    task_status.started()
    try:
        await trio.serve_listeners(functools.partial(_handle, handlers=handlers), [listener])
    finally:
        with contextlib.suppress(FileNotFoundError), trio.CancelScope(shield=True):
            await trio.Path(path).unlink()


async def _handle(stream: trio.SocketStream, *, handlers: Mapping[str, Handler]) -> None:
    async with stream:
        buffer = b""
        with trio.move_on_after(30):
            while b"\n" not in buffer and len(buffer) <= MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                buffer += chunk
        try:
            request = json.loads(buffer.split(b"\n", 1)[0])
            handler = handlers[request["op"]]
        except (ValueError, KeyError, TypeError):
            reply: dict[str, Any] = {
                "ok": False,
                "error": f"unknown request; ops: {sorted(handlers)}",
            }
        else:
            try:
                reply = await handler(request)
            except Exception as exc:
                log.exception("control request %r failed", request.get("op"))
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        try:
            await stream.send_all(json.dumps(reply).encode() + b"\n")
        except trio.BrokenResourceError:
            pass


def request(path: Path, message: Mapping[str, Any], *, timeout: float = 120.0) -> dict[str, Any]:
    """Send one request to a running daemon (blocking). ControlError if none is listening."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(f"no gateway is running on {path} ({exc.strerror})") from None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                raise ControlError(f"no gateway is running on {path}") from None
            raise
        sock.sendall(json.dumps(dict(message)).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError:
        raise ControlError("the gateway closed the control connection without an answer") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "the gateway refused the request")))
    return reply
