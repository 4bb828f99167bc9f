"""Every benchmark of issue #9 in one report: the ceilings, then the gateway at full load and at
half of it, with the ratios and targets side by side.

Runs ``ceilings.py`` once, then ``load.py`` for each mode (Telegram webhook, WhatsApp webhook,
Telegram polling) and each model latency: first a burst (all K messages due at once: the
replies/s the gateway sustains), then paced at half that rate (the latency it adds at half of
its maximum load). With the Telegram webhook mode it also runs ``load.py --webhook --relay``
bursts: ``bench/relay.py``, the same two SDK calls per reply with nothing stored, the ceiling
that counts what every reply must cost on this stack. Each run is its own process (``--json``), so CPU and memory figures are its
own. Exit status 1 if any run lost or duplicated a reply; targets missed are reported, not
failed.

    python bench/all.py                              # K=2000 over 200 chats, models 0 and 200 ms
    python bench/all.py --messages 5000 --chats 500 --model-latency 0
    python bench/all.py --modes webhook,whatsapp --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import ceilings  # its report is printed as `python bench/ceilings.py` prints it

HERE = Path(__file__).resolve().parent
MODES = ("webhook", "whatsapp", "polling")
TARGET_RATIO = 0.60
TARGET_ADDED_P99_MS = 20.0
TARGET_ENCRYPTED = 0.80


def run_json(script: str, args: list[str]) -> dict[str, Any]:
    """Run ``bench/<script> --json ARGS``; its JSON object (also when it exits 1 for a lost or
    duplicated reply). Progress and the child's errors go to stderr."""
    command = [sys.executable, str(HERE / script), "--json", *args]
    print("running:", " ".join(command[1:]), file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"{script} {' '.join(args)} printed nothing (exit {done.returncode})")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def load_args(options: argparse.Namespace, mode: str, latency: float) -> list[str]:
    args = [
        "--messages",
        str(options.messages),
        "--chats",
        str(options.chats),
        "--model-latency",
        f"{latency:g}",
        "--warmup",
        str(options.warmup),
    ]
    if mode != "polling":
        args.append(f"--{mode}")
    if options.data_root:
        args += ["--data-root", str(options.data_root)]
    return args


def run_all(options: argparse.Namespace) -> dict[str, Any]:
    ceiling_args = [
        "--requests",
        str(options.requests),
        "--rows",
        str(options.rows),
        "--writes",
        str(options.writes),
        "--repeat",
        str(options.repeat),
    ]
    if options.data_root:
        ceiling_args += ["--data-root", str(options.data_root)]
    report: dict[str, Any] = {
        "ceilings": run_json("ceilings.py", ceiling_args),
        "runs": [],
        "relay": [],
    }
    if "webhook" in options.modes and options.relay:
        for latency in options.model_latency:
            relay = run_json("load.py", [*load_args(options, "webhook", latency), "--relay"])
            report["relay"].append(relay)
    for mode in options.modes:
        for latency in options.model_latency:
            burst = run_json("load.py", load_args(options, mode, latency))
            report["runs"].append(burst)
            if options.half_load and burst["replies_per_s"] > 0:
                rate = f"{burst['replies_per_s'] / 2:.1f}"
                half = run_json("load.py", [*load_args(options, mode, latency), "--rate", rate])
                report["runs"].append(half)
    report["ratios"] = ratios(report)
    return report


def ratios(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each as {name, value, target, met}."""
    out: list[dict[str, Any]] = []
    ceilings = report["ceilings"]
    webhook = ceilings.get("webhook", {})
    relay = {r["model_latency_ms"]: r for r in report.get("relay", ()) if r["replies_per_s"]}
    for run in report["runs"]:
        name = f"{run['mode']}, model {run['model_latency_ms']:g} ms"
        if run["rate"] is None and run["mode"] == "webhook" and run["model_latency_ms"] in relay:
            out.append(
                {
                    "name": f"replies/s ÷ relay ceiling ({name})",
                    "value": run["replies_per_s"] / relay[run["model_latency_ms"]]["replies_per_s"],
                    "target": None,
                    "higher_is_better": True,
                }
            )
        if run["rate"] is None and run["mode"] != "polling":
            for kind, ceiling in webhook.items():
                out.append(
                    {
                        "name": f"replies/s ÷ {kind} webhook ceiling ({name})",
                        "value": run["replies_per_s"] / ceiling["requests_per_s"],
                        "target": TARGET_RATIO if kind == "asgi" else None,
                        "higher_is_better": True,
                    }
                )
            if run.get("acks_per_s") and "asgi" in webhook:
                out.append(
                    {
                        "name": f"webhook acks/s ÷ asgi webhook ceiling ({name})",
                        "value": run["acks_per_s"] / webhook["asgi"]["requests_per_s"],
                        "target": None,
                        "higher_is_better": True,
                    }
                )
        if run["rate"] is not None and run["added_ms"]:
            out.append(
                {
                    "name": f"added latency p99 at half load, ms ({name})",
                    "value": run["added_ms"]["p99"],
                    "target": TARGET_ADDED_P99_MS,
                    "higher_is_better": False,
                }
            )
    if "sqlite" in ceilings:
        out.append(
            {
                "name": "SQLCipher ÷ plain SQLite (inserts, random UNIQUE key)",
                "value": ceilings["sqlite"]["ratio_sqlcipher_plain"],
                "target": TARGET_ENCRYPTED,
                "higher_is_better": True,
            }
        )
        out.append(
            {
                # Shown next to it, not judged: the journal's rows are the ones with the key.
                "name": "SQLCipher ÷ plain SQLite (inserts, append-only)",
                "value": ceilings["sqlite"]["append"]["ratio_sqlcipher_plain"],
                "target": None,
                "higher_is_better": True,
            }
        )
    for ratio in out:
        target = ratio["target"]
        if target is None:
            ratio["met"] = None
        elif ratio["higher_is_better"]:
            ratio["met"] = ratio["value"] >= target
        else:
            ratio["met"] = ratio["value"] <= target
    return out


def _ms(figures: dict[str, float], key: str) -> str:
    return f"{figures[key]:8.1f}" if figures else f"{'-':>8}"


def text(report: dict[str, Any]) -> str:
    lines = ["== ceilings ==", ceilings.report(report["ceilings"]), "", "== gateway =="]
    lines.append(
        f"{'mode':<9}{'model':>7} {'load':>9} {'replies/s':>10} {'e2e p50':>8} {'p95':>8} "
        f"{'p99':>8} {'added99':>8} {'ack p50':>8} {'ack p99':>8} {'lost':>5} {'dup':>4} "
        f"{'CPU s':>7} {'ms/rep':>7} {'RSS MiB':>8}"
    )
    for run in [*report.get("relay", ()), *report["runs"]]:
        load = f"{run['rate']:g}/s" if run["rate"] else "burst"
        per_reply = run["daemon_cpu_s"] / run["replies"] * 1000 if run["replies"] else 0.0
        ack = run.get("ack_ms", {})
        lines.append(
            f"{'relay' if run.get('relay') else run['mode']:<9}"
            f"{run['model_latency_ms']:5g}ms {load:>9} "
            f"{run['replies_per_s']:10.1f} {_ms(run['e2e_ms'], 'p50')} "
            f"{_ms(run['e2e_ms'], 'p95')} {_ms(run['e2e_ms'], 'p99')} "
            f"{_ms(run['added_ms'], 'p99')} {_ms(ack, 'p50')} {_ms(ack, 'p99')} "
            f"{run['lost']:5d} {run['duplicated']:4d} {run['daemon_cpu_s']:7.2f} "
            f"{per_reply:7.2f} {run['peak_rss_mib'] or 0:8.1f}"
        )
    lines += ["", "== ratios and targets =="]
    for ratio in report["ratios"]:
        target = ratio["target"]
        if target is None:
            verdict = ""
        else:
            sign = "≥" if ratio["higher_is_better"] else "≤"
            verdict = f"   target {sign} {target:g}: {'met' if ratio['met'] else 'MISSED'}"
        lines.append(f"{ratio['name']:<62} {ratio['value']:8.2f}{verdict}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", "-k", type=int, default=2000)
    parser.add_argument("--chats", "-n", type=int, default=200)
    parser.add_argument(
        "--model-latency",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[0.0, 200.0],
        metavar="MS[,MS...]",
        help="fake model latencies to run (default: 0,200)",
    )
    parser.add_argument(
        "--modes",
        type=lambda s: [m for m in s.split(",") if m],
        default=list(MODES),
        help=f"load.py modes, comma-separated (default: {','.join(MODES)})",
    )
    parser.add_argument(
        "--no-half-load",
        dest="half_load",
        action="store_false",
        help="skip the paced runs at half of each burst's replies/s",
    )
    parser.add_argument(
        "--no-relay",
        dest="relay",
        action="store_false",
        help="skip the relay ceiling (load.py --webhook --relay bursts)",
    )
    parser.add_argument("--warmup", type=int, default=50, help="load.py --warmup")
    parser.add_argument("--requests", type=int, default=5000, help="ceilings.py --requests")
    parser.add_argument("--rows", type=int, default=200_000, help="ceilings.py --rows")
    parser.add_argument("--writes", type=int, default=50_000, help="ceilings.py --writes")
    parser.add_argument("--repeat", type=int, default=3, help="ceilings.py --repeat")
    parser.add_argument("--data-root", type=Path, default=None, help="as load.py's")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    report = run_all(options)
    if options.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(text(report))
    clean = all(
        r["lost"] == r["duplicated"] == r["unexpected"] == 0
        for r in [*report["relay"], *report["runs"]]
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
