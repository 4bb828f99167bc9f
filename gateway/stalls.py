"""Notice when the event loop stops, and name the code that stopped it.

The daemon is one trio thread. A task that blocks (a synchronous call that waits on the disk or
the network, a long computation in a plugin) holds every webhook acknowledgement, reply and
timer behind it. Until now, such a stall showed up only as a latency outlier that could not be
explained (bench/README: one-off stalls of 100-170 ms in the benchmarks).

Every :data:`TICK` seconds, :func:`watch` measures how late its own wake-up came. The lateness
goes to ``/metrics`` as the histogram ``gateway_event_loop_lag_seconds``. Lateness of
:data:`STALL` or more is also logged as a warning, at most once a minute.

The monitor also re-arms faulthandler's watchdog at every tick. That watchdog is the standard
library's C thread, and it runs without the GIL. If the loop is not back within STALL seconds,
the thread writes every thread's Python stack to stderr (the journal, under systemd) *while the
block is still going on*, so the dump shows the code that blocks, not the code that ran after
it. A dump is armed again only a minute after a stall, so a slow machine cannot fill the journal.

``gateway run`` starts the monitor next to ``serve()`` (gateway/cli.py). faulthandler's
watchdog is the process's, and a test that runs ``serve()`` in its own trio run waits with
``wait_all_tasks_blocked(cushion)``, which a task ticking every 50 ms would never let happen.
Nothing is measured under a virtual clock (``trio.testing.MockClock``): it has no real
lateness, and a task that sleeps in a loop would make an autojumping clock spin.
"""

from __future__ import annotations

import faulthandler
import logging
import sys
import time
from typing import TYPE_CHECKING, TextIO

import trio

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.stalls")

TICK = 0.05
"""Seconds between the monitor's wake-ups: 20 a second, ~1 us of CPU each."""
STALL = 0.25
"""Seconds of lateness that count as a stall: logged, and the blocking stack dumped."""
QUIET = 60.0
"""Seconds after a stall before the next one is logged or dumped (all are counted)."""


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None  # pytest's capture, a StringIO: faulthandler needs a real file


async def watch(
    metrics: Metrics | None = None,
    *,
    stderr: TextIO | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until cancelled: measure the loop's lateness, log and dump stalls (module docstring)."""
    stream = sys.stderr if stderr is None else stderr
    dumps = _fileno(stream) is not None
    task_status.started()
    testing = sys.modules.get("trio.testing")  # not imported by the daemon: no MockClock then
    if testing is not None and isinstance(trio.lowlevel.current_clock(), testing.MockClock):
        return
    quiet_until = 0.0
    try:
        while True:
            before = time.monotonic()
            if dumps and before >= quiet_until:
                faulthandler.dump_traceback_later(STALL, file=stream)
            await trio.sleep(TICK)
            now = time.monotonic()
            late = max(0.0, now - before - TICK)
            if metrics is not None:
                metrics.loop_lag.observe(late)
            if late >= STALL - TICK and now >= quiet_until:
                quiet_until = now + QUIET
                if dumps:
                    faulthandler.cancel_dump_traceback_later()
                log.warning(
                    "the event loop was blocked for at least %.0f ms: webhooks, replies and "
                    "timers waited (if it lasted %.0f ms or more, the stack of the blocking code "
                    "went to stderr; see gateway_event_loop_lag_seconds in /metrics)",
                    late * 1000,
                    STALL * 1000,
                )
    finally:
        if dumps:
            faulthandler.cancel_dump_traceback_later()
