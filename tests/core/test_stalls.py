"""gateway/stalls.py: a call that blocks the event loop is measured, logged once a minute, and
its stack is written to stderr by faulthandler's thread while it still blocks."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import trio
import trio.testing

from gateway import stalls
from gateway.metrics import Metrics


def blocking_call_in_a_plugin(seconds: float) -> None:
    time.sleep(seconds)  # the stall under test (a synchronous call), not a wait for something


@pytest.fixture
def stderr(tmp_path: Path) -> Iterator[TextIO]:
    """A real file, as faulthandler needs (pytest's captured stderr may have no descriptor)."""
    with open(tmp_path / "stderr", "w+") as file:
        yield file


def lag_count(metrics: Metrics, above: float) -> float:
    """Observations of gateway_event_loop_lag_seconds above the largest bucket bound <= ``above``."""
    samples = metrics.loop_lag.collect()[0].samples
    total = next(s.value for s in samples if s.name.endswith("_count"))
    within = max(
        (
            s.value
            for s in samples
            if s.name.endswith("_bucket")
            and s.labels["le"] != "+Inf"
            and float(s.labels["le"]) <= above
        ),
        default=0.0,
    )
    return total - within


async def test_a_blocking_call_is_counted_logged_and_its_stack_dumped(stderr, caplog):
    metrics = Metrics()
    with caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(stalls.watch, metrics, stderr=stderr))
            await trio.testing.wait_all_tasks_blocked()  # the monitor has armed the dump
            blocking_call_in_a_plugin(stalls.STALL + 0.35)
            await trio.testing.wait_all_tasks_blocked()  # the monitor woke and measured
            nursery.cancel_scope.cancel()
        stderr.seek(0)
        dump = stderr.read()
    assert "blocking_call_in_a_plugin" in dump  # the stack while it blocked, not after
    assert "test_stalls.py" in dump
    [record] = [r for r in caplog.records if r.name == "gateway.stalls"]
    assert "blocked for at least" in record.getMessage()
    assert lag_count(metrics, 0.1) == 1


async def test_a_second_stall_within_a_minute_is_counted_but_not_logged(stderr, caplog):
    metrics = Metrics()
    with caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(stalls.watch, metrics, stderr=stderr))
            for _ in range(2):
                await trio.testing.wait_all_tasks_blocked()
                blocking_call_in_a_plugin(stalls.STALL + 0.05)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        stderr.seek(0)
        dumps = stderr.read().count("blocking_call_in_a_plugin")
    assert len([r for r in caplog.records if r.name == "gateway.stalls"]) == 1
    assert lag_count(metrics, 0.1) == 2
    assert dumps <= 1  # not armed again during the quiet minute


async def test_a_loop_that_keeps_up_is_measured_and_stays_quiet(stderr, caplog):
    metrics = Metrics()
    with caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(stalls.watch, metrics, stderr=stderr))
            for _ in range(4):  # a loop that sleeps and wakes: what the monitor sees between stalls
                await trio.sleep(stalls.TICK)
            nursery.cancel_scope.cancel()
        stderr.seek(0)
        assert stderr.read() == ""
    assert not [r for r in caplog.records if r.name == "gateway.stalls"]
    assert lag_count(metrics, 0.0) >= 1 and lag_count(metrics, 0.1) == 0


def test_nothing_is_measured_under_a_virtual_clock():
    """In the trio run of a test with a MockClock the monitor returns at once: an autojumping
    clock would otherwise spin through its ticks."""
    metrics = Metrics()

    async def under_mock_clock() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(stalls.watch, metrics)
        # the nursery closed: the monitor had returned

    trio.run(under_mock_clock, clock=trio.testing.MockClock(autojump_threshold=0))
    assert lag_count(metrics, 0.0) == 0
