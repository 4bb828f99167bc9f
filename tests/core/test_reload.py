"""Config reload in a running daemon (gateway.reload): channels, agents and providers added,
removed and changed without a restart and without losing or doubling a message; an invalid
config is rejected with the old one kept. The whole daemon in-process, with fakes."""

from __future__ import annotations

import functools
import logging
from typing import Any

import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio
import trio.testing
from quart_trio import QuartTrio

from gateway.config import GatewayConfig, load_config
from gateway.http.swap import SwappableApp
from gateway.messages import Completion, CompletionRequest
from gateway.plugin import ProviderContext, Registry
from gateway.reload import Changes, diff_configs, reload_from_disk
from gateway.testing.daemon import GatewayUnderTest, open_gateway
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider
from plugins.webchat import WebchatChannel
from plugins.webchat.testing import open_chat_client

BASE = """
[gateway]
data_dir = "data"
shutdown_grace = 5
{gateway_extra}
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
{http_extra}
[channels.support]
plugin = "fake"
{channels}
[agents.default]
provider = "model"
system_prompt = "{prompt}"
max_attempts = 1
[providers.model]
plugin = "fake"
reply_prefix = "{prefix}"
"""


def config(
    channels: str = "",
    *,
    prompt: str = "Be brief.",
    prefix: str = "echo: ",
    gateway_extra: str = "",
    http_extra: str = "",
) -> str:
    return BASE.format(
        channels=channels,
        prompt=prompt,
        prefix=prefix,
        gateway_extra=gateway_extra,
        http_extra=http_extra,
    )


SHOP = '[channels.shop]\nplugin = "fake"\naccount = "shop-bot"\n'
WEB = '[channels.web]\nplugin = "webchat"\n'
WEB2 = '[channels.web2]\nplugin = "webchat"\ntitle = "Second chat"\n'


class GatedProvider(FakeProvider):
    """A FakeProvider that can hold answers: with ``gate`` set, ``complete`` waits for it
    (``entered`` is set once a call waits there)."""

    def __init__(self, name: str, config: Any, context: ProviderContext) -> None:
        super().__init__(name, config, context)
        self.gate: trio.Event | None = None
        self.entered = trio.Event()

    async def complete(self, request: CompletionRequest) -> Completion:
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        return await super().complete(request)


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    registry.add("channel", "fake", FakeChannel)
    registry.add("channel", "webchat", WebchatChannel)
    registry.add("llm", "fake", GatedProvider)
    return registry


async def reload(gw: GatewayUnderTest, registry: Registry, text: str) -> Changes | None:
    """Write ``text`` over the daemon's config file and reload it, as SIGHUP does."""
    await trio.Path(gw.config.source).write_text(text)
    return await reload_from_disk(gw.running.reloader, registry, environ={})


async def admin_get(gw: GatewayUnderTest, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(f"{gw.running.admin_urls[0]}{path}")


async def test_channel_added_live_answers_and_is_served_and_counted(tmp_path, registry):
    async with open_gateway(config(), registry, tmp_path) as gw:
        support: FakeChannel = gw.channel("support")
        changes = await reload(gw, registry, config(SHOP))
        assert changes is not None and changes.channels.added == ("shop",)
        shop: FakeChannel = gw.channel("shop")
        assert shop.running
        await shop.deliver("chat1", "alice", "hello shop")
        (reply,) = await shop.wait_sent(1)
        assert reply.text == "echo: hello shop"
        assert gw.channel("support") is support and support.sent == []
        status = (await admin_get(gw, "/status")).json()
        assert status["channels"] == {
            "support": {"plugin": "fake", "enabled": True},
            "shop": {"plugin": "fake", "enabled": True},
        }
        metrics = (await admin_get(gw, "/metrics")).text
        assert 'gateway_messages_received_total{channel="shop",result="accepted"} 1.0' in metrics
        assert (await admin_get(gw, "/readyz")).status_code == 200


async def test_removed_channel_stops_while_another_keeps_answering(tmp_path, registry):
    async with open_gateway(config(SHOP), registry, tmp_path) as gw:
        support: FakeChannel = gw.channel("support")
        shop: FakeChannel = gw.channel("shop")
        changes = await reload(gw, registry, config())
        assert changes is not None and changes.channels.removed == ("shop",)
        assert not shop.running
        assert "shop" not in gw.running.pipeline.channels
        await support.deliver("chat1", "alice", "still there?")
        (reply,) = await support.wait_sent(1)
        assert reply.text == "echo: still there?"
        status = (await admin_get(gw, "/status")).json()
        assert list(status["channels"]) == ["support"]


async def test_reply_for_a_removed_channel_waits_and_is_sent_when_it_comes_back(tmp_path, registry):
    async with open_gateway(config(SHOP), registry, tmp_path) as gw:
        old_shop: FakeChannel = gw.channel("shop")
        provider: GatedProvider = gw.provider()
        provider.gate = trio.Event()
        await old_shop.deliver("chat1", "alice", "my order?")
        await provider.entered.wait()
        await reload(gw, registry, config())  # the channel goes while its answer is in flight
        provider.gate.set()
        await gw.wait_idle()
        rows = await gw.running.store.read(
            "outbox", lambda db: db.conn.execute("SELECT channel, state FROM outbox").fetchall()
        )
        assert rows == [("shop", "pending")]
        assert old_shop.sent == []
        await reload(gw, registry, config(SHOP))
        new_shop: FakeChannel = gw.channel("shop")
        assert new_shop is not old_shop
        (reply,) = await new_shop.wait_sent(1)
        assert reply.text == "echo: my order?"
        await gw.wait_idle()
        assert old_shop.sent == [] and len(new_shop.sent) == 1


async def test_changed_channel_is_restarted_and_unchanged_one_is_not(tmp_path, registry):
    async with open_gateway(config(SHOP), registry, tmp_path) as gw:
        support: FakeChannel = gw.channel("support")
        shop: FakeChannel = gw.channel("shop")
        restarts = dict(gw.running.restarts)
        changes = await reload(gw, registry, config(SHOP.replace("shop-bot", "shop-bot-2")))
        assert changes is not None and changes.channels.changed == ("shop",)
        assert not changes.channels.added and not changes.channels.removed
        assert gw.channel("support") is support and support.running
        new_shop: FakeChannel = gw.channel("shop")
        assert new_shop is not shop and not shop.running and new_shop.running
        assert new_shop.config.account == "shop-bot-2"
        assert gw.running.restarts == restarts  # a reload is not a crash
        await new_shop.deliver("chat9", "bob", "hi")
        assert (await new_shop.wait_sent(1))[0].text == "echo: hi"


async def test_webchat_socket_stays_connected_across_reloads_and_new_routes_are_served(
    tmp_path, registry
):
    async with open_gateway(config(WEB), registry, tmp_path) as gw:
        base = gw.running.public_urls[0]
        async with open_chat_client(base, "web") as tab:
            web = gw.channel("web")
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{base}/chat/web2/")).status_code == 404
                await reload(gw, registry, config(WEB + WEB2))
                page = await http.get(f"{base}/chat/web2/")
                assert page.status_code == 200 and "Second chat" in page.text
            assert gw.channel("web") is web
            # The socket opened before the reload still carries a message and its reply.
            ack = await tab.send_message("hello after reload")
            assert ack["type"] == "ack"
            reply = await tab.wait_for(lambda f: f["type"] == "reply")
            assert reply["text"] == "echo: hello after reload"
            await reload(gw, registry, config(WEB))
            ack = await tab.send_message("and again")
            assert ack["type"] == "ack"
            reply = await tab.wait_for(lambda f: f["type"] == "reply" and "again" in f["text"])
            assert reply["text"] == "echo: and again"
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{base}/chat/web2/")).status_code == 404


async def test_agent_prompt_changes_live_and_an_answer_in_flight_keeps_its_agent(
    tmp_path, registry
):
    async with open_gateway(config(), registry, tmp_path) as gw:
        support: FakeChannel = gw.channel("support")
        provider: GatedProvider = gw.provider()
        old_agent = gw.running.pipeline.agents["default"]
        provider.gate = trio.Event()
        await support.deliver("chat1", "alice", "first")
        await provider.entered.wait()
        changes = await reload(gw, registry, config(prompt="Be very polite."))
        assert changes is not None and changes.agents.changed == ("default",)
        assert not changes.providers and not changes.channels
        assert gw.running.pipeline.agents["default"] is not old_agent
        assert gw.provider() is provider  # an unchanged provider is kept, not rebuilt
        provider.gate.set()
        await support.wait_sent(1)
        await support.deliver("chat1", "alice", "second")
        await support.wait_sent(2)
        assert [r.system for r in provider.requests] == ["Be brief.", "Be very polite."]
        assert provider.closed == 0


async def test_replaced_provider_is_closed_once_its_answer_is_done(tmp_path, registry):
    async with open_gateway(config(), registry, tmp_path) as gw:
        support: FakeChannel = gw.channel("support")
        old: GatedProvider = gw.provider()
        old.gate = trio.Event()
        await support.deliver("chat1", "alice", "first")
        await old.entered.wait()
        changes = await reload(gw, registry, config(prefix="new: "))
        assert changes is not None and changes.providers.changed == ("model",)
        assert changes.agents.changed == ("default",)  # its provider changed
        new: GatedProvider = gw.provider()
        assert new is not old
        await trio.testing.wait_all_tasks_blocked()
        assert old.closed == 0  # an answer still uses it
        old.gate.set()
        await support.deliver("chat2", "bob", "second")
        await support.wait_sent(2)
        await gw.wait_idle()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(o.text for o in support.sent) == ["echo: first", "new: second"]
        assert old.closed == 1 and new.closed == 0
    assert new.closed == 1  # at shutdown


async def test_invalid_config_is_rejected_and_the_old_one_keeps_running(tmp_path, registry, caplog):
    async with open_gateway(config(), registry, tmp_path) as gw:
        support: FakeChannel = gw.channel("support")
        before = gw.running.reloader.config
        broken = config(SHOP).replace('account = "shop-bot"', 'acount = "shop-bot"')
        with caplog.at_level(logging.ERROR, logger="gateway"):
            assert await reload(gw, registry, broken) is None
        (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
        message = record.getMessage()
        assert "config reload rejected; still running the previous config" in message
        assert f"{gw.config.source}:" in message and "[channels.shop]" in message
        assert "key 'acount'" in message and "did you mean 'account'?" in message
        assert gw.running.reloader.config is before
        assert "shop" not in gw.running.pipeline.channels
        await support.deliver("chat1", "alice", "hello")
        assert (await support.wait_sent(1))[0].text == "echo: hello"
        # Fixed, it applies.
        assert await reload(gw, registry, config(SHOP)) is not None
        assert gw.channel("shop").running


async def test_keys_only_a_restart_applies_are_named_and_the_rest_applies(
    tmp_path, registry, caplog
):
    async with open_gateway(config(), registry, tmp_path) as gw:
        admin = gw.running.admin_urls[0]
        resolver = gw.running.reloader.resolver
        assert not resolver.permits("api.example.net")
        extra = 'workers = 8\noutbound_hosts = ["api.example.net"]'
        moved = config(SHOP, gateway_extra=extra).replace(
            'admin_bind = "127.0.0.1:0"', 'admin_bind = "127.0.0.1:1"'
        )
        with caplog.at_level(logging.WARNING, logger="gateway"):
            changes = await reload(gw, registry, moved)
        assert changes is not None
        assert changes.restart_needed == ("[gateway] workers", "[http] admin_bind")
        assert changes.channels.added == ("shop",)
        warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("[gateway] workers, [http] admin_bind changed" in w for w in warning)
        assert resolver.permits("api.example.net")  # applied live
        assert gw.running.admin_urls[0] == admin
        assert (await admin_get(gw, "/healthz")).status_code == 200


async def test_log_levels_apply_live(tmp_path, registry):
    name = "gateway.test_reload.live_levels"
    logger = logging.getLogger(name)
    try:
        async with open_gateway(config(), registry, tmp_path) as gw:
            extra = f'log_levels = {{ "{name}" = "ERROR" }}'
            await reload(gw, registry, config(gateway_extra=extra))
            assert logger.level == logging.ERROR
            await reload(gw, registry, config())
            assert logger.level == logging.NOTSET
    finally:
        logger.setLevel(logging.NOTSET)


async def test_messages_during_reloads_are_all_answered_exactly_once(tmp_path, registry):
    configs = [
        config(SHOP, prompt="One."),
        config(prompt="Two.", prefix="two: "),
        config(SHOP.replace("shop-bot", "shop-2"), prompt="Three."),
        config(),
    ]
    total = 120
    async with open_gateway(config(), registry, tmp_path) as gw:
        support: FakeChannel = gw.channel("support")
        delivered = trio.Event()

        async def write() -> None:
            for n in range(total):
                await support.deliver(f"chat{n % 12}", f"user{n % 12}", f"m{n}")
                if n % 4 == 0:
                    await trio.lowlevel.checkpoint()
            delivered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            rounds = 0
            while not delivered.is_set() or rounds < len(configs):
                assert await reload(gw, registry, configs[rounds % len(configs)]) is not None
                rounds += 1
        await support.wait_sent(total)
        await gw.wait_idle()
        texts = sorted(o.text.split(": ", 1)[1] for o in support.sent)
        assert texts == sorted(f"m{n}" for n in range(total))  # each once, none lost
        counters = gw.running.pipeline.counters
        assert counters["accepted"] == total and counters["replies"] == total
        assert rounds >= len(configs)


def test_diff_names_what_changed(tmp_path, registry):
    path = tmp_path / "gateway.toml"

    def load(text: str) -> GatewayConfig:
        path.write_text(text)
        return load_config(path, registry, environ={})

    old = load(config(SHOP))
    same = diff_configs(old, load(config(SHOP)), boot=old)
    assert not same.channels and not same.agents and not same.providers
    assert same.describe() == "no channel, agent or provider changed"
    disabled = diff_configs(old, load(config(SHOP + "enabled = false\n")), boot=old)
    assert disabled.channels.removed == ("shop",)
    moved = diff_configs(
        old, load(config(SHOP, http_extra='public_url = "https://x.example"')), boot=old
    )
    assert moved.channels.changed == ("support", "shop")  # webhooks register with public_url
    provider = diff_configs(old, load(config(SHOP, prefix="p: ")), boot=old)
    assert provider.providers.changed == ("model",) and provider.agents.changed == ("default",)
    assert provider.describe() == "agents ~default; providers ~model"


async def test_swapped_app_lets_a_request_in_flight_finish_then_shuts_down():
    events: list[str] = []
    entered, release = trio.Event(), trio.Event()

    def make(name: str) -> QuartTrio:
        app = QuartTrio(name)

        @app.get("/")
        async def index() -> str:
            if name == "old":
                entered.set()
                await release.wait()
            return name

        @app.before_serving
        async def up() -> None:
            events.append(f"{name} up")

        @app.after_serving
        async def down() -> None:
            events.append(f"{name} down")

        return app

    swappable = SwappableApp(make("old"))
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(
            functools.partial(hypercorn.trio.serve, swappable, config, shutdown_trigger=stop.wait)
        )
        async with httpx.AsyncClient(base_url=url) as http:
            slow: list[httpx.Response] = []
            async with trio.open_nursery() as requests:

                async def get_slowly() -> None:
                    slow.append(await http.get("/"))

                requests.start_soon(get_slowly)
                await entered.wait()
                await swappable.swap(make("new"))
                assert events == ["old up", "new up"]
                assert (await http.get("/")).text == "new"
                assert events == ["old up", "new up"]  # the old app still serves one request
                release.set()
            assert slow[0].status_code == 200 and slow[0].text == "old"
            await trio.testing.wait_all_tasks_blocked()
            assert events == ["old up", "new up", "old down"]
        stop.set()
    assert events == ["old up", "new up", "old down", "new down"]
