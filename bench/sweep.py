"""Retention sweep of N expired rows (default 1,000,000) inside a running gateway, with live
Telegram webhook traffic: how long the sweep takes and what it does to acknowledgements.

Before the daemon starts, this script fills a fresh encrypted store (the real store code: same
SQLCipher file, sealed bodies per contact) with ``--rows`` inbound messages in conversations
last active 120 days ago (message content expires after 90: each one is anonymised), and
builds the search index the daemon would already have. The gateway then runs as its own process
(real config loader, Telegram plugin in webhook mode, OpenAI plugin against the fake model)
with ``[retention] sweep_interval_hours`` set so that its scheduler starts the first sweep
``--sweep-after`` seconds after start. Meanwhile the driver posts webhooks at ``--rate``/s.

Prints the sweep's duration and rows/s (from its destruction act), ack latency p50/p95/p99 of
the webhooks posted before the sweep (after ``--settle`` seconds of start-up jobs) and of those
posted while it ran, and lost/duplicated replies (must be 0; exit status 1 otherwise).

    python bench/sweep.py                       # 1M rows, 100 messages/s
    python bench/sweep.py --rows 100000 --rate 200 --sweep-after 45 --json
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from _harness import (
    WEBHOOK_CONCURRENCY,
    Delivery,
    WebhookClient,
    figure_line,
    latency_line,
    percentiles,
    print_json,
)
from load import TOKEN, TelegramSide, config_text, daemon_warnings, free_port

from gateway.keys import DATABASE_FILE, load_master_key
from gateway.store import open_store
from gateway.store.bodies import seal_text
from gateway.store.db import connect
from gateway.testing.fake_openai import open_fake_openai
from gateway.testing.fake_telegram import open_fake_telegram
from gateway.testing.process import open_daemon_process

PER_CONVERSATION = 100
AGE_DAYS = 120


def populate_txn(db: Any, sealer: Any, rows: int) -> int:
    """``rows`` inbound messages, PER_CONVERSATION per contact and conversation, all last
    active AGE_DAYS ago, bodies sealed under each contact's key; one executemany per table."""
    conn = db.conn
    at = (dt.datetime.now(dt.UTC) - dt.timedelta(days=AGE_DAYS)).isoformat(timespec="microseconds")
    conversations = max(1, rows // PER_CONVERSATION)
    base = conn.execute("SELECT coalesce(max(id), 0) FROM contacts").fetchone()[0]
    conn.executemany(
        "INSERT INTO contacts (id, display_name, created_at, updated_at) VALUES (?, ?, ?, ?)",
        ((base + i, f"Old {i}", at, at) for i in range(1, conversations + 1)),
    )
    conn.executemany(
        "INSERT INTO identities (contact_id, channel, external_id, created_at) "
        "VALUES (?, 'bench', ?, ?)",
        ((base + i, f"old-{i}", at) for i in range(1, conversations + 1)),
    )
    conn.executemany(
        "INSERT INTO conversations (id, channel, account, thread_key, contact_id, agent, "
        "created_at, last_message_at) VALUES (?, 'bench', 'bot', ?, ?, 'default', ?, ?)",
        ((base + i, f"old-{i}", base + i, at, at) for i in range(1, conversations + 1)),
    )

    def messages() -> Any:
        for n in range(rows):
            contact = base + 1 + n // PER_CONVERSATION
            body = seal_text(sealer, conn, contact, f"old message {n}: order 4711-{n % 997}")
            yield (contact, body, f"old-ext-{n}", at, '{"intent": "order_status"}')

    conn.executemany(
        "INSERT INTO messages (conversation_id, direction, text, body, external_id, author, "
        "created_at, analysis) VALUES (?, 'in', '', ?, ?, 'contact', ?, ?)",
        messages(),
    )
    return rows


async def prepare(data_dir: Path, rows: int) -> float:
    """Create and fill the store; returns the seconds it took."""
    started = time.perf_counter()
    master = load_master_key(data_dir, create=True)
    async with open_store(
        data_dir / DATABASE_FILE, master.derive("sqlcipher"), dedupe_seed=master.derive("dedupe")
    ) as store:
        await store.write("bench: expired rows", populate_txn, store.sealer, rows)
        try:  # the admin UI's search index, as a running gateway would have it already
            from gateway.store.search import SearchIndex
        except ImportError:
            pass
        else:
            await SearchIndex(data_dir, master.derive("search")).catch_up(store)
    return time.perf_counter() - started


def read_act(db: Any) -> tuple[float, float | None, str, int] | None:
    row = db.conn.execute(
        "SELECT started_at, finished_at, state, records FROM retention_acts "
        "WHERE dry_run = 0 ORDER BY id LIMIT 1"
    ).fetchone()
    db.conn.rollback()  # end the read transaction: the next poll sees new commits
    if row is None:
        return None
    started = dt.datetime.fromisoformat(row[0]).timestamp()
    finished = dt.datetime.fromisoformat(row[1]).timestamp() if row[1] else None
    return started, finished, row[2], int(row[3])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    acks: list[tuple[float, float]] = []  # (wall time posted, ms to the 2xx)
    replies: dict[tuple[str, str], int] = collections.Counter()
    sent: set[tuple[str, str]] = set()
    with tempfile.TemporaryDirectory(prefix="gateway-sweep-", dir=args.data_root) as tmp:
        tmpdir = Path(tmp)
        data_dir = tmpdir / "data"
        prepare_s = await prepare(data_dir, args.rows)
        master = load_master_key(data_dir, create=False)
        db_path, db_key = data_dir / DATABASE_FILE, master.derive("sqlcipher")
        async with (
            open_fake_openai() as llm,
            open_fake_telegram(TOKEN) as tg,
        ):
            side = TelegramSide(tg, webhook=True, platform_limits=False)
            side.on_reply = lambda key: replies.update([key])
            port = free_port()
            config = tmpdir / "gateway.toml"
            config.write_text(
                config_text(data_dir, side.channel_config(port), llm.base_url, port)
                + f"[retention]\nsweep_interval_hours = {args.sweep_after / 3600!r}\n"
                + f"batch_size = {args.batch_size}\n"
            )
            env = {**side.env, "OPENAI_API_KEY": "sk-bench"}
            async with open_daemon_process(config, env, tmpdir / "daemon.log") as daemon:
                ready_at = time.time()
                client = WebhookClient(side.webhook_url())
                limit = trio.CapacityLimiter(WEBHOOK_CONCURRENCY)
                delivery = Delivery()
                stop = trio.Event()
                act: tuple[float, float | None, str, int] | None = None

                async def deliver(i: int) -> None:
                    key = (side.chat(i % args.chats), f"live {i}")
                    body, headers = side.request(side.make(*key))
                    sent.add(key)
                    async with limit:
                        posted, t0 = time.time(), time.perf_counter()
                        await delivery.post_until_accepted(lambda: client.post(body, headers))
                        acks.append((posted, (time.perf_counter() - t0) * 1000))

                async def watch() -> None:
                    nonlocal act
                    deadline = trio.current_time() + args.sweep_after + args.timeout
                    db = connect(db_path, db_key, readonly=True)
                    while act is None or act[1] is None:
                        if trio.current_time() > deadline:
                            raise RuntimeError(f"no finished sweep; see {tmpdir}/daemon.log")
                        # Polling another process's database: the bench's own clock.
                        await trio.sleep(0.25)
                        act = await trio.to_thread.run_sync(read_act, db)
                    db.conn.close()
                    await trio.sleep(2.0)  # some traffic after the sweep too
                    stop.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch)
                    start = trio.current_time()
                    for i in itertools.count():
                        # Pacing an open-loop load generator, not waiting for an event.
                        await trio.sleep_until(start + i / args.rate)
                        if stop.is_set():
                            break
                        nursery.start_soon(deliver, i)
                with trio.move_on_after(args.timeout):
                    await side.wait_sent(len(sent))
                await client.aclose()
                warnings = daemon_warnings(daemon.text())
                if args.log is not None:
                    args.log.write_text(daemon.text())
                daemon.terminate()
                await daemon.wait()
    assert act is not None and act[1] is not None
    started, finished, state, records = act
    baseline = [ms for posted, ms in acks if ready_at + args.settle <= posted < started]
    during = [ms for posted, ms in acks if started <= posted <= finished]
    seconds = finished - started
    timeline = []  # ack p50/p99 per 5 s window from start (--timeline)
    for window in range(0, int(max((p for p, _ in acks), default=ready_at) - ready_at) + 1, 5):
        lo = ready_at + window
        inside = [ms for posted, ms in acks if lo <= posted < lo + 5]
        mark = "sweep" if lo < finished and lo + 5 > started else ""
        timeline.append((window, len(inside), percentiles(inside), mark))
    return {
        "timeline": timeline,
        "bench": "sweep",
        "rows": args.rows,
        "rate": args.rate,
        "batch_size": args.batch_size,
        "prepare_s": prepare_s,
        "sweep_s": seconds,
        "records": records,
        "act_state": state,
        "rows_per_s": records / seconds if seconds > 0 else 0.0,
        "ack_ms_baseline": percentiles(baseline),
        "ack_ms_during_sweep": percentiles(during),
        "acks_baseline": len(baseline),
        "acks_during_sweep": len(during),
        "refused": delivery.refused,
        "lost": sum(1 for key in sent if not replies.get(key)),
        "duplicated": sum(n - 1 for n in replies.values() if n > 1),
        "daemon_warnings": len(warnings),
        "daemon_warning_sample": warnings[:3],
    }


def report(r: dict[str, Any], timeline: bool = False) -> str:
    lines = []
    if timeline:
        for window, n, figures, mark in r["timeline"]:
            lines.append(latency_line(f"t={window:>4}s n={n:<4} {mark}", figures))
    return "\n".join(
        lines
        + [
            f"rows={r['rows']} rate={r['rate']:g}/s batch_size={r['batch_size']}",
            figure_line("fill store", r["prepare_s"], "s", "bulk insert, sealed bodies, index"),
            figure_line("sweep", r["sweep_s"], "s", f"act state {r['act_state']}"),
            figure_line("records", r["records"], "anonymised"),
            figure_line("rows/s", r["rows_per_s"], "rows/s"),
            latency_line(f"ack before ({r['acks_baseline']})", r["ack_ms_baseline"]),
            latency_line(f"ack during ({r['acks_during_sweep']})", r["ack_ms_during_sweep"]),
            f"refused {r['refused']}  lost {r['lost']}  duplicated {r['duplicated']}  daemon warnings "
            f"{r['daemon_warnings']} {r['daemon_warning_sample']}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=100.0, help="live webhooks per second")
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=500, help="[retention] batch_size")
    parser.add_argument(
        "--sweep-after", type=float, default=90.0, help="seconds from start to the sweep"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="seconds of start-up jobs left out of the baseline latency",
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--timeline", action="store_true", help="ack latency per 5 s window, sweep marked"
    )
    parser.add_argument("--log", type=Path, default=None, help="copy the daemon's log here")
    args = parser.parse_args(argv)
    result = trio.run(run, args)
    print_json(result) if args.json else print(report(result, args.timeline))
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
