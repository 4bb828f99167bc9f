"""Website chat channel plugin (entry point ``webchat``): an embeddable widget (``widget.js``),
the same chat as a page at /chat/NAME/, a websocket and its SSE + POST fallback."""

from .channel import WebchatChannel
from .config import WebchatConfig

__all__ = ["WebchatChannel", "WebchatConfig"]
