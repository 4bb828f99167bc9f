"""Secret references: config files name where a secret lives, never the secret itself.

``env:NAME``        an environment variable
``file:PATH``       a file (trailing newline stripped); should be 0600 and owned by the service user
``credential:NAME`` a systemd credential ($CREDENTIALS_DIRECTORY/NAME, LoadCredential[Encrypted]=)
``keyring:NAME``    the system keyring (service "sovereign-gateway"), where a real backend exists
``store:NAME``      the gateway's vault in its encrypted database (gateway.vault): set with
                    ``gateway secrets set NAME`` or by the admin UI's forms
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic_core import core_schema

SCHEMES = ("env", "file", "credential", "keyring", "store")
KEYRING_SERVICE = "sovereign-gateway"


class SecretRefError(ValueError):
    """A reference is malformed or names a secret that is not there."""


class Secret:
    """A resolved secret. Its repr and str show only where it came from, never its value."""

    __slots__ = ("_deferred", "_value", "reference")

    def __init__(
        self, value: str, reference: str = "<given in code>", *, deferred: bool = False
    ) -> None:
        self._value = value
        self.reference = reference
        self._deferred = deferred

    def reveal(self) -> str:
        return self._value

    @property
    def deferred(self) -> bool:
        """True for a reference checked but not resolved (``load_config(defer_secrets=True)``,
        as ``gateway init`` and offline CLI commands use): its value is empty, and a plugin's
        validator should skip format checks on it."""
        return self._deferred

    def __repr__(self) -> str:
        return f"Secret({self.reference!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.with_info_plain_validator_function(
            _validate_secret,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda s: s.reference),
        )


def _validate_secret(value: Any, info: core_schema.ValidationInfo) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise ValueError('must be a secret reference string such as "env:NAME"')
    # The config loader passes the environment it was given (tests, `check-config`).
    context = info.context or {}
    if context.get("defer_secrets"):
        if not is_reference(value):
            resolve(value)  # raises the "must not be written into the config file" error
        return Secret("", value, deferred=True)
    if value.startswith("store:") and context.get("defer_store"):
        # The vault could not be read (gateway check-config without the master key).
        return Secret("", value, deferred=True)
    return resolve(value, environ=context.get("environ"), vault=context.get("vault"))


def is_reference(text: str) -> bool:
    scheme, sep, rest = text.partition(":")
    return bool(sep) and scheme in SCHEMES and bool(rest)


def resolve(
    reference: str,
    *,
    environ: Mapping[str, str] | None = None,
    vault: Mapping[str, str] | None = None,
) -> Secret:
    """Resolve ``reference`` to a Secret, or raise SecretRefError saying what to fix.
    ``vault`` holds the opened ``store:`` secrets (the config loader reads them)."""
    env = os.environ if environ is None else environ
    if not is_reference(reference):
        raise SecretRefError(
            "a secret must not be written into the config file; give a reference instead: "
            "env:NAME, file:PATH, credential:NAME, keyring:NAME or store:NAME"
        )
    scheme, _, name = reference.partition(":")
    if scheme == "store":
        if vault is None or name not in vault:
            raise SecretRefError(
                f"{reference!r}: the gateway's vault holds no secret {name!r}; set it with "
                f"`gateway secrets set {name}` (or save the form again in the admin UI)"
            )
        return Secret(vault[name], reference)
    if scheme == "env":
        value = env.get(name)
        if not value:
            raise SecretRefError(
                f"environment variable {name} is not set (referenced as {reference!r})"
            )
        return Secret(value, reference)
    if scheme == "file":
        return Secret(_read_file(Path(name), reference), reference)
    if scheme == "credential":
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretRefError(
                f"{reference!r} names a systemd credential but $CREDENTIALS_DIRECTORY is not set; "
                "run under systemd with LoadCredential= or LoadCredentialEncrypted="
            )
        return Secret(_read_file(Path(directory) / name, reference), reference)
    # keyring
    try:
        import keyring
        import keyring.errors
    except ImportError as exc:  # pragma: no cover - keyring is a dependency
        raise SecretRefError(f"keyring is not installed ({reference!r})") from exc
    try:
        value = keyring.get_password(KEYRING_SERVICE, name)
    except keyring.errors.KeyringError as exc:
        raise SecretRefError(
            f"{reference!r}: no usable keyring on this machine ({type(exc).__name__}); "
            "use credential: or file: on a headless server"
        ) from exc
    if value is None:
        raise SecretRefError(
            f"{reference!r}: no entry {name!r} for service {KEYRING_SERVICE!r} in the keyring"
        )
    return Secret(value, reference)


def _read_file(path: Path, reference: str) -> str:
    try:
        return path.read_text().rstrip("\r\n")
    except FileNotFoundError:
        raise SecretRefError(f"{reference!r}: file {path} does not exist") from None
    except OSError as exc:
        raise SecretRefError(f"{reference!r}: cannot read {path}: {exc.strerror}") from None
