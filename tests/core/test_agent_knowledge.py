"""An agent's knowledge folder is indexed at start and the matching snippet joins the prompt."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.testing.daemon import http_config, open_gateway
from gateway.testing.fake_channel import FakeChannel

CONFIG = (
    http_config(0, public_url=False)
    + """
[channels.support]
plugin = "fake"
[agents.default]
provider = "model"
knowledge_dir = "{folder}"
[providers.model]
plugin = "fake"
"""
)


async def test_matching_snippet_is_added_to_the_system_prompt(tmp_path, fake_registry):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "shipping.md").write_text(
        "# Shipping\n\nWe ship to Norway and Sweden within 4 working days. Shipping is free over 50 EUR.\n"
    )
    (docs / "returns.md").write_text("# Возврат\n\nВозврат товара возможен в течение 30 дней.\n")
    async with open_gateway(CONFIG.format(folder="docs"), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        await channel.deliver("c1", "u1", "Do you ship to Norway?")
        await channel.deliver("c2", "u2", "Как оформить возврат товара?")
        await channel.wait_sent(2)
        requests = {r.messages[-1].content: r.system for r in gw.provider().requests}
    assert "within 4 working days" in requests["Do you ship to Norway?"]
    assert "30 дней" not in requests["Do you ship to Norway?"]
    assert "30 дней" in requests["Как оформить возврат товара?"]


async def test_missing_knowledge_folder_is_a_config_error(tmp_path, fake_registry):
    with pytest.raises(ConfigError, match="knowledge folder .* does not exist"):
        async with open_gateway(CONFIG.format(folder="nowhere"), fake_registry, tmp_path):
            pass
