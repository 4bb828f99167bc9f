"""Telegram channel plugin (entry point ``telegram``): long polling or a webhook."""

from .channel import TelegramChannel, TelegramConfig

__all__ = ["TelegramChannel", "TelegramConfig"]
