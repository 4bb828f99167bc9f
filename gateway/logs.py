"""Logging: plain lines to stderr (journald adds timestamps), secrets redacted defensively."""

from __future__ import annotations

import logging
import sys

from gateway.config import GatewayConfig
from gateway.plugin import PluginConfig
from gateway.secretref import Secret


class RedactSecrets(logging.Filter):
    """Replace every known secret value in a log line with its reference.

    Plugins should never log secrets; this is the second line of defence (a library that logs a
    URL with a bot token in it, for instance).
    """

    def __init__(self, secrets: dict[str, str]) -> None:
        super().__init__()
        self.secrets = {v: r for v, r in secrets.items() if len(v) >= 6}

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        changed = message
        for value, reference in self.secrets.items():
            if value in changed:
                changed = changed.replace(value, f"<{reference}>")
        if changed is not message:
            record.msg, record.args = changed, None
        return True


def collect_secrets(config: GatewayConfig) -> dict[str, str]:
    found: dict[str, str] = {}
    models: list[PluginConfig] = [c.config for c in config.channels.values()]
    models += [p.config for p in config.providers.values()]
    for model in models:
        for value in model.__dict__.values():
            if isinstance(value, Secret):
                found[value.reveal()] = value.reference
    return found


def setup_logging(config: GatewayConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(collect_secrets(config)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.gateway.log_level)
    # httpx logs every request URL at INFO; Telegram puts the bot token in the URL.
    for noisy in ("httpx", "httpcore", "telegram", "hpack", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
