"""Users page (owner and admin): invite, change role, reset two-factor, deactivate.

Only an owner may make someone an owner or change an owner; nobody changes their own role or
deactivates themselves here (the CLI can, with access to the server). Every change signs the
user out everywhere and is audited (``user.invite``, ``user.role``, ``user.reset_2fa``,
``user.deactivate``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections.abc import Callable
from typing import Any

import quart
import sqlite_utils
from quart import Blueprint, request

from gateway import users
from gateway.http.ui import security, sessions
from gateway.http.ui.security import current, require, state
from gateway.privacy import audit


@dataclasses.dataclass(frozen=True)
class Listed:
    user: users.User
    locked: bool
    invited: bool


def users_txn(db: sqlite_utils.Database) -> list[Listed]:
    now = sessions.iso(sessions.utcnow())
    extra = {
        r[0]: (bool(r[1] and r[1] > now), bool(r[2]))
        for r in db.conn.execute(
            "SELECT id, locked_until, EXISTS (SELECT 1 FROM admin_invites i WHERE i.user_id = "
            "users.id AND i.used_at IS NULL) FROM users"
        )
    }
    return [Listed(u, *extra.get(u.id, (False, False))) for u in users.list_users(db.conn)]


def target_txn(db: sqlite_utils.Database, user_id: int) -> tuple[str, str] | None:
    row = db.conn.execute("SELECT email, role FROM users WHERE id = ?", (user_id,)).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def invite_txn(
    db: sqlite_utils.Database,
    actor: str,
    email: str,
    role: str,
    display_name: str | None,
    valid: dt.timedelta,
) -> tuple[str, str]:
    """Create the user with an unusable random password and a one-time set-password token.
    Returns (token, normalised email)."""
    created = users.add_user(
        db.conn,
        email,
        secrets.token_urlsafe(32),
        role,
        display_name=display_name,
        created_by=actor,
    )
    token = sessions.create_invite(db.conn, created.user_id, actor, valid)
    normalised = users.normalise_email(email)
    audit.append_txn(
        db, actor=actor, action="user.invite", target=f"user:{normalised}", detail={"role": role}
    )
    return token, normalised


def set_role_txn(db: sqlite_utils.Database, actor: str, user_id: int, role: str) -> None:
    conn = db.conn
    email, old = conn.execute("SELECT email, role FROM users WHERE id = ?", (user_id,)).fetchone()
    if old == "owner" and role != "owner":
        owners = conn.execute(
            "SELECT count(*) FROM users WHERE role = 'owner' AND deactivated_at IS NULL"
        ).fetchone()[0]
        if owners <= 1:
            raise users.UserError(f"{email} is the last owner: make someone else owner first")
    conn.execute("UPDATE users SET role = ? WHERE id = ?", (role, user_id))
    sessions.revoke_user_sessions(conn, user_id)
    audit.append_txn(
        db,
        actor=actor,
        action="user.role",
        target=f"user:{email}",
        detail={"from": old, "to": role},
    )


def reset_2fa_txn(db: sqlite_utils.Database, actor: str, user_id: int) -> None:
    email = db.conn.execute("SELECT email FROM users WHERE id = ?", (user_id,)).fetchone()[0]
    users.reset_totp(db.conn, email)
    sessions.revoke_user_sessions(db.conn, user_id)
    audit.append_txn(db, actor=actor, action="user.reset_2fa", target=f"user:{email}")


def deactivate_txn(db: sqlite_utils.Database, actor: str, user_id: int) -> None:
    email = db.conn.execute("SELECT email FROM users WHERE id = ?", (user_id,)).fetchone()[0]
    users.deactivate(db.conn, email)
    sessions.revoke_user_sessions(db.conn, user_id)
    db.conn.execute(
        "UPDATE conversations SET assignee_user_id = NULL WHERE assignee_user_id = ?", (user_id,)
    )
    audit.append_txn(db, actor=actor, action="user.deactivate", target=f"user:{email}")


async def _page(status: int = 200, **extra: Any) -> quart.Response:
    listed = await state().services.store.read("users", users_txn)
    session = current()
    body = await quart.render_template(
        "ui/users.html",
        listed=listed,
        roles=users.ROLES,
        me=session.user_id,
        may_owners=security.allowed(session.role, "users.manage_owners"),
        **{"invite_link": None, "invited": None, "error": None, **extra},
    )
    return quart.Response(body, status=status)


async def _target(user_id: int, new_role: str | None = None) -> tuple[str, str] | quart.Response:
    """The user a change is about, or the answer refusing it."""
    found = await state().services.store.read("user", target_txn, user_id)
    if found is None:
        return await _page(404, error=f"There is no user {user_id}.")
    session = current()
    if user_id == session.user_id:
        return await _page(400, error="You cannot change your own account here.")
    touches_owner = found[1] == "owner" or new_role == "owner"
    if touches_owner and not security.allowed(session.role, "users.manage_owners"):
        return await security.refuse("users.manage_owners", "Only an owner may change owners.")
    return found


async def _change(
    user_id: int, desc: str, txn: Callable[..., None], *args: Any, new_role: str | None = None
) -> Any:
    """Apply ``txn(db, actor, user_id, *args)`` to another user, if this user may."""
    found = await _target(user_id, new_role)
    if isinstance(found, quart.Response):
        return found
    try:
        await state().services.store.write(desc, txn, current().actor, user_id, *args)
    except users.UserError as exc:
        return await _page(400, error=str(exc))
    return quart.redirect(quart.url_for("ui.users_page"), 303)


def register(bp: Blueprint) -> None:
    @bp.get("/users")
    @require("users.view")
    async def users_page() -> Any:
        return await _page()

    @bp.post("/users/invite")
    @require("users.manage")
    async def invite_user() -> Any:
        form = await request.form
        role = form.get("role", "")
        if role not in users.ROLES:
            return await _page(400, error=f"Choose a role: {', '.join(users.ROLES)}.")
        session = current()
        if role == "owner" and not security.allowed(session.role, "users.manage_owners"):
            return await security.refuse("users.manage_owners", "Only an owner may invite owners.")
        ui = state()
        valid = dt.timedelta(hours=ui.settings.invite_hours)
        name = " ".join(form.get("display_name", "").split())[:100] or None
        try:
            token, email = await ui.services.store.write(
                "invite user",
                invite_txn,
                session.actor,
                form.get("email", "")[:320],
                role,
                name,
                valid,
            )
        except users.UserError as exc:
            return await _page(400, error=str(exc))
        link = request.host_url.rstrip("/") + quart.url_for("ui.invite", token=token)
        return await _page(invite_link=link, invited=email)

    @bp.post("/users/<int:user_id>/role")
    @require("users.manage")
    async def change_role(user_id: int) -> Any:
        role = (await request.form).get("role", "")
        if role not in users.ROLES:
            return await _page(400, error=f"Choose a role: {', '.join(users.ROLES)}.")
        return await _change(user_id, "user role", set_role_txn, role, new_role=role)

    @bp.post("/users/<int:user_id>/reset-2fa")
    @require("users.manage")
    async def reset_2fa(user_id: int) -> Any:
        return await _change(user_id, "user 2FA reset", reset_2fa_txn)

    @bp.post("/users/<int:user_id>/deactivate")
    @require("users.manage")
    async def deactivate(user_id: int) -> Any:
        return await _change(user_id, "user deactivate", deactivate_txn)
