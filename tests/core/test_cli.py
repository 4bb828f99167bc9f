"""The command line as a sysadmin uses it: exit codes and what it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.core.test_example_config import ENV as EXAMPLE_ENV

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
    # Every secret the example config references (one list: test_example_config.ENV).
    env = {**EXAMPLE_ENV, "PATH": "/usr/bin:/bin"}
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


def test_conversations_list_and_release(tmp_path):
    """A conversation handed to people is listed and given back to the AI from the CLI."""
    import trio

    from gateway.keys import load_master_key
    from gateway.messages import Inbound
    from gateway.store import open_store
    from gateway.store.journal import Intake, accept_txn, set_conversation_txn

    config = tmp_path / "g.toml"
    config.write_text(
        '[gateway]\ndata_dir = "data"\n[channels.web]\nplugin = "webchat"\n'
        '[agents.default]\nprovider = "faq"\n[providers.faq]\nplugin = "faq"\n'
    )
    env = {"PATH": "/usr/bin:/bin"}
    assert gateway("init", "--config", str(config), env=env).returncode == 0
    master = load_master_key(tmp_path / "data", environ={})

    async def seed() -> int:
        async with open_store(
            tmp_path / "data" / "gateway.db", master.derive("sqlcipher")
        ) as store:
            inbound = Inbound("web", "m1", "visitor1", "visitor1", "secret words")
            (accepted,) = await store.write(
                "a", accept_txn, [Intake("k", "web", "default", inbound)], store.sealer
            )
            await store.write(
                "h", set_conversation_txn, accepted.conversation_id, kind="handoff", actor="test"
            )
            return accepted.conversation_id

    cid = trio.run(seed)
    listed = gateway("conversations", "--config", str(config), "--status", "handoff", env=env)
    assert listed.returncode == 0, listed.stderr
    assert f"{cid:>6}  web" in listed.stdout and "handoff" in listed.stdout
    assert "secret words" not in listed.stdout  # no content in the switchboard
    released = gateway("conversations", "--config", str(config), "release", str(cid), env=env)
    assert released.returncode == 0 and "release done" in released.stdout
    after = gateway("conversations", "--config", str(config), env=env)
    assert "open" in after.stdout and "handoff" not in after.stdout
    shown = gateway("conversations", "--config", str(config), "show", str(cid), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "user: secret words" in shown.stdout and "intent=" not in shown.stdout
    missing = gateway("conversations", "--config", str(config), "release", "999", env=env)
    assert missing.returncode == 2 and "no conversation with id 999" in missing.stderr
