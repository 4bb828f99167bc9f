"""The Twilio channel: SMS/MMS in by webhook and out by the REST API, calls answered with TwiML.

Webhooks (all POST, form-encoded, each verified with ``X-Twilio-Signature`` over the public URL
Twilio was given; see :class:`~plugins.twilio.config.TwilioConfig`):

- ``/webhooks/NAME/sms``: incoming messages. MMS media is downloaded before ``accept`` (the core
  seals it); a download that fails or runs out of time leaves the link only. Answered with an
  empty ``<Response/>``: replies go through the REST API, never TwiML.
- ``/webhooks/NAME/status``: status callbacks of our messages -> ``update_delivery``.
- ``/webhooks/NAME/voice...``: calls, see :mod:`.voice`.

Sending is idempotent across retries: each attempt first records "trying" in the channel state
keyed by the outbound's idempotency key, then the created message's SID; a retry returns a
stored SID without sending, and when an earlier attempt's outcome is unknown (a 5xx, a lost
answer, a crash mid-request) the message is looked up in Twilio's message list before anything
is sent again.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, quote

import httpx
import quart
import trio

from gateway.errors import PluginError, SendError, StoreError
from gateway.messages import Attachment, Outbound, SendResult, utcnow
from gateway.plugin import ChannelContext
from gateway.webhooks import (
    WebhookHandler,
    WebhookRefused,
    WebhookRequest,
    WebhookRoute,
    plain,
    read_body,
    refusal,
    verify_twilio_signature,
)

from . import twiml
from .config import E164, TwilioConfig
from .convert import (
    MAX_MEDIA,
    FormError,
    MediaItem,
    delivery_update,
    message_to_inbound,
    parse_form,
    send_error,
    split_body,
    transport_error,
)
from .rest import DownloadFailed, TwilioRest
from .voice import Voice, xml

__all__ = ["TwilioChannel"]

SIGNATURE_HEADER = "X-Twilio-Signature"
_MAX_FORM_BYTES = 64 * 1024  # an SMS webhook is ~1 KiB; a 1,600-character body fits easily
_PHONE = re.compile(r"^\+?[1-9]\d{2,14}$")
_SEEN = 2048

Params = Mapping[str, Sequence[str]]
Handler = Callable[[Params, Params], Awaitable[quart.Response]]


class TwilioChannel:
    """A Twilio account as a gateway channel. See :class:`TwilioConfig` for its settings."""

    Config = TwilioConfig

    def __init__(
        self, name: str, config: TwilioConfig | dict[str, Any], context: ChannelContext
    ) -> None:
        self.name = name
        self.config = (
            config if isinstance(config, TwilioConfig) else TwilioConfig.model_validate(config)
        )
        self.context = context
        self.log: logging.Logger = context.log
        self._rest: TwilioRest | None = None
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.voice = Voice(self)

    @property
    def rest(self) -> TwilioRest:
        # Made on first use: the context's client may itself be made lazily.
        if self._rest is None:
            self._rest = TwilioRest(self.config, self.context.http)
        return self._rest

    def webhook_base(self) -> str | None:
        """The public URL Twilio calls (and signs) for this channel, without /sms."""
        if self.config.webhook_base:
            return self.config.webhook_base
        if self.context.public_url:
            return f"{self.context.public_url.rstrip('/')}/webhooks/{quote(self.name, safe='')}"
        return None

    def require_base(self) -> str:
        base = self.webhook_base()
        if base is None:
            # Fail closed: without the public URL no signature can be checked.
            raise WebhookRefused(
                403,
                "signature cannot be checked: no public URL is configured "
                "(set [http] public_url or webhook_base)",
            )
        return base

    def seen(self, key: str) -> bool:
        return key in self._seen

    def remember(self, key: str) -> None:
        """Note a message or recording already stored: a retry then skips its downloads (the
        journal drops the duplicate anyway)."""
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > _SEEN:
            self._seen.popitem(last=False)

    # -- life cycle ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Webhooks only: nothing to poll. Refuses to start without a public URL."""
        base = self.webhook_base()
        if base is None:
            raise PluginError(
                f"[channels.{self.name}] Twilio reaches this gateway by webhooks only: set "
                "[http] public_url (or webhook_base), the HTTPS address Twilio can call"
            )
        self.log.info(
            "twilio: set the number's messaging webhook to %s/sms, its voice webhook to "
            "%s/voice and its call status callback to %s/voice/status (all HTTP POST)",
            base,
            base,
            base,
        )
        task_status.started()
        await trio.sleep_forever()

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client is the daemon's."""
        await trio.lowlevel.checkpoint()

    # -- webhooks --------------------------------------------------------------------------

    def blueprint(self) -> None:
        """No Quart routes: the webhooks are thin routes (:meth:`webhooks`)."""
        return None

    def webhooks(self) -> list[WebhookRoute]:
        """``POST /webhooks/NAME/sms`` (messages), ``/status`` (delivery callbacks) and the
        voice routes, each a signed form POST."""
        routes: dict[str, Handler] = {
            "sms": self._incoming_message,
            "status": self._message_status,
            "voice": self.voice.incoming,
            "voice/status": self.voice.status,
            "voice/dial": self.voice.dialed,
            "voice/recorded": self.voice.recorded,
            "voice/recording": self.voice.recording,
        }
        return [
            WebhookRoute(
                f"/webhooks/{self.name}/{suffix}", ("POST",), self._guarded(suffix, handler)
            )
            for suffix, handler in routes.items()
        ]

    def _guarded(self, suffix: str, handler: Handler) -> WebhookHandler:
        async def view(request: WebhookRequest) -> quart.Response:
            try:
                params, query = await self._verified_form(request, suffix)
                return await handler(params, query)
            except WebhookRefused as exc:
                self.log.warning("twilio webhook /%s refused: %s", suffix, exc.reason)
                return refusal(exc)
            except FormError as exc:
                self.log.warning("twilio webhook /%s: bad request: %s", suffix, exc)
                return plain(400, str(exc))
            except StoreError as exc:
                self.log.warning(
                    "twilio webhook /%s: not stored (%s); Twilio may retry", suffix, exc
                )
                return plain(503, "temporarily unable to store this; retry later")

        return view

    async def _verified_form(self, request: WebhookRequest, suffix: str) -> tuple[Params, Params]:
        body = await read_body(
            request, content_types=("application/x-www-form-urlencoded",), limit=_MAX_FORM_BYTES
        )
        params = parse_form(body)
        # Twilio signs the URL it was given, query string included; behind a proxy the request
        # reaching us has another scheme/host, so the configured public URL is used instead.
        url = f"{self.require_base()}/{suffix}"
        raw_query = request.query_string.decode("ascii", "replace")
        if raw_query:
            url += f"?{raw_query}"
        verify_twilio_signature(
            self.config.auth_token, url, params, request.headers.get(SIGNATURE_HEADER)
        )
        try:
            query = parse_qs(raw_query, keep_blank_values=True, max_num_fields=20)
        except ValueError:
            raise FormError("malformed query string") from None
        return params, query

    async def _incoming_message(self, params: Params, query: Params) -> quart.Response:
        inbound, media = message_to_inbound(params)
        if media and not self.seen(inbound.external_id):
            inbound = dataclasses.replace(inbound, attachments=await self._fetch_media(media))
        await self.context.accept(inbound)
        self.remember(inbound.external_id)
        return xml(twiml.empty())

    async def _fetch_media(self, media: list[MediaItem]) -> tuple[Attachment, ...]:
        """Download each item (at once, within ``media_timeout`` in all); an item that fails is
        kept as a link, so the message itself is never lost."""
        found: list[Attachment] = [m.attachment for m in media]

        async def fetch(index: int, item: MediaItem) -> None:
            try:
                got = await self.rest.download(item.url, limit=self.config.max_media_bytes)
            except DownloadFailed as exc:
                self.log.warning("MMS media %d not downloaded (%s); kept as a link", index, exc)
                return
            found[index] = dataclasses.replace(
                found[index], data=got.data, mime_type=item.content_type or got.content_type
            )

        with trio.move_on_after(self.config.media_timeout) as scope:
            async with trio.open_nursery() as nursery:
                for index, item in enumerate(media):
                    nursery.start_soon(fetch, index, item)
        if scope.cancelled_caught:
            self.log.warning("MMS media downloads took too long; the rest are kept as links")
        return tuple(found)

    async def _message_status(self, params: Params, query: Params) -> quart.Response:
        update = delivery_update(params)
        if update.status is None:
            self.log.debug("twilio status callback: step not tracked")
            return xml(twiml.empty())
        known = await self.context.update_delivery(
            update.external_id, update.status, at=update.at, detail=update.detail
        )
        if not known:
            self.log.debug("twilio status callback for a message this channel did not send")
        return xml(twiml.empty())

    # -- sending ---------------------------------------------------------------------------

    async def send(self, outbound: Outbound) -> SendResult:
        """Send ``outbound`` as one SMS/MMS (several when longer than Twilio's 1,600
        characters); the result's external id is the first message's SID."""
        to = outbound.thread_key
        if not _PHONE.fullmatch(to):
            raise SendError(f"{to!r} is not a phone number Twilio can send to", permanent=True)
        media = _media_urls(outbound.attachments)
        sender, service = self._sender(outbound.account)
        parts = split_body(outbound.text)
        first: str | None = None
        for number, body in enumerate(parts, start=1):
            key = outbound.idempotency_key + ("" if len(parts) == 1 else f"#{number}")
            sid = await self._send_once(
                key, to, sender, service, body, media if number == 1 else []
            )
            first = first or sid
        return SendResult(external_id=first)

    def _sender(self, account: str) -> tuple[str | None, str | None]:
        """(From, MessagingServiceSid): a service when configured, else the number the contact
        wrote to (the thread's account), else from_number."""
        if self.config.messaging_service_sid:
            return None, self.config.messaging_service_sid
        return (account if E164.fullmatch(account) else self.config.from_number), None

    async def _send_once(
        self,
        key: str,
        to: str,
        sender: str | None,
        service: str | None,
        body: str,
        media: list[str],
    ) -> str:
        """Send one message at most once per ``key``. The channel state ``send:KEY`` says how
        far an earlier attempt got: "sent SID", "trying ISO-TIME" (the outcome is unknown) or
        "" (nothing was created)."""
        state_key = f"send:{key}"
        state = await self._read_state(state_key) or ""
        step, _, value = state.partition(" ")
        if step == "sent" and value:
            return value  # an earlier attempt was accepted: never send twice
        if step == "trying":
            found = await self._look_up(to, sender, service, body, value)
            if found:
                await self._write_state(state_key, f"sent {found}")
                return found
        try:
            await self.context.set_state(state_key, f"trying {utcnow().isoformat()}")
        except StoreError as exc:
            raise SendError(f"could not record the send attempt ({exc}); not sent") from exc
        try:
            response = await self.rest.create_message(self._form(to, sender, service, body, media))
        except httpx.HTTPError as exc:
            error = transport_error(exc)
            if not error.uncertain:
                await self._write_state(state_key, "")
            raise error from exc
        if response.status_code in (200, 201):
            sid = _json(response).get("sid")
            if not isinstance(sid, str) or not sid:
                raise SendError("Twilio accepted the message but gave no SID", uncertain=True)
            await self._write_state(state_key, f"sent {sid}")
            return sid
        if response.status_code < 500:
            await self._write_state(state_key, "")  # refused: Twilio created nothing
        raise send_error(response.status_code, _json(response), response.headers.get("retry-after"))

    def _form(
        self, to: str, sender: str | None, service: str | None, body: str, media: list[str]
    ) -> list[tuple[str, str]]:
        form = [("To", to)]
        form.append(("MessagingServiceSid", service) if service else ("From", sender or ""))
        if body or not media:
            form.append(("Body", body))
        form += [("MediaUrl", url) for url in media]
        base = self.webhook_base()
        if base is not None:
            form.append(("StatusCallback", f"{base}/status"))
        return form

    async def _look_up(
        self, to: str, sender: str | None, service: str | None, body: str, began: str
    ) -> str | None:
        try:
            since = dt.datetime.fromisoformat(began)
        except ValueError:
            since = utcnow() - dt.timedelta(days=1)
        try:
            return await self.rest.find_message(
                to=to, sender=sender, service=service, body=body, since=since
            )
        except (httpx.HTTPError, LookupError) as exc:
            # Sending now could duplicate a message an earlier attempt created.
            raise SendError(
                "an earlier attempt may have been sent and Twilio could not be asked "
                f"({type(exc).__name__}: {exc}); will check again before sending"
            ) from exc

    async def _read_state(self, key: str) -> str | None:
        try:
            return await self.context.get_state(key)
        except StoreError as exc:
            raise SendError(f"could not read the send state ({exc}); not sent") from exc

    async def _write_state(self, key: str, value: str) -> None:
        try:
            await self.context.set_state(key, value)
        except StoreError as exc:
            # Only a later retry of this message needs it; that retry then looks the message
            # up at Twilio (after "trying") or sends (after a refusal) as it should.
            self.log.warning("could not store the send state of a message (%s)", exc)

    # -- doctor ----------------------------------------------------------------------------

    async def check(self) -> str:
        """For ``gateway doctor``: fetching the account proves the SID and token."""
        where = f"[channels.{self.name}]"
        try:
            response = await self.rest.fetch_account()
        except httpx.HTTPError as exc:
            raise PluginError(
                f"{where} cannot reach {self.config.api_base} ({type(exc).__name__})"
            ) from exc
        if response.status_code in (401, 403):
            raise PluginError(
                f"{where} Twilio rejected the account SID / auth token (HTTP "
                f"{response.status_code}): copy both from the Twilio Console, Account Info"
            )
        if response.status_code != 200:
            raise PluginError(
                f"{where} {self.config.api_base} answered HTTP {response.status_code} for the "
                "account; check account_sid and api_base"
            )
        account = _json(response)
        summary = f"account {account.get('friendly_name')!r} ({self.config.account_sid})"
        if account.get("status") != "active":
            raise UserWarning(f"{summary} is {account.get('status')}, not active")
        base = self.webhook_base()
        if base is None:
            raise UserWarning(f"{summary}: no [http] public_url, so Twilio cannot reach us")
        return f"{summary}, active; messages to {base}/sms, calls to {base}/voice"


def _media_urls(attachments: Sequence[Attachment]) -> list[str]:
    urls = []
    for attachment in attachments:
        if not (attachment.url and attachment.url.startswith("https://")):
            # Twilio fetches MMS media from a public HTTPS URL; it cannot take bytes.
            raise SendError(
                "Twilio sends MMS media only from a public https:// URL it downloads itself; "
                "this attachment has none (put the file on a public URL and send that)",
                permanent=True,
            )
        urls.append(attachment.url)
    if len(urls) > MAX_MEDIA:
        raise SendError(f"Twilio takes at most {MAX_MEDIA} media per message", permanent=True)
    return urls


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
