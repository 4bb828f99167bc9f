"""Channels, agents and providers made in the admin UI: kept in the database, merged with the
config file at every load.

The config file stays the sysadmin's: the gateway never writes it. What the admin UI adds lives
in the encrypted database (gateway.vault: ``managed_tables`` for the tables, ``vault`` for their
secrets) and :func:`gateway.config.load_config` merges it in, so ``gateway run``, a reload
(SIGHUP or a save in the UI) and ``gateway check-config`` all see the same config. A name may be
defined in one place only: the file or the UI (a clash is a config error naming both).

A secret typed into a form is stored in the vault as ``channels.NAME.FIELD`` and the table holds
the reference ``store:channels.NAME.FIELD``; the form never shows it again.

:func:`save` and :func:`remove` check the whole candidate config before writing anything, write
the table, its secrets and the audit entry in one transaction, then reload the daemon live; if
the reload refuses, the previous table is put back and the error raised.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils
from pydantic import BaseModel

from gateway import vault
from gateway.errors import ConfigError, GatewayError
from gateway.keys import DATABASE_FILE, load_master_key
from gateway.privacy import audit
from gateway.vault import KINDS, ManagedRow

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.reload import Changes
    from gateway.services import Services

__all__ = [
    "KINDS",
    "Conflict",
    "ManagedRow",
    "Overlay",
    "get",
    "is_managed",
    "read_overlay",
    "remove",
    "save",
    "secret_name",
]

log = logging.getLogger("gateway.config")
STORE_PREFIX = "store:"


class Conflict(GatewayError):
    """The table changed since the form was opened (someone else saved or removed it)."""


def secret_name(kind: str, name: str, field: str) -> str:
    return f"{kind}.{name}.{field}"


def where(data_dir: Path) -> str:
    """How a config error names a table that came from the database."""
    return f"admin UI (stored in {data_dir / DATABASE_FILE})"


@dataclasses.dataclass(frozen=True)
class Overlay:
    """What the database adds to the config file: tables by kind and name, and the vault."""

    tables: Mapping[str, Mapping[str, Mapping[str, Any]]] = dataclasses.field(default_factory=dict)
    secrets: Mapping[str, str] = dataclasses.field(default_factory=dict)
    readable: bool = True
    """False when the database could not be read: ``store:`` references are then checked
    for form only (``gateway check-config`` run without the master key)."""

    @classmethod
    def of(cls, rows: list[ManagedRow], secrets: Mapping[str, str]) -> Overlay:
        tables: dict[str, dict[str, Mapping[str, Any]]] = {kind: {} for kind in KINDS}
        for row in rows:
            tables[row.kind][row.name] = row.table
        return cls(tables, dict(secrets))

    def replace(
        self, kind: str, name: str, table: Mapping[str, Any] | None, secrets: Mapping[str, str]
    ) -> Overlay:
        """This overlay with one table put (or removed, ``table=None``) and secrets added."""
        tables = {k: dict(v) for k, v in self.tables.items()}
        kind_tables = tables.setdefault(kind, {})
        if table is None:
            kind_tables.pop(name, None)
        else:
            kind_tables[name] = table
        return Overlay(tables, {**self.secrets, **secrets}, self.readable)


def read_overlay(
    data_dir: Path, master_key: str | None, environ: Mapping[str, str] | None
) -> Overlay:
    """The managed tables and opened secrets in ``data_dir``'s database (none without one)."""
    from gateway.store.db import connect

    path = data_dir / DATABASE_FILE
    if not path.exists():
        return Overlay()
    master = load_master_key(data_dir, reference=master_key, environ=environ, create=False)
    db = connect(path, master.derive("sqlcipher"), readonly=True)
    try:
        return Overlay.of(vault.managed_rows(db.conn), vault.read_secrets(db.conn))
    finally:
        db.conn.close()


def is_managed(config: GatewayConfig, kind: str, name: str) -> bool:
    """True for a table made in the admin UI, False for one from the config file."""
    return f"{kind}.{name}" in config.managed


async def get(services: Services, kind: str, name: str) -> ManagedRow | None:
    _check_kind(kind)
    return await services.store.read("managed table", _row_txn, kind, name)


def _row_txn(db: sqlite_utils.Database, kind: str, name: str) -> ManagedRow | None:
    return vault.managed_row(db.conn, kind, name)


def _overlay_txn(db: sqlite_utils.Database) -> Overlay:
    return Overlay.of(vault.managed_rows(db.conn), vault.read_secrets(db.conn))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


def _secret_refs(table: Mapping[str, Any]) -> dict[str, str]:
    return {
        key: value.removeprefix(STORE_PREFIX)
        for key, value in table.items()
        if isinstance(value, str) and value.startswith(STORE_PREFIX)
    }


async def save(
    services: Services,
    kind: str,
    name: str,
    table: dict[str, Any],
    secrets: Mapping[str, str],
    *,
    actor: str,
    expect_version: int | None,
    clear: Collection[str] = (),
) -> Changes:
    """Create or change a managed table (see the module doc). ``secrets`` are new plain values
    by field; a secret field in neither ``table`` nor ``secrets`` keeps its stored value, one
    named in ``clear`` loses it (an optional secret removed). ``expect_version`` is the version
    the form was opened at (None: the table is new).

    Paths (``Path`` fields: a FAQ file, a CA file, a knowledge folder) must lie inside the data
    directory or the config file's directory: an admin must not point the gateway at other files
    the service can read (a FAQ "knowledge" file of /etc/... would answer with it)."""
    _check_kind(kind)
    if not vault._NAME_RE.match(name) or "." in name:
        raise ConfigError(
            f"{name[:60]!r} is not a valid name",
            table=f"{kind}.{name[:60]}",
            fix="use letters, digits, '_' and '-' (no dots or spaces), e.g. support_bot",
        )
    config = services.config
    if f"{kind}.{name}" not in config.managed and name in _names(config, kind):
        raise ConfigError(
            f"{kind}.{name} is defined in the config file {config.source}",
            table=f"{kind}.{name}",
            fix="choose another name, or edit it in the file and reload",
        )
    current = await get(services, kind, name)
    _check_version(kind, name, current, expect_version)
    table = dict(table)
    if current is not None:
        for key, ref in _secret_refs(current.table).items():
            if key not in table and key not in secrets and key not in clear:
                table[key] = STORE_PREFIX + ref
    for key in clear:
        table.pop(key, None)
    new_secrets = {secret_name(kind, name, field): value for field, value in secrets.items()}
    for field in secrets:
        table[field] = STORE_PREFIX + secret_name(kind, name, field)
    stale = [
        ref
        for ref in _secret_refs(current.table if current else {}).values()
        if ref.startswith(f"{kind}.{name}.") and ref not in _secret_refs(table).values()
    ]
    overlay = await services.store.read("managed overlay", _overlay_txn)
    candidate = await _check(services, overlay.replace(kind, name, table, new_secrets))
    _check_paths(candidate, kind, name, table)
    detail = {"fields": sorted(table), "secrets_set": sorted(secrets), "cleared": sorted(clear)}
    await services.store.write(
        "managed save",
        _save_txn,
        kind,
        name,
        table,
        new_secrets,
        stale,
        actor,
        expect_version,
        detail,
    )
    try:
        return await _reload(services)
    except GatewayError:
        # Put the previous table and the secrets it named back, so the database matches what
        # runs (and what a restart would run).
        touched = [*new_secrets, *stale]
        previous = {n: overlay.secrets[n] for n in touched if n in overlay.secrets}
        await services.store.write(
            "managed restore", _restore_txn, kind, name, current, actor, touched, previous
        )
        raise


async def remove(
    services: Services, kind: str, name: str, *, actor: str, expect_version: int | None
) -> Changes:
    """Delete a managed table and its secrets, then reload (a channel stops; its
    conversations stay)."""
    _check_kind(kind)
    current = await get(services, kind, name)
    if current is None:
        raise Conflict(f"{kind}.{name} is not (or no longer) a table made in the admin UI")
    _check_version(kind, name, current, expect_version)
    overlay = await services.store.read("managed overlay", _overlay_txn)
    await _check(services, overlay.replace(kind, name, None, {}))
    await services.store.write("managed remove", _remove_txn, kind, name, current, actor)
    try:
        return await _reload(services)
    except GatewayError:
        owned = [r for r in _secret_refs(current.table).values() if r.startswith(f"{kind}.{name}.")]
        previous = {n: overlay.secrets[n] for n in owned if n in overlay.secrets}
        await services.store.write(
            "managed restore", _restore_txn, kind, name, current, actor, owned, previous
        )
        raise


def _check_paths(config: GatewayConfig, kind: str, name: str, table: Mapping[str, Any]) -> None:
    model: BaseModel
    if kind == "channels":
        model = config.channels[name].config
    elif kind == "providers":
        model = config.providers[name].config
    else:
        model = config.agents[name]
    allowed = [config.data_dir.resolve(), config.config_dir.resolve()]
    for key in table:
        value = getattr(model, key, None)
        if not isinstance(value, Path):
            continue
        path = (value if value.is_absolute() else config.config_dir / value).resolve()
        if not any(path.is_relative_to(root) for root in allowed):
            raise ConfigError(
                f"{path} is outside the gateway's folders",
                table=f"{kind}.{name}",
                key=key,
                fix=f"put the file in {allowed[0]} or {allowed[1]}, or set this in the config "
                "file (paths set in the admin UI stay inside those folders)",
            )


def _names(config: GatewayConfig, kind: str) -> Mapping[str, Any]:
    if kind == "channels":
        return config.channels
    return config.agents if kind == "agents" else config.providers


def _check_version(
    kind: str, name: str, current: ManagedRow | None, expect_version: int | None
) -> None:
    found = None if current is None else current.version
    if found == expect_version:
        return
    if current is None:
        raise Conflict(f"{kind}.{name} was removed since you opened it")
    if expect_version is None:
        raise Conflict(f"{kind}.{name} already exists (saved by {current.updated_by})")
    raise Conflict(
        f"{kind}.{name} was changed since you opened it (by {current.updated_by} at "
        f"{current.updated_at}); open it again to see the changes"
    )


async def _check(services: Services, overlay: Overlay) -> GatewayConfig:
    if services.check_config is None:
        raise GatewayError("this gateway cannot change its config live (no config loader)")
    return await services.check_config(overlay)


async def _reload(services: Services) -> Changes:
    if services.reload is None:
        raise GatewayError("this gateway cannot change its config live (no reloader)")
    return await services.reload()


def _save_txn(
    db: sqlite_utils.Database,
    kind: str,
    name: str,
    table: dict[str, Any],
    secrets: Mapping[str, str],
    stale: list[str],
    actor: str,
    expect_version: int | None,
    detail: dict[str, Any],
) -> int:
    # Checked again inside the write: two saves that both read the same version cannot both win.
    _check_version(kind, name, vault.managed_row(db.conn, kind, name), expect_version)
    for secret, value in secrets.items():
        vault.put_secret_txn(db, secret, value, actor=actor)
    vault.delete_secrets_txn(db, stale)
    version = vault.put_row_txn(db, kind, name, table, actor=actor)
    action = "config.create" if expect_version is None else "config.update"
    audit.append_txn(
        db,
        actor=actor,
        action=action,
        target=f"{kind}:{name}",
        detail={**detail, "version": version},
    )
    return version


def _remove_txn(
    db: sqlite_utils.Database, kind: str, name: str, current: ManagedRow, actor: str
) -> None:
    _check_version(kind, name, vault.managed_row(db.conn, kind, name), current.version)
    vault.delete_row_txn(db, kind, name)
    owned = [r for r in _secret_refs(current.table).values() if r.startswith(f"{kind}.{name}.")]
    vault.delete_secrets_txn(db, owned)
    audit.append_txn(
        db,
        actor=actor,
        action="config.remove",
        target=f"{kind}:{name}",
        detail={"version": current.version, "secrets_deleted": len(owned)},
    )


def _restore_txn(
    db: sqlite_utils.Database,
    kind: str,
    name: str,
    previous: ManagedRow | None,
    actor: str,
    touched: list[str],
    secrets: Mapping[str, str],
) -> None:
    vault.delete_secrets_txn(db, [n for n in touched if n not in secrets])
    for secret, value in secrets.items():
        vault.put_secret_txn(db, secret, value, actor=actor)
    if previous is None:
        vault.delete_row_txn(db, kind, name)
    else:
        vault.put_row_txn(db, kind, name, dict(previous.table), actor=actor)
    audit.append_txn(
        db,
        actor=actor,
        action="config.revert",
        target=f"{kind}:{name}",
        outcome="failed",
        detail={"reason": "the live reload refused the change"},
    )
