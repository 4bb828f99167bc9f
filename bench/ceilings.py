"""Ceilings of the gateway's stack, measured so every load figure can be given as a ratio.

- webhook: an HTTP handler that only reads the body and answers 200, served by hypercorn's trio
  worker in its own process on 127.0.0.1 (as the daemon is), driven by load.py's webhook load
  generator (40 in flight on keep-alive connections, a Telegram-sized JSON body). Twice: a bare ASGI
  callable (hypercorn alone) and the gateway's own public QuartTrio app with one blueprint
  route (hypercorn + Quart, what the webhook handlers run on).
- sqlite: one writer thread committing batches of journal-like inserts (WAL,
  synchronous=NORMAL, as gateway/store/db.py) into plain SQLite (stdlib sqlite3), into
  sqlcipher3 without a key, and into SQLCipher with a raw key (``PRAGMA key = "x'<hex>'"``):
  rows/s each and the ratio encrypted ÷ plain. Rounds interleave the three, median kept.
  The same rows again without the UNIQUE key (plain and SQLCipher): an append-only table
  writes a few pages per batch, the random key one index page per row, and SQLCipher's cost
  is per page written, so the two ratios bound where encryption costs little and where most.
- store: the gateway's ``Store.write`` (gateway.store.open_store: its writer thread with group
  commit and a savepoint per write) with many concurrent trio writers: acknowledged writes/s.

    python bench/ceilings.py
    python bench/ceilings.py --requests 20000 --rows 500000 --writes 100000
    python bench/ceilings.py --parts sqlite --json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import sqlcipher3
import trio
from _harness import (
    WEBHOOK_CONCURRENCY,
    Delivery,
    ProcessMeter,
    WebhookClient,
    answer_lifespan,
    drive,
    latency_line,
    print_json,
)

PARTS = ("webhook", "sqlite", "store")
SERVERS = {
    "asgi": "bare ASGI on hypercorn-trio",
    "quart": "gateway QuartTrio app on hypercorn-trio",
    "thin": "gateway public app, thin webhook route",
}
READY = "listening on "
WEBHOOK_PATH = "/webhooks/bench"
# A Telegram update of the size load.py posts.
BODY = json.dumps(
    {
        "update_id": 100000001,
        "message": {
            "message_id": 1,
            "from": {"id": 10001, "is_bot": False, "first_name": "Ada", "language_code": "en"},
            "chat": {"id": 10001, "first_name": "Ada", "type": "private"},
            "date": 1700000000,
            "text": "message 1",
        },
    }
).encode()

# -- webhook ceiling: the server side (run in its own process) ------------------------------


async def bare_app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the request body, answers 200 with an empty body. Nothing else."""
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})


class _BenchChannel:
    """Only what ``make_public_app`` asks of a channel: its webhook route that reads the body
    and answers 200, as a Quart blueprint route (``thin=False``) or a thin route (the way the
    built-in channels mount theirs)."""

    def __init__(self, *, thin: bool) -> None:
        self.thin = thin

    def blueprint(self) -> Any:
        import quart

        if self.thin:
            return None
        blueprint = quart.Blueprint("bench", __name__)

        async def receive() -> Any:
            await quart.request.get_data()
            return quart.Response("", status=200)

        blueprint.add_url_rule(WEBHOOK_PATH, view_func=receive, methods=["POST"])
        return blueprint

    def webhooks(self) -> list[Any]:
        import quart

        from gateway.webhooks import WebhookRequest, WebhookRoute, read_body

        async def receive(request: WebhookRequest) -> quart.Response:
            await read_body(request, content_types=())
            return quart.Response("", status=200)

        return [WebhookRoute(WEBHOOK_PATH, ("POST",), receive)] if self.thin else []


def public_app(*, thin: bool) -> Any:
    from gateway.http.public import make_public_app

    return make_public_app({"bench": _BenchChannel(thin=thin)})  # type: ignore[dict-item]


async def serve(kind: str) -> None:
    import hypercorn.config
    import hypercorn.trio

    # As gateway/app.py configures its servers.
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.include_server_header = False
    app = bare_app if kind == "asgi" else public_app(thin=kind == "thin")
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(hypercorn.trio.serve, app, config))
        print(READY + urls[0], flush=True)


# -- webhook ceiling: the driver side -------------------------------------------------------


@contextlib.asynccontextmanager
async def open_server(kind: str) -> AsyncIterator[tuple[str, int]]:
    """Start ``serve(kind)`` in a child process; yield (base URL, pid) once it listens."""
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--serve", kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = bytearray()
    try:
        async for chunk in process.stdout:
            output += chunk
            if b"\n" in output and READY.encode() in output:
                break
        line = output.decode().partition(READY)[2].splitlines()
        if not line:
            raise RuntimeError(f"the {kind} server did not start:\n{output.decode()[-4000:]}")
        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                assert process.stdout is not None
                async for _ in process.stdout:
                    pass

            nursery.start_soon(drain)
            yield line[0].strip(), process.pid
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()


async def webhook_ceiling(kind: str, requests: int, concurrency: int) -> dict[str, Any]:
    async with open_server(kind) as (base, pid):
        client = WebhookClient(base + WEBHOOK_PATH)
        headers = {"Content-Type": "application/json"}
        meter = ProcessMeter(pid)
        delivery = Delivery()

        async def deliver(i: int, scheduled: float) -> None:
            await delivery.post_until_accepted(lambda: client.post(BODY, headers))

        try:
            await drive(min(requests, 200), deliver, concurrency=concurrency)  # warm up
            delivery = Delivery()
            meter.restart()
            driver_cpu = time.process_time()
            start = await drive(requests, deliver, concurrency=concurrency)
            elapsed = time.perf_counter() - start
            driver_cpu = time.process_time() - driver_cpu
        finally:
            await client.aclose()
        return {
            "server": SERVERS[kind],
            "requests": requests,
            "concurrency": concurrency,
            "seconds": elapsed,
            "requests_per_s": requests / elapsed,
            "server_cpu_s": meter.cpu_used(),
            "driver_cpu_s": driver_cpu,
            **delivery.figures(),
        }


# -- raw group-commit inserts ---------------------------------------------------------------

SCHEMA = """
CREATE TABLE rows (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    conversation_id INTEGER NOT NULL,
    text TEXT NOT NULL,
    received_at TEXT NOT NULL
)
"""
APPEND_SCHEMA = SCHEMA.replace(" UNIQUE", "")
"""The same rows with no index but the rowid: appended, like the messages table's rows."""
INSERT = (
    "INSERT INTO rows (dedupe_key, channel, conversation_id, text, received_at) "
    "VALUES (?, ?, ?, ?, ?)"
)


def journal_rows(count: int, salt: str) -> list[tuple[Any, ...]]:
    """Rows shaped like a journal entry plus its message: an HMAC-sized unique key, text."""
    return [
        (
            hashlib.sha256(f"{salt}:{i}".encode()).hexdigest(),
            "bench",
            i % 200,
            f"message {i}: do you ship to Norway, and how long does it take?",
            "2025-01-01T00:00:00.000000+00:00",
        )
        for i in range(count)
    ]


def connect_plain(path: Path) -> Any:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def connect_unkeyed(path: Path) -> Any:
    return sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False)


def connect_keyed(path: Path) -> Any:
    conn = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False)
    # The raw-key form gateway/store/db.py uses (no PBKDF2).
    conn.execute(f"PRAGMA key = \"x'{secrets.token_bytes(32).hex()}'\"")
    return conn


DATABASES: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "plain": (f"plain SQLite {sqlite3.sqlite_version} (stdlib sqlite3)", connect_plain),
    "unkeyed": (f"sqlcipher3 without key (SQLite {sqlcipher3.sqlite_version})", connect_unkeyed),
    "sqlcipher": ("SQLCipher, raw key", connect_keyed),
}

APPEND_DATABASES = ("plain", "sqlcipher")


def group_commit_inserts(
    connect: Callable[[Path], Any],
    path: Path,
    rows: list[tuple[Any, ...]],
    batch: int,
    schema: str = SCHEMA,
) -> float:
    """Insert ``rows`` in transactions of ``batch``; rows/s from the first BEGIN to the last
    COMMIT. Runs on a worker thread, as the gateway's writer does."""
    conn = connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(schema)
        started = time.perf_counter()
        for first in range(0, len(rows), batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, rows[first : first + batch])
            conn.execute("COMMIT")
        return len(rows) / (time.perf_counter() - started)
    finally:
        conn.close()


async def sqlite_ceiling(rows: int, batch: int, repeat: int, root: Path | None) -> dict[str, Any]:
    data = journal_rows(rows, secrets.token_hex(4))
    rates: dict[str, list[float]] = {name: [] for name in DATABASES}
    append: dict[str, list[float]] = {name: [] for name in APPEND_DATABASES}
    with tempfile.TemporaryDirectory(prefix="gateway-ceiling-", dir=root) as tmp:
        for round_no in range(repeat):
            for name, (_, connect) in DATABASES.items():
                path = Path(tmp) / f"{name}-{round_no}.db"
                rates[name].append(
                    await trio.to_thread.run_sync(group_commit_inserts, connect, path, data, batch)
                )
            for name in APPEND_DATABASES:
                path = Path(tmp) / f"{name}-append-{round_no}.db"
                append[name].append(
                    await trio.to_thread.run_sync(
                        group_commit_inserts, DATABASES[name][1], path, data, batch, APPEND_SCHEMA
                    )
                )
    result: dict[str, Any] = {"rows": rows, "batch": batch, "repeat": repeat}
    for name, (label, _) in DATABASES.items():
        result[name] = {"label": label, "rows_per_s": statistics.median(rates[name])}
    result["ratio_sqlcipher_plain"] = (
        result["sqlcipher"]["rows_per_s"] / result["plain"]["rows_per_s"]
    )
    result["ratio_sqlcipher_unkeyed"] = (
        result["sqlcipher"]["rows_per_s"] / result["unkeyed"]["rows_per_s"]
    )
    medians = {name: statistics.median(append[name]) for name in APPEND_DATABASES}
    result["append"] = {
        **{f"{name}_rows_per_s": rate for name, rate in medians.items()},
        "ratio_sqlcipher_plain": medians["sqlcipher"] / medians["plain"],
    }
    return result


# -- the gateway's store --------------------------------------------------------------------


def _create_txn(db: Any) -> None:
    db.conn.execute(SCHEMA)


def _insert_txn(db: Any, row: tuple[Any, ...]) -> None:
    db.conn.execute(INSERT, row)


async def store_ceiling(writes: int, writers: int, root: Path | None) -> dict[str, Any]:
    from gateway.store import open_store

    data = journal_rows(writes, secrets.token_hex(4))
    with tempfile.TemporaryDirectory(prefix="gateway-ceiling-", dir=root) as tmp:
        async with open_store(Path(tmp) / "gateway.db", secrets.token_bytes(32)) as store:
            await store.write("bench schema", _create_txn)
            before = store.stats
            next_row = iter(data)

            async def writer() -> None:
                for row in next_row:
                    await store.write("bench insert", _insert_txn, row)

            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(writers):
                    nursery.start_soon(writer)
            elapsed = time.perf_counter() - started
            commits = store.stats["commits"] - before["commits"]
    return {
        "writes": writes,
        "writers": writers,
        "writes_per_s": writes / elapsed,
        "commits": commits,
        "mean_batch": writes / commits if commits else 0.0,
    }


# -- report ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "ceilings"}
    if "webhook" in args.parts:
        result["webhook"] = {
            kind: await webhook_ceiling(kind, args.requests, args.concurrency) for kind in SERVERS
        }
    if "sqlite" in args.parts:
        result["sqlite"] = await sqlite_ceiling(args.rows, args.batch, args.repeat, args.data_root)
    if "store" in args.parts:
        result["store"] = await store_ceiling(args.writes, args.writers, args.data_root)
    return result


def report(result: dict[str, Any]) -> str:
    lines = []
    for figures in result.get("webhook", {}).values():
        lines += [
            f"webhook ceiling: {figures['server']}  ({figures['requests']} requests, "
            f"{figures['concurrency']} in flight)",
            f"  {'requests/s':<20} {figures['requests_per_s']:10.1f}",
            latency_line("  ack latency", figures["ack_ms"]),
            f"  {'server CPU':<20} {figures['server_cpu_s']:10.2f} s   "
            f"({figures['server_cpu_s'] / figures['requests'] * 1000:.3f} ms per request;"
            f" driver {figures['driver_cpu_s']:.2f} s)",
        ]
    sqlite = result.get("sqlite")
    if sqlite:
        lines.append(
            f"group-commit inserts: {sqlite['rows']} rows in batches of {sqlite['batch']}, "
            f"WAL, synchronous=NORMAL, median of {sqlite['repeat']}"
        )
        for name in DATABASES:
            lines.append(f"  {sqlite[name]['label']:<48} {sqlite[name]['rows_per_s']:10.0f} rows/s")
        lines += [
            f"  ratio SQLCipher ÷ plain SQLite {sqlite['ratio_sqlcipher_plain']:25.2f}"
            "   (target ≥ 0.80)",
            f"  ratio SQLCipher ÷ same SQLite unkeyed {sqlite['ratio_sqlcipher_unkeyed']:18.2f}"
            "   (the cost of encryption alone)",
        ]
        append = sqlite["append"]
        lines += [
            "the same rows without the UNIQUE key (append-only: a few pages per batch, not one per row)",
            f"  {DATABASES['plain'][0]:<48} {append['plain_rows_per_s']:10.0f} rows/s",
            f"  {DATABASES['sqlcipher'][0]:<48} {append['sqlcipher_rows_per_s']:10.0f} rows/s",
            f"  ratio SQLCipher ÷ plain SQLite, append-only {append['ratio_sqlcipher_plain']:12.2f}",
        ]
    store = result.get("store")
    if store:
        lines += [
            f"gateway Store.write: {store['writers']} concurrent writers, {store['writes']} writes",
            f"  {'acknowledged writes/s':<30} {store['writes_per_s']:10.0f}"
            f"   ({store['commits']} commits, {store['mean_batch']:.1f} writes each)",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--parts",
        type=lambda s: [p for p in s.split(",") if p],
        default=list(PARTS),
        help=f"which ceilings, comma-separated (default: {','.join(PARTS)})",
    )
    parser.add_argument("--requests", type=int, default=5000, help="webhook requests per server")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=WEBHOOK_CONCURRENCY,
        help="requests in flight (default: %(default)s, as load.py's webhook modes)",
    )
    parser.add_argument("--rows", type=int, default=200_000, help="rows per database and round")
    parser.add_argument("--batch", type=int, default=200, help="rows per commit")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (the median is kept)")
    parser.add_argument("--writes", type=int, default=50_000, help="Store.write calls")
    parser.add_argument("--writers", type=int, default=100, help="concurrent Store writers")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where the temporary databases go (default: the system temp dir)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(serve, args.serve)
        return 0
    result = trio.run(run, args)
    if args.json:
        print_json(result)
    else:
        print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
