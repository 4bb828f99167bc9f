"""Max messenger channel plugin (entry point ``max``): long polling or a webhook."""

from .channel import MaxChannel
from .config import MaxConfig

__all__ = ["MaxChannel", "MaxConfig"]
