"""The daemon hands the C heap's free pages back to the system every minute (gateway.heap):
memory freed in the middle of the heap, which glibc keeps mapped on its own, leaves the RSS."""

from __future__ import annotations

import platform

import pytest

from gateway import heap
from gateway.testing.daemon import open_gateway
from tests.core.test_handoff import CONFIG

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


@glibc
def test_memory_freed_inside_the_heap_leaves_the_rss():
    # 64 MiB of 1 KiB blocks (below the mmap threshold: inside the heap), then all freed but a
    # last block that pins the heap's top, so glibc cannot shrink the heap by itself.
    blocks = [bytes(1024) for _ in range(64 * 1024)]
    pin = bytes(1024)
    del blocks
    released = heap.trim()
    assert released is not None and released > 32 * 2**20, released
    assert heap.rss_bytes() > 0 and pin


@glibc
async def test_the_daemon_trims_every_minute(tmp_path, fake_registry):
    async with open_gateway(CONFIG, fake_registry, tmp_path) as gw:
        job = gw.running.services.scheduler.jobs["heap trim"]
        assert (job.interval, job.first_after) == (60.0, None)
        await job.fn()
        assert job.failures == 0
