"""A channel's sends in flight are capped (gateway.pipeline.ratelimit.SendLimiter.in_flight): a
burst of replies waits in the pipeline, not in the HTTP client's pool (whose queue costs
quadratic time, issue #9), and a reply waiting for a slot is still 'pending', so a crash there
resends it rather than counting it as possibly sent."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from gateway.messages import Outbound, SendResult
from gateway.plugin import Registry
from gateway.testing.daemon import open_gateway, sql
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider

CONFIG = """
[gateway]
data_dir = "data"
shutdown_grace = 5
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
[channels.support]
plugin = "narrow"
[agents.default]
provider = "model"
max_attempts = 1
[providers.model]
plugin = "fake"
"""


class NarrowChannel(FakeChannel):
    send_concurrency = 3

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.in_flight = 0
        self.most_in_flight = 0
        self.changed = trio.Condition()

    async def send(self, outbound: Outbound) -> SendResult:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        async with self.changed:
            self.changed.notify_all()
        try:
            return await super().send(outbound)
        finally:
            self.in_flight -= 1


async def test_a_burst_of_replies_keeps_at_most_the_plugins_sends_in_flight(tmp_path):
    registry = Registry()
    registry.add("channel", "narrow", NarrowChannel)
    registry.add("llm", "fake", FakeProvider)
    async with open_gateway(CONFIG, registry, tmp_path) as gw:
        channel: NarrowChannel = gw.channel("support")
        channel.send_gate = trio.Event()
        for chat in range(12):
            await channel.deliver(f"chat{chat}", f"user{chat}", "hello")
        async with channel.changed:
            while channel.in_flight < 3:
                await channel.changed.wait()
        # Three replies are out; the other nine wait for a slot, still pending.
        with trio.fail_after(10):
            while (await sql(gw, "SELECT count(*) FROM outbox"))[0][0] < 12:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        states = dict(await sql(gw, "SELECT state, count(*) FROM outbox GROUP BY state"))
        assert states == {"sending": 3, "pending": 9}
        assert channel.in_flight == 3
        channel.send_gate.set()
        sent = await channel.wait_sent(12)
        assert len(sent) == 12 and channel.most_in_flight == 3
        await gw.wait_idle()
        assert await sql(gw, "SELECT state, count(*) FROM outbox GROUP BY state") == [("sent", 12)]
