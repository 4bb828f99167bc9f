"""The command line as a sysadmin uses it: exit codes and what it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "config" / "gateway.example.toml"


def gateway(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def test_plugins_lists_builtins_with_their_source():
    result = gateway("plugins")
    assert result.returncode == 0, result.stderr
    for name in ("telegram", "webchat", "openai", "faq"):
        assert f"  {name} " in result.stdout
    assert "sovereign-gateway" in result.stdout
    assert "failed to load" not in result.stdout


def test_check_config_ok_and_error(tmp_path):
    env = {"TELEGRAM_TOKEN": "1:abcdefgh", "OPENAI_API_KEY": "sk-abcdefgh", "PATH": "/usr/bin:/bin"}
    ok = gateway("check-config", str(EXAMPLE), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "support_bot: telegram" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace('mode = "polling"', 'mode = "pollin"', 1))
    result = gateway("check-config", str(bad), env=env)
    assert result.returncode == 2
    assert (
        str(bad) in result.stderr
        and "[channels.support_bot]" in result.stderr
        and "'mode'" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_check_config_missing_secret_exit_2():
    result = gateway("check-config", str(EXAMPLE), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "is not set" in result.stderr and "Traceback" not in result.stderr


def test_init_creates_key_and_encrypted_database(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text(
        '[gateway]\ndata_dir = "data"\n[channels.web]\nplugin = "webchat"\n'
        '[agents.default]\nprovider = "faq"\n[providers.faq]\nplugin = "faq"\n'
    )
    result = gateway("init", "--config", str(config), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "A NEW MASTER KEY WAS GENERATED" in result.stderr and "systemd-creds" in result.stderr
    assert (tmp_path / "data" / "master.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "data" / "gateway.db").read_bytes()[:16] != b"SQLite format 3\x00"
    again = gateway("init", "--config", str(config), env={"PATH": "/usr/bin:/bin"})
    assert again.returncode == 0 and "already present" in again.stdout


def test_run_with_wrong_key_stops_with_clear_error(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text(
        '[gateway]\ndata_dir = "data"\n[http]\npublic_bind = "127.0.0.1:0"\nadmin_bind = "127.0.0.1:0"\n'
        '[channels.web]\nplugin = "webchat"\n[agents.default]\nprovider = "faq"\n[providers.faq]\nplugin = "faq"\n'
    )
    assert gateway("init", "--config", str(config), env={"PATH": "/usr/bin:/bin"}).returncode == 0
    result = gateway(
        "run",
        "--config",
        str(config),
        env={"PATH": "/usr/bin:/bin", "GATEWAY_MASTER_KEY": "00" * 32},
    )
    assert result.returncode == 2
    assert "does not open" in result.stderr and "Traceback" not in result.stderr
