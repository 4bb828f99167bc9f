"""Periodic jobs in the daemon's root nursery: retention sweeps, request deadlines, backups, the
audit head in the system log.

A job is an async function of no arguments, run every ``interval`` seconds (the first run after
``first_after``, default one interval). Runs of one job never overlap; a run that raises is
logged with its name and the job runs again at its next time (a failing sweep must not stop the
daemon, nor silently stop sweeping: ``Scheduler.failures`` counts, /status shows it). Timers are
trio's, so tests drive them with ``trio.testing.MockClock``.

Jobs are registered in :func:`gateway.jobs.build_jobs` (one line per feature), which the daemon
calls at start-up with its :class:`gateway.services.Services`. Long jobs work in bounded batches
through ``Store.write`` so message traffic interleaves with them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("gateway.scheduler")

JobFn = Callable[[], Awaitable[object]]


@dataclasses.dataclass
class Job:
    name: str
    interval: float
    fn: JobFn
    first_after: float | None = None
    runs: int = 0
    failures: int = 0
    last_error: str | None = None
    running: bool = False
    wake: trio.Event = dataclasses.field(default_factory=trio.Event)


class Scheduler:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def every(
        self, name: str, interval: float, fn: JobFn, *, first_after: float | None = None
    ) -> Job:
        if interval <= 0:
            raise ValueError(f"job {name!r}: interval must be positive, not {interval!r}")
        if name in self.jobs:
            raise ValueError(f"job {name!r} is registered twice")
        job = Job(name, interval, fn, first_after)
        self.jobs[name] = job
        return job

    def run_now(self, name: str) -> None:
        """Wake a job before its time (e.g. an operator pressed "sweep now")."""
        self.jobs[name].wake.set()

    @property
    def failures(self) -> dict[str, int]:
        return {name: job.failures for name, job in self.jobs.items() if job.failures}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for job in self.jobs.values():
                nursery.start_soon(self._loop, job)
            task_status.started()

    async def _loop(self, job: Job) -> None:
        delay = job.interval if job.first_after is None else job.first_after
        while True:
            with trio.move_on_after(delay):
                await job.wake.wait()
            job.wake = trio.Event()
            job.running = True
            try:
                await job.fn()
                job.runs += 1
                job.last_error = None
            except Exception as exc:  # one job's failure must not stop the daemon
                job.failures += 1
                job.last_error = f"{type(exc).__name__}: {exc}"
                log.exception(
                    "scheduled job %r failed (it runs again in %.0fs)", job.name, job.interval
                )
            finally:
                job.running = False
            delay = job.interval
