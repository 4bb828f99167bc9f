"""Seams for features: the scheduler runs jobs on trio's clock (never overlapping, surviving a
failing run), and chat commands are answered by their feature before keywords and the agent."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway.pipeline.commands import CommandCall, Commands, parse
from gateway.scheduler import Scheduler
from gateway.testing.daemon import open_gateway
from tests.core.test_handoff import CONFIG


def test_jobs_run_on_schedule_and_a_failure_does_not_stop_them():
    clock = trio.testing.MockClock(autojump_threshold=0)
    runs: list[tuple[str, float]] = []

    async def main() -> None:
        scheduler = Scheduler()

        async def tick() -> None:
            runs.append(("tick", trio.current_time()))

        async def flaky() -> None:
            runs.append(("flaky", trio.current_time()))
            if len([r for r in runs if r[0] == "flaky"]) == 1:
                raise RuntimeError("first run fails")

        scheduler.every("tick", 10, tick)
        job = scheduler.every("flaky", 25, flaky, first_after=1)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await trio.sleep(65)
            scheduler.run_now("tick")  # at 65: runs now, then every 10 s from there
            await trio.sleep(15)
            nursery.cancel_scope.cancel()
        assert job.failures == 1 and job.runs == 3 and scheduler.failures == {"flaky": 1}
        assert job.last_error is None  # cleared by the next success

    trio.run(main, clock=clock)
    assert [t for name, t in runs if name == "tick"] == [10, 20, 30, 40, 50, 60, 65, 75]
    assert [t for name, t in runs if name == "flaky"] == [1, 26, 51, 76]


def test_a_job_interval_must_be_positive_and_names_unique():
    scheduler = Scheduler()

    async def nothing() -> None:
        pass

    with pytest.raises(ValueError, match="positive"):
        scheduler.every("x", 0, nothing)
    scheduler.every("x", 1, nothing)
    with pytest.raises(ValueError, match="twice"):
        scheduler.every("x", 1, nothing)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/mydata", ("/mydata", "")),
        ("/MyData@acme_bot please", ("/mydata", "please")),
        ("/start acme", ("/start", "acme")),
        ("  /forgetme\nnow", ("/forgetme", "now")),
        ("hello /mydata", None),
        ("/", None),
        ("", None),
    ],
)
def test_command_parsing(text, expected):
    assert parse(text) == expected


def test_command_names_are_checked():
    commands = Commands()

    async def handler(call: CommandCall) -> str | None:
        return None

    for bad in ("mydata", "/", "/two words"):
        with pytest.raises(ValueError, match="slash and a word"):
            commands.add(bad, handler)
    commands.add("/MyData", handler)
    with pytest.raises(ValueError, match="twice"):
        commands.add("/mydata", handler)


async def test_a_command_is_answered_by_its_feature_not_the_agent(tmp_path, fake_registry):
    calls: list[CommandCall] = []

    async def ping(call: CommandCall) -> str | None:
        calls.append(call)
        if call.args == "pass":
            return None  # not ours after all: the agent answers
        if call.args == "quiet":
            return ""
        return f"pong {call.args}".strip()

    async with open_gateway(CONFIG, fake_registry, tmp_path) as gw:
        gw.running.pipeline.commands.add("/ping", ping)
        channel = gw.channel("support")
        provider = gw.provider()
        await channel.deliver("c1", "u1", "/ping hello")
        (reply,) = await channel.wait_sent(1)
        assert reply.text == "pong hello" and reply.purpose == "transactional"
        assert provider.requests == []
        await channel.deliver("c1", "u1", "/ping quiet")
        await gw.wait_idle()
        assert len(channel.sent) == 1
        await channel.deliver("c1", "u1", "/ping pass")
        await channel.wait_sent(2)
        assert len(provider.requests) == 1
    first = calls[0]
    assert (first.command, first.channel, first.thread_key) == ("/ping", "support", "c1")
    assert first.contact_id > 0 and first.identity_id is not None
