"""Keyed lanes: a step that reports LAST ends its lane without an empty look, yet work
notified while it ran is never left behind."""

from __future__ import annotations

import trio
import trio.testing

from gateway.pipeline.lanes import LAST, Lanes


async def run_once(step) -> None:
    """Notify key 1 on fresh lanes and return once they are idle again."""
    lanes = Lanes("t", step)
    async with trio.open_nursery() as nursery:
        await nursery.start(lanes.run)
        lanes.notify(1)
        await lanes.wait_idle()
        nursery.cancel_scope.cancel()


async def test_last_ends_the_lane_without_one_more_step():
    calls: list[int] = []

    async def step(key: int):
        calls.append(key)
        return LAST

    await run_once(step)
    assert calls == [1]  # True would have meant a second, empty, step


async def test_true_looks_again_until_nothing_is_left():
    queue = [1, 2, 3]
    calls = 0

    async def step(key: int):
        nonlocal calls
        calls += 1
        if not queue:
            return False
        queue.pop(0)
        return True

    await run_once(step)
    assert queue == [] and calls == 4


async def test_work_notified_during_a_last_step_still_runs():
    done: list[str] = []
    pending = ["a"]
    release = trio.Event()

    async def step(key: int):
        if not pending:
            return False
        item = pending.pop(0)
        more = bool(pending)  # read with the item, as next_pending_txn does
        if item == "a":
            await release.wait()  # "b" arrives while "a" is being handled
        done.append(item)
        return True if more else LAST

    lanes = Lanes("t", step)
    async with trio.open_nursery() as nursery:
        await nursery.start(lanes.run)
        lanes.notify(1)
        await trio.testing.wait_all_tasks_blocked()
        pending.append("b")  # committed after "a" was read as the last...
        lanes.notify(1)  # ...and notified, as every writer of new work does
        release.set()
        await lanes.wait_idle()
        assert done == ["a", "b"]
        nursery.cancel_scope.cancel()
