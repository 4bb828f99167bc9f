"""Run the whole gateway in-process for a test: the real config loader, store and pipeline.

::

    async with open_gateway(CONFIG_TOML, registry, tmp_path) as gw:
        channel = gw.channel("support")        # the running plugin object
        await channel.deliver("chat1", "user1", "hello")
        ...

``registry`` decides which plugin classes the config's ``plugin = "..."`` names mean, so a test
can use FakeChannel and FakeProvider alongside the real plugins.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import trio

from gateway.app import Running, serve
from gateway.config import GatewayConfig, load_config
from gateway.plugin import Registry


@dataclasses.dataclass
class GatewayUnderTest:
    config: GatewayConfig
    running: Running
    stop: trio.Event
    cancel_scope: trio.CancelScope

    def channel(self, name: str) -> Any:
        return self.running.pipeline.channels[name].plugin

    def provider(self, agent: str = "default") -> Any:
        return self.running.pipeline.agents[agent].provider

    async def wait_idle(self) -> None:
        await self.running.pipeline.wait_idle()

    def crash(self) -> None:
        """Stop at once, without draining: what a kill would leave, minus the process."""
        self.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def open_gateway(
    config_text: str,
    registry: Registry,
    directory: Path,
    *,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[GatewayUnderTest]:
    path = directory / "gateway.toml"
    path.write_text(config_text)
    config = load_config(path, registry, environ=environ)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(
            lambda task_status: serve(
                config, stop=stop, environ=environ or {}, task_status=task_status
            )
        )
        gw = GatewayUnderTest(config, running, stop, nursery.cancel_scope)
        try:
            yield gw
        finally:
            stop.set()
