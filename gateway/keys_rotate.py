"""``gateway keys rotate``: a new master key, with the gateway running or not.

1. A new random key is written next to the current one, as ``master.key.next`` (0600) or as the
   encrypted credential ``gateway-master-key.next``: from here on, whatever happens, one of the
   two keys opens the database.
2. The database is re-keyed: by the running daemon through its control socket (online: reads
   wait and writes queue for the few seconds it takes; nothing is refused), or here when no
   daemon runs. Every per-contact file key is re-wrapped under a fresh wrap key first.
3. The new key replaces the old one (the old key file is overwritten, then removed).

If anything stops it half-way, ``gateway keys rotate --finish`` looks at which key opens the
database and completes (or undoes) step 3. The dedupe key stays: a platform retry of a message
from before the rotation is still recognised.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import trio

from gateway import control
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, MasterKeyError
from gateway.files import fsync_dir
from gateway.keys import CREDENTIAL_NAME, DATABASE_FILE, KEY_FILE, MasterKey, parse_key
from gateway.store.db import connect

NEXT = ".next"


class KeyPlace:
    """Where the master key lives and how to read, stage and replace it."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.next = path.with_name(path.name + NEXT)

    def describe(self) -> str:
        return f"{'key file' if self.kind == 'file' else 'systemd credential'} {self.path}"

    def read(self, path: Path | None = None) -> bytes:
        path = path or self.path
        if self.kind == "file":
            return parse_key(path.read_text(), str(path))
        creds = shutil.which("systemd-creds")
        if not creds:
            raise GatewayError("systemd-creds is needed to read the credential")
        result = subprocess.run(
            [creds, "decrypt", f"--name={CREDENTIAL_NAME}", str(path), "-"],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise GatewayError(
                f"systemd-creds decrypt {path} failed (run as root): "
                f"{result.stderr.decode().strip()}"
            )
        return parse_key(result.stdout.decode(), str(path))

    def write_next(self, key: bytes) -> None:
        if self.next.exists():
            raise GatewayError(
                f"{self.next} exists: an earlier rotation did not finish. Run "
                "`gateway keys rotate --finish` first"
            )
        if self.kind == "file":
            fd = os.open(self.next, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(key.hex() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            return
        creds = shutil.which("systemd-creds")
        if not creds:
            raise GatewayError("systemd-creds is needed to write the credential")
        result = subprocess.run(
            [creds, "encrypt", f"--name={CREDENTIAL_NAME}", "-", str(self.next)],
            input=key.hex().encode(),
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise GatewayError(f"systemd-creds encrypt failed: {result.stderr.decode().strip()}")
        self.next.chmod(0o600)

    def promote_next(self) -> None:
        """The staged key becomes the key; the old one is overwritten before it goes."""
        size = self.path.stat().st_size
        with open(self.path, "r+b") as handle:
            handle.write(secrets.token_bytes(size))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(self.next, self.path)
        fsync_dir(self.path.parent)

    def drop_next(self) -> None:
        self.next.unlink()
        fsync_dir(self.path.parent)


def find_place(config: GatewayConfig, credstore: Path) -> KeyPlace:
    if config.gateway.master_key:
        raise GatewayError(
            "[gateway] master_key names the key explicitly; rotate it where it lives and give "
            "the gateway the new one (automatic rotation covers the key file and the systemd "
            "credential)"
        )
    if os.environ.get("GATEWAY_MASTER_KEY"):
        raise GatewayError(
            "the key comes from $GATEWAY_MASTER_KEY; rotation cannot update an environment: "
            "move the key into a credential or file first (gateway keys status)"
        )
    key_file = config.data_dir / KEY_FILE
    if key_file.exists() or Path(str(key_file) + NEXT).exists():
        return KeyPlace("file", key_file)
    credential = credstore / CREDENTIAL_NAME
    if credential.exists() or Path(str(credential) + NEXT).exists():
        return KeyPlace("credential", credential)
    raise MasterKeyError(
        f"found neither {key_file} nor {credential}: nothing to rotate (gateway keys status)"
    )


def _opens(database: Path, key: bytes) -> bool:
    try:
        connect(database, MasterKey(key, "test").derive("sqlcipher"), readonly=True).conn.close()
    except MasterKeyError:
        return False
    return True


def rotate(config: GatewayConfig, credstore: Path) -> int:
    place = find_place(config, credstore)
    database = config.data_dir / DATABASE_FILE
    if not database.exists():
        raise GatewayError(f"no database at {database}: nothing to re-key")
    new = secrets.token_bytes(32)
    place.write_next(new)
    print(f"new key staged: {place.next}")
    socket_path = config.data_dir / control.SOCKET_NAME
    new_db_key = MasterKey(new, "new").derive("sqlcipher")
    try:
        reply = control.request(socket_path, {"op": "rekey", "key": new_db_key.hex()})
        print(f"the running gateway re-keyed the database ({reply['rewrapped']} contact keys)")
    except control.ControlError as exc:
        if "no gateway is running" not in str(exc):
            raise GatewayError(
                f"the gateway refused to re-key: {exc}. The old key still opens the "
                "database; run `gateway keys rotate --finish` to clean up"
            ) from None
        old = MasterKey(place.read(), place.describe())
        count = trio.run(_rekey_offline, database, old, new_db_key)
        print(f"no gateway running: re-keyed the database here ({count} contact keys)")
    place.promote_next()
    print(f"the new key is in place: {place.describe()}; the old one is overwritten and gone")
    print("back up the new key now: older database backups still need the old key")
    return 0


async def _rekey_offline(database: Path, old: MasterKey, new_db_key: bytes) -> int:
    from gateway.store import open_store

    async with open_store(
        database, old.derive("sqlcipher"), dedupe_seed=old.derive("dedupe")
    ) as store:
        return await store.rekey(new_db_key)


def finish(config: GatewayConfig, credstore: Path) -> int:
    place = find_place(config, credstore)
    database = config.data_dir / DATABASE_FILE
    if not place.next.exists():
        print(f"no rotation to finish: {place.next} does not exist")
        return 0
    if _opens(database, place.read(place.next)):
        place.promote_next()
        print(f"finished: the new key opens the database and is now {place.describe()}")
        return 0
    if place.path.exists() and _opens(database, place.read()):
        place.drop_next()
        print("the database was never re-keyed: the staged key is removed, the old key stays")
        return 0
    raise MasterKeyError(
        f"neither {place.path} nor {place.next} opens {database}: restore the key from backup"
    )
