"""What end users say to subscribe and unsubscribe, in any chat channel:

- ``/start acme`` (a deep link ``https://t.me/<bot>?start=acme``; Max maps its bot_started
  payload to the same text): subscribe to project "acme". Not a project: the message goes on
  to the agent as if no command. ``/start`` alone lists "My subscriptions" (if any).
- ``/unsubscribe`` on a channel with ``subscription_menu = true``: a short dialogue, kept in
  ``api_menus`` (one per conversation, ten minutes): the projects are listed, the user replies
  with a number or name, then YES; the identity leaves that project's subscribers at once.
  ``/unsubscribe acme`` goes straight to the confirmation. Any other reply ends the dialogue
  and goes on as a normal message (STOP still opts out of everything). On channels without
  the flag, /unsubscribe stays the global opt-out word of the consent ledger.

Every step is idempotent per journal entry: a re-run after a crash answers what it answered.
"""

from __future__ import annotations

import dataclasses
import json
import re

import sqlite_utils

from gateway.devapi.config import api_config
from gateway.devapi.schema import at, now
from gateway.devapi.state import state_of
from gateway.devapi.subscriptions import (
    ProjectChoice,
    projects_of_identity,
    subscribe_txn,
    unsubscribe_txn,
)
from gateway.pipeline.commands import CommandCall
from gateway.services import Services
from gateway.store.records import consent_changed_by_txn

MENU_SECONDS = 600
YES = {"yes", "y", "да", "д", "sí", "si", "sim", "ok", "confirm"}
NO = {"no", "n", "нет", "cancel", "/cancel", "отмена", "keep"}


def _listing(choices: list[ProjectChoice]) -> str:
    return "\n".join(f"{n}. {c.title}" for n, c in enumerate(choices, 1))


def _pick_text(choices: list[ProjectChoice]) -> str:
    return (
        f"Your subscriptions:\n{_listing(choices)}\n"
        "Reply with the number or name of the one to leave, or NO to keep them all."
    )


@dataclasses.dataclass(frozen=True)
class Step:
    reply: str | None
    """None: not ours; the message goes on to the keywords and the agent."""
    open: bool


def _save(
    db: sqlite_utils.Database,
    conversation_id: int,
    identity_id: int,
    stage: str,
    choices: list[ProjectChoice],
    project_id: int | None,
    journal_id: int,
    reply: str,
) -> Step:
    db.conn.execute(
        "INSERT INTO api_menus (conversation_id, identity_id, stage, choices, project_id, "
        "journal_id, reply, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (conversation_id) DO UPDATE SET identity_id = excluded.identity_id, "
        "stage = excluded.stage, choices = excluded.choices, project_id = excluded.project_id, "
        "journal_id = excluded.journal_id, reply = excluded.reply, "
        "expires_at = excluded.expires_at",
        (
            conversation_id,
            identity_id,
            stage,
            json.dumps([c.project_id for c in choices]),
            project_id,
            journal_id,
            reply,
            at(MENU_SECONDS),
        ),
    )
    return Step(reply, stage != "done")


def _confirm(
    db: sqlite_utils.Database,
    call: CommandCall,
    identity_id: int,
    choices: list[ProjectChoice],
    chosen: ProjectChoice,
) -> Step:
    return _save(
        db,
        call.conversation_id,
        identity_id,
        "confirm",
        choices,
        chosen.project_id,
        call.journal_id,
        f"Unsubscribe from {chosen.title}? Reply YES to confirm or NO to keep it.",
    )


def _pick(choices: list[ProjectChoice], text: str) -> ProjectChoice | None:
    word = text.strip().lower()
    if re.fullmatch(r"[0-9]{1,3}", word) and 1 <= int(word) <= len(choices):
        return choices[int(word) - 1]
    for choice in choices:
        if word in (choice.name, choice.title.lower()):
            return choice
    return None


def open_menu_txn(
    db: sqlite_utils.Database, call: CommandCall, identity_id: int, args: str
) -> Step:
    """``/unsubscribe [project]``: list the subscriptions, or ask to confirm one."""
    conn = db.conn
    replay = conn.execute(
        "SELECT reply, stage FROM api_menus WHERE conversation_id = ? AND journal_id = ?",
        (call.conversation_id, call.journal_id),
    ).fetchone()
    if replay is not None:
        return Step(replay[0], replay[1] != "done")
    choices = projects_of_identity(conn, identity_id)
    if not choices:
        conn.execute("DELETE FROM api_menus WHERE conversation_id = ?", (call.conversation_id,))
        return Step(
            "You are not subscribed to anything here. To get no messages from us at all, "
            "send STOP.",
            False,
        )
    chosen = _pick(choices, args) if args else (choices[0] if len(choices) == 1 else None)
    if chosen is not None:
        return _confirm(db, call, identity_id, choices, chosen)
    reply = _pick_text(choices)
    if args:
        reply = f"You are not subscribed to {args[:40]!r}. {reply}"
    return _save(
        db, call.conversation_id, identity_id, "pick", choices, None, call.journal_id, reply
    )


def menu_reply_txn(
    db: sqlite_utils.Database, call: CommandCall, identity_id: int, text: str
) -> Step:
    """A plain message while a dialogue may be open in this conversation."""
    conn = db.conn
    row = conn.execute(
        "SELECT identity_id, stage, choices, project_id, journal_id, reply, expires_at "
        "FROM api_menus WHERE conversation_id = ?",
        (call.conversation_id,),
    ).fetchone()
    if row is None:
        return Step(None, False)
    owner, stage, choice_ids, project_id, journal_id, last_reply, expires_at = row
    if journal_id == call.journal_id:
        return Step(last_reply, stage != "done")
    if stage == "done" or expires_at <= now():
        return Step(None, False)
    if owner != identity_id:
        return Step(None, True)  # someone else in a group chat: not their dialogue
    current = {c.project_id: c for c in projects_of_identity(conn, identity_id)}
    choices = [current[i] for i in json.loads(choice_ids) if i in current]
    word = text.strip().lower()

    def end(reply: str | None) -> Step:
        if reply is None:
            conn.execute("DELETE FROM api_menus WHERE conversation_id = ?", (call.conversation_id,))
            return Step(None, False)
        return _save(
            db, call.conversation_id, identity_id, "done", [], None, call.journal_id, reply
        )

    if word in NO:
        return end("Nothing changed: your subscriptions stay as they were.")
    if stage == "pick":
        chosen = _pick(choices, word)
        if chosen is not None:
            return _confirm(db, call, identity_id, choices, chosen)
        if re.fullmatch(r"[0-9]+", word) and choices:
            return _save(
                db,
                call.conversation_id,
                identity_id,
                "pick",
                choices,
                None,
                call.journal_id,
                f"Please reply with a number from 1 to {len(choices)}, or NO.",
            )
        return end(None)
    if word not in YES:
        return end(None)
    chosen = current.get(project_id)
    if chosen is None:
        return end("You were no longer subscribed to it: nothing to do.")
    unsubscribe_txn(db, identity_id, chosen.project_id, actor=f"contact:{call.contact_id}")
    rest = [c.title for c in current.values() if c.project_id != chosen.project_id]
    reply = (
        f"Done: you are unsubscribed from {chosen.title} and will get nothing more from it. "
        f"Send /start {chosen.name} to subscribe again."
    )
    if rest:
        reply += f"\nYou are still subscribed to: {', '.join(rest)}."
    return end(reply)


class ChatCommands:
    """The chat command handlers, registered by gateway.devapi.feature.install."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.state = state_of(services)

    def waiting(self) -> bool:
        return bool(self.state.menus)

    def _menu_channel(self, channel: str) -> bool:
        entry = self.services.config.channels.get(channel)
        return entry is not None and entry.config.subscription_menu

    async def start(self, call: CommandCall) -> str | None:
        if call.identity_id is None or not api_config(self.services.config).enabled:
            return None
        store = self.services.store
        word = call.args.split()[0] if call.args.split() else ""
        if word:
            done = await store.write(
                "subscribe",
                subscribe_txn,
                word,
                identity_id=call.identity_id,
                contact_id=call.contact_id,
                channel=call.channel,
                account=call.account,
                thread_key=call.thread_key,
                journal_id=call.journal_id,
                message_id=call.message_id,
            )
            if done is None:
                return None  # not a project: a /start with a campaign tag, or a greeting
            again = " You will get our messages again." if done.consent_regained else ""
            if not done.new:
                return f"You are already subscribed to {done.title}.{again}"
            return (
                f"You are subscribed to {done.title}.{again} "
                "Send /unsubscribe to stop getting its messages."
            )
        changed = await store.read("consent of message", consent_changed_by_txn, call.message_id)
        if changed == "granted":
            return None  # START after STOP: the opt-in confirmation answers
        identity_id = call.identity_id
        choices = await store.read(
            "subscriptions", lambda db: projects_of_identity(db.conn, identity_id)
        )
        if not choices:
            return None
        listing = "\n".join(f"• {c.title} (/start {c.name})" for c in choices)
        return f"My subscriptions:\n{listing}\nSend /unsubscribe to leave one."

    async def unsubscribe(self, call: CommandCall) -> str | None:
        if call.identity_id is None or not self._menu_channel(call.channel):
            return None  # the global opt-out keyword answers
        step = await self.services.store.write(
            "unsubscribe menu", open_menu_txn, call, call.identity_id, call.args
        )
        self._track(call.conversation_id, step.open)
        return step.reply

    async def on_reply(self, call: CommandCall) -> str | None:
        if call.identity_id is None or call.conversation_id not in self.state.menus:
            return None
        step = await self.services.store.write(
            "unsubscribe menu reply", menu_reply_txn, call, call.identity_id, call.args
        )
        self._track(call.conversation_id, step.open)
        return step.reply

    def _track(self, conversation_id: int, is_open: bool) -> None:
        if is_open:
            self.state.menus.add(conversation_id)
        else:
            self.state.menus.discard(conversation_id)


def open_menus_txn(db: sqlite_utils.Database) -> set[int]:
    """Forget finished and expired dialogues; the conversations of the open ones."""
    conn = db.conn
    conn.execute("DELETE FROM api_menus WHERE expires_at <= ?", (now(),))
    return {
        r[0] for r in conn.execute("SELECT conversation_id FROM api_menus WHERE stage != 'done'")
    }
