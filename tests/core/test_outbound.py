"""No outbound connection the config does not name: while the gateway runs, a host that no URL in
the config names cannot even be resolved, by any client in the process."""

from __future__ import annotations

import httpx
import pytest

from gateway.outbound import AllowlistResolver, hosts_in
from gateway.plugin import load_registry
from gateway.testing.daemon import open_gateway
from gateway.testing.fake_openai import open_fake_openai
from gateway.testing.fake_telegram import open_fake_telegram

TOKEN = "123456:outbound-test"
CONFIG = """
[gateway]
data_dir = "data"
outbound_hosts = ["*.partner.example"]
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
[channels.bot]
plugin = "telegram"
token = "env:TELEGRAM_TOKEN"
api_base = "http://localhost:{tg_port}"
[agents.default]
provider = "main"
[providers.main]
plugin = "openai"
base_url = "http://localhost:{llm_port}/v1"
api_key = "env:OPENAI_API_KEY"
model = "m"
"""


def test_hosts_named_by_urls_and_wildcards():
    assert hosts_in(
        [{"a": "https://API.Telegram.org/bot", "b": ["http://x.example:8/v1", "no url"]}]
    ) == {
        "api.telegram.org",
        "x.example",
    }
    resolver = AllowlistResolver({"api.openai.com", "*.partner.example"})
    assert resolver.permits("api.openai.com") and resolver.permits("API.OPENAI.COM.")
    assert resolver.permits("eu.partner.example") and resolver.permits("partner.example")
    assert resolver.permits("localhost")
    assert not resolver.permits("telemetry.vendor.example") and not resolver.permits(
        "evilpartner.example"
    )


async def test_unnamed_host_is_refused_for_every_client_while_named_ones_work(tmp_path, caplog):
    env = {"TELEGRAM_TOKEN": TOKEN, "OPENAI_API_KEY": "sk-x"}
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        text = CONFIG.format(tg_port=tg.port, llm_port=llm.port)
        async with open_gateway(text, load_registry(), tmp_path, environ=env) as gw:
            # The configured channel and provider reach "localhost" by name...
            tg.push_message(42, "hello by name")
            (reply,) = await tg.wait_sent(1)
            assert reply.text == "echo: hello by name"
            # ...while any other name fails at resolution, whoever asks.
            async with httpx.AsyncClient() as client:
                with pytest.raises(httpx.ConnectError, match="not an allowed outbound host"):
                    await client.get("http://telemetry.vendor.example/ping")
            # An IP literal never reaches a resolver: the shared client checks it itself, and
            # lets through the loopback address the config names.
            shared = gw.channel("bot").context.http
            with pytest.raises(httpx.ConnectError, match="not an allowed outbound host"):
                await shared.get("http://192.0.2.7/ping")
            named = await shared.get(f"http://127.0.0.1:{llm.port}/v1/models")
            assert named.status_code < 500
    assert "outbound connection to telemetry.vendor.example refused" in caplog.text
    assert "outbound connection to 192.0.2.7 refused" in caplog.text
    # After the gateway stops, its resolver is gone from this trio run.
    import trio

    previous = trio.socket.set_custom_hostname_resolver(None)
    assert not isinstance(previous, AllowlistResolver)
