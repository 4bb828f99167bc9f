"""The relay ceiling: what a reply costs on the gateway's stack without the gateway.

A bare relay on the same libraries the gateway uses for a Telegram reply: Telegram webhooks on
hypercorn-trio (a plain ASGI app), acknowledged at once; then, in the background, the model
asked through the openai SDK (``AsyncOpenAI.post("/chat/completions")``, as
``plugins/openai`` does) and the answer sent with python-telegram-bot's ``Bot.send_message``,
both on the gateway's transports (``gateway/pooling.py``).
That is the two outbound HTTP exchanges every gateway reply makes, and nothing else: no
journal, no dedupe, no history, no ordering per chat, no encryption, no audit. A crash loses
what it acknowledged and a re-delivered update is answered twice: it is a yardstick, not a
product.

``load.py --webhook --relay`` runs it in place of the gateway: it reads the same
``gateway.toml`` (``[http] public_bind`` and ``public_url``, ``[channels.bench]``,
``[providers.main]``) and environment, registers its webhook with ``setWebhook`` and prints the
gateway's ready line, so the driver, the fakes and the figures are the same. The gateway's
replies/s over the relay's then says what durability, ordering and privacy cost per reply,
where the bare-handler ceiling (``ceilings.py``) also counts the two SDK calls against it.

    python bench/load.py --webhook --relay --messages 2000 --chats 200
    python bench/relay.py -- python -m gateway run --config FILE     # as load.py starts it
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from functools import partial
from pathlib import Path
from typing import Any

import hypercorn.config
import hypercorn.trio
import trio
from _harness import answer_lifespan

CHANNEL = "bench"
PROVIDER = "main"
ANSWERS_IN_FLIGHT = 64
"""As the gateway's ``[gateway] workers`` default: model calls at once."""
SENDS_IN_FLIGHT = 32
"""As the gateway's per-channel send concurrency (``DEFAULT_SEND_CONCURRENCY``)."""
SECRET_HEADER = b"x-telegram-bot-api-secret-token"


def _reveal(reference: str | None) -> str | None:
    """A config value, or the environment variable an ``env:NAME`` reference names."""
    if reference is None or not reference.startswith("env:"):
        return reference
    name = reference.removeprefix("env:")
    if name not in os.environ:
        raise SystemExit(f"relay: {reference} is not set in the environment")
    return os.environ[name]


def _config_path(argv: list[str]) -> Path:
    """The ``--config FILE`` of the gateway command line after ``--``."""
    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        raise SystemExit("relay: usage: relay.py -- python -m gateway run --config FILE")
    return Path(argv[argv.index("--config") + 1])


def _need(config: dict[str, Any], source: Path, *keys: str) -> Any:
    """``config[k1][k2]...``, or exit naming the missing key and where such a config comes from."""
    node: Any = config
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise SystemExit(
                f"relay: {source} has no {'.'.join(keys[: depth + 1])}: bench/relay.py reads the"
                " gateway.toml bench/load.py writes; run it as `bench/load.py --webhook --relay`"
            )
        node = node[key]
    return node


class Relay:
    def __init__(self, config: dict[str, Any], source: Path = Path("the config")) -> None:
        import httpx
        import openai
        import telegram
        from telegram.request import HTTPXRequest

        from gateway import pooling

        channel = _need(config, source, "channels", CHANNEL)
        provider = _need(config, source, "providers", PROVIDER)
        self.secret = _reveal(channel.get("webhook_secret"))
        self.public_url = _need(config, source, "http", "public_url").rstrip("/")
        self.bind = _need(config, source, "http", "public_bind")
        self.model = _need(config, source, "providers", PROVIDER, "model")
        # The transports the gateway's clients use (gateway/pooling.py), so that the ceiling
        # is the same stack's (here they changed little: 2.76 -> 2.72 ms per reply, 2 runs each).
        self.request = HTTPXRequest(
            connection_pool_size=SENDS_IN_FLIGHT,
            read_timeout=15.0,
            connect_timeout=10.0,
            httpx_kwargs={
                "transport": pooling.httpx_transport(
                    limits=httpx.Limits(max_connections=SENDS_IN_FLIGHT)
                )
            },
        )
        api_base = _need(config, source, "channels", CHANNEL, "api_base")
        self.bot = telegram.Bot(
            _reveal(_need(config, source, "channels", CHANNEL, "token")) or "",
            base_url=f"{api_base}/bot",
            base_file_url=f"{api_base}/file/bot",
            request=self.request,
        )
        self.reply_parameters = telegram.ReplyParameters
        self.llm = openai.AsyncOpenAI(
            base_url=_need(config, source, "providers", PROVIDER, "base_url"),
            api_key=_reveal(provider.get("api_key")) or "no-key-configured",
            max_retries=0,
            timeout=30.0,
            http_client=pooling.sdk_http_client(openai),
        )
        self.answers = trio.CapacityLimiter(ANSWERS_IN_FLIGHT)
        self.sends = trio.CapacityLimiter(SENDS_IN_FLIGHT)
        self.nursery: trio.Nursery | None = None
        self.failures = 0

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The webhook: 200 for a Telegram update with the right secret, the reply in the
        background. Lifespan events are acknowledged; anything else is 404."""
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status = 404
        if scope["method"] == "POST" and scope["path"] == f"/webhooks/{CHANNEL}":
            headers = dict(scope["headers"])
            if self.secret is not None and headers.get(SECRET_HEADER, b"").decode() != self.secret:
                status = 401
            else:
                status = 200
                message = json.loads(body).get("message") or {}
                if message.get("text") and self.nursery is not None:
                    self.nursery.start_soon(
                        self.answer, message["chat"]["id"], message["message_id"], message["text"]
                    )
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def answer(self, chat_id: int, message_id: int, text: str) -> None:
        import httpx2

        try:
            async with self.answers:
                raw = await self.llm.post(
                    "/chat/completions",
                    body={"model": self.model, "messages": [{"role": "user", "content": text}]},
                    cast_to=httpx2.Response,
                )
                reply = raw.json()["choices"][0]["message"]["content"]
            async with self.sends:
                await self.bot.send_message(
                    chat_id=chat_id,
                    text=reply,
                    reply_parameters=self.reply_parameters(message_id),
                )
        except Exception as exc:  # a yardstick: count and say it, the driver reports the loss
            self.failures += 1
            print(f"relay: WARNING reply to {chat_id} failed: {exc!r}", flush=True)

    async def run(self) -> None:
        config = hypercorn.config.Config()
        config.bind = [self.bind]
        config.accesslog = None
        config.include_server_header = False
        # Not Bot.initialize(): it gathers on asyncio (the gateway's channel does the same).
        await self.request.initialize()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(partial(hypercorn.trio.serve, self.app, config))
            await self.bot.set_webhook(
                url=f"{self.public_url}/webhooks/{CHANNEL}",
                secret_token=self.secret,
                drop_pending_updates=False,
            )
            # The line load.py's open_daemon_process waits for (gateway.testing.process).
            print("relay (bench/relay.py) is running", flush=True)


def main(argv: list[str]) -> int:
    rest = argv[argv.index("--") + 1 :] if "--" in argv else argv
    path = _config_path(rest)
    try:
        config = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"relay: cannot read {path}: {exc}") from None
    trio.run(Relay(config, path).run)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
