"""Load driver: K messages over N Telegram chats through a real gateway process.

The fake Telegram Bot API and a 0 ms fake OpenAI-compatible model run in this process on
127.0.0.1; the gateway runs as its own process (real config loader, SQLCipher store, Telegram
plugin in polling mode, OpenAI plugin). Prints replies/s, end-to-end latency (from the moment the
update is available to getUpdates to the moment sendMessage reaches the fake), lost and
duplicated replies, and the gateway's peak RSS.

    python bench/load.py --messages 2000 --chats 200
    python bench/load.py --telegram-limits     # keep Telegram's default send limits (30/s)
"""

from __future__ import annotations

import argparse
import collections
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from gateway.testing.fake_openai import open_fake_openai
from gateway.testing.fake_telegram import open_fake_telegram
from gateway.testing.process import open_daemon_process

TOKEN = "123456:BENCH-token"


def config_text(
    data_dir: Path,
    tg_base: str,
    llm_base: str,
    telegram_limits: bool,
    webhook_port: int | None = None,
) -> str:
    limits = (
        ""
        if telegram_limits
        else ("send_rate = 100000\nsend_rate_per_chat = 100000\nsend_burst_per_chat = 1000\n")
    )
    if webhook_port is None:
        mode, public = 'mode = "polling"', "127.0.0.1:0"
    else:
        mode = 'mode = "webhook"\nwebhook_secret = "env:WEBHOOK_SECRET"'
        public = f'127.0.0.1:{webhook_port}"\npublic_url = "http://127.0.0.1:{webhook_port}'
    return f"""
[gateway]
data_dir = "{data_dir}"
log_level = "WARNING"
[http]
public_bind = "{public}"
admin_bind = "127.0.0.1:0"
[channels.bench]
plugin = "telegram"
token = "env:TELEGRAM_TOKEN"
{mode}
api_base = "{tg_base}"
{limits}
[agents.default]
provider = "main"
history_turns = 10
[providers.main]
plugin = "openai"
base_url = "{llm_base}"
api_key = "env:OPENAI_API_KEY"
model = "fake-model"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run(
    messages: int, chats: int, telegram_limits: bool, wait_limit: float, webhook: bool = False
) -> int:
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        tmpdir = Path(tmp)
        async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
            config = tmpdir / "gateway.toml"
            port = free_port() if webhook else None
            config.write_text(
                config_text(tmpdir / "data", tg.api_base, llm.base_url, telegram_limits, port)
            )
            env = {
                "TELEGRAM_TOKEN": TOKEN,
                "OPENAI_API_KEY": "sk-bench",
                "WEBHOOK_SECRET": "bench-secret",
            }
            acks: list[float] = []
            pushed_at: dict[tuple[int, str], float] = {}
            received_at: dict[tuple[int, str], list[float]] = collections.defaultdict(list)

            def on_send(sent) -> None:
                received_at[(sent.chat_id, sent.text.removeprefix("echo: "))].append(
                    time.perf_counter()
                )

            tg.on_send = on_send
            async with open_daemon_process(config, env, tmpdir / "daemon.log") as daemon:
                rss_idle = daemon.peak_rss_kib()
                start = time.perf_counter()
                updates = []
                for i in range(messages):
                    chat = 10_000 + i % chats
                    text = f"message {i}"
                    pushed_at[(chat, text)] = time.perf_counter()
                    updates.append(tg.push_message(chat, text))
                if webhook:
                    # Telegram's webhook side: up to 40 deliveries in flight (its max_connections
                    # default), each retried until the gateway answers 2xx.
                    limit = trio.CapacityLimiter(40)

                    async def deliver(update: dict) -> None:
                        async with limit:
                            sent = time.perf_counter()
                            # A refused delivery is retried later, as Telegram does: a
                            # real retry delay, not a wait for something to happen.
                            while await tg.deliver_to_webhook(update) >= 300:  # noqa: ASYNC110
                                await trio.sleep(0.1)
                            acks.append((time.perf_counter() - sent) * 1000)

                    async with trio.open_nursery() as nursery:
                        for update in updates:
                            nursery.start_soon(deliver, update)
                with trio.move_on_after(wait_limit):
                    await tg.wait_sent(messages)
                # A moment more only to catch duplicates that would arrive late.
                with trio.move_on_after(1.0):
                    await tg.wait_sent(messages + 1)
                end = max((t for ts in received_at.values() for t in ts), default=start)
                peak = daemon.peak_rss_kib()
                daemon.terminate()
                await daemon.wait()

    latencies = sorted(
        (received_at[key][0] - pushed) * 1000
        for key, pushed in pushed_at.items()
        if received_at.get(key)
    )
    lost = sum(1 for key in pushed_at if not received_at.get(key))
    duplicated = sum(len(v) - 1 for v in received_at.values() if len(v) > 1)
    answered = len(latencies)
    elapsed = end - start
    mode = "webhook" if webhook else "polling"
    print(f"messages={messages} chats={chats} mode={mode} telegram_limits={telegram_limits}")
    print(f"replies/s      {answered / elapsed:10.1f}   ({answered} replies in {elapsed:.2f} s)")
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"latency p50    {statistics.median(latencies):10.1f} ms")
        print(f"latency p99    {p99:10.1f} ms")
    if acks:
        acks.sort()
        print(
            f"webhook ack    p50 {statistics.median(acks):.1f} ms, p99 {acks[int(len(acks) * 0.99)]:.1f} ms"
        )
    print(f"lost           {lost:10d}")
    print(f"duplicated     {duplicated:10d}")
    print(
        f"peak RSS       {(peak or 0) / 1024:10.1f} MiB   (idle after start: {(rss_idle or 0) / 1024:.1f} MiB)"
    )
    return 0 if lost == 0 and duplicated == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", "-k", type=int, default=2000)
    parser.add_argument("--chats", "-n", type=int, default=200)
    parser.add_argument(
        "--telegram-limits",
        action="store_true",
        help="keep Telegram's default send limits instead of lifting them for the fake API",
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--webhook", action="store_true", help="deliver updates to the webhook instead of polling"
    )
    args = parser.parse_args()
    return trio.run(
        run, args.messages, args.chats, args.telegram_limits, args.timeout, args.webhook
    )


if __name__ == "__main__":
    sys.exit(main())
