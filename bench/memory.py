"""Where the daemon's memory goes: RSS per imported package, and the RSS composition at start.

Starts the gateway as ``soak.py`` does (a real ``gateway run`` process: the Telegram channel in
webhook mode and the openai provider, against the fake Bot API and fake model on 127.0.0.1),
with an import meter installed before the gateway's first import. Once the daemon is ready it
reports:

- its RSS, split into anonymous memory (the heap: Python objects, SQLite caches) and
  file-backed pages (the interpreter and the shared libraries' code, shared between processes);
- the modules it imported and how much RSS each top-level package added while it was imported
  (its own modules, not those it imported in turn), with the gateway or plugin module that first
  imported it: what a lazier import would save.

A figure is the growth of the process's RSS while that module's code ran, so it includes what
the module allocated at import time (classes, tables, compiled patterns, pydantic schemas) and
the pages of its shared libraries it touched; memory allocated later, at run time, is not in it.

``soak.py --trace`` runs its daemon through the same child (``--child``): SIGUSR1 starts
tracemalloc there, SIGUSR2 writes the report (with the live allocations made since SIGUSR1,
grouped by traceback) and prints ``MEMORY_REPORT_MARK``.

    python bench/memory.py                 # the breakdown, ~15 s
    python bench/memory.py --top 40 --json
"""

from __future__ import annotations

# Only the standard library up here: the child installs its meter before anything else loads.
import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
MEMORY_REPORT_MARK = "memory report written"
TRACE_FRAMES = 12
OWN = ("gateway", "plugins")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def smaps_rollup(pid: int | str = "self") -> dict[str, float]:
    """Rss, Pss, Anonymous... of /proc/PID/smaps_rollup in MiB; ``File`` = Rss - Anonymous."""
    figures: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return figures
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            figures[key] = round(int(parts[0]) / 1024, 1)
    if "Rss" in figures and "Anonymous" in figures:
        figures["File"] = round(figures["Rss"] - figures["Anonymous"], 1)
    return figures


class ImportMeter:
    """RSS added while each module's code ran: inclusive (with the modules it imported) and
    exclusive (without them), and which module imported it first."""

    def __init__(self) -> None:
        self.modules: dict[str, tuple[float, float, str]] = {}
        """name -> (inclusive MiB, exclusive MiB, importer)."""
        self.root_mib = 0.0
        """RSS added by imports made outside another module's import (the sum of all)."""
        self._stack: list[list[Any]] = []

    def install(self) -> None:
        meter = self

        class Finder:
            @staticmethod
            def find_spec(name: str, path: Any = None, target: Any = None) -> Any:
                for finder in sys.meta_path:
                    if isinstance(finder, Finder) or not hasattr(finder, "find_spec"):
                        continue
                    spec = finder.find_spec(name, path, target)
                    if spec is None:
                        continue
                    loader = spec.loader
                    # Per-module loader objects only (source, bytecode, extension modules):
                    # shadow exec_module on the instance, keeping its type and resource readers.
                    if loader is not None and not isinstance(loader, type):
                        setattr(loader, "exec_module", meter.wrap(loader.exec_module))  # noqa: B010
                    return spec
                return None

        sys.meta_path.insert(0, Finder())

    def wrap(self, inner: Any) -> Any:
        return lambda module: self._exec(inner, module)

    def _exec(self, inner: Any, module: Any) -> None:
        importer = self._stack[-1][0] if self._stack else _caller()
        frame: list[Any] = [module.__name__, 0.0]
        self._stack.append(frame)
        before = rss_mib()
        try:
            inner(module)
        finally:
            inclusive = rss_mib() - before
            self._stack.pop()
            self.modules[module.__name__] = (inclusive, inclusive - frame[1], importer)
            if self._stack:
                self._stack[-1][1] += inclusive
            else:
                self.root_mib += inclusive

    def packages(self) -> list[dict[str, Any]]:
        """Top-level packages by exclusive MiB, each with the first own module importing it."""
        by_top: dict[str, float] = {}
        for name, (_, exclusive, _) in self.modules.items():
            top = name.partition(".")[0]
            by_top[top] = by_top.get(top, 0.0) + exclusive
        rows = []
        for top, mib in by_top.items():
            importer = "" if top in OWN else self._own(top)
            rows.append({"package": top, "mib": round(mib, 2), "imported_by": importer})
        return sorted(rows, key=lambda r: -float(r["mib"]))

    def _own(self, name: str) -> str:
        """The nearest gateway/plugins module up the import chain of ``name``."""
        seen = set()
        importer = self.modules.get(name, (0, 0, "-"))[2]
        while importer != "-" and importer not in seen:
            if importer.partition(".")[0] in OWN:
                return importer
            seen.add(importer)
            importer = self.modules.get(importer, (0, 0, "-"))[2]
        return "-"


def _caller() -> str:
    """The module whose code (a function, not an import) is importing: the nearest frame outside
    the import machinery and this file."""
    frame = sys._getframe(2)
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if not name.startswith(("importlib", "_frozen_importlib")) and name != __name__:
            return name
        frame = frame.f_back  # type: ignore[assignment]
    return "-"


def heap_figures(*, connections: bool = False) -> dict[str, float]:
    """Where the anonymous memory is, in MiB: CPython's small-object allocator (pymalloc: objects
    of up to 512 bytes), glibc malloc (bigger objects, C libraries), SQLite's own count (page
    caches, schemas, statements; part of glibc's). ``connections``: also find the SQLite
    connections and their page caches, schemas and statements (this unfreezes the garbage
    collector's permanent generation and freezes everything again: do it last)."""
    import ctypes
    import tempfile

    figures: dict[str, float] = {}

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (n, ctypes.c_size_t)
            for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
            "keepcost".split()
        ]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
        figures["glibc_heap"] = round((info.arena + info.hblkhd) / MIB, 1)
        figures["glibc_in_use"] = round((info.uordblks + info.hblkhd) / MIB, 1)
        figures["glibc_free"] = round(info.fordblks / MIB, 1)
    except (OSError, AttributeError):
        pass
    lib = _sqlite_lib()
    if lib is not None:
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        lib.sqlite3_memory_highwater.restype = ctypes.c_int64
        figures["sqlite"] = round(lib.sqlite3_memory_used() / MIB, 1)
        figures["sqlite_highwater"] = round(lib.sqlite3_memory_highwater(0) / MIB, 1)
    # sys._debugmallocstats() writes to the C stderr only: borrow fd 2 for a moment.
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        stats = capture.read().decode(errors="replace")
    wanted = {
        "# arenas allocated current": ("pymalloc_arenas", 1.0),
        "# arenas highwater mark": ("pymalloc_arenas_highwater", 1.0),
        "# bytes in allocated blocks": ("pymalloc_in_use", MIB),
        "# bytes in available blocks": ("pymalloc_free", MIB),
    }
    for line in stats.splitlines():
        key, _, value = line.rpartition("=")
        if key.strip() in wanted:
            name, unit = wanted[key.strip()]
            figures[name] = round(int(value.strip().replace(",", "")) / unit, 1)
    sqlite_utils = sys.modules.get("sqlite_utils")
    if connections and sqlite_utils is not None:
        import gc

        # The daemon freezes what start-up made (gateway/app.py), the store's connections
        # included, and get_objects() skips frozen objects: look, then freeze again.
        gc.unfreeze()
        # type(), not isinstance(): that reads __class__, which loads lazy proxies (openai).
        databases = [o for o in gc.get_objects() if type(o) is sqlite_utils.Database]
        gc.freeze()
        figures["sqlite_connections"] = len(databases)
        for kind, total in _sqlite_db_status([d.conn for d in databases]).items():
            figures[f"sqlite_{kind}"] = round(total / MIB, 1)
    return figures


def _sqlite_lib() -> Any:
    """The SQLCipher library bundled in the sqlcipher3 wheel (it exports the sqlite3_* API)."""
    import ctypes
    import glob

    sqlcipher3 = sys.modules.get("sqlcipher3")
    if sqlcipher3 is None or not sqlcipher3.__file__:
        return None
    found = glob.glob(os.path.join(os.path.dirname(sqlcipher3.__file__), "_sqlite3*.so"))
    return ctypes.CDLL(found[0]) if found else None


def _sqlite_db_status(connections: list[Any]) -> dict[str, int]:
    """Bytes of page cache, schema and prepared statements of these connections, summed
    (``sqlite3_db_status``; the handle is the first field of a pysqlite connection object)."""
    import ctypes

    lib = _sqlite_lib()
    if lib is None:
        return {}
    header = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)  # PyObject_HEAD
    totals = {"cache": 0, "schema": 0, "statements": 0}
    current, highwater = ctypes.c_int(), ctypes.c_int()
    for conn in connections:
        handle = ctypes.c_void_p.from_address(id(conn) + header)
        if not handle.value:
            continue  # closed
        for op, kind in ((1, "cache"), (2, "schema"), (3, "statements")):
            if (
                lib.sqlite3_db_status(handle, op, ctypes.byref(current), ctypes.byref(highwater), 0)
                == 0
            ):
                totals[kind] += current.value
    return totals


def objects_since_start(limit: int = 20) -> list[tuple[str, int]]:
    """Container objects made since start-up, by type: what the garbage collector tracks and
    has not been frozen (the daemon freezes everything start-up made, gateway/app.py)."""
    import gc

    counts: dict[str, int] = {}
    for o in gc.get_objects():
        name = f"{type(o).__module__}.{type(o).__qualname__}"  # type(): no lazy proxy loads
        counts[name] = counts.get(name, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])[:limit]


def _malloc_trim() -> float | None:
    """RSS after glibc's malloc_trim(0) hands the free pages of its heaps back to the system:
    how much of the heap's RSS is free space (fragmentation) rather than live memory."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return round(rss_mib(), 1)


def _trace_top(limit: int) -> list[dict[str, Any]]:
    import tracemalloc

    if not tracemalloc.is_tracing():
        return []
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    )
    rows = []
    for stat in snapshot.statistics("traceback")[:limit]:
        frames = [f"{f.filename}:{f.lineno}" for f in stat.traceback]
        rows.append({"kib": round(stat.size / 1024, 1), "count": stat.count, "frames": frames})
    return rows


def child(out: Path, gateway_args: list[str]) -> int:
    """Run ``gateway`` in this process with the meter; SIGUSR1 traces, SIGUSR2 reports."""
    meter = ImportMeter()
    meter.install()
    start_rss = rss_mib()

    def start_tracing(signum: int, frame: Any) -> None:
        import tracemalloc

        tracemalloc.start(TRACE_FRAMES)

    def write_report(signum: int, frame: Any) -> None:
        import gc

        rss, smaps, since_start = round(rss_mib(), 1), smaps_rollup(), objects_since_start()
        heap = heap_figures()
        # Then what a full collection frees: garbage in reference cycles waits for one.
        unreachable = gc.collect()
        report = {
            "rss_mib": rss,
            "smaps": smaps,
            "heap": heap,
            "gc_unreachable": unreachable,
            "heap_after_gc": heap_figures(connections=True),
            "rss_after_gc_mib": round(rss_mib(), 1),
            "rss_after_trim_mib": _malloc_trim(),
            "gc_counts": gc.get_count(),
            "objects_since_start": since_start,
            "start_rss_mib": round(start_rss, 1),
            "modules": len(sys.modules),
            "module_names": sorted(sys.modules),
            "imports_mib": round(meter.root_mib, 1),
            "packages": meter.packages(),
            "own_modules": sorted(
                (
                    {"module": n, "mib": round(m[1], 2)}
                    for n, m in meter.modules.items()
                    if n.partition(".")[0] in OWN
                ),
                key=lambda r: -float(str(r["mib"])),
            ),
            "trace_top": _trace_top(25),
        }
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report))
        tmp.replace(out)
        print(MEMORY_REPORT_MARK, flush=True)

    signal.signal(signal.SIGUSR1, start_tracing)
    signal.signal(signal.SIGUSR2, write_report)
    from gateway.cli import main as gateway_main

    return gateway_main(gateway_args)


def child_wrapper(out: Path) -> list[str]:
    """``open_daemon_process(wrapper=...)`` for a daemon run through :func:`child`."""
    return [sys.executable, str(Path(__file__).resolve()), "--child", str(out), "--"]


async def request_report(daemon: Any, out: Path, count: int = 1) -> dict[str, Any]:
    """Ask a :func:`child` daemon for its report (its ``count``-th) and read it."""
    import trio

    os.kill(daemon.pid, signal.SIGUSR2)
    await daemon.wait_for_output(MEMORY_REPORT_MARK, count)
    report: dict[str, Any] = json.loads(await trio.Path(out).read_text())
    return report


async def measure() -> dict[str, Any]:
    import tempfile

    from load import TOKEN, TelegramSide, config_text, free_port

    from gateway.testing.fake_openai import open_fake_openai
    from gateway.testing.fake_telegram import open_fake_telegram
    from gateway.testing.process import open_daemon_process

    with tempfile.TemporaryDirectory(prefix="gateway-memory-") as tmp:
        tmpdir = Path(tmp)
        out = tmpdir / "memory.json"
        async with open_fake_openai(latency=0.0) as llm, open_fake_telegram(TOKEN) as tg:
            side = TelegramSide(tg, webhook=True, platform_limits=False)
            port = free_port()
            config = tmpdir / "gateway.toml"
            config.write_text(
                config_text(tmpdir / "data", side.channel_config(port), llm.base_url, port)
            )
            env = {**side.env, "OPENAI_API_KEY": "sk-memory"}
            started = time.perf_counter()
            async with open_daemon_process(
                config, env, tmpdir / "daemon.log", wrapper=child_wrapper(out)
            ) as daemon:
                seconds = time.perf_counter() - started
                report = await request_report(daemon, out)
                daemon.terminate()
                await daemon.wait()
    report["start_seconds"] = round(seconds, 1)
    return report


def heap_line(heap: dict[str, float]) -> str:
    pymalloc = (
        f"pymalloc {heap['pymalloc_arenas']:.0f} MiB arenas ({heap['pymalloc_in_use']:.1f} in use)"
        if "pymalloc_arenas" in heap
        else "pymalloc n/a (tracemalloc on)"
    )
    line = (
        f"{pymalloc}, glibc heap "
        f"{heap.get('glibc_heap', 0):.1f} MiB ({heap.get('glibc_in_use', 0):.1f} in use), "
        f"SQLite {heap.get('sqlite', 0):.1f}"
    )
    if "sqlite_connections" in heap:
        line += (
            f" in {heap['sqlite_connections']:.0f} connections (page caches "
            f"{heap.get('sqlite_cache', 0):.1f}, schemas {heap.get('sqlite_schema', 0):.1f}, "
            f"statements {heap.get('sqlite_statements', 0):.1f})"
        )
    return line


def render(report: dict[str, Any], top: int) -> str:
    smaps = report["smaps"]
    lines = [
        "gateway run, soak.py's config (telegram webhook + openai provider), once ready",
        f"{'RSS':<22} {report['rss_mib']:8.1f} MiB   (anonymous {smaps.get('Anonymous', 0):.1f}, "
        f"file-backed {smaps.get('File', 0):.1f}; PSS {smaps.get('Pss', 0):.1f})",
        f"{'interpreter alone':<22} {report['start_rss_mib']:8.1f} MiB   (before the first import)",
        f"{'while importing':<22} {report['imports_mib']:8.1f} MiB   ({report['modules']} modules)",
        f"{'started in':<22} {report['start_seconds']:8.1f} s",
        f"{'heap, after a full gc':<22} " + heap_line(report["heap_after_gc"]),
        "",
        f"RSS added while importing, by top-level package (first {top}; first imported by):",
    ]
    for row in report["packages"][:top]:
        lines.append(f"  {row['mib']:6.1f}  {row['package']:<24} {row['imported_by']}")
    lines += ["", "the gateway's and plugins' own modules (first 15):"]
    for row in report["own_modules"][:15]:
        lines.append(f"  {row['mib']:6.1f}  {row['module']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        # --child OUT -- PYTHON -m gateway run --config FILE
        rest = argv[3:]
        return child(Path(argv[1]), rest[rest.index("-m") + 2 :])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--top", type=int, default=25, help="packages to list")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    import trio

    report = trio.run(measure)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(render(report, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
