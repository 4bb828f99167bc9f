"""The master key: where it comes from, and the keys derived from it.

Sources, first found wins (and the log says which):
1. ``[gateway] master_key`` in the config: a reference (credential:, env:, file:, keyring:);
2. the systemd credential ``gateway-master-key`` ($CREDENTIALS_DIRECTORY, LoadCredentialEncrypted=);
3. the environment variable ``GATEWAY_MASTER_KEY``;
4. the key file ``master.key`` in the data directory, which must be mode 0600.

A key is generated only when none is found **and** the data directory holds no database yet:
the gateway never runs with a key that was not asked for, and never makes a new key for an
existing database (that would be a silent "can't open" at best).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway import secretref
from gateway.errors import MasterKeyError

CREDENTIAL_NAME = "gateway-master-key"
ENV_NAME = "GATEWAY_MASTER_KEY"
KEY_FILE = "master.key"
DATABASE_FILE = "gateway.db"


@dataclasses.dataclass(frozen=True)
class MasterKey:
    key: bytes = dataclasses.field(repr=False)
    source: str
    """Human description of where it came from (never the key)."""
    created: bool = False

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for one purpose ("sqlcipher", "dedupe", ...), by HKDF-SHA256."""
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"sovereign-gateway/v1/" + purpose.encode(),
        ).derive(self.key)


def parse_key(text: str, source: str) -> bytes:
    value = text.strip()
    try:
        key = bytes.fromhex(value)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise MasterKeyError(
            f"the master key from {source} is not 64 hexadecimal characters (32 bytes); "
            "generate one with: python3 -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return key


def load_master_key(
    data_dir: Path,
    *,
    reference: str | None = None,
    environ: Mapping[str, str] | None = None,
    create: bool = True,
) -> MasterKey:
    env = dict(os.environ if environ is None else environ)
    if reference:
        try:
            secret = secretref.resolve(reference, environ=env)
        except secretref.SecretRefError as exc:
            raise MasterKeyError(f"[gateway] master_key: {exc}") from None
        return MasterKey(parse_key(secret.reveal(), reference), f"{reference} (from the config)")
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / CREDENTIAL_NAME).is_file():
        text = (Path(credentials) / CREDENTIAL_NAME).read_text()
        return MasterKey(
            parse_key(text, "systemd credential"), f"systemd credential {CREDENTIAL_NAME}"
        )
    if env.get(ENV_NAME):
        return MasterKey(
            parse_key(env[ENV_NAME], f"${ENV_NAME}"), f"environment variable {ENV_NAME}"
        )
    key_file = data_dir / KEY_FILE
    if key_file.exists():
        mode = stat.S_IMODE(key_file.stat().st_mode)
        if mode & 0o077:
            raise MasterKeyError(
                f"{key_file} is readable by other users (mode {mode:o}); run: chmod 600 {key_file}"
            )
        return MasterKey(parse_key(key_file.read_text(), str(key_file)), f"key file {key_file}")
    if (data_dir / DATABASE_FILE).exists():
        raise MasterKeyError(
            f"{data_dir / DATABASE_FILE} exists but no master key was found (looked at the config's "
            f"[gateway] master_key, systemd credential {CREDENTIAL_NAME}, ${ENV_NAME}, {key_file}); "
            "restore the key that encrypted it: a new key cannot open it"
        )
    if not create:
        raise MasterKeyError(
            f"no master key found and {key_file} does not exist; run `gateway init`"
        )
    return MasterKey(generate_key_file(key_file), f"key file {key_file}", created=True)


def generate_key_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    # O_EXCL: two starts racing must not both write a key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key


def key_banner(master: MasterKey) -> str:
    """The loud notice printed when a key file was generated."""
    path = master.source.removeprefix("key file ")
    line = "=" * 78
    return f"""{line}
  A NEW MASTER KEY WAS GENERATED: {path}  (mode 0600)
  It encrypts the whole database. Lose it and the data is gone; leak it and the
  encryption is worthless. Back it up somewhere safe, away from the database backups.

  To keep it out of the data directory, move it into a systemd credential:
    systemd-creds encrypt --name={CREDENTIAL_NAME} {path} /etc/credstore.encrypted/{CREDENTIAL_NAME}
    # in the unit: LoadCredentialEncrypted={CREDENTIAL_NAME}
    shred -u {path}
{line}"""
