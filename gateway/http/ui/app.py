"""The admin UI's blueprint, its navigation, the sections other features add, and its jobs.

Mounted on the admin bind by :mod:`gateway.http.mounts` (``blueprints(services)``), rebuilt with
every admin app (start-up and each live reload): all state lives in the database and in
``services``. Pages: sign-in (password, TOTP or recovery code, enrolment), inbox and
conversations, users, channels, agents and providers (added, edited and removed through forms
generated from their config models: gateway.http.ui.config_views), audit log.

A feature adds pages with a :class:`Section` (the privacy desk)::

    desk = Section(build_desk_blueprint, nav=(("Privacy", "privacy.requests", "privacy.view"),))
    blueprints(services, sections=[desk])

Its views use the same gate and helpers: ``@require("privacy.view")`` (permissions are in
:data:`gateway.http.ui.security.PERMISSIONS`), ``current()`` for the signed-in session,
``audit.append_txn`` in their write jobs; templates ``{% extends "ui/layout.html" %}`` and put
``<input type="hidden" name="csrf" value="{{ ui.csrf() }}">`` in every POST form (a request
without the token is refused for the whole admin app). Responses get the UI's security headers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import quart
from quart import Blueprint, g
from werkzeug.exceptions import RequestEntityTooLarge

from gateway.errors import StoreError
from gateway.http.ui import (
    auth_views,
    config_views,
    inbox_views,
    live,
    security,
    sessions,
    setup_views,
    users_views,
)
from gateway.http.ui.settings import ui_config
from gateway.services import Services
from gateway.store import search

log = logging.getLogger("gateway.admin_ui")

MAX_FORM_BYTES = 1 << 20

NavEntry = tuple[str, str, str]
"""(label, endpoint, permission)"""

NAV: tuple[NavEntry, ...] = (
    ("Inbox", "ui.inbox", "inbox.view"),
    ("Users", "ui.users_page", "users.view"),
    ("Channels", "ui.channels", "channels.view"),
    ("Agents", "ui.agents", "agents.view"),
)


@dataclasses.dataclass(frozen=True)
class Section:
    """Pages another feature adds to the admin UI: a blueprint factory (called for each admin
    app built, like this module's) and its navigation entries (shown to roles that have the
    permission)."""

    blueprint: Callable[[Services], Blueprint]
    nav: tuple[NavEntry, ...] = ()


def blueprints(services: Services, sections: Sequence[Section] = ()) -> list[Blueprint]:
    bp = Blueprint(
        "ui",
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/ui/static",
    )
    nav = [*NAV, *(entry for section in sections for entry in section.nav)]
    ui = security.UIState(services, services.master.derive("admin-ui"), nav)

    def attach(setup: Any) -> None:
        setup.app.extensions["gateway_ui"] = ui
        setup.app.config["MAX_CONTENT_LENGTH"] = MAX_FORM_BYTES

    bp.record_once(attach)
    bp.before_app_request(security.load_session)
    bp.before_app_request(security.check_csrf)
    bp.after_app_request(security.touch_session)
    bp.after_app_request(security.security_headers)
    bp.app_context_processor(_context)
    bp.app_errorhandler(security.CsrfRefused)(_csrf_refused)
    bp.app_errorhandler(StoreError)(_store_unavailable)
    bp.app_errorhandler(RequestEntityTooLarge)(_too_large)
    for module in (auth_views, inbox_views, live, users_views, setup_views, config_views):
        module.register(bp)
    return [bp, *(section.blueprint(services) for section in sections)]


class _Helpers:
    """``ui`` in templates."""

    @property
    def session(self) -> sessions.Session | None:
        session: sessions.Session | None = g.get("session")
        return session if session is not None and session.stage == "active" else None

    def csrf(self) -> str:
        return security.csrf_token()

    def nav(self) -> list[tuple[str, str]]:
        session = self.session
        if session is None:
            return []
        return [
            (label, quart.url_for(endpoint))
            for label, endpoint, permission in security.state().nav
            if security.allowed(session.role, permission)
        ]

    def can(self, permission: str) -> bool:
        session = self.session
        return session is not None and security.allowed(session.role, permission)


async def _context() -> dict[str, Any]:
    return {"ui": _Helpers()}


async def _csrf_refused(exc: security.CsrfRefused) -> quart.Response:
    session: sessions.Session | None = g.get("session")
    if session is not None:
        await security.audit_event(
            "csrf.refused",
            target=quart.request.path[:200],
            outcome="denied",
            detail={"method": quart.request.method},
        )
    return await security.error_page(
        "This form expired or came from another site. Reload the page and try again.",
        403,
        "Form expired",
    )


async def _too_large(exc: RequestEntityTooLarge) -> quart.Response:
    return await security.error_page(
        f"That was more than the {MAX_FORM_BYTES // (1 << 20)} MiB a form may send here (a "
        "knowledge file, a CSV import). Nothing was changed; split it into smaller files.",
        413,
        "Too large",
    )


async def _store_unavailable(exc: StoreError) -> quart.Response:
    """The database refused (disk full, locked by a maintenance command): 503, nothing lost."""
    log.warning("admin UI: %s %s failed: %s", quart.request.method, quart.request.path, exc)
    return await security.error_page(
        f"The database could not do this just now ({exc}). Nothing was changed; "
        "try again in a moment.",
        503,
        "Try again",
        headers={"Retry-After": "5"},
    )


# -- jobs (gateway.features.install) -------------------------------------------------------------


async def expire_sessions(services: Services) -> int:
    settings = ui_config(services.config)
    removed: int = await services.store.write(
        "expire admin sessions",
        sessions.expire_sessions_txn,
        dt.timedelta(minutes=settings.session_idle_minutes),
        dt.timedelta(hours=settings.session_max_hours),
    )
    return removed


async def prune_search(services: Services) -> int:
    return await search.SearchIndex.for_services(services).prune(services.store)


def install(services: Services) -> None:
    """The search indexer, expired-session removal and the daily search-index prune."""
    scheduler = services.scheduler
    interval = ui_config(services.config).search_index_seconds
    scheduler.every(
        "search index", interval, functools.partial(search.index_job, services), first_after=1.0
    )
    scheduler.every("admin sessions", 3600.0, functools.partial(expire_sessions, services))
    scheduler.every("search prune", 24 * 3600.0, functools.partial(prune_search, services))
