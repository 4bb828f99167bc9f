"""Website chat channel plugin (entry point ``webchat``): a page and a websocket at /chat/NAME/."""

from .channel import WebchatChannel, WebchatConfig

__all__ = ["WebchatChannel", "WebchatConfig"]
