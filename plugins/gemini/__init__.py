"""The ``gemini`` LLM provider plugin: Google Gemini through its OpenAI-compatible endpoint."""

from plugins.gemini.provider import GeminiProvider

__all__ = ["GeminiProvider"]
