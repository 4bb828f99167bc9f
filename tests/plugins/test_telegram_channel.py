"""TelegramChannel against the fake Bot API: polling, webhook, sending, errors, logs."""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pydantic
import pytest
import telegram.error
import trio
import trio.testing

from gateway.errors import PluginError, SendError
from gateway.messages import Inbound, Outbound
from gateway.plugin import Channel
from gateway.secretref import Secret
from gateway.testing.conformance import serve_channels
from gateway.testing.context import MemoryChannelContext
from gateway.testing.fake_telegram import FakeTelegramServer, open_fake_telegram
from plugins.telegram import TelegramChannel, TelegramConfig

TOKEN = "7770001:channel-TEST_token-xyz"
SECRET = "hook-secret_42"
WAIT = 5.0  # seconds; the fake answers in milliseconds


def config(server: FakeTelegramServer | None = None, **overrides: Any) -> TelegramConfig:
    table: dict[str, Any] = {
        "plugin": "telegram",
        "token": Secret(TOKEN, "env:TG_TOKEN"),
        **overrides,
    }
    if server is not None:
        table["api_base"] = server.api_base
    return TelegramConfig.model_validate(table)


@contextlib.asynccontextmanager
async def running(channel: TelegramChannel) -> AsyncIterator[TelegramChannel]:
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            yield channel
            nursery.cancel_scope.cancel()
    finally:
        await channel.aclose()


@contextlib.asynccontextmanager
async def polling(
    context: MemoryChannelContext | None = None,
) -> AsyncIterator[tuple[FakeTelegramServer, MemoryChannelContext, TelegramChannel]]:
    context = context or MemoryChannelContext("tg")
    async with open_fake_telegram(TOKEN) as server:
        async with running(TelegramChannel("tg", config(server), context)) as channel:
            yield server, context, channel


@contextlib.asynccontextmanager
async def webhook(
    context: MemoryChannelContext,
) -> AsyncIterator[tuple[FakeTelegramServer, str, TelegramChannel]]:
    async with open_fake_telegram(TOKEN) as server:
        channel = TelegramChannel(
            "tg", config(server, mode="webhook", webhook_secret=Secret(SECRET)), context
        )
        async with serve_channels(channel) as base:
            context.public_url = base
            async with running(channel):
                yield server, f"{base}/webhooks/tg", channel


def watch_confirmation(server: FakeTelegramServer) -> dict[str, Any]:
    """Note the highest offset a getUpdates confirmed; ``seen["event"]`` fires on each poll."""
    seen: dict[str, Any] = {"offset": 0, "event": trio.Event()}

    def on_poll(params: dict[str, Any]) -> None:
        seen["offset"] = max(seen["offset"], params["offset"])
        seen["event"].set()
        seen["event"] = trio.Event()

    server.on_get_updates = on_poll
    return seen


async def wait_confirmed(seen: dict[str, Any], update: dict[str, Any]) -> None:
    with trio.fail_after(WAIT):
        while seen["offset"] <= update["update_id"]:
            await seen["event"].wait()


async def wait_inbound(context: MemoryChannelContext, count: int) -> list[Inbound]:
    """The context's wait, bounded: a broken plugin fails the test instead of hanging it."""
    with trio.fail_after(WAIT):
        return await context.wait_inbound(count)


def outbound(thread_key: str, text: str, reply_to: str | None = None) -> Outbound:
    return Outbound(
        1, "key-1", TOKEN.split(":")[0], thread_key, text, reply_to_external_id=reply_to
    )


# -- config ----------------------------------------------------------------------------------


def test_webhook_mode_without_secret_is_rejected() -> None:
    with pytest.raises(pydantic.ValidationError) as excinfo:
        config(mode="webhook")
    assert 'mode = "webhook" requires webhook_secret' in str(excinfo.value)


def test_defaults_follow_telegram_limits() -> None:
    cfg = config()
    assert (cfg.mode, cfg.send_rate, cfg.send_rate_per_chat, cfg.send_burst_per_chat) == (
        "polling",
        30.0,
        1.0,
        3,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"token": Secret("no-colon-secretvalue")}, "not a Telegram bot token"),
        ({"mode": "webhook", "webhook_secret": Secret("has spaces")}, "webhook secret"),
        ({"api_base": "api.telegram.org"}, "http(s) URL"),
        ({"tokn": "env:X"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_config_says_what_to_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as excinfo:
        config(**overrides)
    assert message in str(excinfo.value)
    assert "secretvalue" not in str(excinfo.value)


# -- polling ---------------------------------------------------------------------------------


async def test_polling_delivers_and_confirms() -> None:
    async with polling() as (server, context, channel):
        assert isinstance(channel, Channel)  # the runtime-checkable plugin protocol
        seen = watch_confirmation(server)
        update = server.push_message(
            1001, "Hello bot", first_name="Ada", last_name="L", language_code="de"
        )
        [inbound] = await wait_inbound(context, 1)
        await wait_confirmed(seen, update)
        assert (inbound.account, inbound.thread_key, inbound.sender_id) == (
            "7770001",
            "1001",
            "1001",
        )
        assert (inbound.text, inbound.sender_name, inbound.language) == ("Hello bot", "Ada L", "de")
        assert inbound.external_id == f"1001:{update['message']['message_id']}"
        assert context.state["offset"] == str(update["update_id"] + 1)

        result = await channel.send(outbound("1001", "Hi Ada", reply_to=inbound.external_id))
        [sent] = server.sent
        assert (sent.chat_id, sent.text, result.external_id) == (
            1001,
            "Hi Ada",
            str(sent.message_id),
        )
        assert '"message_id": 1' in sent.params["reply_parameters"]


async def test_offset_not_advanced_while_accept_fails() -> None:
    context = MemoryChannelContext("tg")
    context.fail_accepts = 1
    async with open_fake_telegram(TOKEN) as server:
        offsets: list[int] = []
        seen = watch_confirmation(server)
        track = server.on_get_updates
        server.on_get_updates = lambda params: (offsets.append(params["offset"]), track(params))  # type: ignore[misc]
        async with running(TelegramChannel("tg", config(server), context)):
            update = server.push_message(1002, "keep me")
            await wait_inbound(context, 1)
            await wait_confirmed(seen, update)
    assert context.fail_accepts == 0  # the failure happened
    assert [m.text for m in context.inbound] == ["keep me"]
    # after the failed accept the next poll asked from the old offset again, so the update came back
    assert offsets[-1] == update["update_id"] + 1
    assert len(offsets) >= 3 and set(offsets[:-1]) == {0}


async def test_restart_resumes_from_stored_offset_without_duplicates() -> None:
    context = MemoryChannelContext("tg")
    async with open_fake_telegram(TOKEN) as server:
        seen = watch_confirmation(server)
        async with running(TelegramChannel("tg", config(server), context)):
            done = server.push_message(1003, "before restart")
            await wait_inbound(context, 1)
            await wait_confirmed(seen, done)
        server.push_message(1003, "after restart")
        offsets: list[int] = []
        server.on_get_updates = lambda params: offsets.append(params["offset"])
        async with running(TelegramChannel("tg", config(server), context)):
            await wait_inbound(context, 2)
    assert [m.text for m in context.inbound] == ["before restart", "after restart"]
    assert context.duplicates == []
    assert offsets[0] == done["update_id"] + 1  # the new process started from the stored offset


async def test_the_same_channel_sends_again_after_it_was_closed_and_run_again() -> None:
    """aclose() closes PTB's httpx clients; the next run builds new ones on the same pooling
    transports (gateway/pooling.py), which must still open connections."""
    context = MemoryChannelContext("tg")
    async with open_fake_telegram(TOKEN) as server:
        channel = TelegramChannel("tg", config(server), context)
        async with running(channel):
            await channel.send(outbound("1001", "first run"))
        assert channel._request._client.is_closed
        async with running(channel):
            await channel.send(outbound("1001", "second run"))
        assert [m.text for m in server.sent] == ["first run", "second run"]


async def test_offset_of_another_bot_is_not_used() -> None:
    context = MemoryChannelContext("tg")
    context.state.update(bot_id="999", offset=str(10**12))
    async with polling(context) as (server, context, _):
        server.push_message(1004, "new bot, new ids")
        assert [m.text for m in await wait_inbound(context, 1)] == ["new bot, new ids"]
    assert context.state["bot_id"] == "7770001"


async def test_unusable_updates_are_skipped_and_confirmed() -> None:
    async with polling() as (server, context, _):
        seen = watch_confirmation(server)
        server.push_update(
            {
                "edited_message": {
                    "message_id": 1,
                    "chat": {"id": 5, "type": "private"},
                    "date": 0,
                    "text": "x",
                }
            }
        )
        server.push_update({"message": {"message_id": 2, "chat": "garbage"}})
        last = server.push_message(1005, "real one")
        await wait_inbound(context, 1)
        await wait_confirmed(seen, last)
        assert [m.text for m in context.inbound] == ["real one"]
        assert context.state["offset"] == str(last["update_id"] + 1)


async def test_polling_deletes_a_leftover_webhook() -> None:
    async with open_fake_telegram(TOKEN) as server:
        server.webhook_url = "https://old.example/webhooks/tg"
        context = MemoryChannelContext("tg")
        async with running(TelegramChannel("tg", config(server), context)):
            assert server.webhook_url is None
            server.push_message(1006, "after the switch")
            await wait_inbound(context, 1)


async def test_rejected_token_stops_run_with_a_plugin_error() -> None:
    async with open_fake_telegram("7770001:another-token") as server:
        channel = TelegramChannel("tg", config(server), MemoryChannelContext("tg"))
        with pytest.raises(PluginError, match="rejected the bot token") as excinfo:
            await channel.run()
        assert TOKEN not in str(excinfo.value)


async def test_network_trouble_at_start_is_retried() -> None:
    """getMe fails twice with 502; run() keeps trying and then starts."""
    async with open_fake_telegram(TOKEN) as server:
        server.fail_next("getMe", status=502, times=2)
        context = MemoryChannelContext("tg")
        async with running(TelegramChannel("tg", config(server), context)):
            server.push_message(1007, "made it")
            await wait_inbound(context, 1)
        assert server.requests[:3] == ["getme", "getme", "getme"]


# -- webhook ---------------------------------------------------------------------------------


async def test_webhook_registers_url_and_secret() -> None:
    context = MemoryChannelContext("tg")
    async with webhook(context) as (server, url, _):
        assert server.webhook_url == url
        assert server.webhook_secret == SECRET


async def test_webhook_with_good_secret_accepts() -> None:
    context = MemoryChannelContext("tg")
    async with webhook(context) as (server, url, _):
        update = server.push_message(2001, "via webhook")
        assert await server.post_webhook(url, update, SECRET) == 200
        assert [m.text for m in context.inbound] == ["via webhook"]  # accepted before the 200
        assert await server.post_webhook(url, update, SECRET) == 200  # Telegram's retry
        assert len(context.inbound) == 1 and len(context.duplicates) == 1


@pytest.mark.parametrize(
    ("secret", "status"), [(None, 401), ("wrong-secret", 403), (SECRET + "x", 403), ("", 403)]
)
async def test_webhook_refuses_missing_or_wrong_secret(secret: str | None, status: int) -> None:
    context = MemoryChannelContext("tg")
    async with webhook(context) as (server, url, _):
        update = server.push_message(2002, "forged")
        async with httpx.AsyncClient() as http:
            headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
            response = await http.post(url, json=update, headers=headers)
        assert response.status_code == status
        assert SECRET not in response.text
        assert context.inbound == [] and context.duplicates == []


async def test_webhook_bad_bodies_and_store_failure() -> None:
    context = MemoryChannelContext("tg")
    async with webhook(context) as (server, url, _), httpx.AsyncClient() as http:
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "content-type": "application/json"}
        assert (await http.post(url, content=b"{not json", headers=headers)).status_code == 400
        assert (await http.post(url, content=b"[1, 2]", headers=headers)).status_code == 400
        edited = {
            "update_id": 5,
            "edited_message": {
                "message_id": 1,
                "chat": {"id": 1, "type": "private"},
                "date": 0,
                "text": "x",
            },
        }
        assert (
            await http.post(url, json=edited, headers=headers)
        ).status_code == 200  # ignored, acknowledged
        context.fail_accepts = 1
        update = server.push_message(2003, "store down")
        assert await server.post_webhook(url, update, SECRET) == 503
        assert context.inbound == []
        assert await server.post_webhook(url, update, SECRET) == 200
        assert [m.text for m in context.inbound] == ["store down"]


async def test_webhook_route_is_404_in_polling_mode() -> None:
    async with (
        polling() as (server, context, channel),
        serve_channels(channel) as base,
    ):
        update = server.push_message(2004, "wrong door")
        # consume it via polling first, so only the webhook path is in question
        await wait_inbound(context, 1)
        assert await server.post_webhook(f"{base}/webhooks/tg", update, SECRET) == 404


async def test_webhook_mode_without_public_url_says_so() -> None:
    async with open_fake_telegram(TOKEN) as server:
        channel = TelegramChannel(
            "tg",
            config(server, mode="webhook", webhook_secret=Secret(SECRET)),
            MemoryChannelContext("tg"),
        )
        with pytest.raises(PluginError, match="public_url"):
            await channel.run()


# -- sending ---------------------------------------------------------------------------------


async def test_send_errors_map_to_send_error() -> None:
    async with open_fake_telegram(TOKEN) as server:
        channel = TelegramChannel("tg", config(server), MemoryChannelContext("tg"))
        server.fail_next("sendMessage", status=429, retry_after=3)
        with pytest.raises(SendError) as flood:
            await channel.send(outbound("3001", "too fast"))
        assert flood.value.retry_after == 3 and not flood.value.permanent

        server.fail_next("sendMessage", status=403)
        with pytest.raises(SendError) as blocked:
            await channel.send(outbound("3001", "blocked"))
        assert blocked.value.permanent and "blocked by the user" in str(blocked.value)

        server.fail_next("sendMessage", status=500)
        with pytest.raises(SendError) as broken:
            await channel.send(outbound("3001", "server error"))
        assert not (broken.value.permanent or broken.value.uncertain or broken.value.retry_after)

        server.fail_next("sendMessage", disconnect=True)
        with pytest.raises(SendError) as lost:
            await channel.send(outbound("3001", "answer lost"))
        assert lost.value.uncertain

        with pytest.raises(SendError) as not_a_chat:
            await channel.send(outbound("visitor-abc", "x"))
        assert not_a_chat.value.permanent

        result = await channel.send(outbound("3001", "finally"))
        assert [m.text for m in server.sent] == ["answer lost", "finally"]
        assert result.external_id == str(server.sent[-1].message_id)


async def test_send_when_telegram_is_unreachable_is_transient() -> None:
    async with open_fake_telegram(TOKEN) as server:
        base = server.api_base
    channel = TelegramChannel("tg", config(api_base=base), MemoryChannelContext("tg"))
    with pytest.raises(SendError) as excinfo:
        await channel.send(outbound("3002", "nobody home"))
    assert not (excinfo.value.permanent or excinfo.value.uncertain)


# -- logs ------------------------------------------------------------------------------------


async def test_token_never_appears_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with polling() as (server, context, channel):
        server.push_message(4001, "log me not")
        await wait_inbound(context, 1)
        server.fail_next("sendMessage", status=500)
        with pytest.raises(SendError):
            await channel.send(outbound("4001", "x"))
    assert "/bot<redacted>/getUpdates" in caplog.text  # httpx did log the URLs
    assert TOKEN not in caplog.text
    assert TOKEN.split(":")[1] not in caplog.text


# -- backoff (virtual time) --------------------------------------------------------------------


async def test_retries_back_off_and_honour_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    channel = TelegramChannel("tg", config(), MemoryChannelContext("tg"))
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(trio.current_time())
        if len(calls) == 1:
            raise telegram.error.RetryAfter(5)
        if len(calls) <= 4:
            raise telegram.error.NetworkError("Bad Gateway")
        return "ok"

    assert await channel._retrying("reach Telegram", flaky) == "ok"
    assert [round(b - a, 3) for a, b in itertools.pairwise(calls)] == [5, 0.25, 0.5, 1.0]
    await channel.aclose()


async def test_bot_api_without_getme_or_deletewebhook_still_polls() -> None:
    """A local Bot API server or a test double lacking the start-up checks (404) is fine."""
    async with open_fake_telegram(TOKEN) as server:
        server.fail_next("getMe", status=404, description="Not Found")
        server.fail_next("deleteWebhook", status=404, description="Not Found")
        context = MemoryChannelContext("tg")
        async with running(TelegramChannel("tg", config(server), context)):
            server.push_message(1008, "no checks needed")
            await wait_inbound(context, 1)
        assert server.requests[:2] == ["getme", "deletewebhook"]


async def test_both_bot_api_clients_use_the_daemons_one_tls_context():
    """Each httpx client left to itself loads the CA bundle again (~0.8 MiB of RSS each): the
    channel's send and poll clients take gateway.tls.default_context(), built as httpx's own
    default (certifi, or SSL_CERT_FILE / SSL_CERT_DIR)."""
    from gateway.tls import default_context

    channel = TelegramChannel("tg", config(), MemoryChannelContext("tg"))
    try:
        for request in (channel._request, channel._poll_request):
            # Private attributes: neither PTB nor httpx exposes a client's TLS context.
            assert request._client._transport._pool._ssl_context is default_context()
        assert default_context().verify_mode.name == "CERT_REQUIRED"
        assert default_context().check_hostname
    finally:
        await channel.aclose()
