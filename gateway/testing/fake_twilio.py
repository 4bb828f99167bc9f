"""PUBLIC: a fake Twilio (REST API 2010-04-01 and its webhooks) on 127.0.0.1, for tests.

The REST side answers what the Twilio channel calls, with Basic auth (account SID : auth token)
and Twilio's JSON shapes (``{"code", "message", "more_info", "status"}`` on errors):

- ``POST /2010-04-01/Accounts/{Sid}/Messages.json`` (To, From or MessagingServiceSid, Body,
  MediaUrl..., StatusCallback): 21604/21603 missing To/From, 21211 invalid To, 21606 a From
  that is not one of ``numbers``, 21619 no Body nor media, 21617 Body over 1,600 characters,
  21610 a recipient who sent STOP to that number; 201 with the Message resource otherwise;
- ``GET .../Messages.json`` (filters To, From, DateSent, ``DateSent<``, ``DateSent>``, PageSize,
  newest first) and ``GET .../Messages/{Sid}.json``; ``GET /2010-04-01/Accounts/{Sid}.json``;
- media ``GET .../Messages/{MM}/Media/{ME}``: with ``media_auth`` (Twilio's "HTTP Basic Auth for
  media") it needs the credentials and redirects (307) to a credential-free ``/cdn/...`` URL, as
  Twilio redirects to its CDN; recordings ``GET .../Recordings/{RE}.mp3`` / ``.wav``.

The webhook side posts signed forms exactly as Twilio does (``X-Twilio-Signature``: HMAC-SHA1 of
the URL it calls + the sorted parameters, with the auth token), re-sending a callback until it
gets a 2xx (``max_attempts``): :meth:`~FakeTwilioServer.send_sms` (Advanced Opt-Out included:
STOP/START/HELP are answered by "Twilio" itself, recorded in ``auto_replies``, and STOP makes
later sends to that number fail with 21610), :meth:`~FakeTwilioServer.message_status`, and
:meth:`~FakeTwilioServer.call`, which follows the TwiML it gets (Say, Dial with action, Record with
action and recordingStatusCallback, Hangup) and then posts the call status callback.

:meth:`~FakeTwilioServer.route_via` models a TLS proxy: Twilio signs the public URL while the
request reaches the gateway at a local address.

Departures, on purpose: messages are "sent" at once (``date_sent`` is set at creation); phone
numbers are checked for shape only; voice TwiML other than the verbs above is ignored.
Standalone: ``python -m gateway.testing.fake_twilio --port 0`` prints the API base URL.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal
from urllib.parse import urljoin

import httpx

from gateway.testing._fake_twilio_api import (
    API,
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    DEFAULT_NUMBER,
    FakeMessage,
    TwilioApi,
    new_sid,
    rfc2822,
)
from gateway.testing._http import serve_standalone, serving
from gateway.testing._posting import post

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_AUTH_TOKEN",
    "DEFAULT_NUMBER",
    "CallOutcome",
    "FAKE_AUDIO",
    "FakeMessage",
    "FakeTwilioServer",
    "open_fake_twilio",
    "signature",
]

FAKE_AUDIO = b"ID3\x04\x00fake-voicemail-audio" + bytes(range(64))
_OPT_OUT = {"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout", "revoke"}
_OPT_IN = {"start", "unstop", "yes"}
_HELP = {"help", "info"}
_KEYWORDS = {
    **dict.fromkeys(_OPT_OUT, "STOP"),
    **dict.fromkeys(_OPT_IN, "START"),
    **dict.fromkeys(_HELP, "HELP"),
}
# Twilio's default Advanced Opt-Out answers.
_AUTO = {
    "STOP": "You have successfully been unsubscribed. You will not receive any more messages "
    "from this number. Reply START to resubscribe.",
    "START": "You have successfully been re-subscribed to messages from this number. Reply "
    "HELP for help. Reply STOP to unsubscribe. Msg&Data Rates May Apply.",
    "HELP": "Reply STOP to unsubscribe. Msg&Data Rates May Apply.",
}


def signature(auth_token: str, url: str, params: Mapping[str, list[str]]) -> str:
    """Twilio's scheme: base64 HMAC-SHA1 (auth token) of the URL followed by each parameter
    name and value, names sorted, a repeated name's distinct values sorted."""
    data = url + "".join(n + v for n in sorted(params) for v in sorted(set(params[n])))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclasses.dataclass
class CallOutcome:
    """What :meth:`FakeTwilioServer.call` saw: the TwiML documents in order, what was said and
    dialed, the recording made, and every webhook answer as (URL, HTTP status)."""

    call_sid: str
    documents: list[str] = dataclasses.field(default_factory=list)
    said: list[str] = dataclasses.field(default_factory=list)
    dialed: list[str] = dataclasses.field(default_factory=list)
    recording_sid: str | None = None
    webhooks: list[tuple[str, int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Play:
    """One call in progress in :meth:`FakeTwilioServer.call`."""

    call: dict[str, str]
    outcome: CallOutcome
    answer: str
    recording: bytes
    recording_seconds: int
    seconds: int = 0
    later: list[tuple[str, dict[str, str]]] = dataclasses.field(default_factory=list)


class FakeTwilioServer(TwilioApi):
    """A fake Twilio account. Start it with ``await nursery.start(server.serve)``.

    Point its numbers at the gateway with :meth:`point_webhooks` (the console's "A message comes
    in", "A call comes in" and "Call status changes" URLs). Attributes tests read: ``sent``,
    ``auto_replies``, ``messages``, ``unsubscribed``, ``webhook_log``, ``requests``.
    """

    # -- console configuration and scripting ------------------------------------------------

    def point_webhooks(self, base: str) -> None:
        """Set the numbers' webhooks to ``base`` + /sms, /voice and /voice/status."""
        self.sms_url, self.voice_url = f"{base}/sms", f"{base}/voice"
        self.voice_status_url = f"{base}/voice/status"

    def route_via(self, public_prefix: str, local_prefix: str) -> None:
        """Requests to URLs under ``public_prefix`` are signed for that URL but sent to
        ``local_prefix`` instead (a TLS proxy in front of the gateway)."""
        self._proxy = (public_prefix, local_prefix)

    # -- webhooks, as Twilio calls them -----------------------------------------------------

    def signature(self, url: str, params: Mapping[str, str], token: str | None = None) -> str:
        """``X-Twilio-Signature`` for a POST of ``params`` to ``url``, computed as Twilio's
        helper libraries do it (written apart from gateway.webhooks on purpose, so a mistake
        there is not mirrored here)."""
        return signature(token or self.auth_token, url, {k: [v] for k, v in params.items()})

    async def post_form(
        self,
        url: str,
        params: Mapping[str, str],
        *,
        signature: str | None | Literal["auto"] = "auto",
        token: str | None = None,
    ) -> httpx.Response:
        """One signed POST of ``params`` to ``url`` (``signature=None``: no header; a string:
        that header; ``token``: signed with another auth token)."""
        if self._http is None:
            raise RuntimeError("FakeTwilioServer is not serving (start it with serve())")
        headers = {"User-Agent": "TwilioProxy/1.1"}
        if signature == "auto":
            signature = self.signature(url, params, token)
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        target = url
        if self._proxy and url.startswith(self._proxy[0]):
            target = self._proxy[1] + url[len(self._proxy[0]) :]
        return await post(self._http, target, data=params, headers=headers)

    async def deliver(self, url: str, params: Mapping[str, str]) -> int:
        """POST until a 2xx answer (at most ``max_attempts``); return the last status."""
        status = 0
        for _ in range(self.max_attempts):
            status = (await self.post_form(url, params)).status_code
            self.webhook_log.append((url, status))
            if 200 <= status < 300:
                break
        return status

    def incoming_message(
        self,
        sender: str,
        body: str,
        *,
        to: str | None = None,
        media: tuple[tuple[str, bytes], ...] = (),
        sid: str | None = None,
    ) -> dict[str, str]:
        """A contact texts one of our numbers: stores it, applies Advanced Opt-Out, and returns
        the webhook's parameters (post them with :meth:`deliver`, or use :meth:`send_sms`)."""
        to = to or self.numbers[0]
        sid = sid or new_sid("MM" if media else "SM")
        params = {
            "ToCountry": "US",
            "ToState": "CA",
            "SmsMessageSid": sid,
            "NumMedia": str(len(media)),
            "ToCity": "",
            "FromZip": "",
            "SmsSid": sid,
            "FromState": "",
            "SmsStatus": "received",
            "FromCity": "",
            "Body": body,
            "FromCountry": "US",
            "To": to,
            "ToZip": "",
            "NumSegments": "1",
            "MessageSid": sid,
            "AccountSid": self.account_sid,
            "From": sender,
            "ApiVersion": "2010-04-01",
        }
        if self.messaging_service_sid:
            params["MessagingServiceSid"] = self.messaging_service_sid
        for index, (content_type, data) in enumerate(media):
            media_sid = new_sid("ME")
            self._media[media_sid] = (content_type, data)
            url = f"{self.api_base}{API}{self.account_sid}/Messages/{sid}/Media/{media_sid}"
            params[f"MediaContentType{index}"] = content_type
            params[f"MediaUrl{index}"] = url
        now = dt.datetime.now(dt.UTC)
        self.messages[sid] = FakeMessage(sid, to, sender, body, "inbound", "received", now)
        word = " ".join(body.split()).lower()
        kind = _KEYWORDS.get(word)
        if kind is not None:
            params["OptOutType"] = kind
            if kind == "STOP":
                self.unsubscribed.add((to, sender))
            elif kind == "START":
                self.unsubscribed.discard((to, sender))
            reply = FakeMessage(
                new_sid("SM"), sender, to, _AUTO[kind], "outbound-reply", "sent", now
            )
            self.messages[reply.sid] = reply
            self.auto_replies.append(reply)
        return params

    async def send_sms(self, sender: str, body: str, **kwargs: Any) -> dict[str, str]:
        """:meth:`incoming_message`, delivered to the messaging webhook until acknowledged."""
        if self.sms_url is None:
            raise RuntimeError("no messaging webhook set (point_webhooks)")
        params = self.incoming_message(sender, body, **kwargs)
        await self.deliver(self.sms_url, params)
        return params

    async def message_status(self, sid: str, status: str, *, error_code: int | None = None) -> int:
        """The status of a message we sent changes: post its StatusCallback as Twilio does."""
        message = self.messages[sid]
        message.status = status
        if not message.status_callback:
            raise RuntimeError(f"message {sid} was sent without a StatusCallback")
        params = {
            "SmsSid": sid,
            "SmsStatus": status,
            "MessageStatus": status,
            "To": message.to,
            "MessageSid": sid,
            "AccountSid": self.account_sid,
            "From": message.from_,
            "ApiVersion": "2010-04-01",
        }
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        if status == "delivered":
            params["RawDlrDoneDate"] = dt.datetime.now(dt.UTC).strftime("%y%m%d%H%M")
        return await self.deliver(message.status_callback, params)

    async def call(
        self,
        caller: str,
        *,
        to: str | None = None,
        answer: Literal["completed", "no-answer", "busy", "failed"] = "no-answer",
        recording: bytes = FAKE_AUDIO,
        recording_seconds: int = 7,
    ) -> CallOutcome:
        """A call to one of our numbers, played through the TwiML the gateway answers; then the
        call status callback and the recording callbacks. ``answer`` is what a ``<Dial>`` gets
        (a "completed" forwarded call lasts 42 s)."""
        if self.voice_url is None:
            raise RuntimeError("no voice webhook set (point_webhooks)")
        outcome = CallOutcome(new_sid("CA"))
        to = to or self.numbers[0]
        call = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": outcome.call_sid,
            "CallStatus": "ringing",
            "Called": to,
            "Caller": caller,
            "Direction": "inbound",
            "From": caller,
            "FromCountry": "US",
            "To": to,
            "ToCountry": "US",
        }
        play = _Play(call, outcome, answer, recording, recording_seconds)
        url: str | None = self.voice_url
        params = call
        # Ten documents at most: a <Record> without an action makes Twilio request the same
        # document again, a loop the real caller would hear as the greeting over and over.
        for _ in range(10):
            if url is None:
                break
            response = await self.post_form(url, params)  # TwiML requests are not retried
            outcome.webhooks.append((url, response.status_code))
            if response.status_code != 200:
                break  # the caller hears "an application error has occurred"
            outcome.documents.append(response.text)
            url, params = self._play(response.text, url, play)
        if self.voice_status_url:
            done = {
                **call,
                "CallStatus": "completed",
                "CallDuration": str(play.seconds),
                "Duration": str(max(1, (play.seconds + 59) // 60)),
                "Timestamp": rfc2822(dt.datetime.now(dt.UTC)),
                "CallbackSource": "call-progress-events",
                "SequenceNumber": "0",
            }
            outcome.webhooks.append(
                (self.voice_status_url, await self.deliver(self.voice_status_url, done))
            )
        for callback, form in play.later:
            outcome.webhooks.append((callback, await self.deliver(callback, form)))
        return outcome

    def _play(self, document: str, url: str, play: _Play) -> tuple[str | None, dict[str, str]]:
        """Run one TwiML document; return the next URL to request (an action) and its form."""
        root = ET.fromstring(document)
        if root.tag != "Response":
            raise AssertionError(f"TwiML root is <{root.tag}>, not <Response>")
        outcome = play.outcome
        for verb in root:
            if verb.tag == "Say":
                outcome.said.append(verb.text or "")
                play.seconds += 2
            elif verb.tag == "Dial":
                outcome.dialed.append(verb.findtext("Number") or (verb.text or "").strip())
                result = {**play.call, "CallStatus": "in-progress", "DialCallStatus": play.answer}
                result["DialCallSid"] = new_sid("CA")
                if play.answer == "completed":
                    result["DialCallDuration"] = "42"
                    play.seconds += 42
                if verb.get("action"):
                    return urljoin(url, verb.get("action", "")), result
            elif verb.tag == "Record":
                sid = outcome.recording_sid = new_sid("RE")
                self._recordings[sid] = play.recording
                play.seconds += play.recording_seconds
                done = {
                    "RecordingSid": sid,
                    "RecordingUrl": f"{self.api_base}{API}{self.account_sid}/Recordings/{sid}",
                    "RecordingDuration": str(play.recording_seconds),
                }
                if verb.get("recordingStatusCallback"):
                    status = {
                        "AccountSid": self.account_sid,
                        "CallSid": outcome.call_sid,
                        **done,
                        "RecordingStatus": "completed",
                        "RecordingChannels": "1",
                        "RecordingStartTime": rfc2822(dt.datetime.now(dt.UTC)),
                        "RecordingSource": "RecordVerb",
                        "RecordingTrack": "inbound",
                    }
                    play.later.append(
                        (urljoin(url, verb.get("recordingStatusCallback", "")), status)
                    )
                # Without an action Twilio requests the current document again.
                return urljoin(url, verb.get("action") or url), {**play.call, **done}
            elif verb.tag in ("Hangup", "Reject"):
                break
        return None, {}


def open_fake_twilio(**kwargs: Any) -> AbstractAsyncContextManager[FakeTwilioServer]:
    """Run a :class:`FakeTwilioServer` (constructor arguments as keywords) for the block."""
    return serving(FakeTwilioServer(**kwargs))


def main(argv: list[str] | None = None) -> None:
    serve_standalone(
        "Run a fake Twilio REST API on 127.0.0.1.",
        lambda args: FakeTwilioServer(port=args.port),
        lambda server: server.api_base,
        argv,
    )


if __name__ == "__main__":
    main()
