"""The ``openai`` LLM provider plugin: OpenAI and OpenAI-compatible servers (Ollama, vLLM, ...)."""

from plugins.openai.provider import OpenAIProvider

__all__ = ["OpenAIProvider"]
