"""The ``faq`` LLM provider plugin: offline answers from a knowledge file, no model needed."""

from plugins.faq.provider import FaqProvider

__all__ = ["FaqProvider"]
