"""The Max channel: long polling (``GET /updates``) or a webhook in, ``POST /messages`` out.

Polling: the marker of the last batch is stored with ``context.set_state`` only after the batch
was committed (``accept_many``) and its button presses answered. Passing a marker to Max commits
every earlier update, so a crash before the store re-reads the batch (the journal drops the
repeats) and never loses it. A marker is per bot: a new token starts without one.

Webhook: ``POST /webhooks/NAME`` needs ``X-Max-Bot-Api-Secret`` (401 missing, 403 wrong, compared
in constant time); the mode does not start without ``webhook_secret``. The update is committed
before the 200; a store failure answers 503 and Max re-sends it (for up to 8 hours).
"""

from __future__ import annotations

import dataclasses
import hmac
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx
import quart
import trio

from gateway.backoff import Backoff
from gateway.errors import PluginError, SendError, StoreError
from gateway.messages import Inbound, Outbound, SendResult
from gateway.plugin import Accepted, ChannelContext
from gateway.webhooks import (
    WebhookRefused,
    WebhookRequest,
    WebhookRoute,
    parse_json_object,
    plain,
    read_body,
    refusal,
)

from .api import MaxApi, MaxApiError, MediaUnavailable
from .config import MaxConfig
from .convert import (
    UPDATE_TYPES,
    Received,
    message_body,
    parse_update,
    retry_seconds,
    send_error,
    sent_message_id,
    split_text,
    transport_error,
)

__all__ = ["SECRET_HEADER", "MaxChannel"]

SECRET_HEADER = "X-Max-Bot-Api-Secret"
_MAX_UPDATE_BYTES = 1 << 20


class MaxChannel:
    """One Max bot as a gateway channel. See :class:`~plugins.max.config.MaxConfig`."""

    Config = MaxConfig

    def __init__(
        self, name: str, config: MaxConfig | dict[str, Any], context: ChannelContext
    ) -> None:
        self.name = name
        self.config = config if isinstance(config, MaxConfig) else MaxConfig.model_validate(config)
        self.context = context
        self.log = context.log
        self.api = MaxApi(self.config, lambda: self.context.http)
        self.account: str | None = None
        """The bot's user id, from ``GET /me`` when ``run`` starts (the token does not say)."""
        self._where = f"[channels.{name}]"
        # At most this many files in memory at once, however many updates a batch brings.
        self._downloads = trio.CapacityLimiter(4)

    # -- starting --------------------------------------------------------------------------

    def webhook_url(self) -> str | None:
        base = self.context.public_url
        return f"{base.rstrip('/')}/webhooks/{quote(self.name, safe='')}" if base else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Learn the bot's id, then poll or subscribe the webhook; receive until cancelled."""
        async with self.api.session():
            me = await self._whoami()
            self.account = str(me["user_id"])
            if self.config.mode == "webhook":
                await self._register_webhook()
                task_status.started()
                await trio.sleep_forever()
            await self._remove_webhooks()
            task_status.started()
            await self._poll_forever()

    async def _whoami(self) -> dict[str, Any]:
        try:
            return await self.api.me()
        except MaxApiError as exc:
            if exc.status == 401:
                raise PluginError(
                    f"{self._where} Max rejected the bot token ({exc}); check the token "
                    "reference (business.max.ru > Chat bots > Settings shows the token)"
                ) from exc
            raise PluginError(f"{self._where} GET /me failed ({exc}); retrying later") from exc
        except httpx.HTTPError as exc:
            raise PluginError(f"{self._where} {_unreachable(self.config.api_base, exc)}") from exc

    async def _register_webhook(self) -> None:
        url = self.webhook_url()
        if url is None:
            raise PluginError(
                f'{self._where} mode = "webhook" needs [http] public_url, the address Max can '
                "reach this gateway at"
            )
        if not self.config.register_webhook:
            self.log.info("max webhook: give Max the URL %s (register_webhook = false)", url)
            return
        await self._subscribe(url)

    async def _subscribe(self, url: str) -> None:
        if not url.startswith("https://"):
            self.log.warning("max webhook %s is not https; Max delivers only to HTTPS URLs", url)
        assert self.config.webhook_secret is not None  # the config refuses webhook mode without
        try:
            await self.api.subscribe(url, self.config.webhook_secret.reveal(), UPDATE_TYPES)
        except (MaxApiError, httpx.HTTPError) as exc:
            raise PluginError(
                f"{self._where} could not subscribe the webhook {url}: {exc}"
            ) from exc
        self.log.info("max webhook subscribed at %s", url)

    async def register_webhook(self, url: str) -> str:
        """The admin UI's "Register webhook": ``POST /subscriptions`` with ``url`` and this
        channel's webhook secret, as webhook mode does at start (also with register_webhook =
        false). Returns what was done; PluginError says why Max refused or was not reached."""
        if self.config.mode != "webhook":
            raise PluginError(
                f'{self._where} mode is "{self.config.mode}": set mode = "webhook" first'
            )
        async with self.api.session():
            await self._subscribe(url)
        return f"Max now posts this bot's updates to {url}"

    async def _remove_webhooks(self) -> None:
        """Max serves GET /updates only to a bot without a webhook subscription (405 else)."""
        try:
            for subscription in await self.api.subscriptions():
                url = str(subscription.get("url"))
                self.log.warning("max: removing the webhook subscription %s to poll instead", url)
                await self.api.unsubscribe(url)
        except (MaxApiError, httpx.HTTPError) as exc:
            self.log.warning("max: could not check webhook subscriptions (%s); polling anyway", exc)

    # -- polling ---------------------------------------------------------------------------

    async def _load_marker(self, account: str) -> int | None:
        # Markers are per bot: another token's marker means nothing to this bot.
        if await self.context.get_state("bot_id") != account:
            await self.context.set_state("bot_id", account)
            await self.context.set_state("marker", "")
            return None
        stored = await self.context.get_state("marker") or ""
        return int(stored) if stored.lstrip("-").isdigit() else None

    async def _poll_forever(self) -> None:
        assert self.account is not None
        marker = await self._load_marker(self.account)
        backoff = Backoff()
        while True:
            try:
                updates, next_marker = await self.api.updates(
                    marker, wait=self.config.poll_timeout, types=UPDATE_TYPES
                )
            except MaxApiError as exc:
                if exc.status == 401:
                    raise PluginError(f"{self._where} Max rejected the bot token ({exc})") from exc
                if exc.status == 429:
                    await trio.sleep(retry_seconds(exc.retry_after))
                    continue
                self.log.warning("max GET /updates failed (%s); retrying", exc)
                await backoff.wait()
                continue
            except httpx.HTTPError as exc:
                self.log.warning("max GET /updates failed (%s); retrying", type(exc).__name__)
                await backoff.wait()
                continue
            if not updates:
                marker = next_marker if next_marker is not None else marker
                backoff.reset()
                continue
            received = self._convert(updates)
            try:
                await self._commit(received, await self._with_media(received))
            except Exception as exc:  # not committed: the old marker brings the batch again
                self.log.warning(
                    "could not commit %d max update(s) (%s); they come again", len(updates), exc
                )
                await backoff.wait()
                continue
            if next_marker is not None:
                marker = next_marker
                try:
                    await self.context.set_state("marker", str(marker))
                except StoreError as exc:
                    # Committed; a lost marker only means a re-read after a restart.
                    self.log.warning("could not store the max poll marker (%s)", exc)
            backoff.reset()

    def _convert(self, updates: Sequence[dict[str, Any]]) -> list[Received]:
        assert self.account is not None
        found = []
        for update in updates:
            try:
                item = parse_update(update, account=self.account)
            except Exception:  # one odd update must not stall the rest: log it, skip it
                self.log.exception("skipping a max update that could not be converted")
                continue
            if isinstance(item, str):
                self.log.debug("max update skipped: %s", item)
            else:
                found.append(item)
        return found

    async def _with_media(self, received: Sequence[Received]) -> list[Inbound]:
        """The inbounds with their files' bytes; a file that cannot be fetched stays with its
        link and no data: the message is never lost for it."""
        fetched: dict[tuple[int, int], tuple[bytes, str | None]] = {}

        async def fetch(i: int, j: int) -> None:
            ref = received[i].media[j]
            with trio.move_on_after(self.config.request_timeout * 2) as scope:
                try:
                    limit = self.config.max_media_bytes
                    if ref.size is not None and ref.size > limit:
                        raise MediaUnavailable(f"{ref.size} bytes, over max_media_bytes {limit}")
                    async with self._downloads:
                        url = ref.url
                        if ref.video_token:
                            url = await self.api.video_url(ref.video_token) or url
                        if url is None:
                            raise MediaUnavailable("no download link")
                        fetched[(i, j)] = await self.api.download(url)
                except (MediaUnavailable, MaxApiError, httpx.HTTPError) as exc:
                    self.log.warning("max file not downloaded (%s); kept as a link", exc)
            if scope.cancelled_caught:
                self.log.warning("max file download timed out; kept as a link")

        async with trio.open_nursery() as nursery:
            for i, item in enumerate(received):
                for j in range(len(item.media)):
                    nursery.start_soon(fetch, i, j)
        inbounds = []
        for i, item in enumerate(received):
            attachments = tuple(
                dataclasses.replace(a, data=fetched[(i, j)][0], mime_type=fetched[(i, j)][1])
                if (i, j) in fetched
                else a
                for j, a in enumerate(item.inbound.attachments)
            )
            inbounds.append(dataclasses.replace(item.inbound, attachments=attachments))
        return inbounds

    async def _commit(self, received: Sequence[Received], inbounds: list[Inbound]) -> None:
        """Journal the batch, then answer its new button presses (a repeat was answered)."""
        if not inbounds:
            return
        results: list[Accepted] = await self.context.accept_many(inbounds)
        for item, result in zip(received, results, strict=True):
            if item.callback_id and not result.duplicate:
                await self._answer(item.callback_id)

    async def _answer(self, callback_id: str) -> None:
        with trio.move_on_after(self.config.request_timeout):
            try:
                await self.api.answer_callback(callback_id, self.config.callback_notification)
            except (MaxApiError, httpx.HTTPError) as exc:
                self.log.warning("max: could not answer a button press (%s)", exc)
            return
        self.log.warning("max: answering a button press timed out")

    # -- webhook ---------------------------------------------------------------------------

    def blueprint(self) -> None:
        """No Quart routes: the webhook is a thin route (:meth:`webhooks`)."""
        return None

    def webhooks(self) -> list[WebhookRoute]:
        """``POST /webhooks/NAME``: Max's pushes in webhook mode (404 in polling mode)."""
        return [WebhookRoute(f"/webhooks/{self.name}", ("POST",), self._webhook)]

    async def _webhook(self, request: WebhookRequest) -> quart.Response:
        secret = self.config.webhook_secret
        if self.config.mode != "webhook" or secret is None:
            return plain(404, "not found")
        try:
            # Read first (bounded) so a refused client's keep-alive connection stays usable.
            body = await read_body(request, content_types=(), limit=_MAX_UPDATE_BYTES)
            given = request.headers.get(SECRET_HEADER)
            if given is None:
                raise WebhookRefused(401, f"missing {SECRET_HEADER} header")
            if not hmac.compare_digest(given.encode(), secret.reveal().encode()):
                raise WebhookRefused(403, f"wrong {SECRET_HEADER}")
            update = parse_json_object(body)
        except WebhookRefused as exc:
            self.log.warning("max webhook refused (%d): %s", exc.status, exc.reason)
            return refusal(exc)
        if not isinstance(update.get("update_type"), str):
            return plain(400, "body is not a Max update (no update_type)")
        if self.account is None:
            return plain(503, "starting: the bot's id is not known yet")
        received = self._convert([update])
        try:
            await self._commit(received, await self._with_media(received))
        except Exception as exc:
            self.log.warning("could not commit a max update (%s); Max will retry", exc)
            return plain(503, "temporarily unable to store the update")
        return plain(200, "")

    # -- sending ---------------------------------------------------------------------------

    async def send(self, outbound: Outbound) -> SendResult:
        """Send ``outbound.text`` to chat ``outbound.thread_key`` (split at 4000 characters,
        the first part linked as a reply); SendError on failure."""
        try:
            chat_id = int(outbound.thread_key)
        except ValueError:
            raise SendError(
                f"{outbound.thread_key[:40]!r} is not a Max chat id", permanent=True
            ) from None
        if outbound.attachments:
            raise SendError(
                "the max plugin sends text only; files need Max's upload flow, not implemented",
                permanent=True,
            )
        parts = split_text(outbound.text)
        if not parts:
            raise SendError("nothing to send: the text is empty", permanent=True)
        sent: list[str] = []
        for i, part in enumerate(parts):
            body = message_body(part, reply_to=outbound.reply_to_external_id if i == 0 else None)
            try:
                sent.append(await self._post(chat_id, body))
            except SendError as error:
                raise _after_parts(sent, len(parts), error) from error
        return SendResult(external_id=sent[0])

    async def _post(self, chat_id: int, body: dict[str, Any]) -> str:
        try:
            try:
                answer = await self.api.send_message(chat_id, body)
            except MaxApiError as exc:
                if "link" not in body or exc.status not in (400, 404):
                    raise
                # The message it answers may be gone; the reply matters more than the quote.
                self.log.info("max refused the reply link (%s); sending without it", exc)
                body = {k: v for k, v in body.items() if k != "link"}
                answer = await self.api.send_message(chat_id, body)
        except MaxApiError as exc:
            raise send_error(exc.status, exc.body, retry_after=exc.retry_after) from exc
        except httpx.HTTPError as exc:
            raise transport_error(exc) from exc
        mid = sent_message_id(answer)
        if mid is None:
            raise SendError(
                "Max accepted the message but answered without its id; it may have been delivered",
                uncertain=True,
            )
        return mid

    # -- doctor ----------------------------------------------------------------------------

    async def check(self) -> str:
        """For ``gateway doctor``: ``GET /me`` proves the token (and the TLS trust of
        ``ca_file``); the subscriptions show where Max delivers updates.

        Returns "bot @name (id N), MODE"; raises PluginError with the fix when Max refuses or
        cannot be reached, UserWarning when updates go somewhere else."""
        async with self.api.session():
            try:
                me = await self.api.me()
                subscriptions = [str(s.get("url")) for s in await self.api.subscriptions()]
            except MaxApiError as exc:
                if exc.status == 401:
                    raise PluginError(
                        f"{self._where} Max rejected the bot token ({exc}): check the token "
                        "reference; business.max.ru > Chat bots > Settings shows the token"
                    ) from exc
                raise PluginError(
                    f"{self._where} {self.config.api_base} did not answer as the Max Bot API "
                    f"({exc})"
                ) from exc
            except httpx.HTTPError as exc:
                raise PluginError(
                    f"{self._where} {_unreachable(self.config.api_base, exc)}"
                ) from exc
        summary = f"bot @{me.get('username') or '?'} (id {me['user_id']})"
        if self.config.mode == "polling":
            if subscriptions:
                raise UserWarning(
                    f"{summary}: Max posts updates to {', '.join(subscriptions)}, so polling "
                    "gets none (the channel removes the subscription when it starts)"
                )
            return f"{summary}, polling"
        expected = self.webhook_url()
        if self.config.register_webhook and expected not in subscriptions:
            raise UserWarning(
                f"{summary}: Max posts updates to {', '.join(subscriptions) or 'no URL'}, not "
                f"{expected} (the channel subscribes it when it starts)"
            )
        return f"{summary}, webhook {expected}"

    async def aclose(self) -> None:
        """Nothing stays open between calls (see :meth:`MaxApi.session`); safe to call twice."""
        await trio.lowlevel.checkpoint()


def _unreachable(base: str, exc: httpx.HTTPError) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"{base}: its TLS certificate is not trusted ({cause.verify_message}); Max's "
                "certificates chain to the Russian Trusted Root CA: set ca_file to a PEM file "
                "with it"
            )
        cause = cause.__cause__ or cause.__context__
    return f"{base} unreachable ({type(exc).__name__}: {exc})"


def _after_parts(sent: list[str], total: int, error: SendError) -> SendError:
    """A failure after some parts went out must not be retried (they would arrive twice)."""
    if not sent:
        return error
    return SendError(
        f"{len(sent)} of {total} parts were delivered to Max, then: {error}", uncertain=True
    )
