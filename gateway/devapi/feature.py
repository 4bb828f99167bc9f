"""The developer API's hooks into the daemon (called from gateway.features.install): the chat
commands of gateway.devapi.chat and a housekeeping job every minute."""

from __future__ import annotations

import functools
import logging

import sqlite_utils

from gateway.devapi import idempotency, otp
from gateway.devapi.chat import ChatCommands, open_menus_txn
from gateway.devapi.config import api_config
from gateway.devapi.state import state_of
from gateway.services import Services

log = logging.getLogger("gateway.api")

HOUSEKEEPING_INTERVAL = 60.0


def install(services: Services) -> None:
    from gateway.devapi import retention  # noqa: F401  (registers the "forms" categories)

    chat = ChatCommands(services)
    commands = services.pipeline.commands
    commands.add("/start", chat.start)
    for name in ("/unsubscribe", "/отписаться"):  # the two of consent.SUBSCRIPTION_MENU
        commands.add(name, chat.unsubscribe)
    commands.expect_replies("/unsubscribe", chat.waiting, chat.on_reply)
    services.scheduler.every(
        "developer api housekeeping",
        HOUSEKEEPING_INTERVAL,
        functools.partial(housekeeping, services),
        first_after=0.0,  # at start: reload the open chat dialogues
    )


async def housekeeping(services: Services) -> dict[str, int]:
    """Reload open dialogues, wipe used codes from sent messages, expire old records."""
    hours = api_config(services.config).idempotency_hours
    sealer = services.store.sealer

    def job(db: sqlite_utils.Database) -> tuple[set[int], dict[str, int]]:
        menus = open_menus_txn(db)
        return menus, {
            "scrubbed": otp.scrub_codes_txn(db, sealer),
            "codes_forgotten": otp.forget_codes_txn(db),
            "idempotency_expired": idempotency.expire_txn(db, hours),
        }

    menus, counts = await services.store.write("developer api housekeeping", job)
    state = state_of(services)
    state.menus.clear()
    state.menus.update(menus)
    if any(counts.values()):
        log.info("developer api housekeeping: %s", counts)
    return counts
