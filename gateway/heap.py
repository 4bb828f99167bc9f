"""Give the C heap's free pages back to the system, every minute (issue #9: RSS steady).

A long-running daemon frees memory all the time (request bodies, SQLite pages, model replies),
but glibc keeps the freed pages of its heaps mapped: only the top of the main heap is returned
on its own. Over hours the holes add up to megabytes of RSS that the process no longer uses
(``bench/soak.py --probe`` shows them as "RSS after malloc_trim"). ``malloc_trim(0)`` walks the
free lists of every arena and hands whole free pages back with ``madvise(MADV_DONTNEED)``; the
memory stays free for the next allocation, which the kernel then maps again on first touch.

The call takes about a millisecond for this daemon's heap (tens of MiB), so it runs directly in
the event loop. Elsewhere than glibc (musl, macOS) there is nothing to call and no job is
registered.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import time
from collections.abc import Callable

from gateway.services import Services

log = logging.getLogger("gateway.heap")

INTERVAL = 60.0
"""Seconds between trims: often enough that the holes never grow large, rare enough to cost
nothing measurable (a trim is ~1 ms)."""


def _load_trim() -> Callable[[int], int] | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]  # type: ignore[attr-defined]
    trim.restype = ctypes.c_int  # type: ignore[attr-defined]
    return trim


_trim = _load_trim()


def rss_bytes() -> int:
    """This process's resident set size (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def trim() -> int | None:
    """Hand the C heap's free pages back; the RSS released, in bytes (None if not glibc)."""
    if _trim is None:
        return None
    before = rss_bytes()
    started = time.perf_counter()
    _trim(0)
    released = max(0, before - rss_bytes())
    log.debug(
        "heap trimmed: %.1f MiB handed back in %.1f ms",
        released / 2**20,
        (time.perf_counter() - started) * 1000,
    )
    return released


def install(services: Services) -> None:
    if _trim is None:
        return

    async def job() -> None:
        trim()

    services.scheduler.every("heap trim", INTERVAL, job)
