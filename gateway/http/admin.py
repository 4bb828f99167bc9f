"""The admin app (127.0.0.1 by default): health and status now; the admin UI grows here."""

from __future__ import annotations

from typing import Any

from quart_trio import QuartTrio

from gateway.config import GatewayConfig
from gateway.pipeline.core import Pipeline
from gateway.store import Store
from gateway.store.outbox import journal_counts_txn, outbox_counts_txn


def make_admin_app(
    config: GatewayConfig, pipeline: Pipeline, store: Store, restarts: dict[str, int]
) -> QuartTrio:
    app = QuartTrio("gateway.admin")

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok" if pipeline.accepting else "stopping"}

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
