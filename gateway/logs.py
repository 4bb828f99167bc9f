"""Logging: one line per record to stderr, as text or JSON; secrets redacted defensively.

``[gateway] log_format``:

- ``"text"`` (the default): ``TIME LEVEL LOGGER: message``, for a terminal or ``journalctl``;
- ``"json"``: one JSON object per line for log shippers (journald → Loki, Vector, Elasticsearch):
  ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``, and the structured fields of
  :data:`FIELDS` when known. Both go to stderr, which systemd hands to the journal as it does
  stdout; stdout keeps the start-up banner.

The default stays "text" whether or not stderr is a terminal: a format that changes with how
the daemon was started surprises more than it helps, and JSON is one line in the config.

Correlation: the pipeline calls :func:`log_context` when it starts on one inbound message
(channel, conversation, journal id) or one reply (plus outbox id); every record logged by that
task afterwards, including by plugins and providers, carries those fields, and ``correlation_id``
(the journal id) ties a message's answer and delivery lines together.

PII-free by design: only the fields named in :data:`FIELDS` are ever copied from a record into
JSON; callers put ids there, never text or names. Secret values are replaced in ``msg`` by
:class:`RedactSecrets` as in the text format.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from gateway.config import GatewayConfig
from gateway.plugin import PluginConfig
from gateway.secretref import Secret

FIELDS = (
    "correlation_id",
    "channel",
    "conversation",
    "journal",
    "outbox",
    "provider",
    "attempt",
    "outcome",
)
"""The structured fields a JSON line may carry, set with ``extra=`` or :func:`log_context`."""

_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "gateway_log_context", default=None
)


def log_context(**fields: Any) -> None:
    """Attach ``fields`` (names from :data:`FIELDS`) to every later record of the current task.

    Replaces what the task had; ``journal`` also sets ``correlation_id``. A trio task inherits
    the context of the task that started it.
    """
    if "journal" in fields:
        fields.setdefault("correlation_id", fields["journal"])
    _context.set(fields)


class AddContext(logging.Filter):
    """Copy the task's :func:`log_context` fields onto each record (``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the :data:`FIELDS` present, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


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


def make_handler(config: GatewayConfig, stream: TextIO | None = None) -> logging.Handler:
    """The handler ``setup_logging`` installs: format from config, context, redaction."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if config.gateway.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(AddContext())
    handler.addFilter(RedactSecrets(collect_secrets(config)))
    return handler


def setup_logging(config: GatewayConfig, stream: TextIO | None = None) -> None:
    root = logging.getLogger()
    root.handlers[:] = [make_handler(config, stream)]
    root.setLevel(config.gateway.log_level)
    # httpx logs every request URL at INFO; Telegram puts the bot token in the URL.
    for noisy in ("httpx", "httpcore", "telegram", "hpack", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Per-component levels last, so they may also raise or lower the ones above.
    for name, level in config.gateway.log_levels.items():
        logging.getLogger(name).setLevel(level)
