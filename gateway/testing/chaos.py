"""PUBLIC: kill -9 at random moments under load, restart, and check what survived.

::

    report = await run_kill_trials(tmp_path, trials=20, seed=1234)
    assert report.ok, report.summary()

A real daemon process (the real config loader, SQLCipher store, pipeline, the Telegram plugin in
webhook mode and the OpenAI plugin) runs against the fake Bot API and the fake OpenAI server on
127.0.0.1. Each trial starts the daemon on the same data directory (so every start after the
first is a restart after a kill), pushes ``messages_per_trial`` new messages over ``chats``
chats, posts every update Telegram still holds to the webhook (new ones, and the ones no earlier
trial got a 2xx for: Telegram re-delivers those) and SIGKILLs the daemon at a random moment:

- ``delay``: a delay drawn from [0, ``max_delay``) after the daemon said it was ready;
- ``ack``: right after the k-th 2xx the webhook answered in this trial;
- ``llm``: inside the k-th model request, before the fake model answers;
- ``send``: inside the k-th sendMessage, after Telegram recorded it, before the gateway hears.

The order of the kinds (each once in every four trials), the delay and k (1 to
``messages_per_trial``, always reached while the daemon lives) come from ``random.Random(seed)``,
so a seed replays the same plan (the timing of the processes still varies). After each kill,
with the daemon dead, the database is opened and checked: every update acknowledged so far has
its message stored (by external id ``chat:message_id``), and ``PRAGMA integrity_check`` and
``PRAGMA cipher_integrity_check`` return ok. A final start delivers what is left, waits until
every stored message is answered (or its reply is 'unknown': in flight at a kill, maybe
delivered, never resent), stops the daemon with SIGTERM and checks that no message was answered
twice, that the journal is done and that the database is still sound.

The caller may assume: nothing here sleeps to wait (the kill delay and the webhook retry pause
are the load generator's pacing); every process and server is gone when the call returns, also
on error. The caller must give an empty directory.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import httpx
import sqlcipher3
import trio

import gateway
from gateway.errors import GatewayError
from gateway.keys import MasterKey
from gateway.store.bodies import register_sql_function, sealer_for
from gateway.store.db import connect
from gateway.testing.daemon import free_port
from gateway.testing.fake_openai import FakeOpenAIServer, open_fake_openai
from gateway.testing.fake_telegram import FakeTelegramServer, open_fake_telegram
from gateway.testing.process import DaemonProcess, open_daemon_process

__all__ = ["KILL_KINDS", "ChaosReport", "TrialResult", "run_kill_trials"]

TOKEN = "123456:CHAOS-token"
MASTER = "c4" * 32
SECRET = "chaos-Secret_1"
ENV = {
    "TELEGRAM_TOKEN": TOKEN,
    "OPENAI_API_KEY": "sk-chaos",
    "GATEWAY_MASTER_KEY": MASTER,
    "WEBHOOK_SECRET": SECRET,
}
KILL_KINDS = ("delay", "ack", "llm", "send")
RETRY_PAUSE = 0.02
"""Seconds before a refused webhook delivery is posted again (the platform's retry)."""
KILL_DEADLINE = 20.0
"""Seconds a trial waits for its kill trigger before killing anyway (counted as ``late``)."""
DRAIN_DEADLINE = 60.0
# The daemon runs ``python -m gateway`` from here, so it runs the same code as this driver
# (not another copy an editable install may point at).
_SOURCE_ROOT = Path(gateway.__file__).resolve().parents[1]


@dataclasses.dataclass
class TrialResult:
    """One start-load-kill cycle and what the dead daemon's database showed."""

    number: int
    kind: str
    nth: float
    """k for an event kind, seconds for ``delay``."""
    acknowledged: int
    """Webhook deliveries answered 2xx in this trial."""
    redelivered: int
    """Updates posted again in this trial: an earlier trial's kill left them unacknowledged."""
    lost: list[str]
    """External ids acknowledged (in any trial so far) but absent from the database."""
    integrity: list[str]
    """What ``integrity_check`` / ``cipher_integrity_check`` said when not ok (empty: sound)."""
    late: bool
    """The trigger had not fired after :data:`KILL_DEADLINE`: killed anyway."""
    seconds: float


@dataclasses.dataclass
class ChaosReport:
    seed: int
    trials: list[TrialResult]
    pushed: int
    acknowledged: int
    """Distinct messages acknowledged, kill trials and final drain together."""
    lost: list[str]
    duplicates: dict[str, int]
    """Inbound text -> number of replies that reached Telegram, where more than one."""
    unexpected: list[str]
    """Replies that answer no message of their chat."""
    unanswered: list[str]
    """Messages with neither a reply at Telegram nor an 'unknown' outbox row."""
    unknown: int
    """Replies left 'unknown' by a kill (maybe delivered, never resent)."""
    unknown_delivered: int
    """Of those, how many had reached Telegram."""
    redelivered: int
    """Updates posted again after a restart (no 2xx before a kill), final drain included."""
    integrity_failures: list[str]
    journal: dict[str, int]
    outbox: dict[str, int]
    final_exit: int
    drained: bool
    """The final start delivered every update and got every reply within DRAIN_DEADLINE."""
    seconds: float

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.duplicates
            and not self.unexpected
            and not self.unanswered
            and not self.integrity_failures
            and set(self.journal) <= {"done"}
            and set(self.outbox) <= {"sent", "unknown"}
            and self.final_exit == 0
            and self.drained
        )

    def summary(self) -> str:
        per_trial = [t.seconds for t in self.trials]
        kinds = collections.Counter(t.kind for t in self.trials)
        lines = [
            f"seed                   {self.seed}",
            f"trials                 {len(self.trials)} kills "
            + ", ".join(f"{k} {kinds[k]}" for k in KILL_KINDS)
            + f"; {sum(t.late for t in self.trials)} late",
            f"messages pushed        {self.pushed}",
            f"messages acknowledged  {self.acknowledged}   (re-delivered after a kill: "
            f"{self.redelivered})",
            f"lost                   {len(self.lost)}" + _sample(self.lost),
            f"duplicate replies      {sum(n - 1 for n in self.duplicates.values())}"
            + _sample(sorted(self.duplicates)),
            f"unexpected replies     {len(self.unexpected)}" + _sample(self.unexpected),
            f"unanswered messages    {len(self.unanswered)}" + _sample(self.unanswered),
            f"unknown-state replies  {self.unknown} ({self.unknown_delivered} had reached "
            "Telegram)",
            f"integrity failures     {len(self.integrity_failures)}"
            + _sample(self.integrity_failures),
            f"journal / outbox       {self.journal} / {self.outbox}",
            f"final drain            {'complete' if self.drained else 'TIMED OUT'}, exit status "
            f"{self.final_exit}",
            f"time per trial         mean {_mean(per_trial):.2f} s, max "
            f"{max(per_trial, default=0.0):.2f} s; total {self.seconds:.1f} s",
        ]
        return "\n".join(lines)


async def run_kill_trials(
    directory: Path,
    *,
    trials: int,
    seed: int,
    messages_per_trial: int = 8,
    chats: int = 4,
    max_delay: float = 0.4,
    model_latency: float = 0.0,
    progress: bool = False,
) -> ChaosReport:
    """Run ``trials`` kill trials and the final drain in ``directory``; see the module doc."""
    rng = random.Random(seed)
    started = time.monotonic()
    data_dir = directory / "data"
    config = directory / "gateway.toml"
    log = directory / "daemon.log"
    port = free_port()
    results: list[TrialResult] = []
    acked: set[str] = set()
    posted: set[str] = set()
    pushed: dict[str, str] = {}  # external id -> text
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        llm.latency = model_latency
        config.write_text(_config(data_dir, port, tg.api_base, llm.base_url))
        kinds: list[str] = []
        for number in range(trials):
            if not kinds:  # each kind once in every run of four trials, in a random order
                kinds = rng.sample(KILL_KINDS, len(KILL_KINDS))
            kind = kinds.pop()
            nth: float = (
                rng.uniform(0.0, max_delay)
                if kind == "delay"
                else rng.randint(1, messages_per_trial)
            )
            for i in range(messages_per_trial):
                chat = 1000 + rng.randrange(chats)
                text = f"t{number}-m{i}"
                update = tg.push_message(chat, text)
                pushed[_external_id(update)] = text
            t0 = time.monotonic()
            async with open_daemon_process(config, ENV, log, cwd=_SOURCE_ROOT) as daemon:
                redelivered = sum(_external_id(u) in posted for u in tg.updates)
                acks, late = await _trial(daemon, tg, llm, acked, posted, kind, nth)
            lost = sorted(acked - _stored_ids(data_dir))
            result = TrialResult(
                number,
                kind,
                nth,
                acks,
                redelivered,
                lost,
                _integrity(data_dir),
                late,
                time.monotonic() - t0,
            )
            results.append(result)
            if progress and (number + 1) % 10 == 0:
                print(f"  {number + 1}/{trials} trials, {len(acked)} acknowledged", flush=True)

        # The final start: recovery has marked interrupted sends 'unknown' before "ready".
        async with open_daemon_process(config, ENV, log, cwd=_SOURCE_ROOT) as daemon:
            unknown_texts = {
                text for (text,) in _read(data_dir, OUTBOX_TEXT + "WHERE o.state = 'unknown'")
            }
            final_redelivered = sum(_external_id(u) in posted for u in tg.updates)
            with trio.move_on_after(DRAIN_DEADLINE) as drain:
                await _deliver_all(tg, acked, posted, daemon)
                # Only stored messages can be answered: a lost one is reported, not waited for.
                inbound = _read(data_dir, INBOUND_TEXT)
                expected = {f"echo: {t}" for (t,) in inbound} - unknown_texts
                while not expected <= {m.text for m in tg.sent}:
                    await tg.wait_sent(len(tg.sent) + 1)
            daemon.terminate()
            final_exit = await daemon.wait()

    stored = _stored_ids(data_dir)
    lost = sorted(acked - stored)
    chat_of = {text: ext.partition(":")[0] for ext, text in pushed.items()}
    counts = collections.Counter((str(m.chat_id), m.text) for m in tg.sent)
    replies = {f"echo: {t}": t for t in pushed.values()}
    duplicates = {text: n for (_, text), n in counts.items() if n > 1}
    unexpected = [
        text for chat, text in counts if text not in replies or chat_of[replies[text]] != chat
    ]
    answered = {text for _, text in counts} | unknown_texts
    unanswered = sorted(t for t in pushed.values() if f"echo: {t}" not in answered)
    integrity = [f"trial {t.number}: {p}" for t in results for p in t.integrity]
    integrity += [f"final: {p}" for p in _integrity(data_dir)]
    return ChaosReport(
        seed=seed,
        trials=results,
        pushed=len(pushed),
        acknowledged=len(acked),
        lost=lost + sorted({x for t in results for x in t.lost} - set(lost)),
        duplicates=duplicates,
        unexpected=unexpected,
        unanswered=unanswered,
        unknown=len(unknown_texts),
        unknown_delivered=sum(1 for _, text in counts if text in unknown_texts),
        redelivered=sum(t.redelivered for t in results) + final_redelivered,
        integrity_failures=integrity,
        journal=dict(_read(data_dir, "SELECT state, count(*) FROM journal GROUP BY state")),
        outbox=dict(_read(data_dir, "SELECT state, count(*) FROM outbox GROUP BY state")),
        final_exit=final_exit,
        drained=not drain.cancelled_caught,
        seconds=time.monotonic() - started,
    )


async def _trial(
    daemon: DaemonProcess,
    tg: FakeTelegramServer,
    llm: FakeOpenAIServer,
    acked: set[str],
    posted: set[str],
    kind: str,
    nth: float,
) -> tuple[int, bool]:
    """Load the daemon and kill it at the planned moment; return (acks, late)."""
    seen: collections.Counter[str] = collections.Counter()

    def event(what: str) -> None:
        seen[what] += 1
        if what == kind and seen[what] == nth:
            daemon.kill()

    llm.on_request = lambda request: event("llm")
    tg.on_send = lambda sent: event("send")
    late = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_deliver_all, tg, acked, posted, daemon, lambda: event("ack"))
            if kind == "delay":
                await trio.sleep(nth)
                daemon.kill()
            with trio.move_on_after(KILL_DEADLINE):
                await daemon.exited.wait()
            if not daemon.exited.is_set():
                late = True
                daemon.kill()
            await daemon.wait()
            nursery.cancel_scope.cancel()
    finally:
        llm.on_request = None
        tg.on_send = None
    return seen["ack"], late


async def _deliver_all(
    tg: FakeTelegramServer,
    acked: set[str],
    posted: set[str],
    daemon: DaemonProcess,
    on_ack: Any = None,
) -> None:
    """Post every update Telegram holds to the webhook, one chat after another in order per
    chat (several chats at once), until each got a 2xx or the daemon is gone."""
    by_chat: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for update in list(tg.updates):
        by_chat[update["message"]["chat"]["id"]].append(update)

    async def chat_worker(updates: list[dict[str, Any]]) -> None:
        for update in updates:
            while daemon.process.returncode is None and not daemon.exited.is_set():
                posted.add(_external_id(update))
                try:
                    status = await tg.deliver_to_webhook(update)
                except httpx.TransportError:
                    status = 0  # killed mid-request, or not listening any more
                if 200 <= status < 300:
                    acked.add(_external_id(update))
                    if on_ack is not None:
                        on_ack()
                    break
                await trio.sleep(RETRY_PAUSE)  # Telegram retries a refused delivery later
            else:
                return

    async with trio.open_nursery() as nursery:
        for updates in by_chat.values():
            nursery.start_soon(chat_worker, updates)


def _external_id(update: dict[str, Any]) -> str:
    message = update["message"]
    return f"{message['chat']['id']}:{message['message_id']}"


# Message text is sealed per contact (gateway.store.bodies): read through open_body().
INBOUND_TEXT = (
    "SELECT open_body(c.contact_id, m.text, m.body) FROM messages m "
    "JOIN conversations c ON c.id = m.conversation_id WHERE m.direction = 'in'"
)
OUTBOX_TEXT = (
    "SELECT open_body(c.contact_id, o.text, o.body) FROM outbox o "
    "JOIN conversations c ON c.id = o.conversation_id "
)


def _read(data_dir: Path, query: str) -> list[tuple[Any, ...]]:
    key = MasterKey(bytes.fromhex(MASTER), "test").derive("sqlcipher")
    db = connect(data_dir / "gateway.db", key, readonly=True)
    try:
        register_sql_function(db.conn, sealer_for(db.conn, data_dir / "attachments"))
        rows: list[tuple[Any, ...]] = db.conn.execute(query).fetchall()
        return rows
    finally:
        db.conn.close()


def _stored_ids(data_dir: Path) -> set[str]:
    rows = _read(data_dir, "SELECT external_id FROM messages WHERE direction = 'in'")
    return {str(ext) for (ext,) in rows}


def _integrity(data_dir: Path) -> list[str]:
    """Problems ``integrity_check`` and ``cipher_integrity_check`` report; empty when sound."""
    problems: list[str] = []
    for pragma in ("integrity_check", "cipher_integrity_check"):
        try:
            rows = _read(data_dir, f"PRAGMA {pragma}")
        except (sqlcipher3.DatabaseError, GatewayError) as exc:  # too broken to even check
            rows = [(f"{type(exc).__name__}: {exc}",)]
        # integrity_check says "ok"; cipher_integrity_check returns no rows when every page's
        # HMAC is right.
        problems += [f"{pragma}: {r}" for (r,) in rows if r != "ok"]
    return problems


def _config(data_dir: Path, port: int, tg_base: str, llm_base: str) -> str:
    return f"""
[gateway]
data_dir = "{data_dir}"
log_level = "WARNING"
shutdown_grace = 5
[http]
public_bind = "127.0.0.1:{port}"
admin_bind = "127.0.0.1:0"
public_url = "http://127.0.0.1:{port}"
[channels.support_bot]
plugin = "telegram"
token = "env:TELEGRAM_TOKEN"
mode = "webhook"
webhook_secret = "env:WEBHOOK_SECRET"
api_base = "{tg_base}"
send_rate_per_chat = 1000
send_burst_per_chat = 100
send_rate = 10000
[agents.default]
provider = "main"
max_attempts = 2
retry_backoff = 0.05
[providers.main]
plugin = "openai"
base_url = "{llm_base}"
api_key = "env:OPENAI_API_KEY"
model = "fake-model"
timeout = 10
"""


def _sample(items: list[str]) -> str:
    return f"   e.g. {items[:5]}" if items else ""


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
