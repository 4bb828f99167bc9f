"""The public API is small and deliberate: these names are the contract plugin authors use."""

from __future__ import annotations

import gateway.errors
import gateway.messages
import gateway.plugin


def test_plugin_module_exports():
    assert set(gateway.plugin.__all__) == {
        "Accepted",
        "Channel",
        "ChannelConfig",
        "ChannelContext",
        "HistoryItem",
        "LLMProvider",
        "PluginConfig",
        "PluginInfo",
        "ProviderConfig",
        "ProviderContext",
        "Registry",
        "load_registry",
    }
    for name in gateway.plugin.__all__:
        assert getattr(gateway.plugin, name).__doc__, f"{name} needs a docstring"


def test_message_types_are_frozen():
    import dataclasses

    for name in (
        "Inbound",
        "Outbound",
        "SendResult",
        "ChatMessage",
        "CompletionRequest",
        "Completion",
        "Attachment",
    ):
        cls = getattr(gateway.messages, name)
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, name


def test_errors_tree():
    for name in (
        "ConfigError",
        "MasterKeyError",
        "StoreError",
        "PluginError",
        "SendError",
        "ProviderError",
    ):
        assert issubclass(getattr(gateway.errors, name), gateway.errors.GatewayError)
