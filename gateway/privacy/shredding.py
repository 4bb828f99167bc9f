"""Crypto-shredding that survives a restore: the tombstone file and re-applying destructions.

Erasing a contact destroys their key (``Sealer.destroy``), so their sealed files and message
bodies cannot be opened in any copy. A backup taken *before* the erasure still holds the live
key, though; restoring it would bring the contact back. So every destruction is remembered in
two places that a restore reads before the restored copy is used:

- the current database: ``contact_keys`` rows with ``destroyed_at`` set;
- the tombstone file ``<data_dir>/shredded``: append-only JSON lines of a contact id, a
  fingerprint of the destroyed key (a one-way hash: nothing personal, nothing that opens
  anything) and the time. It also covers a database that is itself lost or replaced.

The erasure code calls :func:`destroy_contact_key` (fingerprint, tombstone, then
``Sealer.destroy``) inside its write job, or :func:`record_shred` itself around its own
``Sealer.destroy``. The tombstone is written before the transaction commits: a rolled-back
erasure leaves a tombstone that at worst shreds, at the next restore, a key its owner asked to
have destroyed anyway; the opposite order could lose the tombstone of a committed erasure.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.privacy.sealing import KeyDestroyed, Sealer

TOMBSTONE_FILE = "shredded"


def key_fingerprint(contact_key: bytes) -> str:
    """A fingerprint of a contact's (unwrapped) key: stable across master-key rotations (which
    re-wrap keys), useless for opening anything."""
    return hashlib.sha256(b"sovereign-gateway/v1/contact-key-fp" + contact_key).hexdigest()[:32]


def contact_fingerprint(sealer: Sealer, conn: sqlite3.Connection, contact_id: int) -> str | None:
    """The fingerprint of the contact's live key, or None when they have none."""
    try:
        return key_fingerprint(sealer.contact_key(conn, contact_id, create=False))
    except (KeyDestroyed, InvalidTag, ValueError):  # none, destroyed, or an emptied row
        return None


def record_shred(data_dir: Path, contact_id: int, *, fingerprint: str | None = None) -> None:
    """Append one tombstone to ``<data_dir>/shredded`` (created 0600) and fsync it."""
    line = json.dumps(
        {
            "contact_id": int(contact_id),
            "key_fp": fingerprint,
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
        separators=(",", ":"),
    )
    fd = os.open(data_dir / TOMBSTONE_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def destroy_contact_key(
    sealer: Sealer, conn: sqlite3.Connection, data_dir: Path, contact_id: int
) -> None:
    """Crypto-shred a contact for good: tombstone (with the key's fingerprint), then
    ``Sealer.destroy``. Call it inside the erasure's write job."""
    record_shred(data_dir, contact_id, fingerprint=contact_fingerprint(sealer, conn, contact_id))
    sealer.destroy(conn, contact_id)


def read_tombstones(path: Path) -> dict[int, set[str | None]]:
    """Contact id -> fingerprints of their destroyed keys (None: destroyed, fingerprint not
    known). A torn last line (a crash mid-append) is skipped; anything else unreadable is an
    error, because ignoring it could resurrect an erased contact."""
    result: dict[int, set[str | None]] = {}
    if not path.exists():
        return result
    lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
            contact_id = int(item["contact_id"])
            fp = item.get("key_fp")
        except (ValueError, KeyError, TypeError):
            if number == len(lines):  # the unterminated last line of an interrupted append
                continue
            raise ValueError(
                f"{path} line {number} is not a tombstone; fix or remove that line "
                "(never the whole file: it keeps erased contacts erased)"
            ) from None
        result.setdefault(contact_id, set()).add(str(fp) if fp else None)
    return result


def destroyed_in(conn: sqlite3.Connection) -> dict[int, str]:
    """Contacts whose key this database has destroyed: id -> destroyed_at."""
    return {
        int(cid): str(at)
        for cid, at in conn.execute(
            "SELECT contact_id, destroyed_at FROM contact_keys WHERE destroyed_at IS NOT NULL"
        )
    }


def reapply_txn(
    conn: sqlite3.Connection,
    *,
    destroyed: dict[int, str],
    tombstones: dict[int, set[str | None]],
) -> list[int]:
    """Destroy, in a restored database, every key destroyed since its backup was taken.

    ``destroyed``: from the current database (by contact id: a destroyed row keeps its id
    forever, so the id names the same person in every older copy). ``tombstones``: from the
    tombstone file; a fingerprint there must match the restored key (so a contact id that was
    re-used after an erasure is not shredded by mistake); a tombstone without one matches any.
    Returns the contact ids shredded now. Runs in the caller's transaction."""
    wrap_row = conn.execute("SELECT value FROM store_keys WHERE name = 'contact-wrap'").fetchone()
    wrap = AESGCM(bytes(wrap_row[0])) if wrap_row else None
    shredded = []
    for contact_id, wrapped in conn.execute(
        "SELECT contact_id, wrapped FROM contact_keys WHERE destroyed_at IS NULL"
    ).fetchall():
        at = destroyed.get(contact_id)
        if at is None and contact_id in tombstones:
            wanted = tombstones[contact_id]
            if None in wanted or _fingerprint_of(wrap, contact_id, bytes(wrapped)) in wanted:
                at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if at is None:
            continue
        conn.execute(
            "UPDATE contact_keys SET wrapped = zeroblob(0), destroyed_at = ? WHERE contact_id = ?",
            (at, contact_id),
        )
        shredded.append(contact_id)
    return shredded


def _fingerprint_of(wrap: AESGCM | None, contact_id: int, wrapped: bytes) -> str | None:
    if wrap is None:
        return None
    try:
        return key_fingerprint(wrap.decrypt(wrapped[:12], wrapped[12:], str(contact_id).encode()))
    except InvalidTag:
        return None


def sealed_files_of(conn: sqlite3.Connection, contact_ids: Iterable[int]) -> list[str]:
    """The attachment uuids (sealed files) of these contacts."""
    ids = list(contact_ids)
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    return [
        str(row[0])
        for row in conn.execute(
            f"SELECT uuid FROM attachments WHERE state = 'sealed' AND contact_id IN ({marks})",
            ids,
        )
    ]
