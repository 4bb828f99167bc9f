"""The ``anthropic`` LLM provider plugin: Claude through Anthropic's Messages API."""

from plugins.anthropic.provider import AnthropicProvider

__all__ = ["AnthropicProvider"]
