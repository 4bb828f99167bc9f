"""The channel conformance suite against the Twilio plugin and the fake Twilio: deliveries are
signed webhooks re-sent until a 2xx, as Twilio does."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from gateway.secretref import Secret
from gateway.testing import conformance
from gateway.testing.conformance import serve_channels
from gateway.testing.context import MemoryChannelContext
from gateway.testing.fake_twilio import (
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    DEFAULT_NUMBER,
    FakeTwilioServer,
    open_fake_twilio,
)
from plugins.twilio import TwilioChannel

Params = dict[str, str]


class TwilioHarness:
    def __init__(self, plugin_class: type[TwilioChannel] = TwilioChannel) -> None:
        self.plugin_class = plugin_class
        self.fake: FakeTwilioServer | None = None
        self.last: Params | None = None

    def raw_config(self) -> dict[str, Any]:
        table: dict[str, Any] = {
            "plugin": "twilio",
            "account_sid": DEFAULT_ACCOUNT_SID,
            "auth_token": Secret(DEFAULT_AUTH_TOKEN, "env:TWILIO_AUTH_TOKEN"),
            "from_number": DEFAULT_NUMBER,
        }
        if self.fake is not None:
            table["api_base"] = self.fake.api_base
        return table

    @contextlib.asynccontextmanager
    async def open(self, context: MemoryChannelContext) -> AsyncIterator[TwilioChannel]:
        async with open_fake_twilio() as fake:
            self.fake = fake
            config = TwilioChannel.Config.model_validate(self.raw_config())
            channel = self.plugin_class(context.name, config, context)
            try:
                async with serve_channels(channel) as url:
                    context.public_url = url
                    fake.point_webhooks(f"{url}/webhooks/{context.name}")
                    async with trio.open_nursery() as nursery:
                        await nursery.start(channel.run)
                        yield channel
                        nursery.cancel_scope.cancel()
            finally:
                self.fake = None

    async def deliver(self, thread_key: str, sender_id: str, text: str) -> None:
        assert self.fake is not None and thread_key == sender_id  # an SMS thread is its sender
        self.last = await self.fake.send_sms(sender_id, text)

    async def redeliver_last(self) -> None:
        assert self.fake is not None and self.fake.sms_url and self.last is not None
        await self.fake.deliver(self.fake.sms_url, self.last)

    async def sent_texts(self, thread_key: str) -> list[str]:
        assert self.fake is not None
        return [m.body for m in self.fake.sent_to(thread_key)]


async def test_twilio_passes_conformance() -> None:
    await conformance.check_channel(TwilioHarness())


async def test_twilio_refuses_while_the_journal_fails() -> None:
    """The suite sees the message arrive; here we also see Twilio got a 503 first."""
    harness = TwilioHarness()
    statuses: list[int] = []

    class Watching(TwilioChannel):
        async def run(self, **kwargs: Any) -> None:
            assert harness.fake is not None
            fake = harness.fake
            try:
                await super().run(**kwargs)
            finally:
                statuses.extend(status for _, status in fake.webhook_log)

    harness.plugin_class = Watching
    await conformance.check_accept_failure_not_lost(harness)
    assert statuses == [503, 200]


class KeyedByDelivery(TwilioChannel):
    """Broken: keys each webhook request anew, so Twilio's retry becomes a second message."""

    async def _incoming_message(self, params: Any, query: Any) -> Any:
        fresh = {**params, "MessageSid": [f"SM{trio.current_time()!r}"]}
        return await super()._incoming_message(fresh, query)


async def test_suite_catches_an_external_id_per_delivery() -> None:
    with pytest.raises(
        AssertionError, match=r"^check_redelivery_dedupes: the redelivery became a second message"
    ):
        await conformance.check_redelivery_dedupes(TwilioHarness(KeyedByDelivery))
