"""Data-subject export of one contact with many messages: seconds, ZIP size, peak memory.

The contact's messages are written through the core's own intake transaction (sealed bodies,
journal, dedupe keys) into a fresh SQLCipher database, with one reply in ten and an analysis on
each inbound message, then ``gateway.privacy.export.write_export`` makes the ZIP::

    python bench/export.py                       # 100,000 messages
    python bench/export.py --messages 20000 --json

Wall time depends on what else the machine runs; CPU seconds (user + system) much less. Peak
memory is the process's RSS high-water mark during the export (resource.getrusage), so it
includes SQLite's page cache and zlib; the set-up before it is reported apart.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import resource
import secrets
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench._harness import figure_line, print_json  # noqa: E402
from gateway.analysis import Analysis  # noqa: E402
from gateway.messages import Inbound  # noqa: E402
from gateway.privacy.export import write_export  # noqa: E402
from gateway.privacy.sealing import Sealer  # noqa: E402
from gateway.store import ATTACHMENTS_DIR, _store_keys  # noqa: E402
from gateway.store.bodies import seal_text  # noqa: E402
from gateway.store.db import connect  # noqa: E402
from gateway.store.journal import Intake, accept_txn  # noqa: E402
from gateway.store.migrations import migrations  # noqa: E402

if TYPE_CHECKING:
    import sqlite_utils

BATCH = 2_000
TEXT = "Hello, I ordered a blue jacket last week (order 12345) and it has not arrived yet. "


def build(path: Path, messages: int) -> tuple[sqlite_utils.Database, Sealer, int]:
    """A database whose contact 1 has ``messages`` messages: ten inbound to one reply."""
    key = secrets.token_bytes(32)
    db = connect(path, key)
    migrations.apply(db)
    wrap, dedupe = _store_keys(db, key, secrets.token_bytes(32))
    sealer = Sealer(wrap, path.parent / ATTACHMENTS_DIR)
    labels = Analysis("question", "delivery", "neutral", "normal", False, 0.7, "en").to_json()
    conn = db.conn
    inbound = messages * 10 // 11
    for start in range(0, inbound, BATCH):
        items = []
        for n in range(start, min(start + BATCH, inbound)):
            external = f"m{n}"
            digest = hmac.new(dedupe, f"tg\0bot\0{external}".encode(), hashlib.sha256).hexdigest()
            items.append(
                Intake(digest, "tg", "default", Inbound("bot", external, "chat-1", "u1", TEXT))
            )
        with conn:
            accepted = accept_txn(db, items, sealer)
            conn.executemany(
                "UPDATE messages SET analysis = ? WHERE id = ?",
                [(labels, a.message_id) for a in accepted],
            )
    for start in range(0, messages - inbound, BATCH):
        with conn:
            conn.executemany(
                "INSERT INTO messages (conversation_id, direction, text, body, author, created_at) "
                "VALUES (1, 'out', '', ?, 'ai', strftime('%Y-%m-%dT%H:%M:%fZ'))",
                [
                    (seal_text(sealer, conn, 1, f"Reply {n}: it ships tomorrow."),)
                    for n in range(start, min(start + BATCH, messages - inbound))
                ],
            )
    return db, sealer, 1


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="inbound messages")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        db, sealer, contact = build(Path(tmp) / "gateway.db", args.messages)
        setup = time.perf_counter() - started
        before = resource.getrusage(resource.RUSAGE_SELF)
        out = Path(tmp) / "export.zip"
        started = time.perf_counter()
        summary = write_export(db.conn, sealer, contact, out)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        with zipfile.ZipFile(out) as zf:
            stored = sum(i.file_size for i in zf.infolist())
    result = {
        "messages": float(summary.counts["messages"]),
        "setup_seconds": setup,
        "export_seconds": seconds,
        "messages_per_second": summary.counts["messages"] / seconds,
        "zip_mb": summary.bytes / 1e6,
        "uncompressed_mb": stored / 1e6,
        "cpu_seconds": cpu,
        "peak_rss_mb": after.ru_maxrss / 1024,
        "rss_growth_during_export_mb": (after.ru_maxrss - before.ru_maxrss) / 1024,
    }
    if args.json:
        print_json(result)
    else:
        print(f"export of one contact with {summary.counts['messages']:,} messages")
        print(figure_line("set-up (not timed)", setup, "s"))
        print(figure_line("export", seconds, "s", f"{result['messages_per_second']:,.0f} msg/s"))
        print(figure_line("export CPU", cpu, "s", "user + system: less noisy on a busy machine"))
        print(
            figure_line("ZIP", result["zip_mb"], "MB", f"{result['uncompressed_mb']:.1f} MB inside")
        )
        print(figure_line("peak RSS", result["peak_rss_mb"], "MB",
                          f"+{result['rss_growth_during_export_mb']:.1f} MB during the export"))  # fmt: skip
    return result


if __name__ == "__main__":
    main()
