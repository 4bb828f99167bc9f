"""The retention sweep: every category's expired rows, in bounded batches, then the act.

Each batch is found on a reader (paging by id, so the writer is never blocked by a scan), then
removed in one write transaction that first re-checks the rows against the expiry condition and
the legal holds (a conversation that came back to life, or was put on hold, in between is left
alone). Between batches the sweep yields, so live traffic interleaves with it: in the daemon a
batch is one ``Store.write`` job among the message traffic's; from the command line each batch
is a short transaction of its own beside the running daemon (SQLite's write lock, WAL).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlite_utils
import trio

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.privacy import acts, audit
from gateway.privacy.retention import (
    acts_directory,
    check_channels,
    retention_config,
)
from gateway.privacy.retention_builtin import KEPT
from gateway.privacy.retention_categories import NEVER, Category, Scope, Subjects, categories, marks
from gateway.privacy.sealing import Sealer

log = logging.getLogger("gateway.retention")
T = TypeVar("T")

Progress = Callable[[str, int, int | None], None]
"""``progress(category, records so far, expected total or None)``."""


class Runner(Protocol):
    """Where transactions run: the daemon's Store, or :class:`ConnectionRunner` in a CLI."""

    async def read(self, desc: str, fn: Callable[..., T], *args: Any) -> T: ...

    async def write(self, desc: str, fn: Callable[..., T], *args: Any) -> T: ...


class ConnectionRunner:
    """Transactions on one connection (a command-line tool's), each write committed alone."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    async def read(self, desc: str, fn: Callable[..., T], *args: Any) -> T:
        return fn(self.db, *args)

    async def write(self, desc: str, fn: Callable[..., T], *args: Any) -> T:
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self.db, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result


@dataclasses.dataclass
class CategoryResult:
    name: str
    key: str
    title: str
    action: str
    what: str
    days: int
    channel_days: dict[str, int]
    cutoff: str
    status: str = "done"
    """done, dry-run, skipped (reason says why) or failed (reason: the error)."""
    reason: str = ""
    records: int = 0
    """Removed (or in a dry run: would be)."""
    held: int = 0
    """Expired but under a legal hold."""
    kept: dict[str, int] = dataclasses.field(default_factory=dict)
    """Expired, not held, but kept for a reason the category gave."""
    subjects: Subjects = dataclasses.field(default_factory=collections.Counter)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["subjects"]
        data["basis"] = f"{self.key} = {self.days}" + "".join(
            f"; [retention.channels.{c}] {self.key} = {d}" for c, d in self.channel_days.items()
        )
        return data


@dataclasses.dataclass
class SweepResult:
    act_id: int
    dry_run: bool
    categories: list[CategoryResult]
    files: list[Any] = dataclasses.field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(c.records for c in self.categories)

    @property
    def held(self) -> int:
        return sum(c.held for c in self.categories)

    @property
    def failed(self) -> list[CategoryResult]:
        return [c for c in self.categories if c.status == "failed"]


def cutoff(now: dt.datetime, days: int) -> str:
    if days <= 0:
        return NEVER
    return (now - dt.timedelta(days=days)).isoformat(timespec="microseconds")


def select_categories(only: Sequence[str] | None) -> list[Category]:
    known = categories()
    if not only:
        return list(known.values())
    unknown = [name for name in only if name not in known]
    if unknown:
        raise GatewayError(
            f"unknown retention category {', '.join(map(repr, unknown))}; categories: "
            + ", ".join(known)
        )
    return [c for name, c in known.items() if name in only]


# Transactions -----------------------------------------------------------------------------------


def _page_txn(
    db: sqlite_utils.Database, category: Category, scope: Scope, after_id: int, limit: int
) -> list[int]:
    rows = category.rows
    where, params = rows.where(scope)
    sql = (
        f"SELECT {rows.id} FROM {rows.source} WHERE {rows.id} > ? AND ({where}) "
        f"ORDER BY {rows.id} LIMIT ?"
    )
    return [r[0] for r in db.conn.execute(sql, [after_id, *params, limit])]


def _count_txn(db: sqlite_utils.Database, category: Category, scope: Scope, held: bool) -> int:
    rows = category.rows
    if held and not (rows.contact or rows.conversation):
        return 0
    if held and not _any_hold(db):
        return 0  # no scan of the category's rows for nothing
    where, params = rows.where(scope, held=held)
    (n,) = db.conn.execute(f"SELECT count(*) FROM {rows.source} WHERE {where}", params).fetchone()
    return int(n)


def _any_hold(db: sqlite_utils.Database) -> bool:
    row = db.conn.execute("SELECT 1 FROM legal_holds WHERE released_at IS NULL LIMIT 1")
    return row.fetchone() is not None


def _apply_txn(
    db: sqlite_utils.Database, category: Category, scope: Scope, ids: Sequence[int]
) -> Subjects:
    rows = category.rows
    where, params = rows.where(scope)
    # Re-checked here, in the writer's transaction: the read that found them is not.
    still = [
        r[0]
        for r in db.conn.execute(
            f"SELECT {rows.id} FROM {rows.source} WHERE {rows.id} IN ({marks(ids)}) AND ({where})",
            [*ids, *params],
        )
    ]
    if not still:
        return collections.Counter()
    return category.apply(db, scope, still)


def _available_txn(db: sqlite_utils.Database, category: Category) -> str | None:
    return category.available(db.conn)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): a pid
    reused by a later process has another."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def runner_identity() -> str:
    """This process, such that another process on this machine can tell whether it still runs:
    ``boot id:pid:start ticks`` (Linux), ``:pid:`` elsewhere."""
    pid = os.getpid()
    return f"{_boot_id()}:{pid}:{_start_ticks(pid)}"


def runner_alive(identity: str | None) -> bool:
    """Whether the process that wrote ``identity`` still runs. False for another boot or
    machine (a restored backup), a pid now someone else's, and acts from before runners were
    recorded (m018: a restart, the upgrade's, came in between)."""
    if not identity:
        return False
    boot, _, rest = identity.partition(":")
    pid_text, _, ticks = rest.partition(":")
    if boot != _boot_id() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if ticks or boot:
        return _start_ticks(pid) == ticks
    try:  # no /proc: the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_txn(db: sqlite_utils.Database, actor: str) -> list[int]:
    """Close the acts left 'running' by a process that is gone (killed, crashed, power cut):
    state 'interrupted', with what they recorded before, and an audit entry each. Acts of a
    sweep still running in another process (the CLI beside the daemon) are left alone."""
    stale = [
        (act_id, runner)
        for act_id, runner in db.conn.execute(
            "SELECT id, runner FROM retention_acts WHERE state = 'running' ORDER BY id"
        )
        if not runner_alive(runner)
    ]
    for act_id, runner in stale:
        records, held = db.conn.execute(
            "SELECT records, held FROM retention_acts WHERE id = ?", (act_id,)
        ).fetchone()
        last = audit.append_txn(
            db,
            actor=actor,
            action="retention.sweep",
            target=f"retention-act:{act_id}",
            outcome="failed",
            detail={
                "state": "interrupted",
                "records": records,
                "held": held,
                "reason": "the process running the sweep ended without finishing it "
                f"(killed or crashed; it was {runner or 'an older version'})",
            },
        )
        db.conn.execute(
            "UPDATE retention_acts SET finished_at = ?, state = 'interrupted', "
            "audit_last_id = ? WHERE id = ?",
            (dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"), last, act_id),
        )
        log.warning(
            "retention act #%d was left running by a process that is gone; marked interrupted",
            act_id,
        )
    return [act_id for act_id, _ in stale]


def _start_txn(
    db: sqlite_utils.Database,
    now: str,
    dry_run: bool,
    actor: str,
    policy: dict[str, Any],
    version: str,
    basis: str,
    names: list[str],
) -> tuple[int, int]:
    reap_txn(db, actor)
    act_id = db.conn.execute(
        "INSERT INTO retention_acts (started_at, state, dry_run, actor, policy_version, policy, "
        "legal_basis, runner) VALUES (?, 'running', ?, ?, ?, ?, ?, ?)",
        (
            now,
            int(dry_run),
            actor,
            version,
            json.dumps(policy, sort_keys=True),
            basis,
            runner_identity(),
        ),
    ).lastrowid
    assert act_id is not None
    audit_id = audit.append_txn(
        db,
        actor=actor,
        action="retention.sweep.start",
        target=f"retention-act:{act_id}",
        detail={"dry_run": dry_run, "policy_version": version, "categories": names},
    )
    db.conn.execute("UPDATE retention_acts SET audit_first_id = ? WHERE id = ?", (audit_id, act_id))
    return act_id, audit_id


def _category_txn(
    db: sqlite_utils.Database, act_id: int, actor: str, result: CategoryResult, dry_run: bool
) -> None:
    audit.append_txn(
        db,
        actor=actor,
        action="retention.category",
        target=f"retention-act:{act_id}",
        outcome="failed" if result.status == "failed" else "ok",
        detail={
            "category": result.name,
            "status": result.status,
            "records": result.records,
            "held": result.held,
            "kept": result.kept,
            "basis": result.to_json()["basis"],
            "cutoff": result.cutoff,
            "dry_run": dry_run,
            **({"reason": result.reason} if result.reason else {}),
        },
    )
    conn = db.conn
    # Kept up to date category by category, so an act cut short (an exception, or the process
    # killed and the act reaped by the next sweep) still says what went before it stopped.
    conn.execute(
        "UPDATE retention_acts SET categories = json_insert(categories, '$[#]', json(?)), "
        "records = records + ?, held = held + ? WHERE id = ?",
        (
            json.dumps(result.to_json(), ensure_ascii=False),
            result.records,
            result.held,
            act_id,
        ),
    )
    for subject, n in result.subjects.items():
        conn.execute(
            "INSERT INTO retention_act_subjects (act_id, category, subject, records) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (act_id, category, subject) "
            "DO UPDATE SET records = records + excluded.records",
            (act_id, result.name, subject, n),
        )


def _finish_txn(
    db: sqlite_utils.Database, act_id: int, actor: str, state: str, results: list[CategoryResult]
) -> None:
    records = sum(r.records for r in results)
    held = sum(r.held for r in results)
    last = audit.append_txn(
        db,
        actor=actor,
        action="retention.sweep",
        target=f"retention-act:{act_id}",
        outcome="ok" if state == "done" else "failed",
        detail={
            "state": state,
            "records": records,
            "held": held,
            "by_category": {r.name: r.records for r in results},
        },
    )
    db.conn.execute(
        "UPDATE retention_acts SET finished_at = ?, state = ?, categories = ?, records = ?, "
        "held = ?, audit_last_id = ? WHERE id = ?",
        (
            dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            state,
            json.dumps([r.to_json() for r in results], ensure_ascii=False),
            records,
            held,
            last,
            act_id,
        ),
    )


# The sweep --------------------------------------------------------------------------------------


async def sweep(
    runner: Runner,
    config: GatewayConfig,
    *,
    sealer: Sealer | None,
    actor: str = "system",
    dry_run: bool = False,
    only: Sequence[str] | None = None,
    now: dt.datetime | None = None,
    progress: Progress | None = None,
    write_files: bool = True,
) -> SweepResult:
    """Run every (or ``only`` these) categories; record the act; return what went."""
    section = retention_config(config)
    check_channels(config)
    chosen = select_categories(only)
    moment = now or dt.datetime.now(dt.UTC)
    now_iso = moment.astimezone(dt.UTC).isoformat(timespec="microseconds")
    policy = section.model_dump(mode="json")
    act_id, _ = await runner.write(
        "retention act start",
        _start_txn,
        now_iso,
        dry_run,
        actor,
        policy,
        section.version(),
        section.legal_basis,
        [c.name for c in chosen],
    )
    results: list[CategoryResult] = []
    state = "done"
    try:
        for category in chosen:
            days = section.days(category.key)
            overrides = section.overrides(category.key) if category.per_channel else {}
            scope = Scope(
                now=now_iso,
                cutoff=cutoff(moment, days),
                channel_cutoffs={c: cutoff(moment, d) for c, d in overrides.items()},
                sealer=sealer,
                actor=actor,
                act_id=act_id,
                basis=f"retention policy {section.version()}: {category.key} = {days}; "
                + section.legal_basis,
            )
            result = CategoryResult(
                category.name,
                category.key,
                category.title,
                category.action,
                category.what,
                days,
                overrides,
                scope.cutoff,
            )
            results.append(result)
            try:
                await _sweep_category(runner, category, scope, result, section, dry_run, progress)
            except (trio.Cancelled, KeyboardInterrupt):
                raise
            except Exception as exc:  # one category's failure must not stop the others
                log.exception("retention: category %s failed", category.name)
                result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
            await runner.write(
                "retention act category", _category_txn, act_id, actor, result, dry_run
            )
        if any(r.status == "failed" for r in results):
            state = "failed"
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await runner.write(
                "retention act interrupted", _finish_txn, act_id, actor, "interrupted", results
            )
        raise
    await runner.write("retention act finish", _finish_txn, act_id, actor, state, results)
    outcome = SweepResult(act_id, dry_run, results)
    if write_files:
        document = await runner.read("retention act", acts.load_act, act_id)
        folder = acts_directory(config)
        outcome.files = await trio.to_thread.run_sync(acts.write_files, document, folder)
    log.info(
        "retention %s #%d: %d records %s, %d held back%s",
        "dry run" if dry_run else "sweep",
        act_id,
        outcome.records,
        "would go" if dry_run else "removed",
        outcome.held,
        f"; FAILED: {', '.join(c.name for c in outcome.failed)}" if outcome.failed else "",
    )
    return outcome


async def _sweep_category(
    runner: Runner,
    category: Category,
    scope: Scope,
    result: CategoryResult,
    section: Any,
    dry_run: bool,
    progress: Progress | None,
) -> None:
    reason = await runner.read("retention check", _available_txn, category)
    if reason is not None:
        result.status, result.reason = "skipped", reason
        return
    if scope.off:
        result.status, result.reason = "skipped", "kept forever (0 days)"
        return
    result.held = await runner.read("retention held", _count_txn, category, scope, True)
    total: int | None = None
    if dry_run or progress is not None:
        total = await runner.read("retention count", _count_txn, category, scope, False)
    if dry_run:
        result.status, result.records = "dry-run", total or 0
        if progress is not None:
            progress(category.name, result.records, total)
        return
    if progress is not None:
        progress(category.name, 0, total)
    limit = max(1, section.batch_size // category.batch_share)
    # After each batch, wait so that live traffic keeps ``live_share`` of the time: a batch's
    # write holds the single writer (and a core) while acks queue behind it.
    share = section.live_share
    ratio = share / (1 - share) if share < 1 else 0.0
    after_id = 0
    while True:
        started = time.perf_counter()
        ids = await runner.read(
            f"retention {category.name} page", _page_txn, category, scope, after_id, limit
        )
        if not ids:
            break
        after_id = ids[-1]
        done = await runner.write(f"retention {category.name}", _apply_txn, category, scope, ids)
        for subject, n in done.items():
            if subject.startswith(KEPT):
                reason = subject[len(KEPT) :]
                result.kept[reason] = result.kept.get(reason, 0) + n
            else:
                result.subjects[subject] += n
                result.records += n
        if progress is not None:
            progress(category.name, result.records, total)
        # Even with live_share = 0 other tasks run before the next batch (a checkpoint).
        await trio.sleep((time.perf_counter() - started) * ratio)


async def scheduled_sweep(services: Any) -> SweepResult | None:
    """The scheduler's job: sweep with the config running now (a reload may have changed it)."""
    config = services.config
    if not retention_config(config).enabled:
        log.info("retention sweep skipped: [retention] enabled = false")
        return None
    result = await sweep(services.store, config, sealer=services.store.sealer, actor="system")
    if result.failed:
        raise RuntimeError(
            f"retention act #{result.act_id}: categories failed: "
            + ", ".join(f"{c.name} ({c.reason})" for c in result.failed)
        )
    return result
