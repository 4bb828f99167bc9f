"""Live updates by server-sent events: ``GET /live`` sends ``event: change`` whenever a message,
a conversation event (handoff, close, assignment...) or a delivery attempt was stored.

The stream polls three ``max(id)`` values (primary keys: constant time) every
``[admin_ui] live_poll_seconds``, so nothing in the core has to know about it; pages then fetch
the fragment they show (``/inbox/rows``, ``/conversations/N/messages``). A stream is not
activity (it does not keep the session alive), ends as soon as its session does (sign-out,
timeout, deactivation) and after :data:`MAX_STREAM_SECONDS` anyway (the browser reconnects).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import quart
import sqlite_utils
import trio
from quart import Blueprint, g

from gateway.http.ui import sessions
from gateway.http.ui.security import current, require, state

MAX_STREAM_SECONDS = 300.0

Marks = tuple[int, int, int]


def marks_txn(db: sqlite_utils.Database, id_hash: str) -> tuple[Marks, sessions.Session | None]:
    """The newest message, event and delivery ids, and the session (one read per poll)."""
    row = db.conn.execute(
        "SELECT (SELECT coalesce(max(id), 0) FROM messages), "
        "(SELECT coalesce(max(id), 0) FROM conversation_events), "
        "(SELECT coalesce(max(id), 0) FROM deliveries)"
    ).fetchone()
    return (int(row[0]), int(row[1]), int(row[2])), sessions.load_session_txn(db, id_hash)


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def register(bp: Blueprint) -> None:
    @bp.get("/live")
    async def live() -> Any:
        g.passive = True  # watching is not activity
        return await _live()

    @require("inbox.view")
    async def _live() -> Any:
        ui = state()
        store = ui.services.store
        id_hash = current().id_hash
        settings = ui.settings
        poll = settings.live_poll_seconds
        idle = dt.timedelta(minutes=settings.session_idle_minutes)
        absolute = dt.timedelta(hours=settings.session_max_hours)

        def signed_in(session: sessions.Session | None) -> bool:
            return (
                session is not None
                and session.stage == "active"
                and not session.deactivated
                and not session.expired(sessions.utcnow(), idle, absolute)
            )

        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 3000\n\n"
            last, _session = await store.read("live marks", marks_txn, id_hash)
            yield _frame("ready", {"messages": last[0]})
            started = trio.current_time()
            while trio.current_time() - started < MAX_STREAM_SECONDS:
                await trio.sleep(poll)
                marks, session = await store.read("live marks", marks_txn, id_hash)
                if not signed_in(session):
                    # Signed out, timed out or deactivated: the page reloads to the sign-in.
                    yield _frame("signout", {})
                    return
                if marks != last:
                    last = marks
                    yield _frame("change", {"messages": marks[0], "events": marks[1]})

        response = quart.Response(stream(), content_type="text/event-stream")
        response.timeout = None  # Quart's response timeout would cut the stream
        response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
        return response
