"""``gateway conversations``: list conversations, hand them to people and back, switch AI off.

Works beside a running daemon: SQLite's write lock (busy_timeout) orders its one small write
with the daemon's writer. Prints no message content: this is an operator's switchboard.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.cli_db import open_database, store_sealer
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.privacy.sealing import Sealer
from gateway.store.bodies import conversation_messages
from gateway.store.journal import conversations_txn, set_contact_ai_txn, set_conversation_txn
from gateway.store.records import attachments_txn, events_txn

ACTIONS = {
    "show": "print a conversation's messages with their analysis and suggested replies",
    "handoff": "hand the conversation to people (the AI stays silent)",
    "release": "give the conversation back to the AI",
    "close": "close the conversation",
    "ai-off": "switch AI off for the conversation (or --contact)",
    "ai-on": "switch AI back on for the conversation (or --contact)",
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("conversations", help="list conversations; hand off, release, AI on/off")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    p.add_argument("action", nargs="?", default="list", choices=["list", *ACTIONS])
    p.add_argument("id", nargs="?", type=int, help="conversation id (contact id with --contact)")
    p.add_argument("--contact", action="store_true", help="ai-off/ai-on apply to the contact")
    p.add_argument("--status", choices=["open", "handoff", "closed"], help="list only these")
    p.add_argument("--reason", help="why (kept in the conversation's events)")


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    with open_database(config) as db:
        if args.action == "list":
            rows = conversations_txn(db, args.status)
            print(
                f"{'id':>6}  {'channel':<14} {'status':<8} {'ai':<4} {'contact':>7} {'msgs':>5}  last message"
            )
            for r in rows:
                ai = (
                    "on"
                    if r["ai_enabled"] and r["contact_ai_enabled"] and not r["restricted"]
                    else "off"
                )
                print(
                    f"{r['id']:>6}  {r['channel']:<14} {r['status']:<8} {ai:<4} "
                    f"{r['contact_id']:>7} {r['messages']:>5}  {r['last_message_at']}"
                )
            return 0
        if args.id is None:
            raise GatewayError(f"`gateway conversations {args.action}` needs an id")
        if args.action == "show":
            return _show(db, store_sealer(db, config), args.id)
        with db.conn:
            if args.contact:
                if args.action not in ("ai-off", "ai-on"):
                    raise GatewayError("--contact goes with ai-off or ai-on")
                found = set_contact_ai_txn(db, args.id, args.action == "ai-on")
            else:
                found = set_conversation_txn(
                    db, args.id, kind=args.action.replace("-", "_"), actor="cli", reason=args.reason
                )
        if not found:
            raise GatewayError(
                f"no {'contact' if args.contact else 'conversation'} with id {args.id}"
            )
        print(f"{'contact' if args.contact else 'conversation'} {args.id}: {args.action} done")
        return 0


def _show(db: Any, sealer: Sealer, conversation_id: int) -> int:
    """The conversation as a person taking it over reads it: who said what, the analysis of
    each message, and the replies suggested for the newest one."""
    head = db.conn.execute(
        "SELECT channel, status, ai_enabled FROM conversations WHERE id = ?", (conversation_id,)
    ).fetchone()
    if head is None:
        raise GatewayError(f"no conversation with id {conversation_id}")
    print(
        f"conversation {conversation_id} on {head[0]}: {head[1]}, AI {'on' if head[2] else 'off'}"
    )
    suggestions: list[str] = []
    before: int | None = None
    pages = []
    while page := conversation_messages(sealer, db.conn, conversation_id, before_id=before):
        pages.append(page)
        before = page[0].id
    for m in (m for page in reversed(pages) for m in page):
        analysis, suggested = m.analysis, m.suggestions
        who = "user" if m.direction == "in" else m.author
        print(f"[{m.created_at[:19]}] {who}: {m.text}")
        if analysis:
            a = json.loads(analysis)
            print(
                f"    intent={a['intent']} category={a['category']} sentiment={a['sentiment']} "
                f"urgency={a['urgency']}" + (" wants a person" if a["wants_human"] else "")
            )
        if suggested:
            suggestions = json.loads(suggested)
    if suggestions:
        print("suggested replies:")
        for n, reply in enumerate(suggestions, 1):
            print(f"  {n}. {reply}")
    files = attachments_txn(db, conversation_id)
    if files:
        print("attachments:")
        for f in files:
            size = f"{f.size} bytes" if f.size is not None else "not downloaded"
            print(
                f"  #{f.id} {f.kind} {f.mime_type or ''} {f.filename or ''} ({size}, {f.state}, "
                f"retention category {f.category})"
            )
    events = events_txn(db, conversation_id)
    if events:
        print("events:")
        for e in events:
            detail = " ".join(f"{k}={v}" for k, v in sorted(e["detail"].items()))
            reason = f": {e['reason']}" if e["reason"] else ""
            print(f"  [{e['at'][:19]}] {e['kind']} by {e['actor']}{reason} {detail}".rstrip())
    return 0
