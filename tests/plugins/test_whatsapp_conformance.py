"""The channel conformance suite against the WhatsApp plugin: deliveries are signed webhooks
POSTed by the fake Cloud API to the channel's webhook route (served by hypercorn), re-sent until a
2xx as Meta does."""

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
from gateway.testing.fake_whatsapp import (
    DEFAULT_APP_SECRET,
    DEFAULT_PHONE_NUMBER_ID,
    DEFAULT_TOKEN,
    FakeWhatsAppServer,
    open_fake_whatsapp,
)
from plugins.whatsapp import WhatsAppChannel


class WhatsAppHarness:
    """Runs WhatsAppChannel against FakeWhatsAppServer; ``webhook_statuses`` keeps every answer
    the channel gave to Meta's deliveries."""

    def __init__(self, plugin_class: type[WhatsAppChannel] = WhatsAppChannel) -> None:
        self.plugin_class = plugin_class
        self.server: FakeWhatsAppServer | None = None
        self.last: dict[str, Any] | None = None
        self.webhook_statuses: list[int] = []

    def raw_config(self) -> dict[str, Any]:
        table: dict[str, Any] = {
            "plugin": "whatsapp",
            "phone_number_id": DEFAULT_PHONE_NUMBER_ID,
            "access_token": Secret(DEFAULT_TOKEN, "env:WHATSAPP_TOKEN"),
            "app_secret": Secret(DEFAULT_APP_SECRET, "env:WHATSAPP_APP_SECRET"),
            "verify_token": Secret("conformance-verify", "env:WHATSAPP_VERIFY_TOKEN"),
        }
        if self.server is not None:
            table["api_base"] = self.server.api_base
        return table

    @contextlib.asynccontextmanager
    async def open(self, context: MemoryChannelContext) -> AsyncIterator[WhatsAppChannel]:
        async with open_fake_whatsapp() as server:
            self.server = server
            config = WhatsAppChannel.Config.model_validate(self.raw_config())
            channel = self.plugin_class(context.name, config, context)
            try:
                async with serve_channels(channel) as url:
                    context.public_url = url
                    server.webhook_url = channel.webhook_url()
                    async with trio.open_nursery() as nursery:
                        await nursery.start(channel.run)
                        yield channel
                        nursery.cancel_scope.cancel()
            finally:
                self.server = None

    async def deliver(self, thread_key: str, sender_id: str, text: str) -> None:
        assert self.server is not None and thread_key == sender_id  # WhatsApp: one user, one thread
        self.last = self.server.push_message(sender_id, text)
        await self._until_acknowledged(self.last)

    async def redeliver_last(self) -> None:
        assert self.last is not None
        await self._until_acknowledged(self.last)  # Meta's retry: the same notification

    async def sent_texts(self, thread_key: str) -> list[str]:
        assert self.server is not None
        return [m.text for m in self.server.sent_to(thread_key)]

    async def _until_acknowledged(self, notification: dict[str, Any]) -> None:
        assert self.server is not None
        before = len(self.server.webhook_statuses)
        status = await self.server.deliver(notification)
        self.webhook_statuses += self.server.webhook_statuses[before:]
        if not 200 <= status < 300:
            raise AssertionError(f"never acknowledged: {self.webhook_statuses}")


async def test_whatsapp_passes_conformance() -> None:
    await conformance.check_channel(WhatsAppHarness())


async def test_journal_failure_answers_503_then_meta_retries() -> None:
    harness = WhatsAppHarness()
    await conformance.check_accept_failure_not_lost(harness)
    assert harness.webhook_statuses == [503, 200]


class AcksDespiteStoreFailure(WhatsAppChannel):
    """Broken: answers 200 even when the journal refused the notification."""

    async def _receive(self, request: Any) -> Any:
        response = await super()._receive(request)
        if response.status_code == 503:
            response.status_code = 200
        return response


async def test_suite_catches_acknowledging_an_uncommitted_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(conformance, "STEP_TIMEOUT", 1.0)
    with pytest.raises(AssertionError, match=r"^check_accept_failure_not_lost: timed out"):
        await conformance.check_accept_failure_not_lost(WhatsAppHarness(AcksDespiteStoreFailure))
