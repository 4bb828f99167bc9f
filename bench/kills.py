"""kill -9 at random moments under load, restart, verify (issue #9): the full-size run.

Each trial starts a real gateway process on the same data directory (the Telegram plugin in
webhook mode, the fake Bot API and a fast fake OpenAI model on 127.0.0.1), pushes
``--messages-per-trial`` messages over ``--chats`` chats, posts every unacknowledged update to
the webhook and SIGKILLs the daemon at a random moment (a random delay, or inside the k-th
webhook ack, model request or sendMessage: see ``gateway/testing/chaos.py``). After each kill
the database is checked (acknowledged messages present, ``integrity_check`` and
``cipher_integrity_check`` ok); a last start drains everything and the replies are counted.

    python bench/kills.py --trials 1000 --seed 1         # ~20 min idle on 2 cores, ~35 busy
    python bench/kills.py --trials 100 --seed 42 --messages-per-trial 16

Prints trials, messages acknowledged, lost (must be 0), duplicate replies (must be 0),
'unknown'-state replies (in flight at a kill: maybe delivered, never resent), integrity
failures (must be 0) and time per trial; the exit status is 1 when any check fails. The seed
(random unless given) is printed, and replays the same plan of kills.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

# Measure the checkout this script belongs to, not whichever copy the venv points at.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio  # noqa: E402

from gateway.testing.chaos import ChaosReport, run_kill_trials  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    parser.add_argument("--messages-per-trial", type=int, default=8)
    parser.add_argument("--chats", type=int, default=4)
    parser.add_argument(
        "--max-delay", type=float, default=0.4, help="longest random kill delay, seconds"
    )
    parser.add_argument("--model-latency", type=float, default=0.0, help="milliseconds")
    parser.add_argument(
        "--data-root", type=Path, default=None, help="where the data directory goes (temp dir)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def as_json(report: ChaosReport) -> dict[str, object]:
    seconds = [t.seconds for t in report.trials]
    return {
        "seed": report.seed,
        "trials": len(report.trials),
        "pushed": report.pushed,
        "acknowledged": report.acknowledged,
        "redelivered": report.redelivered,
        "lost": len(report.lost),
        "duplicate_replies": sum(n - 1 for n in report.duplicates.values()),
        "unexpected_replies": len(report.unexpected),
        "unanswered": len(report.unanswered),
        "unknown_replies": report.unknown,
        "unknown_delivered": report.unknown_delivered,
        "integrity_failures": len(report.integrity_failures),
        "late_kills": sum(t.late for t in report.trials),
        "seconds_per_trial": sum(seconds) / len(seconds) if seconds else 0.0,
        "seconds": report.seconds,
        "ok": report.ok,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    if not args.json:
        print(
            f"kills: {args.trials} trials, {args.messages_per_trial} messages per trial over "
            f"{args.chats} chats, seed {seed}",
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix="gateway-kills-", dir=args.data_root) as tmp:
        report = trio.run(
            lambda: run_kill_trials(
                Path(tmp),
                trials=args.trials,
                seed=seed,
                messages_per_trial=args.messages_per_trial,
                chats=args.chats,
                max_delay=args.max_delay,
                model_latency=args.model_latency / 1000,
                progress=not args.json,
            )
        )
        if not report.ok:
            print(Path(tmp, "daemon.log").read_text()[-4000:], file=sys.stderr)
    print(json.dumps(as_json(report), sort_keys=True) if args.json else report.summary())
    if not args.json:
        print("OK" if report.ok else f"FAILED (rerun with --seed {seed})")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
