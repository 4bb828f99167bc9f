"""Docs that cannot rot: the example config loads, and documents every key of every plugin."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.config import AgentConfig, GatewaySection, HttpSection, load_config
from gateway.plugin import load_registry

EXAMPLE = Path(__file__).parents[2] / "config" / "gateway.example.toml"
ENV = {"TELEGRAM_TOKEN": "1:abcdefghijk", "OPENAI_API_KEY": "sk-abcdefghijk"}


def documented_keys() -> set[str]:
    return set(re.findall(r"^\s*#?\s*([a-z_]+)\s*=", EXAMPLE.read_text(), flags=re.MULTILINE))


def test_example_config_loads():
    config = load_config(EXAMPLE, load_registry(), environ=ENV)
    assert {"support_bot", "web"} <= set(config.channels)


def test_every_key_is_documented_in_the_example():
    keys = documented_keys()
    registry = load_registry()
    models = [GatewaySection, HttpSection, AgentConfig]
    models += [info.cls.Config for info in registry.channels.values()]
    models += [info.cls.Config for info in registry.providers.values()]
    missing = {
        f"{model.__qualname__}.{field}"
        for model in models
        for field in model.model_fields
        if field not in keys
    }
    assert not missing, f"add these keys to {EXAMPLE.name}: {sorted(missing)}"


def test_every_builtin_plugin_appears_in_the_example():
    text = EXAMPLE.read_text()
    registry = load_registry()
    for name in [*registry.channels, *registry.providers]:
        assert f'plugin = "{name}"' in text, name
