"""What the backup, restore and record tests share: a config on disk, a data directory with
real SQLCipher contents (contacts, sealed messages and attachments), and readers of it.
(No tests here.)"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, load_config
from gateway.keys import DATABASE_FILE, MasterKey, load_master_key
from gateway.messages import Attachment, Inbound
from gateway.plugin import Registry, load_registry
from gateway.store import Store, open_store
from gateway.store.bodies import contact_messages, sealer_for
from gateway.store.db import connect
from gateway.store.journal import Intake, accept_txn
from gateway.store.records import open_attachment_txn
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider


def config_text(channel: str = "webchat", provider: str = "faq", extra: str = "") -> str:
    """A data directory ``data/`` beside the file, one channel ``support`` with the plugin
    ``channel``, the default agent on a provider of plugin ``provider``."""
    return f"""
[gateway]
data_dir = "data"
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
[channels.support]
plugin = "{channel}"
[agents.default]
provider = "main"
[providers.main]
plugin = "{provider}"
{extra}"""


CONFIG = config_text()
"""What `gateway` commands load: installed plugins only (webchat, faq)."""


def registry() -> Registry:
    """The installed plugins (what `gateway` commands load) plus ``plugin = "fake"``."""
    reg = load_registry()
    reg.add("channel", "fake", FakeChannel)
    reg.add("llm", "fake", FakeProvider)
    return reg


def write_config(directory: Path, extra: str = "") -> GatewayConfig:
    path = directory / "gateway.toml"
    path.write_text(CONFIG + extra)
    return load_config(path, registry(), environ={})


def master(config: GatewayConfig) -> MasterKey:
    """The data directory's key (made on first use, like a first start)."""
    return load_master_key(config.data_dir, environ={})


@contextlib.asynccontextmanager
async def opened(config: GatewayConfig) -> AsyncIterator[Store]:
    key = master(config)
    async with open_store(
        config.data_dir / DATABASE_FILE, key.derive("sqlcipher"), dedupe_seed=key.derive("dedupe")
    ) as store:
        yield store


def inbound(sender: str, n: int, text: str, data: bytes | None = None) -> Intake:
    attachments = (Attachment("document", "text/plain", f"{sender}-{n}.txt", data),) if data else ()
    return Intake(
        f"{sender}-{n}",
        "support",
        "default",
        Inbound(
            account="fake-bot",
            external_id=f"{sender}-{n}",
            thread_key=sender,
            sender_id=sender,
            text=text,
            attachments=attachments,
        ),
    )


async def seed(store: Store, items: Sequence[Intake]) -> dict[str, int]:
    """Accept the messages; returns sender -> contact id."""
    await store.write("seed", accept_txn, list(items), store.sealer)

    def contacts(db: Any) -> dict[str, int]:
        rows = db.conn.execute("SELECT external_id, contact_id FROM identities").fetchall()
        return {str(sender): int(cid) for sender, cid in rows}

    return await store.read("contacts", contacts)


def read_contact(config: GatewayConfig, contact_id: int) -> tuple[list[str], list[Any]]:
    """A contact's message texts and attachments (bytes, or the exception opening raised),
    read from the data directory on disk as any tool would."""
    db = connect(config.data_dir / DATABASE_FILE, master(config).derive("sqlcipher"))
    try:
        sealer = sealer_for(db.conn, config.data_dir / "attachments")
        texts = [m.text for m in contact_messages(sealer, db.conn, contact_id)]
        files: list[Any] = []
        ids = db.conn.execute(
            "SELECT id FROM attachments WHERE contact_id = ? ORDER BY id", (contact_id,)
        ).fetchall()
        for (attachment_id,) in ids:
            try:
                files.append(open_attachment_txn(db, sealer, attachment_id))
            except Exception as exc:  # what a reader meets after crypto-shredding
                files.append(exc)
        return texts, files
    finally:
        db.conn.close()


def count(config: GatewayConfig, table: str, where: str = "1") -> int:
    db = connect(config.data_dir / DATABASE_FILE, master(config).derive("sqlcipher"))
    try:
        return int(db.conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0])
    finally:
        db.conn.close()
