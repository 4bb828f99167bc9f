"""The channel conformance suite against the Telegram plugin, in polling and webhook mode."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
import trio

from gateway.messages import Inbound
from gateway.secretref import Secret
from gateway.testing import conformance
from gateway.testing.conformance import serve_channels
from gateway.testing.context import MemoryChannelContext
from gateway.testing.fake_telegram import FakeTelegramServer, open_fake_telegram
from plugins.telegram import TelegramChannel
from plugins.telegram.convert import update_to_inbound

TOKEN = "5550001:conformance-TOKEN_abc"
WEBHOOK_SECRET = "conformance-secret_1"


class TelegramHarness:
    """Runs TelegramChannel against FakeTelegramServer; in webhook mode, deliveries are POSTed to
    the channel's blueprint served by hypercorn, re-sent on a non-2xx as Telegram does."""

    def __init__(
        self,
        mode: Literal["polling", "webhook"],
        plugin_class: type[TelegramChannel] = TelegramChannel,
    ) -> None:
        self.plugin_class = plugin_class
        self.mode = mode
        self.server: FakeTelegramServer | None = None
        self.last: dict[str, Any] | None = None
        self.webhook_statuses: list[int] = []

    def raw_config(self) -> dict[str, Any]:
        table: dict[str, Any] = {
            "plugin": "telegram",
            "token": Secret(TOKEN, "env:TELEGRAM_TOKEN"),
            "mode": self.mode,
            # a long poll, so a channel that cannot be cancelled mid-poll fails the cancel check
            "poll_timeout": 30,
        }
        if self.server is not None:
            table["api_base"] = self.server.api_base
        if self.mode == "webhook":
            table["webhook_secret"] = Secret(WEBHOOK_SECRET, "env:TELEGRAM_WEBHOOK_SECRET")
        return table

    @contextlib.asynccontextmanager
    async def open(self, context: MemoryChannelContext) -> AsyncIterator[TelegramChannel]:
        async with open_fake_telegram(TOKEN) as server:
            self.server = server
            config = TelegramChannel.Config.model_validate(self.raw_config())
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
            await self._post_until_acknowledged(self.last)

    async def redeliver_last(self) -> None:
        assert self.server is not None and self.last is not None
        if self.mode == "webhook":
            await self._post_until_acknowledged(self.last)  # Telegram's retry: the same update
        else:
            self.server.redeliver(self.last)

    async def sent_texts(self, thread_key: str) -> list[str]:
        assert self.server is not None
        return [m.text for m in self.server.sent_to(thread_key)]

    async def _post_until_acknowledged(self, update: dict[str, Any]) -> None:
        assert self.server is not None
        for _ in range(10):
            status = await self.server.deliver_to_webhook(update)
            self.webhook_statuses.append(status)
            if 200 <= status < 300:
                return
        raise AssertionError(f"the webhook never acknowledged the update: {self.webhook_statuses}")


@pytest.mark.parametrize("mode", ["polling", "webhook"])
async def test_telegram_passes_conformance(mode: Literal["polling", "webhook"]) -> None:
    await conformance.check_channel(TelegramHarness(mode))


async def test_webhook_refuses_while_journal_fails() -> None:
    """The conformance check sees the message arrive; here we also see Telegram got a 503 first."""
    harness = TelegramHarness("webhook")
    await conformance.check_accept_failure_not_lost(harness)
    assert harness.webhook_statuses == [503, 200]


# -- the suite catches broken plugins -----------------------------------------------------------


class KeyedByUpdateChannel(TelegramChannel):
    """Broken: keys messages by update id, so a re-delivered message looks new."""

    def _convert_batch(self, updates: list[dict[str, Any]]) -> list[Inbound]:
        found = [(u, update_to_inbound(u, account=self.account)) for u in updates]
        return [dataclasses.replace(i, external_id=str(u["update_id"])) for u, i in found if i]


class AcksDespiteStoreFailure(TelegramChannel):
    """Broken: answers 200 even when the journal refused the message."""

    async def _webhook(self, request: Any) -> Any:
        response = await super()._webhook(request)
        if response.status_code == 503:
            response.status_code = 200
        return response


class SlowToStop(TelegramChannel):
    """Broken: keeps working (shielded) after being cancelled."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.5)


async def test_suite_catches_external_id_from_the_delivery() -> None:
    with pytest.raises(
        AssertionError, match=r"^check_redelivery_dedupes: the redelivery became a second message"
    ):
        await conformance.check_redelivery_dedupes(TelegramHarness("polling", KeyedByUpdateChannel))


async def test_suite_catches_acknowledging_an_uncommitted_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(conformance, "STEP_TIMEOUT", 1.0)
    with pytest.raises(AssertionError, match=r"^check_accept_failure_not_lost: timed out"):
        await conformance.check_accept_failure_not_lost(
            TelegramHarness("webhook", AcksDespiteStoreFailure)
        )


async def test_suite_catches_a_slow_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conformance, "CANCEL_DEADLINE", 0.3)
    with pytest.raises(AssertionError, match=r"^check_cancel_promptly: the channel took"):
        await conformance.check_cancel_promptly(TelegramHarness("polling", SlowToStop))
