"""The benchmarks still run and still report every figure the issue asks for (issue #9).

Each script runs at a tiny size as its own process, as a user runs it; no speed is asserted
(this machine's figures mean nothing at 20 messages), only the report's shape and that no
reply was lost or sent twice.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench"
TINY_LOAD = ["--messages", "20", "--chats", "5", "--warmup", "5"]
TINY_CEILINGS = ["--requests", "50", "--rows", "500", "--repeat", "1", "--writes", "200"]
PERCENTILES = r"p50 +[\d.]+ ms +p95 +[\d.]+ ms +p99 +[\d.]+ ms"


async def bench(script: str, *args: str) -> str:
    with trio.fail_after(180):
        done = await trio.run_process(
            [sys.executable, str(BENCH / script), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()[-4000:]
    return out


def figure(report: str, label: str) -> str:
    """The rest of the report line starting with ``label``."""
    match = re.search(rf"^\s*{re.escape(label)}\s+(.*)$", report, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{report}"
    return match.group(1)


def assert_load_report(report: str, *, webhook: bool) -> None:
    assert float(figure(report, "replies/s").split()[0]) > 0
    assert re.fullmatch(PERCENTILES, figure(report, "e2e latency"))
    assert figure(report, "lost").split()[0] == "0"
    assert figure(report, "duplicated").split()[0] == "0"
    assert re.match(r"[\d.]+ s ", figure(report, "daemon CPU"))
    assert re.match(r"[\d.]+ MiB", figure(report, "peak RSS"))
    if webhook:
        assert re.fullmatch(PERCENTILES, figure(report, "webhook ack"))
        assert float(figure(report, "webhook acks/s").split()[0]) > 0


async def test_polling_report() -> None:
    report = await bench("load.py", *TINY_LOAD)
    assert "mode=polling" in report
    assert_load_report(report, webhook=False)


async def test_whatsapp_paced_with_a_slow_model_reports_added_latency() -> None:
    report = await bench(
        "load.py", "--whatsapp", "--model-latency", "200", "--rate", "40", *TINY_LOAD
    )
    assert "mode=whatsapp" in report and "load=40/s" in report
    assert_load_report(report, webhook=True)
    assert re.fullmatch(PERCENTILES, figure(report, "added latency"))


async def test_ceilings_report() -> None:
    report = await bench("ceilings.py", *TINY_CEILINGS)
    for server in (
        "bare ASGI on hypercorn-trio",
        "gateway QuartTrio app on hypercorn-trio",
        "gateway public app, thin webhook route",
    ):
        assert f"webhook ceiling: {server}" in report
    assert len(re.findall(r"^\s+requests/s\s+[\d.]+$", report, re.MULTILINE)) == 3
    assert len(re.findall(rf"^\s+ack latency\s+{PERCENTILES}$", report, re.MULTILINE)) == 3
    assert (
        len(
            re.findall(
                r"^\s+(plain SQLite|sqlcipher3 without key|SQLCipher, raw key)"
                r".*\s\d+ rows/s$",
                report,
                re.MULTILINE,
            )
        )
        == 5  # three with the UNIQUE key, two append-only
    )
    assert re.match(r"[\d.]+ ", figure(report, "ratio SQLCipher ÷ plain SQLite"))
    assert re.fullmatch(r"[\d.]+", figure(report, "ratio SQLCipher ÷ plain SQLite, append-only"))
    assert re.match(r"\d+ ", figure(report, "acknowledged writes/s"))


async def test_all_reports_ratios_for_both_webhooks() -> None:
    args = [*TINY_LOAD, "--model-latency", "0", "--modes", "webhook,whatsapp", *TINY_CEILINGS]
    report = await bench("all.py", *args)
    for mode in ("webhook", "whatsapp"):
        name = f"{mode}, model 0 ms"
        assert re.match(r"[\d.]+ ", figure(report, f"replies/s ÷ asgi webhook ceiling ({name})"))
        assert re.match(r"[\d.]+ ", figure(report, f"added latency p99 at half load, ms ({name})"))
        assert re.match(
            r"[\d.]+", figure(report, f"webhook acks/s ÷ asgi webhook ceiling ({name})")
        )
        runs = re.findall(rf"^{mode}\s+0ms\s+(burst|[\d.]+/s)\s.*\s0\s+0\s", report, re.MULTILINE)
        assert len(runs) == 2, report  # a burst and a paced run at half its rate, 0 lost 0 dup
    # The relay ceiling: one burst of bench/relay.py, and the Telegram webhook's ratio to it.
    assert len(re.findall(r"^relay\s+0ms\s+burst\s.*\s0\s+0\s", report, re.MULTILINE)) == 1
    assert re.match(r"[\d.]+", figure(report, "replies/s ÷ relay ceiling (webhook, model 0 ms)"))
    for shape in ("random UNIQUE key", "append-only"):
        assert re.match(
            r"\d+\.\d\d", figure(report, f"SQLCipher ÷ plain SQLite (inserts, {shape})")
        )


async def test_json_output_is_one_object_with_the_figures() -> None:
    result: dict[str, Any] = json.loads(await bench("load.py", "--webhook", "--json", *TINY_LOAD))
    assert result["lost"] == result["duplicated"] == result["unexpected"] == 0
    assert result["replies"] == 20
    for key in ("e2e_ms", "ack_ms"):
        assert set(result[key]) == {"p50", "p95", "p99"}
    assert result["daemon_cpu_s"] > 0 and result["peak_rss_mib"] > 0


async def test_relay_answers_every_message_once_in_place_of_the_gateway() -> None:
    report = await bench("load.py", "--webhook", "--relay", *TINY_LOAD)
    assert report.startswith("mode=webhook (bench/relay.py, not the gateway) ")
    assert_load_report(report, webhook=True)


async def test_latencies_file_has_every_measured_message_in_arrival_order(tmp_path) -> None:
    csv = tmp_path / "lat.csv"
    report = await bench(
        "load.py", "--webhook", "--rate", "40", "--latencies", str(csv), *TINY_LOAD
    )
    assert_load_report(report, webhook=True)
    header, *lines = csv.read_text().splitlines()
    assert header == "due_unix_s,e2e_ms"
    rows = [tuple(map(float, line.split(","))) for line in lines]
    assert len(rows) == 20  # the measured messages, not the warm-up
    assert [due for due, _ in rows] == sorted(due for due, _ in rows)
    assert all(due > 1.7e9 and ms > 0 for due, ms in rows)


async def test_soak_samples_memory_and_database_and_loses_nothing() -> None:
    args = ["--messages", "300", "--chats", "10", "--warmup", "5", "--backlog", "50"]
    result = json.loads(
        await bench("soak.py", "--json", "--sample", "0.2", "--print-every", "0.4", *args)
    )
    assert result["lost"] == result["duplicated"] == result["unexpected"] == 0
    assert result["replies"] == 300
    columns = ["seconds", "replies", "rss_mib", "wal_mib", "db_mib", "driver_rss_mib"]
    assert result["sample_columns"] == columns
    assert len(result["samples"]) >= 2 and result["samples"][-1][1] == 300
    assert 0 < result["rss_warm_mib"] <= result["rss_max_mib"]
    assert result["rss_end_mib"] > 0 and result["db_final_mib"] > 0
    assert result["wal_max_mib"] >= result["wal_end_mib"] >= 0
    assert result["rss_growth_mib_per_100k"] is not None and result["driver_rss_max_mib"] > 0


async def test_kills_report() -> None:
    report = await bench("kills.py", "--trials", "2", "--seed", "3", "--messages-per-trial", "4")
    assert figure(report, "trials").startswith("2 kills")
    assert figure(report, "messages acknowledged").startswith("8 ")
    for label in ("lost", "duplicate replies", "integrity failures"):
        assert figure(report, label) == "0", report
    assert re.match(r"\d+ \(\d+ had reached Telegram\)", figure(report, "unknown-state replies"))
    assert re.match(r"mean [\d.]+ s, max [\d.]+ s", figure(report, "time per trial"))
    assert report.rstrip().endswith("OK")


async def test_soak_probe_and_trace_report_where_the_memory_is() -> None:
    args = ["--messages", "200", "--chats", "10", "--warmup", "5", "--backlog", "50"]
    out = await bench("soak.py", "--trace", "--sample", "0.2", "--print-every", "0.4", *args)
    assert figure(out, "lost").split()[0] == "0"
    assert re.match(
        r"pymalloc n/a \(tracemalloc on\), glibc heap [\d.]+ MiB", figure(out, "at the end")
    )
    assert re.match(r"[\d.]+ MiB", figure(out, "RSS after malloc_trim"))
    assert "allocations made after warm-up and still live at the end (tracemalloc):" in out
    result = json.loads(await bench("soak.py", "--json", "--probe", "--sample", "0.2", *args))
    probe = result["probe"]
    assert probe["heap"]["pymalloc_arenas"] > 0 and probe["heap_after_gc"]["sqlite"] > 0
    assert probe["modules"] > 100 and probe["trace_top"] == []


async def test_memory_breakdown_names_packages_and_their_importers() -> None:
    report = json.loads(await bench("memory.py", "--json"))
    assert report["rss_mib"] > report["start_rss_mib"] > 0
    assert report["smaps"]["Anonymous"] > 0 and report["imports_mib"] > 0
    packages = {row["package"]: row for row in report["packages"]}
    assert "trio" in packages and packages["trio"]["mib"] >= 0
    assert "gateway" in {row["module"].partition(".")[0] for row in report["own_modules"]}
    assert report["heap_after_gc"]["sqlite_connections"] >= 1
    text = await bench("memory.py", "--top", "5")
    assert re.search(r"^RSS +[\d.]+ MiB +\(anonymous [\d.]+, file-backed [\d.]+", text, re.M)
    assert "RSS added while importing, by top-level package (first 5" in text


async def test_relay_names_a_missing_config_table_and_where_its_config_comes_from(tmp_path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[http]\npublic_bind = "127.0.0.1:0"\npublic_url = "http://x"\n')
    with trio.fail_after(60):
        done = await trio.run_process(
            [
                sys.executable,
                str(BENCH / "relay.py"),
                "--",
                "gateway",
                "run",
                "--config",
                str(config),
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert f"relay: {config} has no channels: " in err
    assert "bench/load.py --webhook --relay" in err
    assert "Traceback" not in err
