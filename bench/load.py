"""Load driver: K messages over N chats through a real gateway process.

The fake platform API (Telegram Bot API or WhatsApp Cloud API) and a fake OpenAI-compatible model
run in this process on 127.0.0.1; the gateway runs as its own process (real config loader,
SQLCipher store, channel plugin, OpenAI plugin). Modes:

- polling (default): updates queued on the fake Bot API, fetched by getUpdates;
- ``--webhook``: the fake posts each update to the gateway's Telegram webhook;
- ``--webhook --relay``: the same, answered by ``bench/relay.py`` instead of the gateway (the
  relay ceiling: the two SDK calls of a reply and nothing else);
- ``--whatsapp``: the fake posts each message as a signed WhatsApp notification
  (``X-Hub-Signature-256``); replies go to the fake Graph API.

Webhook deliveries keep 40 in flight (Telegram's ``max_connections`` default) and a refused one
is re-sent after 0.1 s, as the platforms retry. By default all K are due at once (a burst: the
maximum the gateway sustains); ``--rate R`` paces them at R messages/s instead (an open loop:
latency at a given load). Before the measured messages, ``--warmup`` messages (50) in chats of
their own are sent and answered, so first-use costs stay out of the figures.

Prints replies/s, end-to-end latency p50/p95/p99 (from the webhook POST, or from the update
becoming available to getUpdates when polling; from the due time when paced, to the moment the
reply reaches the fake API), the latency the gateway adds (end-to-end minus the model's latency),
webhook ack latency p50/p95/p99, lost and duplicated replies (must be 0; exit status 1 otherwise),
the daemon's CPU seconds during the load and its peak RSS.

    python bench/load.py --messages 2000 --chats 200                 # polling
    python bench/load.py --webhook --messages 2000 --chats 200
    python bench/load.py --whatsapp --messages 2000 --chats 200 --model-latency 200
    python bench/load.py --webhook --rate 300                        # paced, for latency
    python bench/load.py --telegram-limits     # keep the platform's default send limits
    python bench/load.py --webhook --json      # one JSON object instead of the report
    python bench/load.py --webhook --rate 115 --latencies lat.csv   # each message's latency
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import re
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import trio
from _harness import (
    WEBHOOK_CONCURRENCY,
    Delivery,
    ProcessMeter,
    WebhookClient,
    drive,
    latency_line,
    percentiles,
    print_json,
)

from gateway.testing.fake_openai import open_fake_openai
from gateway.testing.fake_telegram import SECRET_HEADER, FakeTelegramServer, open_fake_telegram
from gateway.testing.fake_whatsapp import (
    DEFAULT_APP_SECRET,
    DEFAULT_PHONE_NUMBER_ID,
    DEFAULT_TOKEN,
    FakeWhatsAppServer,
    open_fake_whatsapp,
)
from gateway.testing.process import READY_MARK, open_daemon_process
from plugins.whatsapp.channel import SIGNATURE_HEADER

TOKEN = "123456:BENCH-token"
RELAY = Path(__file__).resolve().parent / "relay.py"
MODES = ("polling", "webhook", "whatsapp")
_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")
WARMUP_CHATS = 10
SETTLE = 1.0
"""Seconds to keep listening after the last expected reply, only to catch late duplicates."""

Key = tuple[str, str]  # (chat, text of the user's message)


def _key_of(reply_text: str) -> str:
    """The fake model answers "echo: <the user's message>"."""
    return reply_text.removeprefix("echo: ")


@dataclasses.dataclass(frozen=True)
class Options:
    mode: str = "polling"
    messages: int = 2000
    chats: int = 200
    model_latency_ms: float = 0.0
    rate: float | None = None
    platform_limits: bool = False
    timeout: float = 300.0
    concurrency: int = WEBHOOK_CONCURRENCY
    warmup: int = 50
    workers: int | None = None
    data_root: Path | None = None
    latencies: Path | None = None
    relay: bool = False
    """Run ``bench/relay.py`` in place of the gateway (``--webhook`` only): the relay ceiling."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _public(port: int | None) -> str:
    if port is None:
        return 'public_bind = "127.0.0.1:0"'
    return f'public_bind = "127.0.0.1:{port}"\npublic_url = "http://127.0.0.1:{port}"'


def _no_limits(platform_limits: bool) -> str:
    if platform_limits:
        return ""
    return "send_rate = 100000\nsend_rate_per_chat = 100000\nsend_burst_per_chat = 1000\n"


def config_text(
    data_dir: Path,
    channel: str,
    llm_base: str,
    port: int | None,
    workers: int | None = None,
) -> str:
    gateway_extra = f"workers = {workers}\n" if workers else ""
    return f"""
[gateway]
data_dir = "{data_dir}"
log_level = "WARNING"
{gateway_extra}
[http]
{_public(port)}
admin_bind = "127.0.0.1:0"
[channels.bench]
{channel}
[agents.default]
provider = "main"
history_turns = 10
[providers.main]
plugin = "openai"
base_url = "{llm_base}"
api_key = "env:OPENAI_API_KEY"
model = "fake-model"
"""


class TelegramSide:
    """The fake Bot API as the platform: polling or webhook."""

    def __init__(self, tg: FakeTelegramServer, webhook: bool, platform_limits: bool) -> None:
        self.tg = tg
        self.webhook = webhook
        self.platform_limits = platform_limits
        self.env = {"TELEGRAM_TOKEN": TOKEN, "WEBHOOK_SECRET": "bench-secret"}
        self.on_reply: Callable[[Key], None] = lambda key: None
        tg.on_send = lambda sent: self.on_reply((str(sent.chat_id), _key_of(sent.text)))

    def channel_config(self, port: int | None) -> str:
        if self.webhook:
            mode = 'mode = "webhook"\nwebhook_secret = "env:WEBHOOK_SECRET"'
        else:
            mode = 'mode = "polling"'
        return (
            f'plugin = "telegram"\ntoken = "env:TELEGRAM_TOKEN"\n{mode}\n'
            f'api_base = "{self.tg.api_base}"\n' + _no_limits(self.platform_limits)
        )

    def chat(self, n: int) -> str:
        return str(10_000 + n)

    def make(self, chat: str, text: str) -> dict[str, Any]:
        # Queued for getUpdates at once; when a webhook is set, posted by the driver instead.
        return self.tg.push_message(int(chat), text)

    def webhook_url(self) -> str:
        assert self.tg.webhook_url is not None, "the gateway did not call setWebhook"
        return self.tg.webhook_url

    def request(self, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """Body and headers of Telegram's webhook POST of ``payload``. (Not sent with the
        fake's ``deliver_to_webhook``: it posts through httpx, see _harness, and rescans the
        queue of updates on every call, O(K) each.)"""
        headers = {"Content-Type": "application/json"}
        if self.tg.webhook_secret is not None:
            headers[SECRET_HEADER] = self.tg.webhook_secret
        return json.dumps(payload).encode(), headers

    async def wait_sent(self, count: int) -> None:
        await self.tg.wait_sent(count)


class _TimedList(list[Any]):
    """``FakeWhatsAppServer.sent`` that tells when each reply arrives. The fake has no
    ``on_send`` hook like the Telegram one; this reports at the same moment, inside the request
    that recorded it, rather than after a waiting task is next scheduled."""

    def __init__(self, on_append: Callable[[Any], None]) -> None:
        super().__init__()
        self._on_append = on_append

    def append(self, item: Any) -> None:
        super().append(item)
        self._on_append(item)


class WhatsAppSide:
    """The fake Cloud API as the platform: signed webhook notifications, Graph API replies."""

    webhook = True

    def __init__(self, wa: FakeWhatsAppServer, platform_limits: bool) -> None:
        self.wa = wa
        self.platform_limits = platform_limits
        self.env = {
            "WHATSAPP_TOKEN": DEFAULT_TOKEN,
            "WHATSAPP_APP_SECRET": DEFAULT_APP_SECRET,
            "WHATSAPP_VERIFY_TOKEN": "bench-verify-token",
        }
        self.on_reply: Callable[[Key], None] = lambda key: None
        wa.sent = _TimedList(lambda sent: self.on_reply((sent.to, _key_of(sent.text))))

    def channel_config(self, port: int | None) -> str:
        self.wa.webhook_url = f"http://127.0.0.1:{port}/webhooks/bench"
        return (
            f'plugin = "whatsapp"\nphone_number_id = "{DEFAULT_PHONE_NUMBER_ID}"\n'
            'access_token = "env:WHATSAPP_TOKEN"\napp_secret = "env:WHATSAPP_APP_SECRET"\n'
            f'verify_token = "env:WHATSAPP_VERIFY_TOKEN"\napi_base = "{self.wa.api_base}"\n'
            + _no_limits(self.platform_limits)
        )

    def chat(self, n: int) -> str:
        return str(4_790_000_000 + n)

    def make(self, chat: str, text: str) -> dict[str, Any]:
        return self.wa.push_message(chat, text, name=f"User {chat[-4:]}")

    def webhook_url(self) -> str:
        assert self.wa.webhook_url is not None
        return self.wa.webhook_url

    def request(self, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """Body and headers of Meta's signed POST of ``payload``, as the fake's
        ``post_webhook`` builds them (not sent through it: it posts through httpx, see
        _harness)."""
        body = json.dumps(payload).encode()
        return body, {"Content-Type": "application/json", SIGNATURE_HEADER: self.wa.sign(body)}

    async def wait_sent(self, count: int) -> None:
        await self.wa.wait_sent(count)


Side = TelegramSide | WhatsAppSide


@contextlib.asynccontextmanager
async def open_side(options: Options) -> AsyncIterator[Side]:
    if options.mode == "whatsapp":
        # Every bench user has written just now, so replies are inside the 24-hour window.
        async with open_fake_whatsapp() as wa:
            yield WhatsAppSide(wa, options.platform_limits)
    else:
        async with open_fake_telegram(TOKEN) as tg:
            yield TelegramSide(tg, options.mode == "webhook", options.platform_limits)


def daemon_warnings(output: str) -> list[str]:
    """Lines the daemon logged at WARNING or above after it started (log_level is WARNING)."""
    after_start = output.partition(READY_MARK.decode())[2]
    return [line for line in after_start.splitlines() if _PROBLEM.search(line)]


async def warm_up(side: Side, client: WebhookClient | None, options: Options) -> None:
    """Send ``options.warmup`` messages over chats of their own and wait for every reply, so
    that first-use costs (connections, lazy imports, caches) stay out of the figures."""
    if not options.warmup:
        return

    async def deliver(i: int, scheduled: float) -> None:
        payload = side.make(side.chat(options.chats + i % WARMUP_CHATS), f"warm-up {i}")
        if client is not None:
            body, headers = side.request(payload)
            await Delivery().post_until_accepted(lambda: client.post(body, headers))

    await drive(options.warmup, deliver, concurrency=WARMUP_CHATS)
    with trio.fail_after(options.timeout):
        await side.wait_sent(options.warmup)


async def run(options: Options) -> dict[str, Any]:
    """One load run; returns its figures (see :func:`report`)."""
    due_at: dict[Key, float] = {}
    replies: dict[Key, list[float]] = collections.defaultdict(list)
    delivery = Delivery()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-", dir=options.data_root) as tmp:
        tmpdir = Path(tmp)
        async with (
            open_fake_openai(latency=options.model_latency_ms / 1000) as llm,
            open_side(options) as side,
        ):
            port = free_port() if side.webhook else None
            config = tmpdir / "gateway.toml"
            config.write_text(
                config_text(
                    tmpdir / "data", side.channel_config(port), llm.base_url, port, options.workers
                )
            )
            env = {**side.env, "OPENAI_API_KEY": "sk-bench"}
            # The relay reads the same config and prints the same ready line (bench/relay.py).
            wrapper = [sys.executable, str(RELAY), "--"] if options.relay else []
            async with open_daemon_process(
                config, env, tmpdir / "daemon.log", wrapper=wrapper
            ) as daemon:
                meter = ProcessMeter(daemon.pid)
                rss_idle = meter.peak_rss_mib()
                client = WebhookClient(side.webhook_url()) if side.webhook else None
                await warm_up(side, client, options)
                keys = [
                    (side.chat(i % options.chats), f"message {i}") for i in range(options.messages)
                ]
                side.on_reply = lambda key: replies[key].append(time.perf_counter())
                driver_cpu = time.process_time()
                meter.restart()

                async def deliver(i: int, scheduled: float) -> None:
                    payload = side.make(*keys[i])
                    if client is None:
                        due_at[keys[i]] = time.perf_counter()  # available to getUpdates now
                        return
                    body, headers = side.request(payload)
                    due_at[keys[i]] = scheduled
                    post = client.post
                    await delivery.post_until_accepted(lambda: post(body, headers))

                if client is None and options.rate is None:
                    start = time.perf_counter()
                    for i in range(options.messages):
                        await deliver(i, start)
                else:
                    start = await drive(
                        options.messages,
                        deliver,
                        concurrency=options.concurrency,
                        rate=options.rate,
                    )
                expected = options.warmup + options.messages
                with trio.move_on_after(options.timeout):
                    await side.wait_sent(expected)
                with trio.move_on_after(SETTLE):
                    await side.wait_sent(expected + 1)
                end = max((t for ts in replies.values() for t in ts), default=start)
                cpu = meter.cpu_used()
                driver_cpu = time.process_time() - driver_cpu
                peak = meter.peak_rss_mib()
                warnings = daemon_warnings(daemon.text())
                if client is not None:
                    await client.aclose()
                daemon.terminate()
                await daemon.wait()
            llm_connections = llm.connections

    e2e = [(replies[key][0] - due) * 1000 for key, due in due_at.items() if replies.get(key)]
    answered = len(e2e)
    if options.latencies is not None:
        write_latencies(options.latencies, due_at, replies)
    elapsed = end - start
    result: dict[str, Any] = {
        "bench": "load",
        "mode": options.mode,
        "relay": options.relay,
        "messages": options.messages,
        "chats": options.chats,
        "model_latency_ms": options.model_latency_ms,
        "rate": options.rate,
        "warmup": options.warmup,
        "platform_limits": options.platform_limits,
        "replies": answered,
        "seconds": elapsed,
        "replies_per_s": answered / elapsed if elapsed > 0 else 0.0,
        "e2e_ms": percentiles(e2e),
        "added_ms": percentiles([ms - options.model_latency_ms for ms in e2e]),
        "lost": sum(1 for key in due_at if not replies.get(key)) + (options.messages - len(due_at)),
        "duplicated": sum(len(v) - 1 for v in replies.values() if len(v) > 1),
        "unexpected": sum(len(v) for k, v in replies.items() if k not in due_at),
        "daemon_cpu_s": cpu,
        "driver_cpu_s": driver_cpu,
        "peak_rss_mib": peak,
        "idle_rss_mib": rss_idle,
        "model_connections": llm_connections,
        "daemon_warnings": len(warnings),
        "daemon_warning_sample": warnings[:3],
    }
    if side.webhook:
        result.update(delivery.figures())
    return result


def report(result: dict[str, Any]) -> str:
    """The human report of a :func:`run` result."""
    rate = f"{result['rate']:g}/s" if result["rate"] else "burst"
    lines = [
        f"mode={result['mode']}{' (bench/relay.py, not the gateway)' if result.get('relay') else ''} "
        f"messages={result['messages']} chats={result['chats']} "
        f"model_latency={result['model_latency_ms']:g}ms load={rate} "
        f"platform_limits={result['platform_limits']}",
        f"{'replies/s':<22} {result['replies_per_s']:10.1f}   "
        f"({result['replies']} replies in {result['seconds']:.2f} s)",
        latency_line("e2e latency", result["e2e_ms"]),
    ]
    if result["model_latency_ms"]:
        lines.append(latency_line("added latency", result["added_ms"]))
    if "ack_ms" in result:
        lines.append(latency_line("webhook ack", result["ack_ms"]))
        lines.append(
            f"{'webhook acks/s':<22} {result['acks_per_s']:10.1f}   "
            "(committed and acknowledged, first POST to last 2xx)"
        )
        lines.append(
            f"{'webhook retries':<22} {result['refused']:10d}   "
            f"(refused; {result['timeouts']} timed out)"
        )
    per_reply = result["daemon_cpu_s"] / result["replies"] * 1000 if result["replies"] else 0.0
    lines += [
        f"{'lost':<22} {result['lost']:10d}",
        f"{'duplicated':<22} {result['duplicated']:10d}",
        f"{'daemon CPU':<22} {result['daemon_cpu_s']:10.2f} s   ({per_reply:.2f} ms per reply;"
        f" driver {result['driver_cpu_s']:.2f} s)",
        f"{'peak RSS':<22} {result['peak_rss_mib'] or 0:10.1f} MiB   "
        f"(idle after start: {result['idle_rss_mib'] or 0:.1f} MiB)",
    ]
    if result["daemon_warnings"]:
        lines.append(
            f"{'daemon warnings':<22} {result['daemon_warnings']:10d}   (first ones below)"
        )
        lines += [f"    {line[:200]}" for line in result["daemon_warning_sample"]]
    if result["unexpected"]:
        lines.append(f"{'unexpected replies':<22} {result['unexpected']:10d}")
    return "\n".join(lines)


def write_latencies(path: Path, due_at: dict[Any, float], replies: dict[Any, list[float]]) -> None:
    """One CSV row per answered message, in arrival order: when it was due (Unix seconds) and
    its end-to-end latency. Sorting by latency shows when the slow ones arrived: in session 6
    the slowest 1 % clustered every 10 s, at the search indexer's runs (bench/README)."""
    to_unix = time.time() - time.perf_counter()
    rows = sorted(
        (due, (replies[key][0] - due) * 1000) for key, due in due_at.items() if replies.get(key)
    )
    with path.open("w") as f:
        f.write("due_unix_s,e2e_ms\n")
        f.writelines(f"{due + to_unix:.6f},{ms:.3f}\n" for due, ms in rows)


def ok(result: dict[str, Any]) -> bool:
    return bool(result["lost"] == 0 and result["duplicated"] == 0 and result["unexpected"] == 0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", "-k", type=int, default=2000)
    parser.add_argument("--chats", "-n", type=int, default=200)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--webhook", action="store_true", help="deliver Telegram updates to the webhook"
    )
    which.add_argument(
        "--whatsapp", action="store_true", help="deliver signed WhatsApp webhook notifications"
    )
    parser.add_argument(
        "--relay",
        action="store_true",
        help="with --webhook: answer with bench/relay.py instead of the gateway (the same two SDK "
        "calls per reply, nothing stored): the relay ceiling",
    )
    parser.add_argument(
        "--model-latency",
        type=float,
        default=0.0,
        metavar="MS",
        help="milliseconds the fake model waits before each answer (the issue asks 0 and 200)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="PER_S",
        help="pace messages at this many per second (default: all at once)",
    )
    parser.add_argument(
        "--telegram-limits",
        "--platform-limits",
        dest="platform_limits",
        action="store_true",
        help="keep the platform's default send limits instead of lifting them for the fake API",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=WEBHOOK_CONCURRENCY,
        help="webhook deliveries in flight (default: %(default)s, Telegram's default)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=50,
        help="messages sent and answered before the measured ones, in chats of their own "
        "(default: %(default)s; 0 to measure a cold start)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="[gateway] workers (default: the gateway's)"
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where the temporary data directory goes (default: the system temp dir)",
    )
    parser.add_argument(
        "--latencies",
        type=Path,
        default=None,
        metavar="CSV",
        help="also write each message's due time and end-to-end latency to this CSV file",
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    mode = "webhook" if args.webhook else "whatsapp" if args.whatsapp else "polling"
    if args.relay and mode != "webhook":
        raise SystemExit("load.py: --relay needs --webhook (the relay answers Telegram webhooks)")
    return Options(
        mode=mode,
        messages=args.messages,
        chats=args.chats,
        model_latency_ms=args.model_latency,
        rate=args.rate,
        platform_limits=args.platform_limits,
        timeout=args.timeout,
        concurrency=args.concurrency,
        warmup=args.warmup,
        workers=args.workers,
        data_root=args.data_root,
        latencies=args.latencies,
        relay=args.relay,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = trio.run(run, options_from(args))
    if args.json:
        print_json(result)
    else:
        print(report(result))
    return 0 if ok(result) else 1


if __name__ == "__main__":
    sys.exit(main())
