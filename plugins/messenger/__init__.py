"""Facebook Messenger (entry point ``messenger``) and Instagram direct messages (entry point
``instagram``): Meta webhooks in, the Graph Send API out."""

from .channel import InstagramChannel, MessengerChannel
from .config import InstagramConfig, MessengerConfig

__all__ = ["InstagramChannel", "InstagramConfig", "MessengerChannel", "MessengerConfig"]
