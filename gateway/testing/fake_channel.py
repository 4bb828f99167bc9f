"""FakeChannel: an in-process channel plugin for pipeline and daemon tests, with no platform.

The "platform side" is plain methods: ``await channel.deliver(thread, sender, text)`` acts as a
user writing (and returns the journal's answer), ``channel.sent`` lists what the gateway sent,
``await channel.wait_sent(n)`` waits for replies, and ``fail_next`` makes sends fail the way
platforms do.
"""

from __future__ import annotations

import itertools
from typing import Any

import trio
from pydantic import Field

from gateway.errors import SendError
from gateway.messages import Attachment, Inbound, Outbound, SendResult
from gateway.plugin import Accepted, ChannelConfig, ChannelContext


class FakeChannel:
    class Config(ChannelConfig):
        account: str = Field("fake-bot", description="The account id the fake platform reports.")

    def __init__(self, name: str, config: Config, context: ChannelContext) -> None:
        self.name = name
        self.config = config
        self.context = context
        self.sent: list[Outbound] = []
        self._ids = itertools.count(1)
        self._failures: list[SendError] = []
        self._sent_changed = trio.Condition()
        self.running = False
        self.send_gate: trio.Event | None = None
        """If set, every send waits for this event first (to hold a send in flight)."""
        self.at_gate = trio.Event()
        """Set once a send is waiting at ``send_gate``."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.running = False

    def blueprint(self) -> Any:
        return None

    async def deliver(
        self,
        thread_key: str,
        sender_id: str,
        text: str,
        *,
        external_id: str | None = None,
        attachments: tuple[Attachment, ...] = (),
    ) -> Accepted:
        inbound = Inbound(
            account=self.config.account,
            external_id=external_id or f"m{next(self._ids)}",
            thread_key=thread_key,
            sender_id=sender_id,
            text=text,
            attachments=attachments,
        )
        return await self.context.accept(inbound)

    def fail_next(self, error: SendError, count: int = 1) -> None:
        self._failures.extend([error] * count)

    async def send(self, outbound: Outbound) -> SendResult:
        if self.send_gate is not None:
            self.at_gate.set()
            await self.send_gate.wait()
        await trio.lowlevel.checkpoint()
        if self._failures:
            raise self._failures.pop(0)
        self.sent.append(outbound)
        async with self._sent_changed:
            self._sent_changed.notify_all()
        return SendResult(external_id=f"out{len(self.sent)}")

    async def wait_sent(self, count: int) -> list[Outbound]:
        async with self._sent_changed:
            while len(self.sent) < count:
                await self._sent_changed.wait()
        return list(self.sent)

    def texts(self, thread_key: str) -> list[str]:
        return [o.text for o in self.sent if o.thread_key == thread_key]
