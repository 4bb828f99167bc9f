"""The channel conformance suite against the Messenger and Instagram plugins, each running
against the fake Graph API, its webhook served by hypercorn and fed by the fake like Meta does
(signed, re-sent until a 2xx). The harness here is also what the other Meta tests use."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from gateway.messages import Inbound
from gateway.secretref import Secret
from gateway.testing import conformance
from gateway.testing.conformance import serve_channels
from gateway.testing.context import MemoryChannelContext
from gateway.testing.fake_graph import APP_SECRET, FakeGraphServer, open_fake_graph
from plugins.messenger import InstagramChannel, MessengerChannel
from plugins.messenger.channel import MetaChannel

VERIFY_TOKEN = "verify-me-0001"


def raw_config(
    platform: str, server: FakeGraphServer | None = None, **overrides: Any
) -> dict[str, Any]:
    """A ``[channels.NAME]`` table for ``platform`` pointing at ``server``."""
    table: dict[str, Any] = {
        "plugin": platform,
        "app_secret": Secret(server.app_secret if server else APP_SECRET, "env:META_APP_SECRET"),
        "verify_token": Secret(VERIFY_TOKEN, "env:META_VERIFY_TOKEN"),
    }
    if platform == "messenger":
        table["page_id"] = server.page_id if server else "104000000000001"
        table["page_access_token"] = Secret(server.page_token if server else "t", "env:FB_TOKEN")
    else:
        table["instagram_account_id"] = server.instagram_id if server else "17841400000000001"
        table["access_token"] = Secret(server.instagram_token if server else "t", "env:IG_TOKEN")
    if server is not None:
        table["api_base"] = server.api_base
        table["media_hosts"] = [server.api_base]
    return {**table, **overrides}


@contextlib.asynccontextmanager
async def running(
    platform: str,
    context: MemoryChannelContext,
    plugin_class: type[MetaChannel] | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[FakeGraphServer, MetaChannel, str]]:
    """The fake Graph API, the channel running with its webhook served and subscribed; yields
    (server, channel, webhook URL)."""
    cls = plugin_class or (MessengerChannel if platform == "messenger" else InstagramChannel)
    async with open_fake_graph() as server:
        config = cls.Config.model_validate(raw_config(platform, server, **overrides))
        channel = cls(context.name, config, context)
        async with serve_channels(channel) as base:
            context.public_url = base
            url = f"{base}/webhooks/{context.name}"
            assert await server.subscribe(platform, url, VERIFY_TOKEN)
            async with trio.open_nursery() as nursery:
                await nursery.start(channel.run)
                yield server, channel, url
                nursery.cancel_scope.cancel()


class MetaHarness:
    def __init__(self, platform: str, plugin_class: type[MetaChannel] | None = None) -> None:
        self.platform = platform
        self.plugin_class = plugin_class or (
            MessengerChannel if platform == "messenger" else InstagramChannel
        )
        self.server: FakeGraphServer | None = None
        self.last: dict[str, Any] | None = None
        self.statuses: list[int] = []

    def raw_config(self) -> dict[str, Any]:
        return raw_config(self.platform, self.server)

    @contextlib.asynccontextmanager
    async def open(self, context: MemoryChannelContext) -> AsyncIterator[MetaChannel]:
        async with running(self.platform, context, self.plugin_class) as (server, channel, _):
            self.server = server
            try:
                yield channel
            finally:
                self.server = None

    async def deliver(self, thread_key: str, sender_id: str, text: str) -> None:
        assert self.server is not None and thread_key == sender_id  # one-to-one threads
        self.last = self.server.user_message(sender_id, text, platform=self.platform)
        await self._deliver(self.last)

    async def redeliver_last(self) -> None:
        assert self.last is not None
        await self._deliver(self.last)

    async def sent_texts(self, thread_key: str) -> list[str]:
        assert self.server is not None
        return [m.text or "" for m in self.server.sent_to(thread_key)]

    async def _deliver(self, body: dict[str, Any]) -> None:
        assert self.server is not None
        statuses = await self.server.deliver(body)
        self.statuses += statuses
        assert 200 <= statuses[-1] < 300, f"the webhook never acknowledged: {statuses}"


@pytest.mark.parametrize("platform", ["messenger", "instagram"])
async def test_meta_channels_pass_conformance(platform: str) -> None:
    await conformance.check_channel(MetaHarness(platform))


@pytest.mark.parametrize("platform", ["messenger", "instagram"])
async def test_meta_answers_503_while_the_journal_fails(platform: str) -> None:
    harness = MetaHarness(platform)
    await conformance.check_accept_failure_not_lost(harness)
    assert harness.statuses == [503, 200]


class KeyedByTimestamp(MessengerChannel):
    """Broken: keys messages by the delivery's entry time, so a retry looks new."""

    async def _download_all(self, inbounds: list[Inbound]) -> list[Inbound]:
        found = await super()._download_all(inbounds)
        return [dataclasses.replace(i, external_id=str(trio.current_time())) for i in found]


async def test_suite_catches_an_id_from_the_delivery() -> None:
    with pytest.raises(AssertionError, match=r"^check_redelivery_dedupes"):
        await conformance.check_redelivery_dedupes(MetaHarness("messenger", KeyedByTimestamp))
