"""gateway keys init / status, as a sysadmin runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

CONFIG = (
    '[gateway]\ndata_dir = "data"\n[channels.web]\nplugin = "webchat"\n'
    '[agents.default]\nprovider = "faq"\n[providers.faq]\nplugin = "faq"\n'
)
ENV = {"PATH": "/usr/bin:/bin"}


def gateway(*args, env=ENV):
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_init_to_file_warns_and_status_reports_the_source(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text(CONFIG)
    made = gateway("keys", "init", "--to", "file", "--config", str(config))
    assert made.returncode == 0, made.stderr
    assert "WARNING" in made.stderr and "systemd credential" in made.stderr
    key_file = tmp_path / "data" / "master.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    shown = gateway("keys", "status", "--config", str(config))
    assert shown.returncode == 0 and f"key file {key_file}" in shown.stdout
    assert key_file.read_text().strip() not in shown.stdout + shown.stderr
    again = gateway("keys", "init", "--config", str(config))
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-creds encrypts with the host key as root")
def test_init_to_systemd_credential_is_used_by_the_daemon(tmp_path):
    creds = shutil.which("systemd-creds")
    assert creds, "systemd-creds is missing: scripts/install-test-deps.sh installs systemd"
    config = tmp_path / "g.toml"
    config.write_text(CONFIG)
    store = tmp_path / "credstore"
    made = gateway(
        "keys", "init", "--to", "credential", "--credstore", str(store), "--config", str(config)
    )
    assert made.returncode == 0, made.stderr
    assert "LoadCredentialEncrypted=gateway-master-key" in made.stdout
    encrypted = store / "gateway-master-key"
    assert encrypted.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "data" / "master.key").exists()
    # What systemd does for LoadCredentialEncrypted=: decrypt into $CREDENTIALS_DIRECTORY.
    run_dir = tmp_path / "run-credentials"
    run_dir.mkdir()
    subprocess.run(
        [
            creds,
            "decrypt",
            "--name=gateway-master-key",
            str(encrypted),
            str(run_dir / "gateway-master-key"),
        ],
        check=True,
        capture_output=True,
    )
    env = {**ENV, "CREDENTIALS_DIRECTORY": str(run_dir)}
    assert gateway("init", "--config", str(config), env=env).returncode == 0
    shown = gateway("keys", "status", "--config", str(config), env=env)
    assert "systemd credential gateway-master-key" in shown.stdout and "it opens" in shown.stdout
