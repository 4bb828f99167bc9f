"""PUBLIC: the errors the gateway raises and the ones plugins raise to it.

Every message says what went wrong and what to do about it: a sysadmin reads these in a terminal
or a journal, with no source code at hand.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration cannot be used. The message names file, table, key, line and the fix."""

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        table: str | None = None,
        key: str | None = None,
        line: int | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.table = table
        self.key = key
        self.line = line
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        where = []
        if self.file:
            where.append(f"{self.file}" + (f":{self.line}" if self.line else ""))
        if self.table:
            where.append(f"[{self.table}]")
        if self.key:
            where.append(f"key {self.key!r}")
        text = (" ".join(where) + ": " if where else "") + self.problem
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class MasterKeyError(GatewayError):
    """The master key is missing, unreadable, or does not open the database."""


class StoreError(GatewayError):
    """The encrypted store cannot be opened or written."""


class PluginError(GatewayError):
    """A plugin could not be found, loaded or started."""


class SendError(GatewayError):
    """A channel could not send a message.

    - ``retry_after``: the platform asked us to wait this many seconds (HTTP 429, flood control);
      the dispatcher waits and retries the same message, keeping the thread's order.
    - ``permanent``: retrying cannot help (the user blocked the bot, the chat does not exist).
    - ``uncertain``: the request may have reached the platform (a read timeout); to keep
      at-most-once delivery the dispatcher will not resend it and records the delivery as unknown.
    Otherwise the error is transient and retried with bounded backoff.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        permanent: bool = False,
        uncertain: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent
        self.uncertain = uncertain


class ProviderError(GatewayError):
    """An LLM provider failed to answer.

    ``retryable`` is true for timeouts, 429 and 5xx; ``retry_after`` carries the server's hint.
    A non-retryable error (bad request, bad key) goes straight to the agent's fallback text.
    The message must never contain conversation content.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
