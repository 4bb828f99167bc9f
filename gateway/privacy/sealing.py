"""Sealed files: attachments and recordings encrypted per contact (crypto-shredding).

Every contact gets its own random 256-bit key the first time a file of theirs is stored. The key
is kept in ``contact_keys`` wrapped (AES-256-GCM) by a key derived from the store key, and each
file on disk is AES-256-GCM under the contact's key, with the attachment's uuid as associated
data (a file moved to another record does not open). Destroying the contact's key row makes every
copy of their files unreadable, including copies in old backups of the attachment directory.

File format: ``b"SGA1"`` + 12-byte nonce + ciphertext (with the 16-byte tag).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import StoreError

MAGIC = b"SGA1"


class KeyDestroyed(StoreError):
    """The contact's key was destroyed (erasure): their sealed files can no longer be opened."""


def derive_wrap_key(store_key: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"sovereign-gateway/v1/contact-wrap"
    ).derive(store_key)


class Sealer:
    """Seals and opens files for contacts. Methods take the caller's connection (a txn's)."""

    def __init__(self, wrap_key: bytes, root: Path) -> None:
        self._wrap = AESGCM(wrap_key)
        self.root = root
        self._keys: dict[int, bytes] = {}
        """Unwrapped contact keys (message bodies are opened per row; unwrapping each time
        would double the cost). Dropped by ``destroy``; bounded by CACHE_SIZE."""
        self._destroyed: set[int] = set()
        """Contacts destroyed by this process: a reader that fetched the key before the erasure
        committed must not put it back in the cache."""

    CACHE_SIZE = 50_000

    def cached_key(self, conn: sqlite3.Connection, contact_id: int, *, create: bool) -> bytes:
        key = self._keys.get(contact_id)
        if key is None:
            if contact_id in self._destroyed:
                raise KeyDestroyed(f"contact {contact_id}'s key was destroyed (erasure)")
            key = self.contact_key(conn, contact_id, create=create)
            if len(self._keys) >= self.CACHE_SIZE:
                self._keys.clear()
            self._keys[contact_id] = key
            if contact_id in self._destroyed:  # destroyed while we fetched it
                self._keys.pop(contact_id, None)
        return key

    def rewrap_all(self, conn: sqlite3.Connection, new_wrap_key: bytes) -> int:
        """Re-wrap every live contact key under ``new_wrap_key`` (in the caller's transaction;
        call ``use_wrap_key`` once it committed). Returns how many keys were re-wrapped."""
        new = AESGCM(new_wrap_key)
        rows = conn.execute(
            "SELECT contact_id, wrapped FROM contact_keys WHERE destroyed_at IS NULL"
        ).fetchall()
        for contact_id, wrapped in rows:
            blob = bytes(wrapped)
            aad = str(contact_id).encode()
            key = self._wrap.decrypt(blob[:12], blob[12:], aad)
            nonce = secrets.token_bytes(12)
            conn.execute(
                "UPDATE contact_keys SET wrapped = ? WHERE contact_id = ?",
                (nonce + new.encrypt(nonce, key, aad), contact_id),
            )
        return len(rows)

    def use_wrap_key(self, wrap_key: bytes) -> None:
        self._wrap = AESGCM(wrap_key)

    def contact_key(self, conn: sqlite3.Connection, contact_id: int, *, create: bool) -> bytes:
        row = conn.execute(
            "SELECT wrapped, destroyed_at FROM contact_keys WHERE contact_id = ?", (contact_id,)
        ).fetchone()
        if row is not None:
            if row[1] is not None:
                raise KeyDestroyed(
                    f"contact {contact_id}'s key was destroyed at {row[1]}; their files are gone"
                )
            wrapped = bytes(row[0])
            return self._wrap.decrypt(wrapped[:12], wrapped[12:], str(contact_id).encode())
        if not create:
            raise KeyDestroyed(f"contact {contact_id} has no key: no sealed file of theirs exists")
        key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(12)
        wrapped = nonce + self._wrap.encrypt(nonce, key, str(contact_id).encode())
        conn.execute(
            "INSERT INTO contact_keys (contact_id, wrapped, created_at) "
            "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ'))",
            (contact_id, wrapped),
        )
        return key

    def seal(self, conn: sqlite3.Connection, contact_id: int, uuid: str, data: bytes) -> Path:
        """Encrypt ``data`` for the contact and write it durably; return its path."""
        key = self.contact_key(conn, contact_id, create=True)
        nonce = secrets.token_bytes(12)
        blob = MAGIC + nonce + AESGCM(key).encrypt(nonce, data, uuid.encode())
        path = self.root / uuid[:2] / f"{uuid}.sealed"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return path

    def open(self, conn: sqlite3.Connection, contact_id: int, uuid: str, path: Path) -> bytes:
        key = self.contact_key(conn, contact_id, create=False)
        blob = path.read_bytes()
        if not blob.startswith(MAGIC):
            raise StoreError(f"{path} is not a sealed attachment (bad header)")
        try:
            return AESGCM(key).decrypt(blob[4:16], blob[16:], uuid.encode())
        except InvalidTag:
            raise StoreError(f"{path} does not open with its contact's key (tampered?)") from None

    def destroy(self, conn: sqlite3.Connection, contact_id: int) -> None:
        """Crypto-shred: forget the contact's key; keep the row as proof of when."""
        self._destroyed.add(contact_id)
        self._keys.pop(contact_id, None)
        conn.execute(
            "UPDATE contact_keys SET wrapped = zeroblob(0), "
            "destroyed_at = strftime('%Y-%m-%dT%H:%M:%fZ') "
            "WHERE contact_id = ? AND destroyed_at IS NULL",
            (contact_id,),
        )
