"""Email channel plugin (entry point ``email``): IMAP in (IDLE or polling), SMTP out."""

from .channel import EmailChannel
from .config import EmailConfig

__all__ = ["EmailChannel", "EmailConfig"]
