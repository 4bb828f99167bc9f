"""Master key sources, file permissions, and never generating a key for an existing database."""

from __future__ import annotations

import os
import stat

import pytest

from gateway.errors import MasterKeyError
from gateway.keys import load_master_key, parse_key

HEX = "ab" * 32


def test_generates_0600_key_file_on_first_start(tmp_path):
    key = load_master_key(tmp_path, environ={})
    assert key.created
    path = tmp_path / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bytes.fromhex(path.read_text().strip()) == key.key
    again = load_master_key(tmp_path, environ={})
    assert again.key == key.key and not again.created


def test_refuses_group_readable_key_file(tmp_path):
    load_master_key(tmp_path, environ={})
    os.chmod(tmp_path / "master.key", 0o644)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        load_master_key(tmp_path, environ={})


def test_never_creates_a_key_for_an_existing_database(tmp_path):
    (tmp_path / "gateway.db").write_bytes(b"x")
    with pytest.raises(MasterKeyError, match="a new key cannot open it"):
        load_master_key(tmp_path, environ={})


def test_systemd_credential_wins_over_env_and_file(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gateway-master-key").write_text("cd" * 32 + "\n")
    key = load_master_key(
        tmp_path, environ={"CREDENTIALS_DIRECTORY": str(creds), "GATEWAY_MASTER_KEY": HEX}
    )
    assert key.key == bytes.fromhex("cd" * 32)
    assert "systemd credential" in key.source


def test_env_and_config_reference(tmp_path):
    assert load_master_key(tmp_path, environ={"GATEWAY_MASTER_KEY": HEX}).key == bytes.fromhex(HEX)
    key = load_master_key(tmp_path, reference="env:MY_KEY", environ={"MY_KEY": HEX})
    assert key.key == bytes.fromhex(HEX) and "env:MY_KEY" in key.source
    with pytest.raises(MasterKeyError, match="MY_KEY is not set"):
        load_master_key(tmp_path, reference="env:MY_KEY", environ={})


def test_malformed_key_says_how_to_make_one():
    with pytest.raises(MasterKeyError, match="secrets.token_hex"):
        parse_key("not-hex", "somewhere")


def test_derived_keys_differ_by_purpose_and_key_never_in_repr(tmp_path):
    key = load_master_key(tmp_path, environ={"GATEWAY_MASTER_KEY": HEX})
    assert key.derive("sqlcipher") != key.derive("dedupe")
    assert HEX not in repr(key)
