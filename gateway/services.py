"""What the daemon's features share: built once in gateway.app, handed to every feature.

A feature (retention sweeps, data-subject requests, the developer API, the admin UI...) gets
this object in :func:`gateway.features.install` and in the HTTP mounts
(:mod:`gateway.http.mounts`), and keeps it: ``config`` is replaced by each live reload, so read
it when needed rather than copying values out at start-up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

    from gateway.config import GatewayConfig
    from gateway.keys import MasterKey
    from gateway.managed import Overlay
    from gateway.pipeline.core import Pipeline
    from gateway.plugin import Registry
    from gateway.reload import Changes
    from gateway.scheduler import Scheduler
    from gateway.store import Store


@dataclasses.dataclass
class Services:
    config: GatewayConfig
    """The config running now (a reload replaces it)."""
    store: Store
    pipeline: Pipeline
    http: httpx.AsyncClient
    """The daemon's shared client; the outbound-host allowlist applies to it."""
    scheduler: Scheduler
    master: MasterKey
    restarts: dict[str, int] = dataclasses.field(default_factory=dict)
    """Plugin restarts by supervisor label ("channel NAME"), as /status shows them."""
    check_config: Callable[[Overlay], Awaitable[GatewayConfig]] | None = None
    """Load the running config's file again with these admin-UI tables instead of the
    database's, raising ConfigError if the result is not valid (gateway.managed checks a change
    before writing it). None where nothing reloads (offline tools, some tests)."""
    registry: Registry | None = None
    """The plugins the running config was loaded with (the admin UI's forms offer them)."""
    reload: Callable[[], Awaitable[Changes]] | None = None
    """Reload live from the file and the database, as SIGHUP does; raises GatewayError with the
    reason if the new config is refused (the old one keeps running)."""
