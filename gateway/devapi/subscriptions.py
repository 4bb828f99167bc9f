"""End users' subscriptions to developer projects: added by ``/start <project>`` in a chat,
removed by ``/unsubscribe`` (gateway.devapi.chat), read by the API.

A subscription belongs to a channel identity (the person on one platform) and remembers the
thread they subscribed from: notifications go there. It is deleted with the identity (erasure)
and outlives the conversation's history (retention keeps consent records longer than chats).
"""

from __future__ import annotations

import dataclasses
import sqlite3

import sqlite_utils

from gateway.devapi.keys import project_by_name
from gateway.devapi.schema import now, public_id
from gateway.privacy import audit
from gateway.store.records import consent_state, record_consent


@dataclasses.dataclass(frozen=True)
class Subscription:
    id: int
    public_id: str
    project_id: int
    identity_id: int
    channel: str
    account: str
    thread_key: str
    external_id: str
    """The platform's id of the person (a Telegram user id...)."""
    subscribed_at: str


@dataclasses.dataclass(frozen=True)
class Subscribed:
    """What ``/start <project>`` did."""

    project: str
    title: str
    new: bool
    """False: they were subscribed already (the thread is updated to this one)."""
    consent_regained: bool
    """They had opted out (STOP) and subscribing gave their consent back."""


@dataclasses.dataclass(frozen=True)
class ProjectChoice:
    project_id: int
    name: str
    title: str


_COLUMNS = (
    "s.id, s.public_id, s.project_id, s.identity_id, s.channel, s.account, s.thread_key, "
    "i.external_id, s.subscribed_at"
)


def subscribe_txn(
    db: sqlite_utils.Database,
    project_name: str,
    *,
    identity_id: int,
    contact_id: int,
    channel: str,
    account: str,
    thread_key: str,
    journal_id: int,
    message_id: int,
) -> Subscribed | None:
    """Subscribe the identity to a project; None if there is no such project. Run again for
    the same ``journal_id`` (a crash before the reply committed), it answers the same."""
    conn = db.conn
    project = project_by_name(conn, project_name)
    if project is None:
        return None
    row = conn.execute(
        "SELECT id, journal_id FROM api_subscriptions WHERE project_id = ? AND identity_id = ?",
        (project.id, identity_id),
    ).fetchone()
    if row is None:
        sub_public = public_id("sub")
        conn.execute(
            "INSERT INTO api_subscriptions (public_id, project_id, identity_id, channel, account, "
            "thread_key, journal_id, subscribed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (sub_public, project.id, identity_id, channel, account, thread_key, journal_id, now()),
        )
        audit.append_txn(
            db,
            actor=f"contact:{contact_id}",
            action="api.subscribe",
            target=f"project:{project.name}",
            detail={"subscription": sub_public, "channel": channel},
        )
        new = True
    else:
        new = row[1] == journal_id
        conn.execute(
            "UPDATE api_subscriptions SET channel = ?, account = ?, thread_key = ? WHERE id = ?",
            (channel, account, thread_key, row[0]),
        )
    marker = f"message:{message_id}"
    if consent_state(conn, identity_id) == "withdrawn":
        # Asking for a project's messages is asking for messages again (as START is).
        record_consent(conn, identity_id, "granted", f"subscribe:{project.name}", detail=marker)
    regained = conn.execute(
        "SELECT 1 FROM consents WHERE identity_id = ? AND detail = ? AND state = 'granted'",
        (identity_id, marker),
    ).fetchone()
    return Subscribed(project.name, project.title, new, regained is not None)


def projects_of_identity(conn: sqlite3.Connection, identity_id: int) -> list[ProjectChoice]:
    rows = conn.execute(
        "SELECT p.id, p.name, p.title FROM api_subscriptions s "
        "JOIN api_projects p ON p.id = s.project_id WHERE s.identity_id = ? ORDER BY p.title, p.id",
        (identity_id,),
    ).fetchall()
    return [ProjectChoice(*r) for r in rows]


def unsubscribe_txn(
    db: sqlite_utils.Database, identity_id: int, project_id: int, *, actor: str
) -> bool:
    """Remove the identity from the project's subscribers at once. False if it was not one."""
    conn = db.conn
    row = conn.execute(
        "SELECT s.public_id, p.name FROM api_subscriptions s JOIN api_projects p "
        "ON p.id = s.project_id WHERE s.identity_id = ? AND s.project_id = ?",
        (identity_id, project_id),
    ).fetchone()
    if row is None:
        return False
    conn.execute(
        "DELETE FROM api_subscriptions WHERE identity_id = ? AND project_id = ?",
        (identity_id, project_id),
    )
    audit.append_txn(
        db,
        actor=actor,
        action="api.unsubscribe",
        target=f"project:{row[1]}",
        detail={"subscription": row[0]},
    )
    return True


def subscribers_page_txn(
    db: sqlite_utils.Database, project_id: int, after: int, limit: int
) -> list[Subscription]:
    rows = db.conn.execute(
        f"SELECT {_COLUMNS} FROM api_subscriptions s JOIN identities i ON i.id = s.identity_id "
        "WHERE s.project_id = ? AND s.id > ? ORDER BY s.id LIMIT ?",
        (project_id, after, limit),
    ).fetchall()
    return [Subscription(*r) for r in rows]


def find_subscription_txn(
    db: sqlite_utils.Database,
    project_id: int,
    subscriber: str | None,
    channel: str | None,
    external_id: str | None,
) -> Subscription | None:
    """By the API's subscriber id, or by channel + the platform's id of the person."""
    params: tuple[str, ...]
    if subscriber is not None:
        where, params = "s.public_id = ?", (subscriber,)
    else:
        where, params = "s.channel = ? AND i.external_id = ?", (channel or "", external_id or "")
    row = db.conn.execute(
        f"SELECT {_COLUMNS} FROM api_subscriptions s JOIN identities i ON i.id = s.identity_id "
        f"WHERE s.project_id = ? AND {where}",
        (project_id, *params),
    ).fetchone()
    return Subscription(*row) if row else None


def redact(external_id: str) -> str:
    """A platform id shown to a key without the external_ids scope: its last two characters."""
    return "***" + external_id[-2:] if len(external_id) > 4 else "***"
