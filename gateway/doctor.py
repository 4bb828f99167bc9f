"""``gateway doctor``: check a setup end to end and say what to fix.

One line per check, ``OK|WARN|FAIL  name: detail``, and a ``fix:`` line under every warning and
failure. Exit status 0 when all is OK, 1 with warnings, 2 with failures.

Checks: the config; the data directory (owner, mode, free disk); the master key (which source,
never the key) and the key file's permissions; the database (opens with the key,
``integrity_check``, ``cipher_integrity_check``, migrations current); the clock against the
newest record; each enabled channel and each provider through the plugin's optional
``async def check(self) -> str`` (duck typing: a plugin without one is reported as not checked).

A plugin's ``check`` returns a one-line summary for OK, raises ``UserWarning`` for something
to look at, and raises any other exception (PluginError, ProviderError) for a failure; its
message names the problem, never a secret. Nothing here writes to the database or changes
files; the database is opened read-only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import pwd
import shutil
import stat
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
import trio

from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError, GatewayError, MasterKeyError, PluginError
from gateway.keys import DATABASE_FILE, KEY_FILE, MasterKey, load_master_key
from gateway.messages import Event, Inbound
from gateway.plugin import Accepted, HistoryItem, Registry

Status = Literal["OK", "WARN", "FAIL"]

MiB = 1 << 20
GiB = 1 << 30
DISK_WARN = GiB
DISK_FAIL = 100 * MiB
CHANNEL_TIMEOUT = 20.0
PROVIDER_TIMEOUT = 15.0
"""Outer bounds on a plugin's check (the OpenAI check bounds its own call to 10 s)."""
CLOCK_SLACK = 5.0


@dataclasses.dataclass(frozen=True)
class Result:
    status: Status
    name: str
    detail: str
    fix: str | None = None

    def render(self) -> str:
        line = f"{self.status:<4}  {self.name}: {self.detail}"
        if self.fix and self.status != "OK":
            line += f"\n      fix: {self.fix}"
        return line


def exit_code(results: Sequence[Result]) -> int:
    statuses = {r.status for r in results}
    return 2 if "FAIL" in statuses else 1 if "WARN" in statuses else 0


def render(results: Sequence[Result]) -> str:
    return "\n".join(r.render() for r in results)


async def diagnose(
    path: str | os.PathLike[str] | None,
    registry: Registry,
    *,
    environ: Mapping[str, str] | None = None,
) -> list[Result]:
    """Run every check for the config at ``path`` (None: the embedded default)."""
    env = dict(os.environ if environ is None else environ)
    results: list[Result] = []
    try:
        # The key and database checks below say precisely what is wrong with either; the admin
        # UI's tables are read when both are fine.
        config = load_config(path, registry, environ=env, managed="try")
    except ConfigError as exc:
        return [
            Result(
                "FAIL",
                "config",
                exc.render().split("\n  fix:")[0],
                exc.fix or "correct the file; `gateway check-config FILE` shows the same error",
            )
        ]
    channels = [n for n, c in config.channels.items() if c.config.enabled]
    results.append(
        Result(
            "OK",
            "config",
            f"{config.source}: {len(channels)} channel(s) enabled, "
            f"{len(config.agents)} agent(s), {len(config.providers)} provider(s)",
        )
    )
    owner_ok = _check_data_dir(config.data_dir, results)
    results.append(_check_disk(config.data_dir))
    master = _check_master_key(config, env, results)
    if master is not None and owner_ok:
        await trio.to_thread.run_sync(_check_database, config.data_dir, master, results)
    elif master is None:
        results.append(
            Result(
                "WARN",
                "database",
                "not checked: it needs the master key",
                "fix the master key first",
            )
        )
    else:
        results.append(
            Result(
                "WARN",
                "database",
                "not opened: this user does not own the data directory, and opening it would "
                "leave -wal/-shm files the service cannot use",
                f"run the doctor as the service user: sudo -u {_owner(config.data_dir)} "
                "gateway doctor --config FILE",
            )
        )
    async with httpx.AsyncClient(timeout=15.0, follow_redirects=False) as http:
        for name in channels:
            results.append(await check_channel(config, name, http))
        for name in config.providers:
            results.append(await _check_provider(config, name, http))
    return results


# -- files and key ------------------------------------------------------------------------------


def _owner(path: Path) -> str:
    try:
        uid = path.stat().st_uid
    except OSError:
        return "OWNER"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _me() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _check_data_dir(data_dir: Path, results: list[Result]) -> bool:
    """Append the data dir check; True if this user owns it (or it does not exist yet)."""
    if not data_dir.exists():
        results.append(
            Result(
                "WARN",
                "data dir",
                f"{data_dir} does not exist yet",
                "run `gateway init --config FILE` (or start the gateway once) to create it",
            )
        )
        return True
    info = data_dir.stat()
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        results.append(
            Result(
                "FAIL",
                "data dir",
                f"{data_dir} belongs to {_owner(data_dir)}, not to {_me()} who runs this",
                f"run as the service user, or: chown -R {_me()} {data_dir}",
            )
        )
        return False
    if mode & 0o022:
        results.append(
            Result(
                "FAIL",
                "data dir",
                f"{data_dir} is writable by other users (mode {mode:04o})",
                f"chmod 700 {data_dir}",
            )
        )
    elif mode & 0o077:
        results.append(
            Result(
                "WARN",
                "data dir",
                f"{data_dir} is readable by other users (mode {mode:04o})",
                f"chmod 700 {data_dir}",
            )
        )
    else:
        results.append(Result("OK", "data dir", f"{data_dir} (mode {mode:04o}, owned by {_me()})"))
    return True


def _check_disk(data_dir: Path) -> Result:
    where = data_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    detail = f"{_size(free)} free on the file system of {where}"
    fix = "free space on that file system, or move data_dir; the gateway stops writing when it is full"
    if free < DISK_FAIL:
        return Result("FAIL", "disk", detail, fix)
    if free < DISK_WARN:
        return Result("WARN", "disk", detail, fix)
    return Result("OK", "disk", detail)


def _size(n: int) -> str:
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / MiB:.0f} MiB" if n >= MiB else f"{n / 1024:.0f} KiB"


def _check_master_key(
    config: GatewayConfig, env: Mapping[str, str], results: list[Result]
) -> MasterKey | None:
    data_dir = config.data_dir
    key_file = data_dir / KEY_FILE
    try:
        master = load_master_key(
            data_dir, reference=config.gateway.master_key, environ=env, create=False
        )
    except MasterKeyError as exc:
        message = str(exc)
        if "readable by other users" in message:
            fix = f"chmod 600 {key_file}"
        elif "no master key was found" in message:
            fix = (
                "give the doctor the key the service gets: under systemd, run it with the same "
                "credential (systemd-run --pty -p LoadCredentialEncrypted=gateway-master-key:"
                "/etc/credstore.encrypted/gateway-master-key gateway doctor ...) or set "
                "GATEWAY_MASTER_KEY; a new key cannot open an existing database"
            )
        elif "gateway init" in message:
            fix = "run `gateway init --config FILE` to create the key and the database"
        else:
            fix = "point [gateway] master_key (or the credential, GATEWAY_MASTER_KEY) at the key"
        results.append(Result("FAIL", "master key", message, fix))
        return None
    results.append(Result("OK", "master key", f"found: {master.source}"))
    if key_file.exists():
        results.append(_check_key_file(key_file, master))
    return master


def _check_key_file(key_file: Path, master: MasterKey) -> Result:
    info = key_file.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077 or info.st_uid != os.geteuid():
        return Result(
            "FAIL",
            "key file",
            f"{key_file} has mode {mode:04o}, owner {_owner(key_file)}",
            f"chown {_me()} {key_file} && chmod 600 {key_file}",
        )
    if not master.source.startswith("key file"):
        return Result(
            "WARN",
            "key file",
            f"{key_file} lies next to the database but the key in use comes from {master.source}",
            f"if {key_file} is a leftover, back it up elsewhere and shred -u it: keep one key "
            "source, so nobody restores from or rotates the wrong one",
        )
    return Result("OK", "key file", f"{key_file} (mode {mode:04o}, owned by {_me()})")


# -- database ----------------------------------------------------------------------------------


def _check_database(data_dir: Path, master: MasterKey, results: list[Result]) -> None:
    from gateway.store.db import connect
    from gateway.store.migrations import migrations

    path = data_dir / DATABASE_FILE
    if not path.exists():
        results.append(
            Result(
                "WARN",
                "database",
                f"{path} does not exist yet",
                "run `gateway init --config FILE` (or start the gateway once) to create it",
            )
        )
        return
    try:
        db = connect(path, master.derive("sqlcipher"), readonly=True)
    except MasterKeyError:
        results.append(
            Result(
                "FAIL",
                "database",
                f"the master key ({master.source}) does not open {path}",
                "restore the key that encrypted this database (a new key cannot open it), "
                "or restore a backup made with this key",
            )
        )
        return
    except GatewayError as exc:
        results.append(Result("FAIL", "database", str(exc), f"check {path} and its permissions"))
        return
    try:
        conn = db.conn
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        cipher = [r[0] for r in conn.execute("PRAGMA cipher_integrity_check").fetchall()]
        known = {m.name for m in migrations._migrations}
        applied = [m.name for m in migrations.applied(db)]
        pending = [m.name for m in migrations.pending(db)]
        newest = _newest_record(conn)
    finally:
        db.conn.close()
    restore = "stop the gateway and restore the last good backup (`gateway restore`)"
    if problems != ["ok"]:
        results.append(
            Result("FAIL", "database", f"integrity_check: {'; '.join(problems[:3])}", restore)
        )
    elif cipher:
        results.append(
            Result("FAIL", "database", f"cipher_integrity_check: {'; '.join(cipher[:3])}", restore)
        )
    elif unknown := [n for n in applied if n not in known]:
        results.append(
            Result(
                "FAIL",
                "database",
                f"written by a newer gateway (unknown migrations: {', '.join(unknown)})",
                "upgrade the gateway to the version that wrote this database",
            )
        )
    elif pending:
        results.append(
            Result(
                "WARN",
                "database",
                f"opens, integrity ok; {len(pending)} migration(s) pending: {', '.join(pending)}",
                "they are applied at the next start; take a backup first",
            )
        )
    else:
        size = sum(p.stat().st_size for s in ("", "-wal") if (p := Path(f"{path}{s}")).exists())
        results.append(
            Result(
                "OK",
                "database",
                f"{path} opens with the key; integrity ok, cipher integrity ok, "
                f"schema current ({len(applied)} migrations), {_size(size)}",
            )
        )
    results.append(_check_clock(newest))


def _newest_record(conn: Any) -> dt.datetime | None:
    stamps = []
    for sql in (
        "SELECT max(created_at) FROM messages",
        "SELECT max(received_at) FROM journal",
        "SELECT max(updated_at) FROM outbox",
    ):
        value = conn.execute(sql).fetchone()[0]
        if value:
            try:
                stamp = dt.datetime.fromisoformat(value)
            except ValueError:
                continue
            stamps.append(stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC))
    return max(stamps, default=None)


def _check_clock(newest: dt.datetime | None) -> Result:
    now = dt.datetime.now(dt.UTC)
    if newest is None:
        return Result("OK", "clock", f"{now:%Y-%m-%d %H:%M:%S} UTC; no records yet to compare")
    ahead = (newest - now).total_seconds()
    if ahead > CLOCK_SLACK:
        return Result(
            "WARN",
            "clock",
            f"the system clock ({now:%Y-%m-%d %H:%M:%S} UTC) is {_duration(ahead)} behind the "
            f"newest record ({newest:%Y-%m-%d %H:%M:%S} UTC): it went backwards",
            "check time sync (`timedatectl status`, chrony/systemd-timesyncd); retention and "
            "request deadlines count from this clock",
        )
    return Result(
        "OK",
        "clock",
        f"{now:%Y-%m-%d %H:%M:%S} UTC; newest record {_duration(-ahead)} earlier",
    )


def _duration(seconds: float) -> str:
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


# -- plugins -----------------------------------------------------------------------------------


class DoctorChannelContext:
    """A ChannelContext for checks only: it accepts no messages and stores no state."""

    def __init__(self, name: str, http: httpx.AsyncClient, public_url: str | None) -> None:
        self.name = name
        self.http = http
        self.public_url = public_url
        self.log = logging.getLogger(f"gateway.channel.{name}")

    async def accept(self, inbound: Inbound) -> Accepted:
        raise PluginError("gateway doctor does not accept messages")

    async def accept_many(self, inbounds: Sequence[Inbound]) -> list[Accepted]:
        raise PluginError("gateway doctor does not accept messages")

    async def get_state(self, key: str) -> str | None:
        await trio.lowlevel.checkpoint()
        return None

    async def set_state(self, key: str, value: str) -> None:
        raise PluginError("gateway doctor does not store channel state")

    async def history(self, thread_key: str, *, limit: int = 50) -> list[HistoryItem]:
        await trio.lowlevel.checkpoint()
        return []

    async def update_delivery(
        self, external_id: str, status: str, *, at: object = None, detail: str | None = None
    ) -> bool:
        raise PluginError("gateway doctor does not record delivery statuses")

    async def record_event(self, event: Event) -> int:
        raise PluginError("gateway doctor does not record events")


async def check_channel(config: GatewayConfig, name: str, http: httpx.AsyncClient) -> Result:
    entry = config.channels[name]
    label = f"channel {name}"
    fix = (
        f"check [channels.{name}] in {config.source} (the token reference and api_base) and "
        "that this host reaches the platform"
    )
    try:
        plugin = entry.plugin.cls(
            name, entry.config, DoctorChannelContext(name, http, config.http.public_url)
        )
    except Exception as exc:
        return Result(
            "FAIL", label, f"{entry.plugin.name} plugin could not be created: {_text(exc)}", fix
        )
    return await _run_check(label, entry.plugin.name, plugin, CHANNEL_TIMEOUT, fix)


async def _check_provider(config: GatewayConfig, name: str, http: httpx.AsyncClient) -> Result:
    from gateway.app import ProviderContextImpl

    entry = config.providers[name]
    label = f"provider {name}"
    fix = (
        f"check [providers.{name}] in {config.source} (base_url, api_key, model) and that "
        "this host reaches the server"
    )
    context = ProviderContextImpl(
        name, http, str(config.config_dir), logging.getLogger(f"gateway.llm.{name}")
    )
    try:
        plugin = entry.plugin.cls(name, entry.config, context)
    except Exception as exc:
        return Result(
            "FAIL", label, f"{entry.plugin.name} plugin could not be created: {_text(exc)}", fix
        )
    return await _run_check(label, entry.plugin.name, plugin, PROVIDER_TIMEOUT, fix)


async def _run_check(label: str, kind: str, plugin: Any, limit: float, fix: str) -> Result:
    check: Callable[[], Awaitable[str]] | None = getattr(plugin, "check", None)
    try:
        if check is None:
            return Result("OK", label, f"{kind}: no remote check offered by this plugin")
        try:
            with trio.fail_after(limit):
                detail = await check()
        except UserWarning as warning:
            return Result("WARN", label, f"{kind}: {_text(warning)}", fix)
        except trio.TooSlowError:
            return Result("FAIL", label, f"{kind}: no answer within {limit:g} s", fix)
        except Exception as exc:
            return Result("FAIL", label, f"{kind}: {_text(exc)}", fix)
        return Result("OK", label, f"{kind}: {detail}")
    finally:
        aclose = getattr(plugin, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):
                try:
                    await aclose()
                except Exception:  # closing after a check must not hide its result
                    logging.getLogger("gateway.doctor").debug("closing %s failed", label)


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def run(path: str | None, registry: Registry, environ: Mapping[str, str] | None = None) -> int:
    """The CLI entry: print the report, return the exit status."""
    results = trio.run(lambda: diagnose(path, registry, environ=environ))
    print(render(results), flush=True)
    return exit_code(results)
