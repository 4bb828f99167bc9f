"""The Messenger and Instagram channels: Meta webhooks in, the Graph Send API out.

One class serves both (:class:`MetaChannel`); the subclasses say which account id, token,
endpoints and limits apply. The webhook route is ``/webhooks/NAME``: ``GET`` answers Meta's
subscription handshake, ``POST`` takes events. A POST is read (415/413), its
``X-Hub-Signature-256`` checked against the app secret (401/403, fail-closed), parsed (400),
its attachments downloaded, then its messages committed and its receipts recorded; only then
does Meta get its 200 (503 if the store failed: Meta re-sends, the journal dedupes by mid).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import hmac
from collections.abc import Callable
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
import quart
import trio

from gateway.errors import PluginError, SendError, StoreError
from gateway.messages import Attachment, Inbound, Outbound, SendResult, utcnow
from gateway.outbound import media_host_allowed
from gateway.plugin import ChannelContext, HistoryItem
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

from .config import InstagramConfig, MessengerConfig, MetaConfig
from .convert import MalformedWebhook, Platform, StatusUpdate, parse_webhook
from .outbound import SendRequest, graph_error, messaging_policy, network_error, send_requests

__all__ = ["InstagramChannel", "MessengerChannel", "MetaChannel"]

SIGNATURE_HEADER = META_SIGNATURE_HEADER
DOWNLOAD_BUDGET = 15.0
"""Seconds all downloads of one webhook may take: Meta waits about 20 s for the 200."""
_MEMORY = 10_000
"""Sent message ids (and the statuses recorded for them) remembered for read watermarks."""
_RANK = {"delivered": 2, "read": 3}


class MetaChannel:
    """What Messenger and Instagram share. Subclasses set the class attributes and
    ``account`` / ``token`` / ``send_node`` / the check call."""

    Config: ClassVar[type[MetaConfig]] = MetaConfig
    platform: ClassVar[Platform]
    label: ClassVar[str]
    text_limit: ClassVar[int]
    uploads: ClassVar[bool]
    """Whether attachments may be sent as bytes (multipart ``filedata``), not only by URL."""
    file_attachments: ClassVar[bool]
    appsecret_proof: ClassVar[bool]
    """Send ``appsecret_proof`` (HMAC of the token with the app secret) with every call."""

    account: str
    token: str
    send_node: str
    check_node: str
    check_fields: str

    def __init__(self, name: str, config: Any, context: ChannelContext) -> None:
        self.name = name
        self.config: Any = (
            config if isinstance(config, self.Config) else self.Config.model_validate(config)
        )
        self.context = context
        self.log = context.log
        self._keywords = self.config.consent_keywords()
        self._timeout = httpx.Timeout(self.config.request_timeout, connect=10.0)
        self._sent_at: collections.OrderedDict[str, dt.datetime] = collections.OrderedDict()
        self._marked: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.now: Callable[[], dt.datetime] = utcnow
        """The clock of the messaging window (a test may replace it)."""

    # -- life cycle ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Webhooks only: nothing to poll. Logs the callback URL to give Meta."""
        base = (self.context.public_url or "{public_url}").rstrip("/")
        self.log.info(
            "%s channel ready; Meta's callback URL: %s/webhooks/%s",
            self.label,
            base,
            quote(self.name, safe=""),
        )
        task_status.started()
        await trio.sleep_forever()

    def blueprint(self) -> None:
        """No Quart routes: the webhook is a thin route (:meth:`webhooks`)."""
        return None

    def webhooks(self) -> list[WebhookRoute]:
        """``GET /webhooks/NAME``: Meta's subscription handshake; ``POST``: its events."""
        path = f"/webhooks/{self.name}"
        return [
            WebhookRoute(path, ("GET",), self._handshake),
            WebhookRoute(path, ("POST",), self._receive),
        ]

    # -- webhook ---------------------------------------------------------------------------

    async def _handshake(self, request: WebhookRequest) -> quart.Response:
        return meta_handshake(request, self.config.verify_token, self.log, self.label)

    async def _receive(self, request: WebhookRequest) -> quart.Response:
        try:
            data = await read_meta_notification(request, self.config.app_secret)
            try:
                batch = parse_webhook(
                    data, platform=self.platform, account=self.account, is_keyword=self._is_keyword
                )
            except MalformedWebhook as exc:
                raise WebhookRefused(400, str(exc)) from None
        except WebhookRefused as exc:
            self.log.warning("%s webhook refused (%d): %s", self.label, exc.status, exc.reason)
            return refusal(exc)
        for reason in batch.ignored:
            self.log.debug("%s webhook: ignored %s", self.label, reason)
        inbounds = await self._download_all(batch.inbounds)
        try:
            if inbounds:
                await self.context.accept_many(inbounds)
            for status in batch.statuses:
                await self._apply_status(status)
        except StoreError as exc:
            self.log.warning("%s webhook: could not store (%s); Meta will retry", self.label, exc)
            return plain(503, "temporarily unable to store the event; retry later")
        return plain(200, "EVENT_RECEIVED")

    def _is_keyword(self, payload: str) -> bool:
        return self._keywords.match(payload) is not None

    # -- media -----------------------------------------------------------------------------

    async def _download_all(self, inbounds: list[Inbound]) -> list[Inbound]:
        """Each inbound with its media bytes where they could be had in time; the others keep
        their URL (stored as 'unavailable'): a message is never held back by its media."""
        results: dict[tuple[int, int], Attachment] = {}

        async def fetch(key: tuple[int, int], attachment: Attachment) -> None:
            got = await self._download(attachment)
            if got is not None:
                results[key] = got

        with trio.move_on_after(DOWNLOAD_BUDGET):
            async with trio.open_nursery() as nursery:
                for i, inbound in enumerate(inbounds):
                    for j, attachment in enumerate(inbound.attachments):
                        if self._wanted(attachment):
                            nursery.start_soon(fetch, (i, j), attachment)
        out = []
        for i, inbound in enumerate(inbounds):
            attachments = tuple(results.get((i, j), a) for j, a in enumerate(inbound.attachments))
            out.append(_replace_attachments(inbound, attachments))
        return out

    def _wanted(self, attachment: Attachment) -> bool:
        if attachment.kind == "other" or not attachment.url or self.config.max_media_bytes <= 0:
            return False
        if media_host_allowed(attachment.url, self.config.media_hosts):
            return True
        self.log.info("%s attachment on a host not in media_hosts kept as a link", self.label)
        return False

    async def _download(self, attachment: Attachment) -> Attachment | None:
        assert attachment.url is not None
        limit = self.config.max_media_bytes
        data = bytearray()
        too_big = False
        try:
            async with self.context.http.stream(
                "GET", attachment.url, timeout=self._timeout
            ) as response:
                if response.status_code != 200:
                    self.log.info("%s media download answered %d", self.label, response.status_code)
                    return None
                declared = response.headers.get("content-length", "")
                too_big = declared.isdigit() and int(declared) > limit
                if not too_big:
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > limit and not too_big:
                            too_big = True
                            # Closing ends the stream: the loop stops with a ReadError that
                            # finishes httpx's generators (a break would leave them to the GC).
                            await response.aclose()
                mime = response.headers.get("content-type", "").split(";")[0].strip() or None
        except httpx.HTTPError as exc:
            if not too_big:
                self.log.info("%s media download failed (%s)", self.label, type(exc).__name__)
                return None
        if too_big:
            self.log.info("%s media larger than max_media_bytes kept as a link", self.label)
            return None
        return Attachment(
            kind=attachment.kind,
            mime_type=mime or attachment.mime_type,
            filename=attachment.filename,
            data=bytes(data),
            url=attachment.url,
        )

    # -- receipts --------------------------------------------------------------------------

    async def _apply_status(self, update: StatusUpdate) -> None:
        """Record a receipt for our messages. Explicit mids first; a watermark ("all sent up to
        then") has no ids, so it is matched against this thread's sent messages: those sent at
        or before it (by the time Meta answered our send, or the stored time after a restart).
        An Instagram read names the last message seen, which covers the earlier ones too."""
        for mid in update.mids:
            await self._mark(mid, update.status, update.watermark)
        if update.status == "delivered" and update.mids:
            return
        if update.watermark is None and not update.mids:
            return
        history = await self.context.history(update.thread_key, limit=100)
        sent = [h for h in history if h.direction == "out" and h.external_id]
        if update.watermark is not None:
            covered = [h for h in sent if self._sent_time(h) <= update.watermark]
        else:
            ids = [h.external_id for h in sent]
            covered = sent[: ids.index(update.mids[0])] if update.mids[0] in ids else []
        for item in covered:
            assert item.external_id is not None
            await self._mark(item.external_id, update.status, update.watermark)

    async def _mark(
        self, mid: str, status: Literal["delivered", "read"], at: dt.datetime | None
    ) -> None:
        if self._marked.get(mid, 0) >= _RANK[status]:
            return  # already recorded by this process: spare the store a repeat
        if await self.context.update_delivery(mid, status, at=at):
            _remember(self._marked, mid, _RANK[status])

    def _sent_time(self, item: HistoryItem) -> dt.datetime:
        assert item.external_id is not None
        known = self._sent_at.get(item.external_id)
        if known is not None:
            return known
        try:
            created = dt.datetime.fromisoformat(item.created_at)
        except ValueError:
            return dt.datetime.max.replace(tzinfo=dt.UTC)  # unknown: never assume it was read
        return created if created.tzinfo else created.replace(tzinfo=dt.UTC)

    # -- sending ---------------------------------------------------------------------------

    async def send(self, outbound: Outbound) -> SendResult:
        """Send the text (split to the platform's length), then each attachment; the result is
        the last message's id. The 24-hour window is checked first (see ``outbound.py``)."""
        policy = messaging_policy(
            outbound, self.now(), platform=self.label, human_agent=self.config.human_agent_tag
        )
        requests = send_requests(
            outbound,
            policy,
            platform=self.label,
            text_limit=self.text_limit,
            max_media_bytes=self.config.max_media_bytes,
            uploads=self.uploads,
            file_attachments=self.file_attachments,
        )
        mids: list[str] = []
        for index, request in enumerate(requests, 1):
            try:
                mids.append(await self._post(request))
            except SendError as exc:
                if not mids:
                    raise
                # Earlier parts arrived: resending would repeat them, so never retry.
                raise SendError(
                    f"{len(mids)} of {len(requests)} parts sent; part {index} ({request.what}) "
                    f"failed: {exc}",
                    permanent=exc.permanent,
                    uncertain=not exc.permanent,
                ) from exc
            _remember(self._sent_at, mids[-1], self.now())
        return SendResult(external_id=mids[-1])

    async def _post(self, request: SendRequest) -> str:
        url = f"{self.config.api_base}/{self.config.api_version}/{self.send_node}/messages"
        try:
            if request.file is not None:
                response = await self.context.http.post(
                    url,
                    params=self._params(),
                    headers=self._headers(),
                    data=request.form,
                    files={"filedata": request.file},
                    timeout=self._timeout,
                )
            else:
                response = await self.context.http.post(
                    url,
                    params=self._params(),
                    headers=self._headers(),
                    json=request.json,
                    timeout=self._timeout,
                )
        except httpx.HTTPError as exc:
            raise network_error(exc, platform=self.label) from exc
        body = _json(response)
        if response.is_success:
            mid = body.get("message_id") if isinstance(body, dict) else None
            if isinstance(mid, str) and mid:
                return mid
            raise SendError(
                f"the {self.label} Send API answered {response.status_code} without a message "
                "id; the message may have been delivered",
                uncertain=True,
            )
        raise graph_error(response.status_code, body, response.headers, platform=self.label)

    def _headers(self) -> dict[str, str]:
        # In a header, not the query string: httpx logs every request URL.
        return {"Authorization": f"Bearer {self.token}"}

    def _params(self) -> dict[str, str]:
        if not self.appsecret_proof:
            return {}
        secret = self.config.app_secret.reveal().encode()
        proof = hmac.new(secret, self.token.encode(), hashlib.sha256).hexdigest()
        return {"appsecret_proof": proof}

    # -- doctor ----------------------------------------------------------------------------

    async def check(self) -> str:
        """For ``gateway doctor``: read the account with the token (a harmless Graph API call)
        and compare its id with the configured one. Raises PluginError with the fix."""
        where = f"[channels.{self.name}]"
        url = f"{self.config.api_base}/{self.config.api_version}/{self.check_node}"
        try:
            response = await self.context.http.get(
                url,
                params={"fields": self.check_fields, **self._params()},
                headers=self._headers(),
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise PluginError(
                f"{where} {self.config.api_base} did not answer ({type(exc).__name__}); check "
                "api_base and this server's network"
            ) from exc
        body = _json(response)
        if not response.is_success or not isinstance(body, dict):
            error = graph_error(response.status_code, body, response.headers, platform=self.label)
            raise PluginError(f"{where} the access token check failed: {error}")
        ids = {str(body.get(key)) for key in ("id", "user_id") if body.get(key) is not None}
        name = body.get("name") or body.get("username") or "?"
        if self.account not in ids:
            raise PluginError(
                f"{where} the token belongs to {name!r} (id {', '.join(sorted(ids)) or '?'}), not "
                f"to account {self.account}: use that account's token or fix the id"
            )
        hook = f"{(self.context.public_url or '{public_url}').rstrip('/')}/webhooks/{self.name}"
        return f"{self.label} account {name!r} (id {self.account}); callback URL {hook}"


class MessengerChannel(MetaChannel):
    """A Facebook Page's Messenger conversations. See :class:`MessengerConfig`."""

    Config = MessengerConfig
    platform = "messenger"
    label = "Messenger"
    text_limit = 2000
    uploads = True
    file_attachments = True
    appsecret_proof = True

    def __init__(self, name: str, config: Any, context: ChannelContext) -> None:
        super().__init__(name, config, context)
        self.account = self.config.page_id
        self.token = self.config.page_access_token.reveal()
        self.send_node = self.config.page_id
        self.check_node = self.config.page_id
        self.check_fields = "id,name"


class InstagramChannel(MetaChannel):
    """An Instagram professional account's direct messages. See :class:`InstagramConfig`.

    Instagram takes attachments by URL only (images, audio, video) and text up to 1,000
    characters; webhooks come with ``object = "instagram"``.
    """

    Config = InstagramConfig
    platform = "instagram"
    label = "Instagram"
    text_limit = 1000
    uploads = False
    file_attachments = False
    appsecret_proof = False  # documented for graph.facebook.com, not for graph.instagram.com

    def __init__(self, name: str, config: Any, context: ChannelContext) -> None:
        super().__init__(name, config, context)
        self.account = self.config.instagram_account_id
        self.token = self.config.access_token.reveal()
        page = self.config.page_id
        self.send_node = page or self.config.instagram_account_id
        # Instagram Login: /me answers user_id (the account id); through a Page: the account.
        self.check_node = self.config.instagram_account_id if page else "me"
        self.check_fields = "id,username" if page else "user_id,username"


def _replace_attachments(inbound: Inbound, attachments: tuple[Attachment, ...]) -> Inbound:
    return dataclasses.replace(inbound, attachments=attachments)


def _remember(memory: collections.OrderedDict[str, Any], key: str, value: Any) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > _MEMORY:
        memory.popitem(last=False)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
