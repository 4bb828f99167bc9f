"""The admin app (127.0.0.1 by default): health, readiness, metrics and status; the admin UI grows here.

- ``GET /healthz``: 200 while the process serves requests (liveness: restart it if this fails).
- ``GET /readyz``: 200 when the gateway can take messages: not shutting down, every enabled
  channel registered, and the store accepts a write (a no-op transaction through the writer);
  503 with ``{"status": "not ready", "reasons": [...]}`` otherwise. Channels have started by
  construction: this app is served only after every channel's supervisor reported started.
- ``GET /metrics``: Prometheus text format 0.0.4 (see gateway.metrics).
- ``GET /status``: the same figures as JSON, for humans and scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import quart
import trio
from quart_trio import QuartTrio

from gateway.config import GatewayConfig
from gateway.errors import StoreError
from gateway.metrics import CONTENT_TYPE, Snapshot, journal_lag_txn, outbox_open_txn
from gateway.pipeline.core import Pipeline
from gateway.store import Store
from gateway.store.outbox import journal_counts_txn, outbox_counts_txn

if TYPE_CHECKING:
    import sqlite_utils

READY_WRITE_TIMEOUT = 5.0
"""Seconds the readiness write may take before the store counts as not writable."""


def _noop_txn(db: sqlite_utils.Database) -> None:
    """Nothing: the writer taking the write lock and committing is the check."""


def make_admin_app(
    config: GatewayConfig,
    pipeline: Pipeline,
    store: Store,
    restarts: dict[str, int],
    blueprints: Sequence[quart.Blueprint] = (),
) -> QuartTrio:
    app = QuartTrio("gateway.admin")
    for blueprint in blueprints:
        app.register_blueprint(blueprint)

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok" if pipeline.accepting else "stopping"}

    @app.get("/readyz")
    async def readyz() -> Any:
        reasons = []
        if not pipeline.accepting:
            reasons.append("shutting down")
        missing = [
            name
            for name, entry in config.channels.items()
            if entry.config.enabled
            and (name not in pipeline.channels or pipeline.channels[name].plugin is None)
        ]
        if missing:
            reasons.append(f"channels not started: {', '.join(sorted(missing))}")
        try:
            with trio.fail_after(READY_WRITE_TIMEOUT):
                await store.write("readiness check", _noop_txn)
        except trio.TooSlowError:
            reasons.append(f"store not writable: no commit within {READY_WRITE_TIMEOUT:g} s")
        except StoreError as exc:
            reasons.append(f"store not writable: {exc}")
        if reasons:
            return {"status": "not ready", "reasons": reasons}, 503
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics() -> Any:
        snapshot = Snapshot(
            journal_pending=await store.read("metrics", journal_lag_txn),
            outbox_open=await store.read("metrics", outbox_open_txn),
            lanes_active={
                "answer": pipeline.answers.active,
                "deliver": pipeline.deliveries.active,
            },
            lane_errors={"answer": pipeline.answers.errors, "deliver": pipeline.deliveries.errors},
            store=store.stats,
            database=store.path,
            restarts=dict(restarts),
            accepting=pipeline.accepting,
        )
        body = pipeline.metrics.render(snapshot)
        return quart.Response(body, status=200, content_type=CONTENT_TYPE)

    @app.get("/status")
    async def status() -> Any:
        return {
            "channels": {
                name: {"plugin": entry.plugin.name, "enabled": entry.config.enabled}
                for name, entry in config.channels.items()
            },
            "journal": await store.read("status", journal_counts_txn),
            "outbox": await store.read("status", outbox_counts_txn),
            "counters": pipeline.counters,
            "lanes": {
                "answering": pipeline.answers.active,
                "delivering": pipeline.deliveries.active,
            },
            "store": store.stats,
            "restarts": restarts,
        }

    return app
