"""Google Gemini through its OpenAI-compatible endpoint, on the OpenAI provider's code path.

Google serves the chat completions API at ``.../v1beta/openai/`` with a Gemini API key as the
bearer token, so :class:`GeminiProvider` is :class:`~plugins.openai.OpenAIProvider` with its own
defaults: the same SDK client, timeout, error mapping and clean-up (see that module's
docstring). The ``google-genai`` SDK is not used: it is not proven to run under trio here, and
one code path is less to keep working.
"""

from __future__ import annotations

from pydantic import Field

from gateway.secretref import Secret
from plugins.openai.provider import OpenAIProvider

__all__ = ["GeminiProvider"]


class GeminiProvider(OpenAIProvider):
    """An LLM provider for Google Gemini (the OpenAI-compatible API)."""

    class Config(OpenAIProvider.Config):
        """``[providers.NAME]`` with ``plugin = "gemini"``: the ``openai`` keys, Gemini defaults."""

        base_url: str = Field(
            "https://generativelanguage.googleapis.com/v1beta/openai",
            # Google writes it with a trailing slash; this is the form base_url's validator
            # gives any value written in the config, so the default compares equal to it.
            description="The OpenAI-compatible API root of the Gemini API.",
        )
        api_key: Secret = Field(
            description="A secret reference to a Gemini API key (env:GEMINI_API_KEY); required."
        )
        model: str = Field(
            min_length=1, description="The Gemini model name (gemini-2.5-flash, gemini-2.5-pro)."
        )
