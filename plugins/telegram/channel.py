"""The Telegram channel: long polling or a webhook, sends through python-telegram-bot's ``Bot``.

PTB under trio: its ``Application``/``Updater`` and ``Bot.initialize()``/``shutdown()``/``async
with bot`` use asyncio, so we never call them; plain ``Bot`` methods run under trio on our own
``HTTPXRequest`` objects (httpx speaks trio through anyio). ``get_me()`` checks the token in place
of ``initialize()``, and each request object is shut down explicitly. The polling loop and the
webhook route are ours.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
from typing import Any, Literal
from urllib.parse import quote, urlencode

import httpx
import quart
import telegram
import telegram.error
import trio
from pydantic import Field, field_validator, model_validator
from telegram.request import HTTPXRequest

from gateway.backoff import Backoff
from gateway.errors import PluginError, SendError, StoreError
from gateway.messages import Inbound, Outbound, SendResult
from gateway.plugin import ChannelConfig, ChannelContext
from gateway.pooling import httpx_transport
from gateway.secretref import Secret
from gateway.tls import default_context
from gateway.webhooks import WebhookRefused, WebhookRequest, WebhookRoute, read_body, refusal

from .convert import bot_id_from_token, send_error, update_to_inbound

# PTB 22.2+ warns (PTBDeprecationWarning) every time a RetryAfter is built unless this opts in
# to the future timedelta type; convert.send_error reads both forms.
os.environ.setdefault("PTB_TIMEDELTA", "true")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # setWebhook's rule for secret_token
_MAX_UPDATE_BYTES = 1 << 20


class TelegramConfig(ChannelConfig):
    """``[channels.NAME]`` with ``plugin = "telegram"``."""

    token: Secret = Field(
        description="The bot token from @BotFather, as a reference (env:NAME, credential:NAME...)."
    )
    mode: Literal["polling", "webhook"] = Field(
        "polling",
        description='"polling" fetches updates (no public URL needed); "webhook" has Telegram post '
        "them to [http] public_url + /webhooks/NAME.",
    )
    api_base: str = Field(
        "https://api.telegram.org",
        description="Bot API server; change only for a self-hosted Bot API server or a test fake.",
    )
    webhook_secret: Secret | None = Field(
        None,
        description="Required in webhook mode: Telegram sends it with every update and other "
        "requests are refused. 1-256 characters A-Z a-z 0-9 _ -.",
    )
    poll_timeout: int = Field(
        30, ge=1, le=50, description="Seconds one long poll waits for updates."
    )
    send_rate: float | None = Field(
        30.0, gt=0, description="Messages per second the bot may send in all (Telegram: 30)."
    )
    send_rate_per_chat: float | None = Field(
        1.0, gt=0, description="Messages per second to one chat (Telegram: about 1)."
    )
    send_burst_per_chat: int = Field(
        3, ge=1, description="Messages one chat may receive at once before the rate applies."
    )

    @field_validator("token")
    @classmethod
    def _token_shape(cls, token: Secret) -> Secret:
        if not token.deferred:
            bot_id_from_token(token.reveal())  # raises ValueError with a message free of the token
        return token

    @field_validator("webhook_secret")
    @classmethod
    def _secret_shape(cls, secret: Secret | None) -> Secret | None:
        if secret is not None and not secret.deferred and not _SECRET_RE.fullmatch(secret.reveal()):
            raise ValueError(
                "Telegram accepts only 1-256 characters A-Z, a-z, 0-9, _ and - in a webhook secret"
            )
        return secret

    @field_validator("api_base")
    @classmethod
    def _base_shape(cls, base: str) -> str:
        if not base.startswith(("https://", "http://")):
            raise ValueError("api_base must be an http(s) URL such as https://api.telegram.org")
        return base.rstrip("/")

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> TelegramConfig:
        if self.mode == "webhook" and self.webhook_secret is None:
            # Fail closed: without a secret anyone who learns the URL could inject messages.
            raise ValueError(
                'mode = "webhook" requires webhook_secret (a reference such as '
                '"env:TELEGRAM_WEBHOOK_SECRET"); without it anyone who finds the webhook URL '
                "could post messages as any user"
            )
        return self


class TelegramChannel:
    """A Telegram bot as a gateway channel. See :class:`TelegramConfig` for its settings."""

    Config = TelegramConfig

    def __init__(
        self, name: str, config: TelegramConfig | dict[str, Any], context: ChannelContext
    ) -> None:
        self.name = name
        self.config = (
            config if isinstance(config, TelegramConfig) else TelegramConfig.model_validate(config)
        )
        self.context = context
        self.account = bot_id_from_token(self.config.token.reveal())
        self.log = context.log
        _install_token_redaction()
        # Two pools: a long poll holds its connection for poll_timeout seconds and must never
        # make a send wait for a connection.
        self._request = _bot_api_request(32, read_timeout=15.0)
        self._poll_request = _bot_api_request(1, read_timeout=self.config.poll_timeout + 15.0)
        self._bot = telegram.Bot(
            self.config.token.reveal(),
            base_url=f"{self.config.api_base}/bot",
            base_file_url=f"{self.config.api_base}/file/bot",
            request=self._request,
            get_updates_request=self._poll_request,
        )
        self._running = False
        self._sends_in_flight = 0

    # -- receiving ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll or register the webhook, then receive until cancelled."""
        self._running = True
        try:
            await self._request.initialize()  # re-opens the client after an earlier run closed it
            await self._poll_request.initialize()
            # getMe and deleteWebhook are checks, not requirements: a local Bot API server or
            # a test double may lack them, and a truly bad token is refused again by the
            # first getUpdates (which then stops the channel with the same PluginError).
            me = await self._best_effort("check the bot token (getMe)", self._bot.get_me)
            if me is not None and str(me.id) != self.account:
                raise PluginError(
                    f"[channels.{self.name}] getMe answered bot id {me.id}, "
                    f"not the token's {self.account}"
                )
            if self.config.mode == "webhook":
                await self._register_webhook()
                task_status.started()
                await trio.sleep_forever()
            else:
                await self._best_effort(
                    "switch from webhook to polling (deleteWebhook)",
                    lambda: self._bot.delete_webhook(drop_pending_updates=False),
                )
                task_status.started()
                await self._poll_forever()
        finally:
            self._running = False
            with trio.CancelScope(shield=True):
                await self._poll_request.shutdown()
                if not self._sends_in_flight:
                    await self._request.shutdown()

    async def _register_webhook(self) -> None:
        public_url = self.context.public_url
        if not public_url:
            raise PluginError(
                f'[channels.{self.name}] mode = "webhook" needs [http] public_url, the address '
                "Telegram can reach this gateway at"
            )
        url = f"{public_url.rstrip('/')}/webhooks/{quote(self.name, safe='')}"
        await self._retrying("register the webhook (setWebhook)", lambda: self._set_webhook(url))
        self.log.info("telegram webhook registered at %s", url)

    def _set_webhook(self, url: str) -> Any:
        secret = self.config.webhook_secret.reveal() if self.config.webhook_secret else None
        return self._bot.set_webhook(url=url, secret_token=secret, drop_pending_updates=False)

    async def register_webhook(self, url: str) -> str:
        """The admin UI's "Register webhook": one setWebhook call with ``url`` and this
        channel's webhook secret, as webhook mode makes at start but without its retries.
        Returns what was done; PluginError says why Telegram refused or could not be reached."""
        where = f"[channels.{self.name}]"
        if self.config.mode != "webhook":
            raise PluginError(f'{where} mode is "{self.config.mode}": set mode = "webhook" first')
        await self._request.initialize()
        try:
            await self._set_webhook(url)
        except telegram.error.InvalidToken as exc:
            raise PluginError(
                f"{where} Telegram rejected the bot token; check the token reference"
            ) from exc
        except telegram.error.TelegramError as exc:
            raise PluginError(f"{where} Telegram did not set the webhook: {exc.message}") from exc
        finally:
            if not self._running and not self._sends_in_flight:
                with trio.CancelScope(shield=True):
                    await self._request.shutdown()
        self.log.info("telegram webhook registered at %s (admin UI)", url)
        return f"Telegram now posts this bot's updates to {url}"

    async def _poll_forever(self) -> None:
        offset = await self._load_offset()
        backoff = Backoff()
        while True:
            try:
                updates = await self._get_updates(offset)
            except telegram.error.RetryAfter as exc:
                await trio.sleep(_seconds(exc.retry_after))
                continue
            except telegram.error.InvalidToken as exc:
                raise PluginError(
                    f"[channels.{self.name}] Telegram rejected the bot token; "
                    "check the token reference"
                ) from exc
            except telegram.error.Conflict as exc:
                self.log.warning(
                    "telegram getUpdates conflict (%s): another process polls this bot, "
                    "or a webhook was set",
                    exc.message,
                )
                await backoff.wait()
                continue
            except telegram.error.TelegramError as exc:
                self.log.warning("telegram getUpdates failed (%s); retrying", exc.message)
                await backoff.wait()
                continue
            if not updates:
                backoff.reset()
                continue
            inbounds = self._convert_batch(updates)
            if inbounds:
                try:
                    await self.context.accept_many(inbounds)
                except Exception as exc:  # not acknowledged: Telegram delivers them again
                    self.log.warning(
                        "could not commit %d telegram message(s) (%s); "
                        "the offset stays, they come again",
                        len(inbounds),
                        exc,
                    )
                    await backoff.wait()
                    continue
            offset = max(int(u["update_id"]) for u in updates) + 1
            try:
                await self.context.set_state("offset", str(offset))
            except StoreError as exc:
                # The messages are committed; a lost offset only means Telegram re-sends them
                # after a restart and the journal drops the duplicates.
                self.log.warning("could not store the telegram poll offset (%s)", exc)
            backoff.reset()

    async def _load_offset(self) -> int:
        # Update ids are per bot: an offset stored for another token would confirm (drop) the
        # new bot's updates.
        if await self.context.get_state("bot_id") != self.account:
            await self.context.set_state("bot_id", self.account)
            await self.context.set_state("offset", "0")
            return 0
        return int(await self.context.get_state("offset") or 0)

    async def _get_updates(self, offset: int) -> list[dict[str, Any]]:
        # Through the request object, not Bot.get_updates: that parses the whole batch with
        # Update.de_list and raises on one odd update, which would stall polling forever. We
        # want the raw dicts for our pure converter and skip only what it cannot use.
        query = urlencode({"offset": offset, "timeout": self.config.poll_timeout})
        result = await self._poll_request.post(
            f"{self._bot.base_url}/getUpdates?{query}",
            read_timeout=self.config.poll_timeout + 15.0,
        )
        if not isinstance(result, list):
            raise telegram.error.NetworkError(
                f"getUpdates answered {type(result).__name__}, not a list"
            )
        return [u for u in result if isinstance(u, dict) and isinstance(u.get("update_id"), int)]

    def _convert_batch(self, updates: list[dict[str, Any]]) -> list[Inbound]:
        inbounds = []
        for update in updates:
            try:
                inbound = update_to_inbound(update, account=self.account)
            except Exception:  # one bad update must not stall the rest: log its id, skip it
                self.log.exception(
                    "skipping telegram update %s that could not be converted",
                    update.get("update_id"),
                )
                continue
            if inbound is None:
                self.log.debug(
                    "ignoring telegram update %s (no user message)", update.get("update_id")
                )
            else:
                inbounds.append(inbound)
        return inbounds

    async def _best_effort(self, what: str, call: Any) -> Any:
        """Like ``_retrying``, but a refusal is logged and answered with None."""
        try:
            return await self._retrying(what, call)
        except PluginError as exc:
            self.log.warning("%s; going on without it", exc)
            return None

    async def _retrying(self, what: str, call: Any) -> Any:
        """Run ``call()`` until Telegram answers; network trouble backs off, a bad token or a
        rejected request raises PluginError (the supervisor logs it and restarts later)."""
        backoff = Backoff()
        while True:
            try:
                return await call()
            except telegram.error.RetryAfter as exc:
                await trio.sleep(_seconds(exc.retry_after))
            except telegram.error.InvalidToken as exc:
                raise PluginError(
                    f"[channels.{self.name}] Telegram rejected the bot token; "
                    "check the token reference"
                ) from exc
            except (telegram.error.BadRequest, telegram.error.Forbidden) as exc:
                raise PluginError(
                    f"[channels.{self.name}] could not {what}: {exc.message}"
                ) from exc
            except telegram.error.TelegramError as exc:
                self.log.warning("could not %s (%s); retrying", what, exc.message)
                await backoff.wait()

    # -- webhook ---------------------------------------------------------------------------

    def blueprint(self) -> None:
        """No Quart routes: the webhook is a thin route (:meth:`webhooks`)."""
        return None

    def webhooks(self) -> list[WebhookRoute]:
        """``POST /webhooks/NAME``: Telegram's pushes in webhook mode (404 in polling mode)."""
        return [WebhookRoute(f"/webhooks/{self.name}", ("POST",), self._webhook)]

    async def _webhook(self, request: WebhookRequest) -> quart.Response:
        if self.config.mode != "webhook" or self.config.webhook_secret is None:
            return _plain(404, "not found")
        given = request.headers.get(SECRET_HEADER)
        if given is None:
            self.log.warning("telegram webhook: request without the secret token header refused")
            return _plain(401, f"missing {SECRET_HEADER} header")
        if not hmac.compare_digest(given.encode(), self.config.webhook_secret.reveal().encode()):
            self.log.warning("telegram webhook: request with a wrong secret token refused")
            return _plain(403, "wrong secret token")
        try:
            # Any content type: Telegram sends JSON, and the parse below says so if it is not.
            body = await read_body(request, content_types=(), limit=_MAX_UPDATE_BYTES)
        except WebhookRefused as exc:
            return refusal(exc)
        try:
            update = json.loads(body)
        except ValueError:
            return _plain(400, "body is not JSON")
        if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
            return _plain(400, "body is not a Telegram Update")
        inbound = self._convert_batch([update])
        if inbound:
            try:
                await self.context.accept(inbound[0])
            except StoreError as exc:
                self.log.warning(
                    "could not commit a telegram message (%s); Telegram will retry", exc
                )
                return _plain(503, "temporarily unable to store the message")
        # An empty body: a JSON body here would be executed by Telegram as a Bot API call.
        return _plain(200, "")

    # -- sending ---------------------------------------------------------------------------

    async def send(self, outbound: Outbound) -> SendResult:
        """Send ``outbound.text`` to chat ``outbound.thread_key``; SendError on failure."""
        try:
            chat_id = int(outbound.thread_key)
        except ValueError:
            raise SendError(
                f"{outbound.thread_key!r} is not a Telegram chat id", permanent=True
            ) from None
        reply = _reply_parameters(outbound)
        self._sends_in_flight += 1
        try:
            await self._request.initialize()
            message = await self._bot.send_message(
                chat_id=chat_id, text=outbound.text, reply_parameters=reply
            )
        except telegram.error.TelegramError as exc:
            raise send_error(exc) from exc
        finally:
            self._sends_in_flight -= 1
            if not self._sends_in_flight and not self._running:
                # Nobody else will close the client once run() has ended (shutdown drains the
                # outbox after channels stop). httpx marks a client closed before awaiting, so
                # a send starting meanwhile builds a fresh one.
                with trio.CancelScope(shield=True):
                    await self._request.shutdown()
        return SendResult(external_id=str(message.message_id))

    async def check(self) -> str:
        """For ``gateway doctor``: getMe proves the token; in webhook mode getWebhookInfo shows
        where Telegram posts updates and whether its last delivery failed.

        Returns "bot @username (id N), MODE"; raises PluginError when the token is refused or
        Telegram cannot be reached, UserWarning when the webhook needs a look.
        """
        where = f"[channels.{self.name}]"
        await self._request.initialize()
        try:
            me = await self._bot.get_me()
            summary = f"bot @{me.username} (id {me.id})"
            if str(me.id) != self.account:
                raise PluginError(f"{where} getMe answered {summary}, not the token's bot id")
            if self.config.mode != "webhook":
                return f"{summary}, polling"
            info = await self._bot.get_webhook_info()
        except telegram.error.InvalidToken as exc:
            raise PluginError(
                f"{where} Telegram rejected the bot token ({exc.message}): check the token "
                "reference; @BotFather shows the current token"
            ) from exc
        except telegram.error.TelegramError as exc:
            raise PluginError(
                f"{where} {self.config.api_base} did not answer as the Bot API ({exc.message})"
            ) from exc
        finally:
            with trio.CancelScope(shield=True):
                await self._request.shutdown()
        expected = (
            f"{(self.context.public_url or '').rstrip('/')}/webhooks/{quote(self.name, safe='')}"
        )
        if info.url != expected:
            raise UserWarning(
                f"{summary}: Telegram posts updates to {info.url or 'no webhook'}, not {expected} "
                "(the gateway registers its URL at start; if it is running, something else "
                "changed it)"
            )
        if info.last_error_message:
            when = f" at {info.last_error_date:%Y-%m-%d %H:%M} UTC" if info.last_error_date else ""
            raise UserWarning(
                f"{summary}: Telegram's last webhook delivery failed{when}: "
                f"{info.last_error_message} ({info.pending_update_count} updates waiting)"
            )
        return f"{summary}, webhook {info.url} ({info.pending_update_count} updates waiting)"

    async def aclose(self) -> None:
        """Release both HTTP clients. Safe to call twice; a later ``run``/``send`` re-opens."""
        with trio.CancelScope(shield=True):
            await self._poll_request.shutdown()
            await self._request.shutdown()


def _bot_api_request(pool_size: int, *, read_timeout: float) -> HTTPXRequest:
    """PTB's httpx request object on the daemon's TLS context and a transport whose idle
    connections are not probed on every request (gateway/pooling.py). A client given a
    transport ignores its own limits, so PTB's ``connection_pool_size`` goes to the transport."""
    return HTTPXRequest(
        connection_pool_size=pool_size,
        read_timeout=read_timeout,
        connect_timeout=10.0,
        httpx_kwargs={
            "verify": default_context(),
            "transport": httpx_transport(
                verify=default_context(), limits=httpx.Limits(max_connections=pool_size)
            ),
        },
    )


def _reply_parameters(outbound: Outbound) -> telegram.ReplyParameters | None:
    chat, _, message_id = (outbound.reply_to_external_id or "").partition(":")
    if chat != outbound.thread_key or not message_id.isdigit():
        return None
    # A deleted original must not make the reply fail.
    return telegram.ReplyParameters(int(message_id), allow_sending_without_reply=True)


def _plain(status: int, text: str) -> quart.Response:
    return quart.Response(text, status=status, content_type="text/plain; charset=utf-8")


def _seconds(value: Any) -> float:
    return float(value.total_seconds()) if hasattr(value, "total_seconds") else float(value)


# Bot API URLs carry the token: /bot<TOKEN>/method, /file/bot<TOKEN>/path.
_TOKEN_IN_URL = re.compile(r"/bot\d+:[A-Za-z0-9_-]+")


class _RedactBotToken(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _TOKEN_IN_URL.sub("/bot<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _install_token_redaction() -> None:
    # A logger's filters see only its own records, so name the exact loggers: httpx logs every
    # request URL at INFO, PTB's Bot logs its base URLs at DEBUG when constructed.
    for name in ("httpx", "telegram.Bot"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactBotToken) for f in logger.filters):
            logger.addFilter(_RedactBotToken())
