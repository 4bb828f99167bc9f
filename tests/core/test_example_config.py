"""Docs that cannot rot: the example config loads, and documents every key of every plugin."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.config import TOP_LEVEL, AgentConfig, load_config
from gateway.plugin import load_registry

EXAMPLE = Path(__file__).parents[2] / "config" / "gateway.example.toml"
ENV = {
    "TELEGRAM_TOKEN": "1:abcdefghijk",
    "OPENAI_API_KEY": "sk-abcdefghijk",
    "FB_PAGE_TOKEN": "EAAexamplepagetoken",
    "IG_TOKEN": "IGQexampletoken",
    "META_APP_SECRET": "example-app-secret",
    "META_VERIFY_TOKEN": "example-verify-token",
    "TWILIO_AUTH_TOKEN": "example-twilio-auth-token",
    "WHATSAPP_TOKEN": "EAAexamplewhatsapptoken",
    "WHATSAPP_APP_SECRET": "example-whatsapp-app-secret",
    "WHATSAPP_VERIFY_TOKEN": "example-whatsapp-verify-token",
}


def documented_keys() -> set[str]:
    return set(re.findall(r"^\s*#?\s*([a-z_]+)\s*=", EXAMPLE.read_text(), flags=re.MULTILINE))


def test_example_config_loads():
    config = load_config(EXAMPLE, load_registry(), environ=ENV)
    assert {"support_bot", "web"} <= set(config.channels)


def test_every_key_is_documented_in_the_example():
    keys = documented_keys()
    registry = load_registry()
    models = [*TOP_LEVEL.values(), AgentConfig]  # [gateway], [http], [retention], [api]...
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


def test_example_config_checks_without_its_secrets():
    """What `gateway init` and the offline commands do: references checked, not resolved, and
    no plugin's validator trips over a secret it cannot see yet."""
    config = load_config(EXAMPLE, load_registry(), environ={}, defer_secrets=True)
    assert {"support_bot", "web"} <= set(config.channels)
