"""Twilio channel plugin (entry point ``twilio``): SMS/MMS by webhook + REST API, and calls."""

from .channel import TwilioChannel
from .config import TwilioConfig

__all__ = ["TwilioChannel", "TwilioConfig"]
