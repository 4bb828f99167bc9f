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


def config_text(data_dir: Path, tg_base: str, llm_base: str, telegram_limits: bool) -> str:
    limits = (
        ""
        if telegram_limits
        else ("send_rate = 100000\nsend_rate_per_chat = 100000\nsend_burst_per_chat = 1000\n")
    )
    return f"""
[gateway]
data_dir = "{data_dir}"
log_level = "WARNING"
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
[channels.bench]
plugin = "telegram"
token = "env:TELEGRAM_TOKEN"
mode = "polling"
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


async def run(messages: int, chats: int, telegram_limits: bool, wait_limit: float) -> int:
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        tmpdir = Path(tmp)
        async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
            config = tmpdir / "gateway.toml"
            config.write_text(
                config_text(tmpdir / "data", tg.api_base, llm.base_url, telegram_limits)
            )
            env = {"TELEGRAM_TOKEN": TOKEN, "OPENAI_API_KEY": "sk-bench"}
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
                for i in range(messages):
                    chat = 10_000 + i % chats
                    text = f"message {i}"
                    pushed_at[(chat, text)] = time.perf_counter()
                    tg.push_message(chat, text)
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
    print(f"messages={messages} chats={chats} telegram_limits={telegram_limits}")
    print(f"replies/s      {answered / elapsed:10.1f}   ({answered} replies in {elapsed:.2f} s)")
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"latency p50    {statistics.median(latencies):10.1f} ms")
        print(f"latency p99    {p99:10.1f} ms")
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
    args = parser.parse_args()
    return trio.run(run, args.messages, args.chats, args.telegram_limits, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
