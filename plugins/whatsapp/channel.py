"""The WhatsApp channel: Meta's webhooks in, the Cloud API's ``/{phone-number-id}/messages`` out.

Receiving: ``GET /webhooks/NAME`` answers Meta's subscription handshake; ``POST /webhooks/NAME``
takes notifications. A POST is read (415 for a non-JSON content type, 413 past 1 MiB), its
``X-Hub-Signature-256`` checked against ``app_secret`` (401 missing, 403 wrong; always, fail
closed), parsed (400 for malformed JSON or JSON that is no Meta notification; 200 and a warning
for another Meta product's notification, which is authentic but misrouted: see README), then
media is downloaded, messages committed with one ``accept_many`` and statuses recorded, and
only then 200. A store failure answers 503 and Meta retries the whole notification; messages
already committed then dedupe on their ``wamid``.

Sending: free-form text (and media: by link, or uploaded first) within 24 hours of the
contact's last message; outside that window the configured ``window_template`` or a permanent
SendError that says how to configure one. ``run`` has nothing to poll: Meta pushes.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx
import quart
import trio

from gateway.errors import PluginError, SendError, StoreError
from gateway.messages import Attachment, Inbound, Outbound, SendResult
from gateway.plugin import ChannelContext
from gateway.webhooks import (
    META_SIGNATURE_HEADER,
    WebhookRefused,
    WebhookRequest,
    WebhookRoute,
    meta_handshake,
    plain,
    read_meta_notification,
    refusal,
)

from .config import WhatsAppConfig
from .convert import NotANotification, OtherProduct, Received, parse_notification
from .graph import Graph, GraphError, MediaUnavailable
from .outgoing import (
    MAX_CAPTION,
    MAX_TEXT,
    REENGAGEMENT,
    media_message,
    message_id,
    send_error,
    template_message,
    text_message,
    transport_error,
    within_window,
)

__all__ = ["SIGNATURE_HEADER", "WhatsAppChannel"]

SIGNATURE_HEADER = META_SIGNATURE_HEADER
_SENDABLE = ("image", "audio", "video", "document", "sticker")


class WhatsAppChannel:
    """One WhatsApp business number as a gateway channel. See :class:`WhatsAppConfig`."""

    Config = WhatsAppConfig

    def __init__(
        self, name: str, config: WhatsAppConfig | dict[str, Any], context: ChannelContext
    ) -> None:
        self.name = name
        self.config = (
            config if isinstance(config, WhatsAppConfig) else WhatsAppConfig.model_validate(config)
        )
        self.context = context
        self.account = self.config.phone_number_id
        self.log = context.log
        self.graph = Graph(self.config, lambda: self.context.http)
        self._where = f"[channels.{name}]"
        # At most this many files in memory at once, however many a burst of webhooks brings.
        self._downloads = trio.CapacityLimiter(4)

    # -- receiving ---------------------------------------------------------------------------

    def webhook_url(self) -> str | None:
        """The callback URL to give Meta, or None without ``[http] public_url``."""
        base = self.context.public_url
        return f"{base.rstrip('/')}/webhooks/{quote(self.name, safe='')}" if base else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to poll: the webhook routes do the work. Says where Meta must post."""
        url = self.webhook_url()
        if url is None:
            self.log.warning(
                "%s: [http] public_url is not set, so Meta cannot reach this channel's webhook",
                self._where,
            )
        else:
            self.log.info("whatsapp number %s: Meta's callback URL is %s", self.account, url)
        task_status.started()
        await trio.sleep_forever()

    def blueprint(self) -> None:
        """No Quart routes: the webhook is a thin route (:meth:`webhooks`)."""
        return None

    def webhooks(self) -> list[WebhookRoute]:
        """``GET /webhooks/NAME``: Meta's subscription handshake; ``POST``: its notifications."""
        path = f"/webhooks/{self.name}"
        return [
            WebhookRoute(path, ("GET",), self._handshake),
            WebhookRoute(path, ("POST",), self._receive),
        ]

    async def _handshake(self, request: WebhookRequest) -> quart.Response:
        return meta_handshake(
            request, self.config.verify_token, self.log, f"whatsapp {self._where}"
        )

    async def _receive(self, request: WebhookRequest) -> quart.Response:
        try:
            notification = parse_notification(
                await read_meta_notification(request, self.config.app_secret),
                phone_number_id=self.account,
                media_url=self.graph.media_url,
            )
        except WebhookRefused as exc:
            self.log.warning("whatsapp webhook refused (%d): %s", exc.status, exc.reason)
            return refusal(exc)  # closes the connection if the body was left unread
        except OtherProduct as exc:
            # Signed with our app secret, so it is Meta's: the app's webhook for that product
            # points here. A 4xx would only make Meta retry it for days.
            self.log.warning(
                "whatsapp webhook: ignored a notification for Meta object %r; in the App "
                "Dashboard, point that product's webhook at its own channel's URL",
                exc.object[:40],
            )
            return plain(200, "")
        except NotANotification as exc:
            self.log.warning("whatsapp webhook refused (400): %s", exc)
            return plain(400, str(exc))
        if notification.skipped:
            self.log.debug("whatsapp webhook ignored: %s", "; ".join(notification.skipped[:20]))
        for error in notification.errors:
            self.log.warning("WhatsApp reported an error for %s: %s", self._where, error)
        inbounds = await self._with_media(notification.received)
        try:
            if inbounds:
                await self.context.accept_many(inbounds)
            for status in notification.statuses:
                known = await self.context.update_delivery(
                    status.message_id, status.status, at=status.at, detail=status.detail
                )
                if not known:
                    self.log.debug("whatsapp status for a message not sent by this channel")
        except StoreError as exc:
            self.log.warning("could not commit a whatsapp notification (%s); Meta will retry", exc)
            return plain(503, "temporarily unable to store the notification")
        return plain(200, "")

    async def _with_media(self, received: Sequence[Received]) -> list[Inbound]:
        """The inbounds with their files' bytes; a file that cannot be fetched stays with
        ``url`` set and no data (recorded as unavailable): the message is never lost."""
        fetched: dict[tuple[int, int], bytes] = {}

        async def fetch(i: int, j: int, media_id: str, sha256: str | None) -> None:
            with trio.move_on_after(self.config.request_timeout):
                try:
                    async with self._downloads:
                        data = await self.graph.download(media_id)
                except MediaUnavailable as exc:
                    self.log.warning("whatsapp %s; kept as unavailable", exc)
                    return
                if sha256 and not _digest_matches(data, sha256):
                    self.log.warning("whatsapp media %s does not match its sha256", media_id)
                    return
                fetched[(i, j)] = data
                return
            self.log.warning("whatsapp media %s: download timed out", media_id)

        async with trio.open_nursery() as nursery:
            for i, item in enumerate(received):
                for j, ref in enumerate(item.media):
                    nursery.start_soon(fetch, i, j, ref.media_id, ref.sha256)
        inbounds = []
        for i, item in enumerate(received):
            attachments = tuple(
                dataclasses.replace(a, data=fetched[(i, j)]) if (i, j) in fetched else a
                for j, a in enumerate(item.inbound.attachments)
            )
            inbounds.append(dataclasses.replace(item.inbound, attachments=attachments))
        return inbounds

    # -- sending ---------------------------------------------------------------------------

    async def send(self, outbound: Outbound) -> SendResult:
        """Send ``outbound`` to the WhatsApp user ``outbound.thread_key``; SendError on failure."""
        if not outbound.thread_key.isdigit():
            raise SendError(
                f"{outbound.thread_key[:40]!r} is not a WhatsApp id (the user's phone number "
                "digits)",
                permanent=True,
            )
        if not within_window(outbound.last_inbound_at, dt.datetime.now(dt.UTC)):
            return await self._send_template(outbound)
        payloads = await self._payloads(outbound)
        sent: list[str] = []
        for payload in payloads:
            try:
                sent.append(await self._post(payload))
            except GraphError as exc:
                if (
                    exc.code == REENGAGEMENT
                    and not sent
                    and not outbound.attachments
                    and self.config.window_template is not None
                ):
                    # Our clock or a late notification said "inside"; Meta decides.
                    self.log.info(
                        "WhatsApp says the 24-hour window is closed; sending the template"
                    )
                    return await self._send_template(outbound)
                error = send_error(
                    exc.status, exc.body, retry_after=exc.retry_after, where=self._where
                )
                raise _after_parts(sent, len(payloads), error) from exc
            except httpx.HTTPError as exc:
                raise _after_parts(sent, len(payloads), transport_error(exc)) from exc
        return SendResult(external_id=sent[0])

    async def _post(self, payload: dict[str, Any]) -> str:
        body = await self.graph.call("POST", f"{self.account}/messages", json=payload)
        found = message_id(body)
        if found is None:
            raise SendError(
                "WhatsApp accepted the request but answered without a message id; it may "
                "have been delivered",
                uncertain=True,
            )
        return found

    async def _payloads(self, outbound: Outbound) -> list[dict[str, Any]]:
        to, text = outbound.thread_key, outbound.text
        if len(text) > MAX_TEXT:
            raise SendError(
                f"the reply is {len(text)} characters; WhatsApp takes at most {MAX_TEXT} "
                "(lower the agent's max_reply_chars)",
                permanent=True,
            )
        media: list[dict[str, Any]] = []
        caption_used = False
        for attachment in outbound.attachments:
            kind = attachment.kind if attachment.kind in _SENDABLE else "document"
            caption = None
            if text and not caption_used and kind in ("image", "video", "document"):
                if len(text) <= MAX_CAPTION:
                    caption, caption_used = text, True
            if attachment.data is not None:
                media_id = await self._upload(attachment)
                media.append(
                    media_message(
                        to, kind, media_id=media_id, caption=caption, filename=attachment.filename
                    )
                )
            elif attachment.url:
                media.append(
                    media_message(
                        to, kind, link=attachment.url, caption=caption, filename=attachment.filename
                    )
                )
            else:
                raise SendError("an attachment has neither data nor url", permanent=True)
        parts = ([text_message(to, text)] if text and not caption_used else []) + media
        if not parts:
            raise SendError("nothing to send: no text and no attachments", permanent=True)
        if outbound.reply_to_external_id:
            parts[0]["context"] = {"message_id": outbound.reply_to_external_id}
        return parts

    async def _upload(self, attachment: Attachment) -> str:
        assert attachment.data is not None
        mime = attachment.mime_type or "application/octet-stream"
        try:
            return await self.graph.upload(attachment.data, mime, attachment.filename or "file")
        except GraphError as exc:
            raise send_error(
                exc.status, exc.body, retry_after=exc.retry_after, where=self._where
            ) from exc
        except httpx.HTTPError as exc:
            raise transport_error(exc, sent=False) from exc

    async def _send_template(self, outbound: Outbound) -> SendResult:
        template = self.config.window_template
        last = outbound.last_inbound_at
        since = (
            "has never written to this number"
            if last is None
            else f"last wrote at {last:%Y-%m-%d %H:%M} UTC, more than 24 hours ago"
        )
        if template is None:
            raise SendError(
                f"not sent: the contact {since}, and WhatsApp allows free-form messages only "
                "within 24 hours of the contact's last message (the 24-hour customer-service "
                'window). To reach them, set window_template = { name = "...", language = '
                f'"en_US" }} in {self._where} to a template approved in WhatsApp Manager',
                permanent=True,
            )
        if outbound.attachments:
            raise SendError(
                f"not sent: the contact {since}; outside WhatsApp's 24-hour window only the "
                "window_template can be sent, not files",
                permanent=True,
            )
        body_text = outbound.text if template.body_parameter else None
        payload = template_message(
            outbound.thread_key, template.name, template.language, body_text=body_text
        )
        try:
            return SendResult(external_id=await self._post(payload))
        except GraphError as exc:
            raise send_error(
                exc.status, exc.body, retry_after=exc.retry_after, where=self._where
            ) from exc
        except httpx.HTTPError as exc:
            raise transport_error(exc) from exc

    # -- doctor ----------------------------------------------------------------------------

    async def check(self) -> str:
        """For ``gateway doctor``: ``GET /{phone-number-id}`` proves the token reaches the
        number. Raises PluginError with the fix; UserWarning when Meta cannot reach us."""
        try:
            info = await self.graph.call(
                "GET",
                self.account,
                params={"fields": "display_phone_number,verified_name,quality_rating"},
            )
        except GraphError as exc:
            if exc.status == 401 or exc.code in (0, 190):
                raise PluginError(
                    f"{self._where} Meta rejected the access token ({exc}); create a system "
                    "user token with whatsapp_business_messaging and update access_token"
                ) from exc
            raise PluginError(
                f"{self._where} Meta refused GET /{self.account} ({exc}); check "
                "phone_number_id (WhatsApp > API Setup) and the token's access to that number"
            ) from exc
        except httpx.HTTPError as exc:
            raise PluginError(
                f"{self._where} {self.config.api_base} unreachable ({type(exc).__name__})"
            ) from exc
        info = info if isinstance(info, dict) else {}
        summary = (
            f"number {info.get('display_phone_number', '?')} "
            f"({info.get('verified_name', 'no verified name')}), id {self.account}, "
            f"quality {info.get('quality_rating', 'unknown')}"
        )
        url = self.webhook_url()
        if url is None:
            raise UserWarning(
                f"{summary}; [http] public_url is not set, Meta cannot reach the webhook"
            )
        return f"{summary}; callback URL for Meta: {url}"


def _after_parts(sent: list[str], total: int, error: SendError) -> SendError:
    """A failure after some parts went out must not be retried (they would arrive twice)."""
    if not sent:
        return error
    return SendError(
        f"{len(sent)} of {total} parts were delivered to WhatsApp, then: {error}", uncertain=True
    )


def _digest_matches(data: bytes, expected: str) -> bool:
    """Meta's sha256 of a file, hex or base64 (both appear in its examples)."""
    digest = hashlib.sha256(data).digest()
    given = expected.strip().encode()
    return hmac.compare_digest(given.lower(), digest.hex().encode()) or hmac.compare_digest(
        given, base64.b64encode(digest)
    )
