"""Calls: the TwiML a caller gets, the call log and voicemails (routes under /webhooks/NAME/voice).

- ``/voice`` (the number's "A call comes in" webhook): the call is logged
  (``Event(kind="call", event_key=CallSid)``) and answered with the TwiML of :mod:`.twiml`;
- ``/voice/status`` (the number's "Call status changes" callback): final status and duration,
  merged into the same call event;
- ``/voice/dial`` (``<Dial action>``): the forwarding result; voicemail when nobody answered;
- ``/voice/recorded`` (``<Record action>``): goodbye;
- ``/voice/recording`` (``recordingStatusCallback``): the voicemail is downloaded and stored
  as ``Event(kind="voicemail", event_key=RecordingSid, category="voicemail")`` with the audio
  (sealed by the core), or with its link only when the download fails.

While a call is live, a failing store must not cut the caller off: the call webhook and the dial
result are answered even then (the status callback, retried by Twilio, fills the call log in).
Callbacks after the call answer 503 on a store failure so that Twilio retries them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import quart
import trio

from gateway.errors import StoreError
from gateway.messages import Attachment, Event, utcnow

from . import twiml
from .convert import call_event, dial_event, voicemail, voicemail_event
from .rest import DownloadFailed

if TYPE_CHECKING:
    from .channel import TwilioChannel

Params = Mapping[str, Sequence[str]]

_AUDIO_TYPES = {"mp3": "audio/mpeg", "wav": "audio/x-wav"}


def xml(document: str) -> quart.Response:
    return quart.Response(document, status=200, content_type="text/xml; charset=utf-8")


class Voice:
    """The voice routes of one channel."""

    def __init__(self, channel: TwilioChannel) -> None:
        self.channel = channel
        self.config = channel.config
        self.log: logging.Logger = channel.log

    async def _log_live_call(self, event: Event) -> None:
        try:
            await self.channel.context.record_event(event)
        except StoreError as exc:
            self.log.warning(
                "could not store the call log entry (%s); the call is answered anyway", exc
            )

    async def incoming(self, params: Params, query: Params) -> quart.Response:
        event = call_event(params, now=utcnow())
        await self._log_live_call(event)
        base = self.channel.require_base()
        return xml(twiml.answer_call(self.config, base, event.thread_key, event.account))

    async def status(self, params: Params, query: Params) -> quart.Response:
        await self.channel.context.record_event(call_event(params, now=utcnow(), callback=True))
        return xml(twiml.empty())

    async def dialed(self, params: Params, query: Params) -> quart.Response:
        event = dial_event(params)
        await self._log_live_call(event)
        status = str(event.detail.get("forward_status", ""))
        base = self.channel.require_base()
        return xml(twiml.after_dial(self.config, base, status, event.thread_key, event.account))

    async def recorded(self, params: Params, query: Params) -> quart.Response:
        return xml(twiml.after_recording(self.config))

    async def recording(self, params: Params, query: Params) -> quart.Response:
        mail = voicemail(params, query)
        if mail.status != "completed":
            # "absent" (too short or silent) and "failed" carry no audio to keep.
            self.log.info("voicemail %s not stored: recording %s", mail.recording_sid, mail.status)
            return xml(twiml.empty())
        fmt = self.config.recording_format
        audio = Attachment(
            kind="audio",
            mime_type=_AUDIO_TYPES[fmt],
            filename=f"{mail.recording_sid}.{fmt}",
            url=f"{mail.recording_url}.{fmt}",
        )
        if not self.channel.seen(mail.recording_sid):
            audio = await self._download(audio)
        await self.channel.context.record_event(voicemail_event(mail, audio))
        self.channel.remember(mail.recording_sid)
        return xml(twiml.empty())

    async def _download(self, audio: Attachment) -> Attachment:
        assert audio.url is not None
        with trio.move_on_after(self.config.media_timeout):
            try:
                got = await self.channel.rest.download(audio.url, limit=self.config.max_media_bytes)
            except DownloadFailed as exc:
                self.log.warning("voicemail download failed (%s); stored as a link", exc)
                return audio
            return Attachment(
                kind="audio",
                mime_type=got.content_type or audio.mime_type,
                filename=audio.filename,
                data=got.data,
                url=audio.url,
            )
        self.log.warning("voicemail download took too long; stored as a link")
        return audio
