"""Retention categories: what a sweep may delete or anonymise, and how.

A category names a kind of stored data (message content, attachments, the delivery log...),
the config key that says how many days it is kept (``[retention] <key>``, per channel in
``[retention.channels.NAME]``) and two things the sweep needs:

- ``rows``: how to find its expired rows. A :class:`Rows` is a FROM clause, the id column, the
  expiry condition (built from the :class:`Scope`: the cutoff time per channel) and, for data
  about a person, the contact and conversation columns the legal holds are matched on. The
  sweep pages through the ids on a reader (never blocking the writer), then hands each batch to
- ``apply(db, scope, ids)``: run on the writer, in one transaction per batch. The sweep has
  already re-checked the ids against the expiry condition and the holds *inside that
  transaction* (a conversation that came back to life or was put on hold since the read is
  skipped). It must make each id stop matching the condition (delete it, or mark it), and
  returns how many records it removed per subject (``"contact:12"``, ``"user:3"``, ``""``).

A feature registers its own category from its module, at import time::

    from gateway.privacy.retention_categories import Category, Rows, delete_rows, register_category

    register_category(Category(
        name="form_submissions_archive",
        key="form_submissions_archive_days",
        title="Form submissions (archive)",
        action="deleted",
        what="archived form submissions: every field",
        rows=Rows("form_submissions f", "f.id", lambda s: s.older("f.archived_at"),
                  contact="f.contact_id"),
        apply=delete_rows("form_submissions", subject="contact_id"),
    ))

and lists the module in :data:`FEATURE_MODULES` so that command-line sweeps import it too. The
key must be a field of ``RetentionSection`` (gateway.privacy.retention), so it is documented and
validated like the others; ``per_channel`` categories also need it in ``ChannelRetention``.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from gateway.privacy.sealing import Sealer

Subjects = collections.Counter[str]
"""Records removed per subject: ``"contact:<id>"``, ``"user:<id>"``, or ``""`` (no person)."""

FEATURE_MODULES: tuple[str, ...] = ("gateway.devapi.retention",)
"""Modules that register categories of their own (imported before every sweep)."""

NEVER = ""
"""A cutoff no time is older than: the category is off (days = 0, keep forever)."""


@dataclasses.dataclass(frozen=True)
class Scope:
    """What one sweep of one category works with."""

    now: str
    """The sweep's time (ISO 8601, UTC): rows are compared with cutoffs derived from it."""
    cutoff: str
    """Rows older than this expire (the global setting); :data:`NEVER` when it is off."""
    channel_cutoffs: Mapping[str, str]
    """Channels whose own setting differs from the global one: channel -> cutoff."""
    sealer: Sealer | None = None
    """Opens and destroys sealed data (contact erasure needs it)."""
    actor: str = "system"
    act_id: int | None = None
    basis: str = ""
    """Why it goes: the policy key and value and the legal basis (given to the eraser)."""

    def older(self, time_column: str, channel_column: str | None = None) -> tuple[str, list[Any]]:
        """SQL: ``time_column`` is older than the cutoff of the row's channel (or the global one)."""
        if channel_column is None or not self.channel_cutoffs:
            return f"{time_column} < ?", [self.cutoff]
        whens = " ".join("WHEN ? THEN ?" for _ in self.channel_cutoffs)
        params: list[Any] = []
        for channel, cutoff in sorted(self.channel_cutoffs.items()):
            params += [channel, cutoff]
        return f"{time_column} < CASE {channel_column} {whens} ELSE ? END", [*params, self.cutoff]

    @property
    def off(self) -> bool:
        """No row can expire (every setting is 0 days)."""
        return self.cutoff == NEVER and all(c == NEVER for c in self.channel_cutoffs.values())


ExpiryFn = Callable[[Scope], tuple[str, list[Any]]]
ApplyFn = Callable[[sqlite_utils.Database, Scope, Sequence[int]], Subjects]


@dataclasses.dataclass(frozen=True)
class Rows:
    """How to find a category's expired rows (see the module docstring)."""

    source: str
    """FROM clause, e.g. ``"messages m JOIN conversations c ON c.id = m.conversation_id"``."""
    id: str
    """The id column the sweep pages by, e.g. ``"m.id"`` (an INTEGER PRIMARY KEY)."""
    expired: ExpiryFn
    contact: str | None = None
    """Column holding the row's contact id (legal holds per contact)."""
    conversation: str | None = None
    """Column holding the row's conversation id (legal holds per conversation)."""

    def where(self, scope: Scope, *, held: bool | None = False) -> tuple[str, list[Any]]:
        """The expiry condition; ``held`` False: rows no hold covers, True: only held rows,
        None: both."""
        sql, params = self.expired(scope)
        hold = held_clause(self.contact, self.conversation)
        if hold and held is not None:
            sql = f"({sql}) AND {'' if held else 'NOT '}{hold}"
        return sql, params


def held_clause(contact: str | None, conversation: str | None) -> str:
    """SQL true when an active legal hold covers the row's contact or conversation."""
    terms = []
    if conversation:
        terms.append(f"h.conversation_id = {conversation}")
        if not contact:
            # A hold on the conversation's contact covers the conversation too.
            terms.append(
                f"h.contact_id = (SELECT hc.contact_id FROM conversations hc "
                f"WHERE hc.id = {conversation})"
            )
    if contact:
        terms.append(f"h.contact_id = {contact}")
        if not conversation:
            # A row about the whole contact (the contact itself): a hold on any of their
            # conversations holds it too.
            terms.append(
                f"h.conversation_id IN (SELECT hc.id FROM conversations hc "
                f"WHERE hc.contact_id = {contact})"
            )
    if not terms:
        return ""
    return (
        "EXISTS (SELECT 1 FROM legal_holds h WHERE h.released_at IS NULL AND ("
        + " OR ".join(terms)
        + "))"
    )


@dataclasses.dataclass(frozen=True)
class Category:
    name: str
    """Identifier used in acts, audit entries and ``--category`` (e.g. ``message_content``)."""
    key: str
    """The config key with its days (e.g. ``message_content_days``)."""
    title: str
    """For people (the act's table)."""
    action: str
    """What happens to an expired record: ``anonymised``, ``deleted``, ``erased``, ``archived``."""
    what: str
    """Which data goes, and how (the act's method column)."""
    rows: Rows
    apply: ApplyFn
    per_channel: bool = True
    """Whether ``[retention.channels.NAME]`` may override its days."""
    batch_share: int = 1
    """Divides the batch size: a record that is costly to remove (a whole contact) counts as
    this many rows."""
    available: Callable[[sqlite3.Connection], str | None] = lambda conn: None
    """Why the category cannot run on this database now (its table or eraser is missing), or
    None. It is then reported as skipped in the act, with that reason."""


_REGISTRY: dict[str, Category] = {}


def register_category(category: Category) -> Category:
    """Add a category (a feature calls this when its module is imported). A second category
    with the same name replaces the first (a module reloaded in tests)."""
    _REGISTRY[category.name] = category
    return category


def categories() -> dict[str, Category]:
    """Every category: the built-in ones and those of :data:`FEATURE_MODULES`, in sweep order."""
    from gateway.privacy import retention_builtin  # noqa: F401  (registers the built-ins)

    for module in FEATURE_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)


# Helpers for apply functions -------------------------------------------------------------------


def marks(ids: Sequence[int]) -> str:
    return ",".join("?" * len(ids))


def table_exists(conn: sqlite3.Connection, table: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return row is not None


def needs_table(table: str) -> Callable[[sqlite3.Connection], str | None]:
    def check(conn: sqlite3.Connection) -> str | None:
        return None if table_exists(conn, table) else f"there is no {table} table yet"

    return check


def delete_rows(table: str, *, subject: str | None = None, prefix: str = "contact") -> ApplyFn:
    """An apply function that deletes the rows; ``subject`` names the column counted per
    person (``contact_id`` gives ``contact:<id>``)."""

    def apply(db: sqlite_utils.Database, scope: Scope, ids: Sequence[int]) -> Subjects:
        conn = db.conn
        done: Subjects = collections.Counter()
        if subject:
            for who, n in conn.execute(
                f"SELECT {subject}, count(*) FROM {table} WHERE id IN ({marks(ids)}) "
                f"GROUP BY {subject}",
                list(ids),
            ):
                done[f"{prefix}:{who}" if who is not None else ""] += n
        else:
            done[""] = len(ids)
        conn.execute(f"DELETE FROM {table} WHERE id IN ({marks(ids)})", list(ids))
        return done

    return apply


def delete_attachments(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> Subjects:
    """Delete attachment rows matching ``where`` and their sealed files. The files go first,
    inside the transaction: were the commit to fail, the row would remain pointing at nothing
    (and be deleted by the next sweep) rather than a file outliving its record."""
    done: Subjects = collections.Counter()
    rows = conn.execute(
        f"SELECT id, contact_id, path FROM attachments WHERE {where}", list(params)
    ).fetchall()
    for _id, contact_id, path in rows:
        if path:
            unlink_quietly(Path(path))
        done[f"contact:{contact_id}"] += 1
    ids = [r[0] for r in rows]
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        conn.execute(f"DELETE FROM attachments WHERE id IN ({marks(chunk)})", chunk)
    return done


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # already gone: a previous sweep whose commit failed, or removed by hand
