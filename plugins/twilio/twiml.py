"""TwiML documents the channel answers Twilio's webhooks with (pure; no I/O).

Built with ElementTree, which escapes text and attribute values, so a greeting with ``&`` or
``<`` and a callback URL with a query string stay well-formed XML. Characters XML 1.0 cannot
carry (control characters) are dropped.

The voice flow (twilio.com/docs/voice/twiml):

- greeting (``<Say>``), then, when ``forward_to`` is set, ``<Dial action=.../voice/dial>``:
  Twilio asks the action URL what to do once the forwarded call ends;
- when nobody answered (or nothing is forwarded) and ``record_voicemail`` is on: the
  ``recording_notice``, then ``<Record playBeep action=.../voice/recorded
  recordingStatusCallback=.../voice/recording?from=..&to=..>``; the recording is never made
  without the notice just before it (the config refuses an empty one);
- otherwise the goodbye and ``<Hangup/>``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from urllib.parse import quote, urlencode

from .config import TwilioConfig

__all__ = ["after_dial", "after_recording", "answer_call", "empty"]

_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_ANSWERED = frozenset({"completed", "answered"})


def _clean(text: str) -> str:
    return _NOT_XML.sub("", text)


def _render(response: ET.Element) -> str:
    return _DECLARATION + ET.tostring(response, encoding="unicode")


def empty() -> str:
    """``<Response/>``: the answer to an incoming message (replies go through the REST API)."""
    return _render(ET.Element("Response"))


def _say(parent: ET.Element, config: TwilioConfig, text: str) -> None:
    if not text.strip():
        return
    attributes = {"language": config.voice_language}
    if config.voice_name:
        attributes["voice"] = config.voice_name
    ET.SubElement(parent, "Say", {k: _clean(v) for k, v in attributes.items()}).text = _clean(text)


def _voicemail_or_goodbye(
    response: ET.Element, config: TwilioConfig, base: str, caller: str, called: str
) -> None:
    if not config.record_voicemail:
        _say(response, config, config.voicemail_goodbye)
        ET.SubElement(response, "Hangup")
        return
    _say(response, config, config.recording_notice)
    # Twilio sends no From/To with a recording callback; carried in the signed URL instead.
    query = urlencode({"from": caller, "to": called}, quote_via=quote)
    ET.SubElement(
        response,
        "Record",
        {
            "action": f"{base}/voice/recorded",
            "method": "POST",
            "maxLength": str(config.voicemail_max_seconds),
            "playBeep": "true",
            "recordingStatusCallback": _clean(f"{base}/voice/recording?{query}"),
            "recordingStatusCallbackMethod": "POST",
            "recordingStatusCallbackEvent": "completed",
        },
    )


def answer_call(config: TwilioConfig, base: str, caller: str, called: str) -> str:
    """The answer to an incoming call. ``base`` is the channel's public webhook URL."""
    response = ET.Element("Response")
    _say(response, config, config.voice_greeting)
    if config.forward_to:
        dial = ET.SubElement(
            response,
            "Dial",
            {
                "action": f"{base}/voice/dial",
                "method": "POST",
                "timeout": str(config.dial_timeout),
            },
        )
        ET.SubElement(dial, "Number").text = config.forward_to
    else:
        _voicemail_or_goodbye(response, config, base, caller, called)
    return _render(response)


def after_dial(config: TwilioConfig, base: str, dial_status: str, caller: str, called: str) -> str:
    """The answer to ``<Dial action>``: hang up after a conversation, else voicemail/goodbye."""
    response = ET.Element("Response")
    if dial_status.lower() in _ANSWERED:
        ET.SubElement(response, "Hangup")
    else:
        _voicemail_or_goodbye(response, config, base, caller, called)
    return _render(response)


def after_recording(config: TwilioConfig) -> str:
    """The answer to ``<Record action>``: without it Twilio would request the call webhook
    again and the caller would hear the greeting a second time."""
    response = ET.Element("Response")
    _say(response, config, config.voicemail_goodbye)
    ET.SubElement(response, "Hangup")
    return _render(response)
