"""Who may do what in the admin UI, decided in one place, and the request-level protections.

- :data:`PERMISSIONS`: the whole role table. :func:`require` is the only gate a view uses; a
  refusal is audited (``permission.denied``) and answered 403. A view that changes something
  audits its own action in the same transaction (gateway.privacy.audit).
- Sessions come from a cookie holding a random 256-bit id (``__Host-`` prefixed and Secure over
  HTTPS, HttpOnly, SameSite=Strict); :func:`load_session` runs before every request and applies
  the idle and absolute timeouts.
- CSRF: every POST carries a synchronizer token, an HMAC of the session id under a key derived
  from the master key (:func:`csrf_token`); before sign-in, of a random pre-session cookie.
- Headers on every admin response: CSP without inline script, frame-ancestors 'none', nosniff,
  no-referrer; ``Cache-Control: no-store`` on everything but the static files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import quart
from quart import current_app, g, request
from werkzeug.sansio.response import Response as AnyResponse

from gateway.http.ui import sessions
from gateway.http.ui.settings import AdminUIConfig, ui_config
from gateway.privacy import audit

if TYPE_CHECKING:
    import sqlite_utils

    from gateway.services import Services

log = logging.getLogger("gateway.admin_ui")

P = ParamSpec("P")
R = TypeVar("R")

ALL = frozenset({"owner", "admin", "agent", "auditor"})
STAFF = frozenset({"owner", "admin"})
DESK = frozenset({"owner", "admin", "auditor"})
ANSWER = frozenset({"owner", "admin", "agent"})

PERMISSIONS: dict[str, frozenset[str]] = {
    "inbox.view": ALL,  # auditors read conversations (redacted) without acting on them
    "conversation.reveal": ALL,  # with a reason; audited
    "conversation.reply": ANSWER,
    "conversation.manage": ANSWER,  # take over, hand back, close, assign
    "attachment.download": ALL,  # only while the contact is revealed; audited
    "users.view": STAFF,
    "users.manage": STAFF,
    "users.manage_owners": frozenset({"owner"}),  # make, change or remove an owner
    "channels.view": STAFF,
    "channels.test": STAFF,
    "agents.view": STAFF,
    # Add, edit and remove channels, providers and agents (gateway.http.ui.config_views): their
    # secrets go into the vault and a save changes what runs, so never the agent or auditor.
    "channels.edit": STAFF,
    "providers.edit": STAFF,
    "agents.edit": STAFF,
    "audit.view": DESK,
    "privacy.view": DESK,  # the privacy desk (data-subject requests, retention, transfers)
    "privacy.act": DESK,  # its actions (export, erase, restrict): each audited by the desk
    # Privacy desk and contacts (gateway.http.ui.privacy_app): the auditor role is the DPO, who
    # handles data-subject requests end to end, so it may act on them, erase included.
    "privacy.erase": DESK,  # carry out an erasure request (typed confirmation; audited)
    "contacts.view": DESK,  # contact list and pages, masked; CSV export (masked unless revealed)
    "contacts.reveal": DESK,  # show a contact's personal data, with a reason; audited
    "contacts.manage": DESK,  # consent grant/withdraw, AI on/off, legal holds, restriction
    "contacts.import": STAFF,  # CSV import: creates contacts and consent records in bulk
}

PRE_LOGIN_TTL = dt.timedelta(minutes=10)
"""How long a half-done sign-in (second factor or enrolment due) may wait."""


def allowed(role: str, permission: str) -> bool:
    if permission not in PERMISSIONS:
        raise KeyError(f"unknown permission {permission!r}: add it to PERMISSIONS")
    return role in PERMISSIONS[permission]


@dataclasses.dataclass
class UIState:
    """What the admin UI's views share, kept in ``app.extensions["gateway_ui"]``."""

    services: Services
    key: bytes
    """HMAC key for CSRF tokens (derived from the master key)."""
    nav: list[tuple[str, str, str]]
    """(label, endpoint, permission) of each page in the navigation, in order."""

    @property
    def settings(self) -> AdminUIConfig:
        return ui_config(self.services.config)


def state() -> UIState:
    ui: UIState = current_app.extensions["gateway_ui"]
    return ui


# -- client, transport, cookies -----------------------------------------------------------------


def _from_trusted_proxy(settings: AdminUIConfig) -> bool:
    remote = request.remote_addr or ""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address == ipaddress.ip_address(p) for p in settings.trusted_proxies)


def is_https() -> bool:
    settings = state().settings
    if settings.https or request.scheme == "https":
        return True
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https" and _from_trusted_proxy(settings)


def client_ip() -> str | None:
    settings = state().settings
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded and _from_trusted_proxy(settings):
        return forwarded.split(",")[0].strip()[:64]
    return request.remote_addr


def cookie_name(kind: str) -> str:
    """``__Host-sg-session`` over HTTPS (the prefix needs Secure); ``sg-session`` on plain HTTP
    (the default loopback bind, where browsers refuse Secure cookies)."""
    return f"__Host-sg-{kind}" if is_https() else f"sg-{kind}"


def set_cookie(response: AnyResponse, kind: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        cookie_name(kind),
        value,
        max_age=max_age,
        path="/",
        secure=is_https(),
        httponly=True,
        samesite="Strict",
    )


def clear_cookie(response: AnyResponse, kind: str) -> None:
    response.delete_cookie(
        cookie_name(kind), path="/", secure=is_https(), httponly=True, samesite="Strict"
    )


def session_cookie(response: AnyResponse, token: str) -> None:
    set_cookie(response, "session", token, None)  # a browser-session cookie; the server expires it


# -- sessions ----------------------------------------------------------------------------------


async def load_session() -> None:
    """Before each request: ``g.session`` is the live session or None (expired ones removed)."""
    g.session = None
    g.session_token = None
    token = request.cookies.get(cookie_name("session"))
    if not token or len(token) > 100:
        return
    ui = state()
    id_hash = sessions.token_hash(token)
    session = await ui.services.store.read("admin session", sessions.load_session_txn, id_hash)
    if session is None:
        return
    settings = ui.settings
    now = sessions.utcnow()
    idle = dt.timedelta(minutes=settings.session_idle_minutes)
    absolute = dt.timedelta(hours=settings.session_max_hours)
    stale = session.expired(now, idle, absolute) or (
        session.stage != "active" and now - session.created_at > PRE_LOGIN_TTL
    )
    if stale or session.deactivated:
        await ui.services.store.write("end admin session", sessions.delete_session_txn, id_hash)
        return
    g.session = session
    g.session_token = token


async def touch_session(response: quart.Response) -> quart.Response:
    """After a request: keep the session alive (idle timeout), at most once a minute. Live
    streams do not count as activity (an open tab must not keep a session alive)."""
    session: sessions.Session | None = g.get("session")
    if session is not None and not g.get("passive", False):
        if sessions.utcnow() - session.last_seen_at > sessions.TOUCH_EVERY:
            await state().services.store.write(
                "admin session seen", sessions.touch_session_txn, session.id_hash
            )
    return response


def current() -> sessions.Session:
    """The signed-in session of a view behind :func:`require`."""
    session: sessions.Session = g.session
    return session


# -- CSRF ---------------------------------------------------------------------------------------


def _mac(purpose: str, value: str) -> str:
    return hmac.new(state().key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()


def csrf_token() -> str:
    """The token forms of this page carry: bound to the session, or before sign-in to the
    pre-session cookie (``g.pre_token``, set by :func:`pre_session`)."""
    token = g.get("session_token")
    if token:
        return _mac("csrf", token)
    pre = g.get("pre_token") or request.cookies.get(cookie_name("pre"))
    return _mac("pre", pre) if pre else ""


def pre_session() -> str:
    """The pre-session value of this visitor (created if missing; the page's response sets it
    with :func:`keep_pre_session`)."""
    pre: str | None = g.get("pre_token") or request.cookies.get(cookie_name("pre"))
    if not pre or len(pre) > 100:
        pre = sessions.new_token()
        g.new_pre_token = pre
    g.pre_token = pre
    return pre


def keep_pre_session(response: quart.Response) -> quart.Response:
    if g.get("new_pre_token"):
        set_cookie(response, "pre", g.new_pre_token, 3600)
    return response


class CsrfRefused(Exception):
    pass


async def check_csrf() -> None:
    """Before each request: a state-changing request without the right token is refused."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    form = await request.form
    given = form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
    expected = csrf_token()
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfRefused("missing or wrong CSRF token")


# -- permissions --------------------------------------------------------------------------------


def audit_write_txn(
    db: sqlite_utils.Database,
    actor: str,
    action: str,
    target: str | None,
    outcome: str,
    detail: dict[str, Any] | None,
) -> None:
    audit.append_txn(db, actor=actor, action=action, target=target, outcome=outcome, detail=detail)


async def audit_event(
    action: str,
    *,
    target: str | None = None,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
    actor: str | None = None,
) -> None:
    """Audit something that is its own transaction (a refusal, a download)."""
    session: sessions.Session | None = g.get("session")
    who = actor or (session.actor if session else "anonymous")
    await state().services.store.write(
        "audit", audit_write_txn, who, action, target, outcome, detail
    )


async def refuse(permission: str, why: str | None = None) -> quart.Response:
    """403 for the signed-in user, audited as ``permission.denied``."""
    session = current()
    await audit_event(
        "permission.denied",
        target=permission,
        outcome="denied",
        detail={"method": request.method, "path": request.path, "role": session.role},
    )
    log.warning(
        "admin UI: %s (%s) refused %s %s", session.email, session.role, request.method, request.path
    )
    return await error_page(
        why or f"Your role ({session.role}) may not do this.", 403, "Not allowed"
    )


async def error_page(
    message: str, status: int = 400, title: str = "Not done", headers: dict[str, str] | None = None
) -> quart.Response:
    """A 4xx/5xx page that says what went wrong and what to do."""
    body = await quart.render_template("ui/error.html", title=title, status=status, message=message)
    return quart.Response(body, status=status, headers=headers)


def require(
    permission: str,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[Any]]]:
    """The gate of every signed-in view: no session → the sign-in page (401 for non-GET);
    a role without ``permission`` → 403, audited as ``permission.denied``."""
    if permission not in PERMISSIONS:
        raise KeyError(f"unknown permission {permission!r}: add it to PERMISSIONS")

    def decorate(view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[Any]]:
        @functools.wraps(view)
        async def gated(*args: P.args, **kwargs: P.kwargs) -> Any:
            session: sessions.Session | None = g.get("session")
            if session is None or session.stage != "active":
                if request.method == "GET" and not g.get("passive", False):
                    query = request.query_string.decode("ascii", "replace")
                    here = f"{request.path}?{query}" if query else request.path
                    return quart.redirect(quart.url_for("ui.login", next=here))
                return quart.Response("sign in first\n", status=401, content_type="text/plain")
            if not allowed(session.role, permission):
                return await refuse(permission)
            return await view(*args, **kwargs)

        return gated

    return decorate


# -- headers ------------------------------------------------------------------------------------

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


async def security_headers(response: quart.Response) -> quart.Response:
    for key, value in HEADERS.items():
        response.headers.setdefault(key, value)
    if request.path.startswith("/ui/static/"):
        response.headers["Cache-Control"] = "private, max-age=300"
    else:
        response.headers["Cache-Control"] = "no-store"
    if is_https():
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response
