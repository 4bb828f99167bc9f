"""The gateway as a real process, for crash tests and benchmarks.

::

    async with open_daemon_process(config_path, env, log_path) as daemon:
        ...                    # daemon.ready has been set: the gateway printed that it runs
        daemon.kill()          # kill -9
        await daemon.wait()

The process's output is drained by a task of the block (a full pipe would stall the daemon) and
written to ``log_path``; ``ready`` is set when the start-up announcement appears, so nothing here
sleeps to wait.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import trio

READY_MARK = b"is running"


class DaemonProcess:
    def __init__(self, process: trio.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.ready = trio.Event()
        self.exited = trio.Event()
        self.output = bytearray()
        self._grew = trio.Condition()

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a power cut would leave the process."""
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)

    def terminate(self) -> None:
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGTERM)

    async def wait(self) -> int:
        return await self.process.wait()

    async def wait_for_output(self, text: str, count: int = 1) -> None:
        """Wait until the process has printed ``text`` ``count`` times (or raise if it exits
        first)."""
        wanted = text.encode()
        async with self._grew:
            while self.output.count(wanted) < count:
                if self.exited.is_set():
                    raise RuntimeError(f"the gateway exited before printing {text!r}")
                await self._grew.wait()

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def peak_rss_kib(self) -> int | None:
        """VmHWM: the process's peak resident set size so far (Linux)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    async def _drain(self) -> None:
        assert self.process.stdout is not None
        with self.log_path.open("ab") as log:
            async for chunk in self.process.stdout:
                log.write(chunk)
                log.flush()
                self.output += chunk
                if not self.ready.is_set() and READY_MARK in self.output:
                    self.ready.set()
                async with self._grew:
                    self._grew.notify_all()
        self.exited.set()
        async with self._grew:
            self._grew.notify_all()


@contextlib.asynccontextmanager
async def open_daemon_process(
    config_path: Path | None,
    env: Mapping[str, str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    wrapper: Sequence[str] = (),
) -> AsyncIterator[DaemonProcess]:
    """Start ``gateway run --config config_path`` (no ``--config`` when None: the embedded
    default) and wait until it is ready; raise with its output if it dies first.

    ``wrapper`` is a command the gateway's command line is appended to, e.g. ``unshare --mount
    sh -c 'mount ... && exec "$@"' sh`` to run it in a mount namespace of its own (a small
    tmpfs as its data directory). The wrapper must ``exec`` the gateway, so that ``pid``,
    ``kill()`` and ``/proc/PID/root`` (the daemon's view of the file system) are the gateway's.
    """
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    args = [*wrapper, sys.executable, "-m", "gateway", "run"]
    if config_path is not None:
        args += ["--config", str(config_path)]
    process = await trio.lowlevel.open_process(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=cwd
    )
    daemon = DaemonProcess(process, log_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon._drain)
        try:
            with trio.move_on_after(60):
                async with trio.open_nursery() as wait:

                    async def _ready() -> None:
                        await daemon.ready.wait()
                        wait.cancel_scope.cancel()

                    async def _died() -> None:
                        await daemon.exited.wait()
                        wait.cancel_scope.cancel()

                    wait.start_soon(_ready)
                    wait.start_soon(_died)
            if not daemon.ready.is_set():
                raise RuntimeError(
                    "the gateway did not start:\n" + daemon.output.decode(errors="replace")[-4000:]
                )
            yield daemon
        finally:
            with trio.CancelScope(shield=True):
                daemon.kill()
                await process.wait()
