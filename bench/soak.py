"""Soak: N messages (default 1,000,000) through a real gateway process, its memory and database
sampled as it goes (issue #9: no growth after warm-up, RSS <= 120 MB steady, WAL bounded).

The setup is ``load.py --webhook``'s: a real daemon process (Telegram webhook mode, real config
loader, SQLCipher store), the fake Bot API and a fake model answering at once, on 127.0.0.1.
``--warmup`` messages are answered first; then the N messages go over M chats, 40 webhook
deliveries in flight, either as fast as the gateway answers (default) or paced at ``--rate``/s.
A burst keeps at most ``--backlog`` messages accepted but not yet answered, so the run measures
the gateway at its sustained rate rather than a journal filling faster than it drains (that
would be a growing queue, not a leak).

Every ``--sample`` seconds: the daemon's RSS (psutil), the sizes of ``gateway.db`` and its
``-wal`` file, replies so far and replies/s in the window; a table row every ``--print-every``
seconds (its ``dup`` column counts duplicated and unexpected replies so far, so a run stopped
early still says whether any reply went out twice) (to stderr with ``--json``). At the end: RSS once warm (at ``--warm-fraction`` of the
run) and at the end, the maximum, growth per 100k messages (least-squares slope of RSS over
replies after warm-up), the largest WAL, the final database size, lost and duplicated replies
(must be 0; exit status 1 otherwise).

The driver's own memory stays bounded: a byte per message counts its replies (lost and
duplicated come from that), and the fakes' records of requests are dropped at every sample.

    python bench/soak.py                                  # 1,000,000 messages (~1.5 h here)
    python bench/soak.py --messages 100000 --chats 1000
    python bench/soak.py --messages 100000 --rate 150     # paced
    python bench/soak.py --messages 2000 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import trio
from _harness import Delivery, WebhookClient, drive, percentiles, print_json
from load import TOKEN, TelegramSide, config_text, daemon_warnings, free_port, warm_up
from load import Options as LoadOptions
from memory import child_wrapper, heap_line, request_report, smaps_rollup

from gateway.keys import DATABASE_FILE
from gateway.testing.fake_openai import FakeOpenAIServer, open_fake_openai
from gateway.testing.fake_telegram import open_fake_telegram
from gateway.testing.process import open_daemon_process

MIB = 1024 * 1024
PREFIX = "message "
STEADY_RSS_MIB = 120.0
"""Issue #9's ceiling for the daemon's resident memory once warm."""
SETTLE = 1.0
"""Seconds to keep listening after the last expected reply, only to catch late duplicates."""


@dataclasses.dataclass(frozen=True)
class Options:
    messages: int = 1_000_000
    chats: int = 1000
    rate: float | None = None
    backlog: int = 1000
    warmup: int = 50
    sample: float = 5.0
    print_every: float = 30.0
    warm_fraction: float = 0.1
    stall_timeout: float = 120.0
    data_root: Path | None = None
    probe: bool = False
    trace: bool = False


class Tally:
    """Replies per message number, one byte each (saturating at 255): what lost and duplicated
    need, and nothing per message beyond it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = bytearray(count)
        self.answered = 0
        """Distinct messages answered."""
        self.duplicated = 0
        self.unexpected = 0
        self.progress = trio.Event()
        """Set (and replaced) at every new answer."""

    def record(self, text: str) -> None:
        number = text.removeprefix(PREFIX)
        i = int(number) if text.startswith(PREFIX) and number.isdigit() else -1
        if not 0 <= i < self.count:
            self.unexpected += 1
            return
        times = self.seen[i]
        if times:
            self.duplicated += 1
        else:
            self.answered += 1
            self.progress.set()
            self.progress = trio.Event()
        self.seen[i] = min(times + 1, 255)

    @property
    def lost(self) -> int:
        return self.count - self.answered


@dataclasses.dataclass(frozen=True)
class Sample:
    seconds: float
    replies: int
    rss_mib: float
    wal_mib: float
    db_mib: float
    driver_rss_mib: float

    def row(self) -> list[float]:
        return [
            round(self.seconds, 1),
            self.replies,
            self.rss_mib,
            self.wal_mib,
            self.db_mib,
            self.driver_rss_mib,
        ]


def _size_mib(path: Path) -> float:
    try:
        return round(path.stat().st_size / MIB, 2)
    except FileNotFoundError:
        return 0.0


def _forget_records(tg_side: TelegramSide, llm: FakeOpenAIServer) -> None:
    """Drop what the fakes record per request (1M sends and model calls would keep gigabytes in
    the driver); replies are counted by the ``on_send`` hook as they arrive."""
    tg_side.tg.sent.clear()
    tg_side.tg.requests.clear()
    llm.requests.clear()
    llm.received.clear()


def slope_per_100k(samples: list[Sample]) -> float | None:
    """Least-squares slope of RSS (MiB) over replies, per 100,000 replies."""
    if len(samples) < 2:
        return None
    xs = [float(s.replies) for s in samples]
    ys = [s.rss_mib for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return cov / var * 100_000


HEADER = (
    f"{'time s':>8} {'replies':>9} {'replies/s':>9} {'RSS MiB':>8} {'WAL MiB':>8} "
    f"{'DB MiB':>8} {'backlog':>7} {'ack p99 ms':>10} {'dup':>5}"
)


async def run(options: Options, *, progress: Any = sys.stdout) -> dict[str, Any]:
    """One soak run; returns its figures (see :func:`report`). Table rows go to ``progress``."""
    tally = Tally(options.messages)
    samples: list[Sample] = []
    warm_at = options.warm_fraction * options.messages
    issued = 0
    with tempfile.TemporaryDirectory(prefix="gateway-soak-", dir=options.data_root) as tmp:
        tmpdir = Path(tmp)
        database = tmpdir / "data" / DATABASE_FILE
        wal = Path(f"{database}-wal")
        async with open_fake_openai(latency=0.0) as llm, open_fake_telegram(TOKEN) as tg:
            side = TelegramSide(tg, webhook=True, platform_limits=False)
            port = free_port()
            config = tmpdir / "gateway.toml"
            config.write_text(
                config_text(tmpdir / "data", side.channel_config(port), llm.base_url, port)
            )
            env = {**side.env, "OPENAI_API_KEY": "sk-soak"}
            report_file = tmpdir / "memory.json"
            probe = options.probe or options.trace
            wrapper = child_wrapper(report_file) if probe else ()
            async with open_daemon_process(
                config, env, tmpdir / "daemon.log", wrapper=wrapper
            ) as daemon:
                process, driver = psutil.Process(daemon.pid), psutil.Process()
                client = WebhookClient(side.webhook_url())
                load_options = LoadOptions(
                    mode="webhook", chats=options.chats, warmup=options.warmup, timeout=300.0
                )
                await warm_up(side, client, load_options)
                tg.updates.clear()  # acknowledged by the webhook: Telegram forgets them
                side.on_reply = lambda key: tally.record(key[1])
                cpu_start = sum(process.cpu_times()[:2])
                start = time.perf_counter()
                delivery = Delivery()
                ack_window: list[float] = []

                def take_sample() -> Sample:
                    sample = Sample(
                        time.perf_counter() - start,
                        tally.answered,
                        round(process.memory_info().rss / MIB, 1),
                        _size_mib(wal),
                        _size_mib(database),
                        round(driver.memory_info().rss / MIB, 1),
                    )
                    samples.append(sample)
                    _forget_records(side, llm)
                    ack_window.extend(delivery.acks_ms)
                    delivery.acks_ms.clear()
                    return sample

                async def sampler() -> None:
                    print(HEADER, file=progress, flush=True)
                    last_row = take_sample()
                    tracing = False
                    while True:
                        await trio.sleep(options.sample)  # a sampling period, not a wait
                        sample = take_sample()
                        if options.trace and not tracing and sample.replies >= warm_at:
                            os.kill(daemon.pid, signal.SIGUSR1)  # tracemalloc from now on
                            tracing = True
                        if sample.seconds - last_row.seconds >= options.print_every - 1e-3:
                            window = sample.seconds - last_row.seconds
                            rate = (sample.replies - last_row.replies) / window
                            ack_p99 = percentiles(ack_window).get("p99", 0.0)
                            ack_window.clear()
                            print(
                                f"{sample.seconds:8.0f} {sample.replies:9d} {rate:9.1f} "
                                f"{sample.rss_mib:8.1f} {sample.wal_mib:8.2f} "
                                f"{sample.db_mib:8.1f} {issued - tally.answered:7d} "
                                f"{ack_p99:10.1f} {tally.duplicated + tally.unexpected:5d}",
                                file=progress,
                                flush=True,
                            )
                            last_row = sample

                async def deliver(i: int, scheduled: float) -> None:
                    nonlocal issued
                    if options.rate is None:
                        while issued - tally.answered >= options.backlog:
                            await tally.progress.wait()
                    issued += 1
                    payload = side.make(side.chat(i % options.chats), f"{PREFIX}{i}")
                    tg.updates.pop()  # queued by make(); a webhook delivery is never polled
                    body, headers = side.request(payload)
                    post = client.post
                    await delivery.post_until_accepted(lambda: post(body, headers))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sampler)
                    await drive(options.messages, deliver, rate=options.rate)
                    while tally.answered < options.messages:
                        with trio.move_on_after(options.stall_timeout) as stalled:
                            await tally.progress.wait()
                        if stalled.cancelled_caught:
                            break  # no answer for stall_timeout seconds: the rest are lost
                    end = time.perf_counter()
                    with trio.move_on_after(SETTLE):
                        await trio.sleep_forever()  # late duplicates arrive through the hook
                    nursery.cancel_scope.cancel()
                take_sample()
                composition = smaps_rollup(daemon.pid)
                probed = await request_report(daemon, report_file) if probe else {}
                cpu = sum(process.cpu_times()[:2]) - cpu_start
                warnings = daemon_warnings(daemon.text())
                await client.aclose()
                daemon.terminate()
                await daemon.wait()
            final_db_mib = _size_mib(database)

    result = summarize(options, samples, tally, end - start, cpu, warnings, final_db_mib, delivery)
    result["rss_end_anon_mib"] = composition.get("Anonymous")
    result["rss_end_file_mib"] = composition.get("File")
    result["probe"] = probed
    return result


def summarize(
    options: Options,
    samples: list[Sample],
    tally: Tally,
    seconds: float,
    cpu: float,
    warnings: list[str],
    final_db_mib: float,
    delivery: Delivery,
) -> dict[str, Any]:
    warm_at = options.warm_fraction * options.messages
    steady = [s for s in samples if s.replies >= warm_at] or samples[-1:]
    warm, last = steady[0], samples[-1]
    growth = slope_per_100k(steady)
    return {
        "bench": "soak",
        "messages": options.messages,
        "chats": options.chats,
        "rate": options.rate,
        "backlog": options.backlog,
        "warmup": options.warmup,
        "seconds": seconds,
        "replies": tally.answered,
        "replies_per_s": tally.answered / seconds if seconds > 0 else 0.0,
        "lost": tally.lost,
        "duplicated": tally.duplicated,
        "unexpected": tally.unexpected,
        "rss_warm_mib": warm.rss_mib,
        "rss_warm_at_replies": warm.replies,
        "rss_end_mib": last.rss_mib,
        "rss_max_mib": max(s.rss_mib for s in samples),
        "rss_max_steady_mib": max(s.rss_mib for s in steady),
        "rss_growth_mib_per_100k": growth,
        "wal_max_mib": max(s.wal_mib for s in samples),
        "wal_end_mib": last.wal_mib,
        "db_final_mib": final_db_mib,
        "db_bytes_per_message": final_db_mib * MIB / max(1, tally.answered),
        "daemon_cpu_s": cpu,
        "webhook_refused": delivery.refused,
        "webhook_timeouts": delivery.timeouts,
        "daemon_warnings": len(warnings),
        "daemon_warning_sample": warnings[:3],
        "samples": [s.row() for s in samples],
        "sample_columns": ["seconds", "replies", "rss_mib", "wal_mib", "db_mib", "driver_rss_mib"],
        "driver_rss_warm_mib": warm.driver_rss_mib,
        "driver_rss_max_mib": max(s.driver_rss_mib for s in samples),
    }


def report(result: dict[str, Any]) -> str:
    """The human summary of a :func:`run` result."""
    load = f"{result['rate']:g}/s" if result["rate"] else f"burst, backlog <= {result['backlog']}"
    growth = result["rss_growth_mib_per_100k"]
    lines = [
        f"soak: messages={result['messages']} chats={result['chats']} load={load} "
        f"model_latency=0ms mode=webhook",
        f"{'replies/s':<24} {result['replies_per_s']:10.1f}   "
        f"({result['replies']} replies in {result['seconds']:.0f} s)",
        f"{'RSS once warm':<24} {result['rss_warm_mib']:10.1f} MiB   "
        f"(at {result['rss_warm_at_replies']} replies)",
        f"{'RSS at the end':<24} {result['rss_end_mib']:10.1f} MiB   (anonymous "
        f"{result['rss_end_anon_mib'] or 0:.1f}, file-backed {result['rss_end_file_mib'] or 0:.1f})",
        f"{'RSS max':<24} {result['rss_max_mib']:10.1f} MiB   "
        f"(after warm-up {result['rss_max_steady_mib']:.1f}; target <= {STEADY_RSS_MIB:g})",
        f"{'RSS growth':<24} "
        + (f"{growth:10.2f} MiB per 100k messages" if growth is not None else "       n/a")
        + "   (least squares after warm-up)",
        f"{'WAL max':<24} {result['wal_max_mib']:10.2f} MiB   (at the end "
        f"{result['wal_end_mib']:.2f})",
        f"{'DB final':<24} {result['db_final_mib']:10.1f} MiB   "
        f"({result['db_bytes_per_message']:.0f} bytes per message)",
        f"{'lost':<24} {result['lost']:10d}",
        f"{'duplicated':<24} {result['duplicated']:10d}",
        f"{'driver RSS':<24} {result['driver_rss_warm_mib']:10.1f} MiB once warm   "
        f"(max {result['driver_rss_max_mib']:.1f})",
        f"{'daemon CPU':<24} {result['daemon_cpu_s']:10.1f} s   (webhook retries "
        f"{result['webhook_refused']}, timeouts {result['webhook_timeouts']})",
    ]
    probe = result["probe"]
    if probe:
        lines += [
            f"{'at the end':<24} {heap_line(probe['heap'])}",
            f"{'after gc.collect()':<24} {heap_line(probe['heap_after_gc'])}   "
            f"({probe['gc_unreachable']} unreachable objects; {probe['modules']} modules)",
            f"{'RSS after malloc_trim':<24} {probe['rss_after_trim_mib'] or 0:10.1f} MiB   "
            f"(from {probe['rss_after_gc_mib']:.1f}: glibc's free pages handed back)",
        ]
    if probe:
        made = ", ".join(
            f"{name.rpartition('.')[2]} {n}" for name, n in probe["objects_since_start"][:8]
        )
        lines.append(f"{'objects since start':<24} {made}")
    if probe and probe["trace_top"]:
        lines.append("allocations made after warm-up and still live at the end (tracemalloc):")
        for row in probe["trace_top"][:12]:
            frames = [f for f in row["frames"] if "/site-packages/" not in f][-3:] or row["frames"][
                -2:
            ]
            where = " < ".join(_short(f) for f in reversed(frames))
            lines.append(f"  {row['kib']:9.1f} KiB {row['count']:7d} blocks  {where}")
    if result["unexpected"]:
        lines.append(f"{'unexpected replies':<24} {result['unexpected']:10d}")
    if result["daemon_warnings"]:
        lines.append(f"{'daemon warnings':<24} {result['daemon_warnings']:10d}   (first ones)")
        lines += [f"    {line[:200]}" for line in result["daemon_warning_sample"]]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """A traceback frame's file relative to site-packages, the repository or the stdlib."""
    for root in (str(Path(__file__).resolve().parents[1]) + "/", "/site-packages/"):
        if root in frame:
            return frame.split(root, 1)[1]
    if "/lib/python3." in frame:
        return frame.split("/lib/python3.", 1)[1].partition("/")[2]
    return frame


def ok(result: dict[str, Any]) -> bool:
    return bool(result["lost"] == 0 and result["duplicated"] == 0 and result["unexpected"] == 0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", "-k", type=int, default=1_000_000)
    parser.add_argument("--chats", "-n", type=int, default=1000)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="PER_S",
        help="pace at this many per second (keep it below the sustained rate: sends that "
        "cannot go out pile up in the driver)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=1000,
        help="burst: at most this many accepted, unanswered messages (default: %(default)s)",
    )
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--sample", type=float, default=5.0, metavar="S", help="sample period")
    parser.add_argument(
        "--print-every", type=float, default=30.0, metavar="S", help="table row period"
    )
    parser.add_argument(
        "--warm-fraction",
        type=float,
        default=0.1,
        help="share of the run after which memory counts as warm (default: %(default)s)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="give up when no reply came for this long (the rest count as lost)",
    )
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument(
        "--probe",
        action="store_true",
        help="run the daemon under bench/memory.py's child: its heap (pymalloc, glibc, "
        "SQLite) at the end, before and after a full garbage collection",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="--probe, and tracemalloc from warm-up on: the allocations still live at the end "
        "by traceback (slows the daemon several times)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options(
        messages=args.messages,
        chats=args.chats,
        rate=args.rate,
        backlog=args.backlog,
        warmup=args.warmup,
        sample=args.sample,
        print_every=args.print_every,
        warm_fraction=args.warm_fraction,
        stall_timeout=args.stall_timeout,
        data_root=args.data_root,
        probe=args.probe,
        trace=args.trace,
    )
    result = trio.run(lambda: run(options, progress=sys.stderr if args.json else sys.stdout))
    if args.json:
        print_json(result)
    else:
        print(report(result))
    return 0 if ok(result) else 1


if __name__ == "__main__":
    sys.exit(main())
