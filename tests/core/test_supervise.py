"""A crashing channel plugin is restarted with backoff and never takes the daemon down."""

from __future__ import annotations

import trio

from gateway.plugin import Registry
from gateway.testing.daemon import open_gateway
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider


class CrashingChannel(FakeChannel):
    """Fails to start twice, then crashes once while running, then behaves."""

    starts = 0
    healthy: trio.Event

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        type(self).starts += 1
        if type(self).starts <= 2:
            raise ConnectionError("platform unreachable")
        if type(self).starts == 3:
            task_status.started()
            await trio.sleep(5)
            raise RuntimeError("lost the connection")
        type(self).healthy.set()
        await super().run(task_status=task_status)


CONFIG = """
[gateway]
data_dir = "data"
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
[channels.flaky]
plugin = "crashing"
[channels.steady]
plugin = "fake"
[agents.default]
provider = "model"
[providers.model]
plugin = "fake"
"""


async def test_crashing_plugin_is_restarted_and_others_keep_working(tmp_path, autojump_clock):
    CrashingChannel.healthy = trio.Event()
    registry = Registry()
    registry.add("channel", "crashing", CrashingChannel)
    registry.add("channel", "fake", FakeChannel)
    registry.add("llm", "fake", FakeProvider)
    async with open_gateway(CONFIG, registry, tmp_path) as gw:
        steady: FakeChannel = gw.channel("steady")
        await steady.deliver("c1", "u1", "still there?")
        await steady.wait_sent(1)
        flaky: CrashingChannel = gw.channel("flaky")
        await CrashingChannel.healthy.wait()  # autojump clock: the backoff passes at once
        assert flaky.running
        await flaky.deliver("c2", "u2", "hello after the crash")
        (reply,) = await flaky.wait_sent(1)
        assert reply.text == "echo: hello after the crash"
        await gw.wait_idle()
        # (Read directly, not over HTTP: the autojump clock would time out a client waiting on
        # a database thread.)
        assert gw.running.restarts == {"channel flaky": 3}
        assert gw.running.pipeline.counters["sent"] == 2
