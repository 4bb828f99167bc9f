"""Run the whole gateway in-process for a test: the real config loader, store and pipeline.

::

    async with open_gateway(CONFIG_TOML, registry, tmp_path) as gw:
        channel = gw.channel("support")        # the running plugin object
        await channel.deliver("chat1", "user1", "hello")
        ...

``registry`` decides which plugin classes the config's ``plugin = "..."`` names mean, so a test
can use FakeChannel and FakeProvider alongside the real plugins.

The helpers below build the parts of a daemon test's config that do not depend on the channel
(:func:`http_config`, :func:`openai_agent_config`) and read the store (:func:`sql`,
:func:`table_count`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
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
                config,
                stop=stop,
                environ=environ or {},
                registry=registry,
                task_status=task_status,
            )
        )
        gw = GatewayUnderTest(config, running, stop, nursery.cancel_scope)
        try:
            yield gw
        finally:
            stop.set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for ``[http] public_bind``.

    The port is released before it is returned, so another process may take it first; that is
    rare enough for tests, which is the only use.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_config(port: int, *, public_url: bool = True) -> str:
    """The ``[gateway]`` and ``[http]`` tables of a test config: data in ``data/`` under the test's
    directory, the public listener on 127.0.0.1:``port`` (0: any free port), the admin one on
    any free port, and unless ``public_url`` is False the public URL ``http://127.0.0.1:PORT``
    (a webhook channel needs it; give a port from :func:`free_port` then). Put the channel
    tables after it."""
    url = f'public_url = "http://127.0.0.1:{port}"\n' if public_url else ""
    return f"""
[gateway]
data_dir = "data"
[http]
public_bind = "127.0.0.1:{port}"
admin_bind = "127.0.0.1:0"
{url}"""


def openai_agent_config(
    llm_base: str, system_prompt: str = "You are the support assistant of Example Ltd."
) -> str:
    """The ``[agents.default]`` and ``[providers.main]`` tables of a test config: the OpenAI
    plugin at ``llm_base`` (a fake OpenAI server's ``base_url``) with the key from the
    ``OPENAI_API_KEY`` environment variable, two attempts, a short backoff and a fallback text."""
    return f"""
[agents.default]
provider = "main"
system_prompt = "{system_prompt}"
max_attempts = 2
retry_backoff = 0.01
fallback_text = "We are busy, a person will answer soon."
[providers.main]
plugin = "openai"
base_url = "{llm_base}"
api_key = "env:OPENAI_API_KEY"
model = "gpt-4o-mini"
timeout = 5
"""


async def sql(gw: GatewayUnderTest, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """The rows ``query`` (with ``?`` parameters ``args``) returns from the running store."""
    rows: list[tuple[Any, ...]] = await gw.running.store.read(
        "test query", lambda db: db.conn.execute(query, args).fetchall()
    )
    return rows


async def table_count(gw: GatewayUnderTest, table: str) -> int:
    """How many rows ``table`` of the running store holds."""
    count: int = await gw.running.store.read("test count", lambda db: db[table].count)
    return count
