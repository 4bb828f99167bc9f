"""The channel conformance suite against the Max plugin, in polling and webhook mode."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
import trio

from gateway.secretref import Secret
from gateway.testing import conformance
from gateway.testing.conformance import serve_channels
from gateway.testing.context import MemoryChannelContext
from gateway.testing.fake_max import DEFAULT_TOKEN, FakeMaxServer, open_fake_max
from plugins.max import MaxChannel

WEBHOOK_SECRET = "conformance-secret_1"


class MaxHarness:
    """Runs MaxChannel against FakeMaxServer; in webhook mode deliveries are POSTed to the
    channel's webhook route served by hypercorn, re-sent until a 200 as Max does."""

    def __init__(
        self,
        mode: Literal["polling", "webhook"],
        plugin_class: type[MaxChannel] = MaxChannel,
    ) -> None:
        self.plugin_class = plugin_class
        self.mode = mode
        self.server: FakeMaxServer | None = None
        self.last: dict[str, Any] | None = None
        self.webhook_statuses: list[int] = []

    def raw_config(self) -> dict[str, Any]:
        table: dict[str, Any] = {
            "plugin": "max",
            "token": Secret(DEFAULT_TOKEN, "env:MAX_TOKEN"),
            "mode": self.mode,
            # a long poll, so a channel that cannot be cancelled mid-poll fails the cancel check
            "poll_timeout": 30,
        }
        if self.server is not None:
            table["api_base"] = self.server.api_base
            table["media_hosts"] = [self.server.api_base]
        if self.mode == "webhook":
            table["webhook_secret"] = Secret(WEBHOOK_SECRET, "env:MAX_WEBHOOK_SECRET")
        return table

    @contextlib.asynccontextmanager
    async def open(self, context: MemoryChannelContext) -> AsyncIterator[MaxChannel]:
        async with open_fake_max() as server:
            self.server = server
            self.webhook_statuses = server.webhook_statuses
            config = MaxChannel.Config.model_validate(self.raw_config())
            channel = self.plugin_class(context.name, config, context)
            try:
                async with serve_channels(channel) as url:
                    context.public_url = url
                    async with trio.open_nursery() as nursery:
                        await nursery.start(channel.run)
                        yield channel
                        nursery.cancel_scope.cancel()
            finally:
                await channel.aclose()
                self.server = None

    async def deliver(self, thread_key: str, sender_id: str, text: str) -> None:
        assert self.server is not None
        self.last = self.server.push_message(int(thread_key), text, user_id=int(sender_id))
        if self.mode == "webhook":
            assert await self.server.deliver(self.last) == 200

    async def redeliver_last(self) -> None:
        assert self.server is not None and self.last is not None
        if self.mode == "webhook":
            assert await self.server.deliver(self.last) == 200  # Max's retry: the same update
        else:
            self.server.push_update(self.last)  # the same message again under a new number

    async def sent_texts(self, thread_key: str) -> list[str]:
        assert self.server is not None
        return [m.text for m in self.server.sent_to(thread_key)]


@pytest.mark.parametrize("mode", ["polling", "webhook"])
async def test_max_passes_conformance(mode: Literal["polling", "webhook"]) -> None:
    await conformance.check_channel(MaxHarness(mode))


async def test_webhook_answers_503_while_the_journal_fails() -> None:
    harness = MaxHarness("webhook")
    await conformance.check_accept_failure_not_lost(harness)
    assert harness.webhook_statuses == [503, 200]
