"""WhatsApp Business Cloud API channel (``plugin = "whatsapp"``)."""

from .channel import WhatsAppChannel
from .config import WhatsAppConfig, WindowTemplate

__all__ = ["WhatsAppChannel", "WhatsAppConfig", "WindowTemplate"]
