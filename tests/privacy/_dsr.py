"""Shared set-up for the data-subject request tests: a real SQLCipher database migrated like the
daemon's, and a contact given every kind of data through the core's own transactions (intake,
replies, attachments, events, consent keywords, transfers, delivery records)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

import sqlite_utils

from gateway.analysis import Analysis
from gateway.messages import Attachment, Event, Inbound
from gateway.pipeline.agent import Transfer
from gateway.privacy.sealing import Sealer
from gateway.store import ATTACHMENTS_DIR, _store_keys
from gateway.store.db import connect
from gateway.store.journal import Intake, accept_txn, commit_reply_txn, next_pending_txn
from gateway.store.migrations import migrations
from gateway.store.outbox import mark_sending_txn, record_attempt_txn
from gateway.store.records import record_event_txn
from gateway.store.transfers import record_transfer_txn

ACCOUNT = "bot-1"


@dataclasses.dataclass
class Db:
    db: sqlite_utils.Database
    sealer: Sealer
    dedupe: bytes
    root: Path

    @property
    def conn(self) -> Any:
        return self.db.conn

    def txn(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(db, ...)`` in one transaction, as the daemon's writer would."""
        with self.db.conn:
            return fn(self.db, *args, **kwargs)

    def dedupe_key(self, channel: str, external_id: str) -> str:
        material = "\0".join((channel, ACCOUNT, external_id)).encode()
        return hmac.new(self.dedupe, material, hashlib.sha256).hexdigest()

    def inbound(
        self,
        channel: str,
        sender: str,
        text: str,
        external_id: str,
        *,
        name: str | None = None,
        attachments: tuple[Attachment, ...] = (),
        consent: str | None = None,
        thread: str | None = None,
    ) -> Any:
        message = Inbound(
            account=ACCOUNT,
            external_id=external_id,
            thread_key=thread or f"chat-{sender}",
            sender_id=sender,
            text=text,
            sender_name=name,
            language="en",
            attachments=attachments,
        )
        item = Intake(self.dedupe_key(channel, external_id), channel, "default", message, consent)
        (accepted,) = self.txn(accept_txn, [item], self.sealer)
        return accepted

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql, args).fetchall())


def open_db(tmp_path: Path) -> Db:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    key = secrets.token_bytes(32)
    db = connect(data / "gateway.db", key)
    migrations.apply(db)
    wrap, dedupe = _store_keys(db, key, secrets.token_bytes(32))
    return Db(db, Sealer(wrap, data / ATTACHMENTS_DIR), dedupe, data)


@dataclasses.dataclass
class Subject:
    contact_id: int
    conversation_id: int
    identity_ids: list[int]
    texts: list[str]
    external_ids: list[str]
    names: list[str]
    file_bytes: bytes


SECRET_TEXT = "my card is 4111 1111 1111 1111 and I live at Sadovaya 5"
SECRET_FILE = b"PASSPORT-SCAN-" + bytes(range(256)) * 4


def populate(d: Db, *, sender: str = "user-77731", name: str = "Ann Example") -> Subject:
    """A contact on two channels with messages, a reply (sent, with its delivery record), an
    analysed message, an attachment, a call with a voicemail, an opt-out, and a model transfer."""
    first = d.inbound("tg", sender, f"hello, {SECRET_TEXT} [{sender}]", f"{sender}-1", name=name)
    d.inbound(
        "tg",
        sender,
        f"here is my passport [{sender}]",
        f"{sender}-2",
        attachments=(
            Attachment("document", "image/jpeg", f"passport {sender}.jpg", data=SECRET_FILE),
        ),
    )
    contact_id = d.rows("SELECT contact_id FROM conversations WHERE id = ?", first.conversation_id)[
        0
    ][0]
    # The same person on a second channel, linked to the same contact (as an operator would).
    with d.conn:
        d.conn.execute(
            "INSERT INTO identities (contact_id, channel, external_id, display_name, created_at) "
            "VALUES (?, 'wa', ?, ?, '2026-01-01T00:00:00+00:00')",
            (contact_id, f"+7900{sender}", f"{name} WA"),
        )
    d.inbound("wa", f"+7900{sender}", f"also me on WhatsApp [{sender}]", f"{sender}-w1")
    d.inbound("tg", sender, "STOP", f"{sender}-3", consent="withdrawn")
    work = d.txn(next_pending_txn, first.conversation_id, 20, d.sealer)
    labels = Analysis("question", "billing", "neutral", "normal", False, 0.8, "en").to_json()
    outbox_id = d.txn(
        commit_reply_txn, work, f"Thanks {name}, we got it", "ai", d.sealer, analysis=labels
    )
    attempt = d.txn(mark_sending_txn, outbox_id)
    d.txn(record_attempt_txn, outbox_id, attempt, "sent", external_id=f"out-{sender}-1")
    d.txn(
        record_transfer_txn,
        first.conversation_id,
        work.journal_id,
        "default",
        Transfer("main", "openai", "EU", "reply", ("message_text",), True, "contract", 120, 80,
                 "ok", "", 12.5),
    )  # fmt: skip
    d.txn(
        record_event_txn,
        "tg",
        "default",
        Event(ACCOUNT, f"chat-{sender}", sender, "call", f"call-{sender}", {"duration": 31},
              attachments=(Attachment("audio", "audio/ogg", "vm.ogg", data=b"VOICEMAIL" * 50),)),
        d.sealer,
    )  # fmt: skip
    identities = [
        r[0] for r in d.rows("SELECT id FROM identities WHERE contact_id = ?", contact_id)
    ]
    return Subject(
        contact_id=contact_id,
        conversation_id=first.conversation_id,
        identity_ids=identities,
        texts=[
            f"{SECRET_TEXT} [{sender}]",
            f"passport [{sender}]",
            f"WhatsApp [{sender}]",
            f"Thanks {name}",
        ],
        external_ids=[sender, f"+7900{sender}", f"{sender}-1", f"out-{sender}-1", f"chat-{sender}"],
        names=[name],
        file_bytes=SECRET_FILE,
    )
