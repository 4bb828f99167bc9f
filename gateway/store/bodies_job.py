"""At start-up, seal message text stored before bodies were sealed (gateway.store.bodies), in
batches between live traffic; the job stops asking once nothing is left."""

from __future__ import annotations

import logging

from gateway.services import Services
from gateway.store.bodies import seal_legacy_txn

log = logging.getLogger("gateway.store")


async def seal_legacy(services: Services) -> None:
    """Walk both tables once, in id order, 500 rows per transaction."""
    store = services.store
    for table in ("messages", "outbox"):
        after: int | None = 0
        while after is not None:
            after = await store.write(
                "seal legacy bodies", seal_legacy_txn, store.sealer, table, after
            )


def install(services: Services) -> None:
    done = False

    async def once() -> None:
        nonlocal done
        if not done:
            await seal_legacy(services)
            done = True
            log.debug("legacy message bodies: all sealed")

    # Once per process start (new rows are sealed when written); the interval only keeps the
    # job registered, it has nothing to do after its first run.
    services.scheduler.every("seal legacy bodies", 24 * 3600.0, once, first_after=5.0)
