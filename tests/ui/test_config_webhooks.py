"""'Register webhook' on the channels page: the running plugin tells the platform (the fake
Telegram Bot API's setWebhook, the fake Max API's POST /subscriptions) where to post updates,
with the channel's secret; offered only where it can work; audited either way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.errors import PluginError
from gateway.plugin import load_registry
from gateway.secretref import Secret
from gateway.testing.context import MemoryChannelContext
from gateway.testing.daemon import free_port, http_config, open_gateway
from gateway.testing.fake_llm import FakeProvider
from gateway.testing.fake_max import DEFAULT_TOKEN, FakeMaxServer, open_fake_max
from gateway.testing.fake_telegram import FakeTelegramServer, open_fake_telegram
from plugins.max.channel import MaxChannel
from plugins.telegram.channel import TelegramChannel
from tests.ui.conftest import UI, page, post

TG_TOKEN = "424242:Register-webhook-token"
TG_SECRET = "tg-Webhook_secret-1"
MAX_SECRET = "max-webhook-secret-1"


def config(port: int, tg: FakeTelegramServer, mx: FakeMaxServer, polled: FakeTelegramServer) -> str:
    return (
        http_config(port)
        + f"""
[channels.tg]
plugin = "telegram"
token = "env:TG_TOKEN"
mode = "webhook"
api_base = "{tg.api_base}"
webhook_secret = "env:TG_SECRET"
[channels.mx]
plugin = "max"
token = "env:MAX_TOKEN"
mode = "webhook"
api_base = "{mx.api_base}"
webhook_secret = "env:MAX_SECRET"
register_webhook = false
[channels.polled]
plugin = "telegram"
token = "env:TG_TOKEN2"
api_base = "{polled.api_base}"
[agents.default]
provider = "model"
[providers.model]
plugin = "fake"
"""
    )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[UI, FakeTelegramServer, FakeMaxServer]]:
    registry = load_registry()
    registry.add("llm", "fake", FakeProvider)
    env = {
        "TG_TOKEN": TG_TOKEN,
        "TG_SECRET": TG_SECRET,
        "TG_TOKEN2": "515151:Polled-bot-token",
        "MAX_TOKEN": DEFAULT_TOKEN,
        "MAX_SECRET": MAX_SECRET,
    }
    async with (
        open_fake_telegram(TG_TOKEN) as tg,
        open_fake_telegram(env["TG_TOKEN2"]) as polled,
        open_fake_max() as mx,
    ):
        text = config(free_port(), tg, mx, polled)
        async with open_gateway(text, registry, tmp_path, environ=env) as gw:
            yield UI(gw), tg, mx


async def test_register_webhook_on_telegram_and_max(
    world: tuple[UI, FakeTelegramServer, FakeMaxServer],
) -> None:
    ui, tg, mx = world
    base = ui.gw.running.services.config.http.public_url
    client = await ui.sign_in(await ui.add_user("owner@example.com", "owner"))
    _status, html = await page(client, "/channels")
    assert 'id="register-tg"' in html and 'id="register-mx"' in html
    assert 'id="register-polled"' not in html  # polling: nothing to register
    # Telegram: webhook mode set it at start; someone removed it on the platform meanwhile.
    assert tg.webhook_url == f"{base}/webhooks/tg"
    tg.webhook_url = tg.webhook_secret = None
    response = await post(client, "/channels/tg/register-webhook", {}, from_page="/channels")
    html = await response.get_data(as_text=True)
    assert response.status_code == 200 and 'id="register-result"' in html
    assert f"Telegram now posts this bot&#39;s updates to {base}/webhooks/tg" in html
    assert (tg.webhook_url, tg.webhook_secret) == (f"{base}/webhooks/tg", TG_SECRET)
    assert TG_SECRET not in html
    # Max: register_webhook = false subscribed nothing at start; the button does.
    assert mx.subscriptions == []
    response = await post(client, "/channels/mx/register-webhook", {}, from_page="/channels")
    html = await response.get_data(as_text=True)
    assert f"Max now posts this bot&#39;s updates to {base}/webhooks/mx" in html
    assert [(s["url"], s["secret"]) for s in mx.subscriptions] == [
        (f"{base}/webhooks/mx", MAX_SECRET)
    ]
    # A refusal of the platform is shown and audited as failed.
    tg.fail_next(
        "setWebhook", status=400, description="Bad Request: bad webhook: Failed to resolve host"
    )
    response = await post(client, "/channels/tg/register-webhook", {}, from_page="/channels")
    html = await response.get_data(as_text=True)
    assert (
        "<strong>Webhook not registered</strong> (tg): [channels.tg] Telegram did not set " in html
    )
    assert "Bad webhook: failed to resolve host" in html
    # Polling channels and unknown ones are refused.
    response = await post(client, "/channels/polled/register-webhook", {}, from_page="/channels")
    assert "cannot register a webhook here" in await response.get_data(as_text=True)
    assert (
        await post(client, "/channels/nope/register-webhook", {}, from_page="/channels")
    ).status_code == 404
    entries = await ui.audit("channel.register_webhook")
    assert [(e.target, e.outcome) for e in entries] == [
        ("channel:tg", "ok"),
        ("channel:mx", "ok"),
        ("channel:tg", "failed"),
        ("channel:polled", "failed"),
    ]
    assert entries[0].detail == {
        "url": f"{base}/webhooks/tg",
        "result": f"Telegram now posts this bot's updates to {base}/webhooks/tg",
    }
    assert not any(TG_SECRET in str(e.detail) or MAX_SECRET in str(e.detail) for e in entries)


async def test_the_plugins_register_without_running() -> None:
    """The methods work on a channel that is not running (the UI offers them only on running
    ones) and refuse polling mode with what to change."""
    async with open_fake_telegram(TG_TOKEN) as tg, open_fake_max() as mx:
        async with httpx.AsyncClient() as http:
            context = MemoryChannelContext("tg", http=http)
            table = {"plugin": "telegram", "token": Secret(TG_TOKEN), "api_base": tg.api_base}
            hooked = {**table, "mode": "webhook", "webhook_secret": Secret(TG_SECRET)}
            telegram = TelegramChannel("tg", hooked, context)
            assert await telegram.register_webhook("https://gw.example/webhooks/tg") == (
                "Telegram now posts this bot's updates to https://gw.example/webhooks/tg"
            )
            assert (tg.webhook_url, tg.webhook_secret) == (
                "https://gw.example/webhooks/tg",
                TG_SECRET,
            )
            with pytest.raises(PluginError, match='mode is "polling": set mode = "webhook"'):
                await TelegramChannel("tg", table, context).register_webhook("https://x/y")
            await telegram.aclose()
            max_table = {"plugin": "max", "token": Secret(DEFAULT_TOKEN), "api_base": mx.api_base}
            bot = MaxChannel(
                "mx",
                {**max_table, "mode": "webhook", "webhook_secret": Secret(MAX_SECRET)},
                MemoryChannelContext("mx", http=http),
            )
            assert await bot.register_webhook("https://gw.example/webhooks/mx") == (
                "Max now posts this bot's updates to https://gw.example/webhooks/mx"
            )
            assert [s["url"] for s in mx.subscriptions] == ["https://gw.example/webhooks/mx"]
            mx.fail_next("subscriptions", status=400)
            with pytest.raises(PluginError, match="could not subscribe the webhook"):
                await bot.register_webhook("https://gw.example/webhooks/mx")
