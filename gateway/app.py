"""The daemon: one root nursery that starts every service in order, and shuts them down in order.

Start-up: master key → encrypted store → shared HTTP client → providers and agents → pipeline
(recovers pending journal and outbox) → channels (supervised) → HTTP (public, admin) → started.
Shutdown (``stop`` set, e.g. by SIGTERM): HTTP stops taking requests and channels stop
acknowledging (``accept`` raises, so platforms retry later); the pipeline drains for up to
``shutdown_grace`` seconds; then everything is cancelled. Whatever did not finish is still in the
journal and outbox and resumes at the next start.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import httpx
import hypercorn.config
import hypercorn.trio
import trio

from gateway.config import AgentConfig, GatewayConfig, redactor_for
from gateway.http.admin import make_admin_app
from gateway.http.public import make_public_app
from gateway.keys import DATABASE_FILE, MasterKey, load_master_key
from gateway.knowledge import format_snippets, load_chunks, search_knowledge_txn, sync_knowledge_txn
from gateway.messages import Event, Inbound
from gateway.metrics import Metrics
from gateway.outbound import AllowlistResolver
from gateway.pipeline.agent import Agent, ProviderSlot, Transfer
from gateway.pipeline.core import Pipeline
from gateway.plugin import Accepted, Channel, HistoryItem, LLMProvider
from gateway.privacy.redaction import PlaceholderMap
from gateway.store import Store, open_store
from gateway.store.journal import PendingWork, get_state_txn, history_txn, set_state_txn
from gateway.store.records import record_event_txn, update_delivery_txn
from gateway.store.transfers import record_transfer_txn

log = logging.getLogger("gateway")


@dataclasses.dataclass(frozen=True)
class Running:
    """What ``serve`` reports once everything has started."""

    public_urls: list[str]
    admin_urls: list[str]
    chat_urls: dict[str, str]
    master_key: MasterKey
    pipeline: Pipeline
    store: Store
    restarts: dict[str, int]
    """Plugin restarts by supervisor label ("channel NAME"), as /status shows them."""


class CoreChannelContext:
    """The ChannelContext the core gives each channel plugin (see gateway.plugin)."""

    def __init__(
        self,
        name: str,
        pipeline: Pipeline,
        store: Store,
        http: httpx.AsyncClient,
        public_url: str | None,
    ) -> None:
        self.name = name
        self.http = http
        self.public_url = public_url
        self.log = logging.getLogger(f"gateway.channel.{name}")
        self._pipeline = pipeline
        self._store = store

    async def accept(self, inbound: Inbound) -> Accepted:
        return (await self._pipeline.accept(self.name, [inbound]))[0]

    async def accept_many(self, inbounds: Sequence[Inbound]) -> list[Accepted]:
        if not inbounds:
            return []
        return await self._pipeline.accept(self.name, inbounds)

    async def get_state(self, key: str) -> str | None:
        value: str | None = await self._store.read("channel state", get_state_txn, self.name, key)
        return value

    async def set_state(self, key: str, value: str) -> None:
        await self._store.write("channel state", set_state_txn, self.name, key, value)

    async def history(self, thread_key: str, *, limit: int = 50) -> list[HistoryItem]:
        rows = await self._store.read("thread history", history_txn, self.name, thread_key, limit)
        return [
            HistoryItem(message_id, "in" if direction == "in" else "out", text, created, external)
            for message_id, direction, text, created, external in rows
        ]

    async def update_delivery(
        self,
        external_id: str,
        status: Literal["sent", "delivered", "read", "failed"],
        *,
        at: dt.datetime | None = None,
        detail: str | None = None,
    ) -> bool:
        known: bool = await self._store.write(
            "delivery status",
            update_delivery_txn,
            self.name,
            external_id,
            status,
            at.isoformat() if at else None,
            detail,
        )
        if known:
            self._pipeline.metrics.platform_status(self.name, status)
        return known

    async def record_event(self, event: Event) -> int:
        slot = self._pipeline.channels.get(self.name)
        agent = slot.config.agent if slot else "default"
        event_id: int = await self._store.write(
            "channel event", record_event_txn, self.name, agent, event, self._store.sealer
        )
        return event_id


@dataclasses.dataclass(frozen=True)
class ProviderContextImpl:
    name: str
    http: httpx.AsyncClient
    config_dir: str
    log: logging.Logger


async def sync_knowledge(config: GatewayConfig, store: Store) -> None:
    """Index each agent's knowledge folder (only changed files are rewritten)."""
    for name, agent in config.agents.items():
        chunks = []
        if agent.knowledge_dir is not None:
            chunks = await trio.to_thread.run_sync(load_chunks, agent.knowledge_dir)
        report = await store.write("sync knowledge", sync_knowledge_txn, name, chunks)
        if agent.knowledge_dir is not None:
            log.info("knowledge of agent %s (%s): %s", name, agent.knowledge_dir, report)


async def supervise(
    label: str,
    run: Callable[..., Awaitable[None]],
    restarts: dict[str, int],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a plugin's ``run``; if it crashes or returns, log, count and restart it with backoff.

    Reports started after the first start (or the first failure: a plugin that cannot start must
    not keep the rest of the daemon from starting). Cancellation passes straight through.
    """
    delay = 1.0
    reported = False
    while True:
        began = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(run)
                if not reported:
                    task_status.started()
                    reported = True
                log.info("%s started", label)
        except Exception as exc:
            log.error("%s crashed: %s", label, _describe(exc), exc_info=exc)
        else:
            log.warning("%s stopped by itself", label)
        if not reported:
            task_status.started()
            reported = True
        restarts[label] = restarts.get(label, 0) + 1
        if trio.current_time() - began > 60:
            delay = 1.0
        log.info("restarting %s in %.0fs", label, delay)
        await trio.sleep(delay)
        delay = min(delay * 2, 60.0)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _describe(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}"


def _hypercorn_config(bind: str, grace: float) -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("gateway.http")
    config.graceful_timeout = grace
    config.include_server_header = False
    return config


async def serve(
    config: GatewayConfig,
    *,
    stop: trio.Event | None = None,
    environ: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until ``stop`` is set (or the task is cancelled)."""
    stop = stop if stop is not None else trio.Event()
    data_dir: Path = config.data_dir
    master = load_master_key(data_dir, reference=config.gateway.master_key, environ=environ)
    log.info("master key: %s", master.source)
    resolver = AllowlistResolver(config.outbound_hosts())
    previous = trio.socket.set_custom_hostname_resolver(resolver)
    log.info("outbound hosts allowed: %s", ", ".join(sorted(resolver.allowed)))
    try:
        await _serve_with_store(config, stop, environ, master, task_status)
    finally:
        trio.socket.set_custom_hostname_resolver(previous)


async def _serve_with_store(
    config: GatewayConfig,
    stop: trio.Event,
    environ: Mapping[str, str] | None,
    master: MasterKey,
    task_status: trio.TaskStatus[Running],
) -> None:
    data_dir = config.data_dir
    grace = config.gateway.shutdown_grace
    providers: dict[str, LLMProvider] = {}
    async with open_store(data_dir / DATABASE_FILE, master.derive("sqlcipher")) as store:
        async with httpx.AsyncClient(timeout=30.0, follow_redirects=False) as http:
            try:
                for name, entry in config.providers.items():
                    ctx = ProviderContextImpl(
                        name, http, str(config.config_dir), logging.getLogger(f"gateway.llm.{name}")
                    )
                    providers[name] = entry.plugin.cls(name, entry.config, ctx)
                slots = {
                    name: ProviderSlot(name, entry.plugin.name, providers[name], entry.config)
                    for name, entry in config.providers.items()
                }

                async def record(work: PendingWork, transfer: Transfer, *, agent: str) -> None:
                    await store.write(
                        "record transfer",
                        record_transfer_txn,
                        work.conversation_id,
                        work.journal_id,
                        agent,
                        transfer,
                    )

                await sync_knowledge(config, store)

                async def knowledge(text: str, *, agent: str, cfg: AgentConfig) -> str:
                    found = await store.read(
                        "search knowledge",
                        search_knowledge_txn,
                        agent,
                        text,
                        cfg.knowledge_snippets,
                    )
                    return format_snippets(found, cfg.knowledge_max_chars)

                agents = {
                    name: Agent(
                        name,
                        agent,
                        [slots[p] for p in (agent.provider, *agent.failover)],
                        local_only=config.local_only,
                        redactor=redactor_for(agent),
                        new_mapping=PlaceholderMap,
                        record=functools.partial(record, agent=name),
                        knowledge=functools.partial(knowledge, agent=name, cfg=agent)
                        if agent.knowledge_dir
                        else None,
                    )
                    for name, agent in config.agents.items()
                }
                metrics = Metrics(
                    [name for name, entry in config.channels.items() if entry.config.enabled],
                    config.providers,
                )
                for each in agents.values():
                    each.metrics = metrics
                pipeline = Pipeline(
                    store,
                    agents,
                    master.derive("dedupe"),
                    max_concurrent_answers=config.gateway.workers,
                    metrics=metrics,
                )
                await _run(config, store, http, pipeline, master, stop, grace, task_status)
            finally:
                with trio.CancelScope(shield=True):
                    for provider in providers.values():
                        try:
                            await provider.aclose()
                        except Exception:
                            log.exception("closing a provider failed")


async def _run(
    config: GatewayConfig,
    store: Store,
    http: httpx.AsyncClient,
    pipeline: Pipeline,
    master: MasterKey,
    stop: trio.Event,
    grace: float,
    task_status: trio.TaskStatus[Running],
) -> None:
    from gateway import notify

    restarts: dict[str, int] = {}
    stop_http = trio.Event()
    async with trio.open_nursery() as root:
        plugins: dict[str, Channel] = {}
        for name, entry in config.channels.items():
            if not entry.config.enabled:
                continue
            ctx = CoreChannelContext(name, pipeline, store, http, config.http.public_url)
            plugin = entry.plugin.cls(name, entry.config, ctx)
            plugins[name] = plugin
            pipeline.add_channel(name, entry.config, plugin)
        await root.start(pipeline.run)
        for name, plugin in plugins.items():
            await root.start(supervise, f"channel {name}", plugin.run, restarts)
        public_urls, admin_urls = [
            await root.start(
                functools.partial(
                    hypercorn.trio.serve,
                    app,
                    _hypercorn_config(bind, grace),
                    shutdown_trigger=stop_http.wait,
                )
            )
            for app, bind in (
                (make_public_app(plugins), config.http.public_bind),
                (make_admin_app(config, pipeline, store, restarts), config.http.admin_bind),
            )
        ]
        base = public_urls[0] if public_urls else ""
        chat_urls = {
            name: f"{base}/chat/{name}/"
            for name, entry in config.channels.items()
            if entry.config.enabled and entry.plugin.name == "webchat"
        }
        task_status.started(
            Running(public_urls, admin_urls, chat_urls, master, pipeline, store, restarts)
        )
        log.info("gateway started: public %s, admin %s", public_urls, admin_urls)
        notify.notify_ready(f"public {' '.join(public_urls)}, admin {' '.join(admin_urls)}")
        await root.start(notify.run_watchdog)
        await stop.wait()
        notify.notify_stopping(f"draining for up to {grace:.0f}s")
        log.info("shutting down: draining for up to %.0fs", grace)
        pipeline.accepting = False
        stop_http.set()
        with trio.move_on_after(grace) as drain:
            await pipeline.wait_idle()
        if drain.cancelled_caught:
            log.warning(
                "shutdown grace of %.0fs ran out with work in progress; it resumes at the next start",
                grace,
            )
        root.cancel_scope.cancel()
    log.info("gateway stopped")
