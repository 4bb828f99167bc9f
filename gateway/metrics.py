"""Prometheus metrics: what a sysadmin graphs and alerts on, served at the admin bind's /metrics.

One :class:`Metrics` per daemon, with its own ``CollectorRegistry`` (never prometheus_client's
global one: two gateways in one process, as tests run them, must not share or collide).

Two kinds of figures:

- counters the pipeline and the agents bump as things happen (messages received, replies,
  sends, provider calls), labelled by channel or provider;
- state read at scrape time (journal lag, open outbox rows, lanes, store, database size,
  plugin restarts): :meth:`Metrics.render` takes a :class:`Snapshot` gathered by the caller
  (the admin app reads the database first, asynchronously) and renders everything at once.

Labels never carry a contact, a thread or message content: channel, provider, agent-independent
outcomes and states only, so the series count stays small and the output holds no personal data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from gateway import __version__

if TYPE_CHECKING:
    import sqlite_utils

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text exposition format 0.0.4, which every Prometheus-compatible scraper reads."""

PROVIDER_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
"""Seconds: a local model answers in 0.1-5 s, a hosted one in 1-30 s, a stuck one times out."""

LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: a busy loop is a few ms late, a blocking call tens to thousands."""

SEND_OUTCOMES = ("sent", "retry", "failed", "unknown")
REPLY_AUTHORS = ("ai", "fallback", "notice", "handoff")
PROVIDER_OUTCOMES = ("ok", "error", "timeout", "empty", "bug")


def provider_outcome(outcome: str) -> str:
    """The agent's free-text outcome ("ok", "error: ...", "timeout (...)", "empty answer",
    "bug: X") as one of :data:`PROVIDER_OUTCOMES`, so error text never becomes a label."""
    head = outcome.split(":", 1)[0].split(" ", 1)[0].strip().lower()
    return head if head in PROVIDER_OUTCOMES else "error"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Daemon state read at scrape time; see :meth:`Metrics.render`."""

    journal_pending: Mapping[str, tuple[int, str | None]]
    """channel -> (pending entries, received_at of the oldest one)."""
    outbox_open: Mapping[tuple[str, str], int]
    """(channel, state) -> rows in state 'pending' or 'sending'."""
    lanes_active: Mapping[str, int]
    lane_errors: Mapping[str, int]
    store: Mapping[str, int]
    """Writer totals: "commits", "writes"."""
    database: Path
    restarts: Mapping[str, int]
    accepting: bool


class Metrics:
    """The counters the pipeline and agents bump, and the renderer for /metrics.

    ``channels`` and ``providers`` pre-create every label combination at zero, so a series exists
    (and ``rate()`` works) before the first event.
    """

    def __init__(self, channels: Iterable[str] = (), providers: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.messages = Counter(
            "gateway_messages_received",
            "Inbound messages handed in by channels: accepted (journaled) or duplicate "
            "(a platform retry of a message already journaled).",
            ["channel", "result"],
            registry=registry,
        )
        self.replies = Counter(
            "gateway_replies",
            "Replies committed to the outbox, by author: ai (the model answered), fallback "
            "(the model failed every attempt), notice (a fixed text, e.g. for a photo), "
            "handoff (the notice that a person takes over).",
            ["channel", "author"],
            registry=registry,
        )
        self.sends = Counter(
            "gateway_sends",
            "Send attempts by outcome: sent, retry (will be tried again), failed (given up), "
            "unknown (may or may not have arrived; not resent).",
            ["channel", "outcome"],
            registry=registry,
        )
        self.consents = Counter(
            "gateway_consent_keywords",
            "Opt-out (withdrawn) and re-subscribe (granted) keywords recorded in the consent "
            "ledger.",
            ["channel", "state"],
            registry=registry,
        )
        self.platform_statuses = Counter(
            "gateway_platform_statuses",
            "Delivery status callbacks from platforms (delivered, read, failed...).",
            ["channel", "status"],
            registry=registry,
        )
        self.unanswered = Counter(
            "gateway_messages_left_to_people",
            "Inbound messages the AI did not answer because a person has the conversation "
            "or AI is off for it or its contact.",
            ["channel"],
            registry=registry,
        )
        self.sends_interrupted = Counter(
            "gateway_sends_interrupted",
            "Replies found mid-send at start-up (the previous run stopped during the send); "
            "marked unknown and not resent.",
            registry=registry,
        )
        self.provider_calls = Histogram(
            "gateway_provider_call_seconds",
            "LLM provider calls: duration by provider and outcome (ok, error, timeout, empty, "
            'bug). The _count series count calls; outcome!="ok" are the errors.',
            ["provider", "outcome"],
            buckets=PROVIDER_BUCKETS,
            registry=registry,
        )
        self.loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How late the event loop woke a 50 ms timer, 20 times a second: time during which "
            "nothing else ran either. Stalls of 0.2 s or more are logged (gateway/stalls.py).",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        ProcessCollector(registry=registry)
        self._state = _StateCollector()
        registry.register(self._state)
        for channel in channels:
            self.declare_channel(channel)
        for provider in providers:
            for outcome in PROVIDER_OUTCOMES:
                self.provider_calls.labels(provider, outcome)

    def declare_channel(self, channel: str) -> None:
        for result in ("accepted", "duplicate"):
            self.messages.labels(channel, result)
        for author in REPLY_AUTHORS:
            self.replies.labels(channel, author)
        for outcome in SEND_OUTCOMES:
            self.sends.labels(channel, outcome)
        self.unanswered.labels(channel)
        self._state.channels.add(channel)

    # -- counting (called by the pipeline and the agents) ------------------------------------

    def received(self, channel: str, *, duplicate: bool) -> None:
        self.messages.labels(channel, "duplicate" if duplicate else "accepted").inc()

    def replied(self, channel: str, author: str) -> None:
        self.replies.labels(channel, author).inc()

    def left_to_people(self, channel: str) -> None:
        self.unanswered.labels(channel).inc()

    def consent(self, channel: str, state: str) -> None:
        self.consents.labels(channel, state).inc()

    def platform_status(self, channel: str, status: str) -> None:
        self.platform_statuses.labels(channel, status).inc()

    def send(self, channel: str, outcome: str) -> None:
        self.sends.labels(channel, outcome).inc()

    def provider_call(self, provider: str, outcome: str, seconds: float) -> None:
        """One model call; ``outcome`` is the agent's text, reduced by :func:`provider_outcome`."""
        self.provider_calls.labels(provider, provider_outcome(outcome)).observe(seconds)

    # -- rendering ---------------------------------------------------------------------------

    def render(self, snapshot: Snapshot) -> bytes:
        """Everything in the text exposition format, the state taken from ``snapshot``."""
        # Synchronous from here on: no other task can swap the snapshot before it is rendered.
        self._state.snapshot = snapshot
        try:
            return generate_latest(_WithoutCreated(self.registry))
        finally:
            self._state.snapshot = None


class _WithoutCreated(Collector):
    """The registry minus the ``*_created`` series (the start time of every counter and
    histogram child): they double the output and nobody graphs them. Done per render, not by
    prometheus_client's process-wide switch."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            # collect() builds fresh Metric objects, so trimming them touches nothing shared.
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class _StateCollector:
    """Renders a :class:`Snapshot` as fresh metric families on every scrape, so a label that
    disappears (a channel with no pending entries left) reads 0 instead of a stale value."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.channels: set[str] = set()

    def describe(self) -> list[Metric]:
        return []  # names are not known up front; the registry then calls collect() lazily

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        info = GaugeMetricFamily(
            "gateway_build_info", "The running gateway's version (value 1).", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        if snap is None:
            return
        yield _gauge(
            "gateway_accepting",
            "1 while channels accept messages, 0 once shutting down.",
            [],
            {(): int(snap.accepting)},
        )
        now = dt.datetime.now(dt.UTC)
        channels = self.channels | set(snap.journal_pending)
        pending = {c: snap.journal_pending.get(c, (0, None)) for c in sorted(channels)}
        yield _gauge(
            "gateway_journal_pending",
            "Inbound messages journaled but not answered yet.",
            ["channel"],
            {(c,): n for c, (n, _) in pending.items()},
        )
        yield _gauge(
            "gateway_journal_oldest_pending_age_seconds",
            "Age of the oldest unanswered inbound message (journal lag); 0 when none waits.",
            ["channel"],
            {(c,): _age(oldest, now) for c, (_, oldest) in pending.items()},
        )
        outbox: dict[tuple[str, ...], float] = {
            (c, s): 0 for c in channels for s in ("pending", "sending")
        }
        for key, count in snap.outbox_open.items():
            outbox[key] = count
        yield _gauge(
            "gateway_outbox_open",
            "Replies committed but not sent yet, by state: pending (queued or waiting for a "
            "retry) and sending (a send in flight).",
            ["channel", "state"],
            outbox,
        )
        yield _gauge(
            "gateway_lanes_active",
            "Conversations being worked on: answer (waiting for the model) and deliver "
            "(sending replies).",
            ["lane"],
            {(k,): v for k, v in snap.lanes_active.items()},
        )
        yield _counter(
            "gateway_lane_errors",
            "Unexpected errors in a lane (a bug or a store failure); the lane retries.",
            ["lane"],
            {(k,): v for k, v in snap.lane_errors.items()},
        )
        yield _counter(
            "gateway_store_commits",
            "Database transactions committed by the writer (each holds one or more writes).",
            [],
            {(): snap.store.get("commits", 0)},
        )
        yield _counter(
            "gateway_store_writes",
            "Writes committed (group commit puts many in one transaction).",
            [],
            {(): snap.store.get("writes", 0)},
        )
        yield _counter(
            "gateway_store_checkpoints",
            "WAL checkpoints run off the writer, by outcome (a failure is retried at the next).",
            ["outcome"],
            {
                ("ok",): snap.store.get("checkpoints", 0),
                ("failed",): snap.store.get("checkpoint_failures", 0),
            },
        )
        yield _gauge(
            "gateway_database_bytes",
            "Size of the encrypted database: the main file and its write-ahead log.",
            ["file"],
            {("main",): _size(snap.database), ("wal",): _size(Path(f"{snap.database}-wal"))},
        )
        yield _counter(
            "gateway_plugin_restarts",
            "Times a plugin crashed or stopped and was restarted by its supervisor.",
            ["kind", "name"],
            {
                tuple(label.split(" ", 1)) if " " in label else (label, ""): n
                for label, n in snap.restarts.items()
            },
        )


def _gauge(
    name: str, doc: str, labels: list[str], values: Mapping[tuple[str, ...], float]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


def _counter(
    name: str, doc: str, labels: list[str], values: Mapping[tuple[str, ...], float]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


def _age(iso: str | None, now: dt.datetime) -> float:
    if not iso:
        return 0.0
    try:
        then = dt.datetime.fromisoformat(iso)
    except ValueError:
        return 0.0
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.UTC)
    return max(0.0, (now - then).total_seconds())


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


# -- scrape-time reads (run on a reader connection) ------------------------------------------


def journal_lag_txn(db: sqlite_utils.Database) -> dict[str, tuple[int, str | None]]:
    """Pending journal entries per channel and the oldest one's received_at (ISO, UTC).

    ``state = 'pending'`` matches the partial index journal_pending: cheap however long the
    journal grows.
    """
    rows = db.conn.execute(
        "SELECT channel, count(*), min(received_at) FROM journal "
        "WHERE state = 'pending' GROUP BY channel"
    ).fetchall()
    return {channel: (count, oldest) for channel, count, oldest in rows}


def outbox_open_txn(db: sqlite_utils.Database) -> dict[tuple[str, str], int]:
    """Open outbox rows per (channel, state), through the partial index outbox_open."""
    rows = db.conn.execute(
        "SELECT channel, state, count(*) FROM outbox "
        "WHERE state IN ('pending', 'sending') GROUP BY channel, state"
    ).fetchall()
    return {(channel, state): count for channel, state, count in rows}
