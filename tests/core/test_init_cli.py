"""``gateway init``: the first-run wizard writes a commented config that loads, creates the
master key, the encrypted database and the owner, and prints next steps; interactively through
a real pseudo-terminal, and non-interactively from flags."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import cli
from gateway.config import load_config
from gateway.keys import load_master_key
from gateway.plugin import load_registry
from gateway.store.db import connect
from gateway.users import list_users

PASSWORD = "correct-horse-battery-staple"
GATEWAY = str(Path(sys.executable).with_name("gateway"))


def owners(data_dir: Path) -> list[str]:
    master = load_master_key(data_dir, create=False)
    db = connect(data_dir / "gateway.db", master.derive("sqlcipher"))
    try:
        return [u.email for u in list_users(db.conn) if u.role == "owner"]
    finally:
        db.conn.close()


def test_non_interactive_init_writes_a_config_that_loads_and_creates_the_owner(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    code = cli.main(
        [
            "init",
            "--config",
            "gw.toml",
            "--non-interactive",
            "--data-dir",
            str(tmp_path / "data"),
            "--channel",
            "webchat",
            "--provider",
            "faq",
            "--key-to",
            "file",
            "--owner-email",
            "Owner@Example.com",
            "--owner-password-stdin",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    text = (tmp_path / "gw.toml").read_text()
    assert text.startswith("# Sovereign Gateway, written by `gateway init`")
    assert 'plugin = "webchat"' in text and 'plugin = "faq"' in text
    config = load_config(tmp_path / "gw.toml", load_registry())
    assert set(config.channels) == {"main"}
    assert oct((tmp_path / "data" / "master.key").stat().st_mode & 0o777) == "0o600"
    assert owners(tmp_path / "data") == ["owner@example.com"]
    assert "otpauth://totp/" in out and "recovery codes" in out
    assert "next steps:" in out and "gateway doctor --config gw.toml" in out

    # Run again: nothing is overwritten or duplicated.
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    again = cli.main(
        ["init", "--config", "gw.toml", "--non-interactive", "--owner-email", "x@example.com"]
    )
    out = capsys.readouterr().out
    assert again == 0
    assert "master key already present" in out and "an owner exists already" in out
    assert (tmp_path / "gw.toml").read_text() == text
    assert owners(tmp_path / "data") == ["owner@example.com"]


def test_init_refuses_a_weak_owner_password_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    code = cli.main(
        [
            "init",
            "--config",
            "gw.toml",
            "--non-interactive",
            "--data-dir",
            "data",
            "--key-to",
            "file",
            "--owner-email",
            "a@example.com",
            "--owner-password-stdin",
        ]
    )
    assert code == 2
    assert "too short: use at least 12 characters" in capsys.readouterr().err
    assert owners(tmp_path / "data") == []


def test_secret_references_are_checked_but_not_needed_by_init(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = cli.main(
        [
            "init",
            "--config",
            "gw.toml",
            "--non-interactive",
            "--data-dir",
            "data",
            "--key-to",
            "file",
            "--channel",
            "telegram",
            "--provider",
            "openai",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "env:TELEGRAM_TOKEN" in out or "credential:telegram-token" in out
    # Running needs them: the normal load says which one is missing.
    with pytest.raises(Exception, match="OPENAI_API_KEY|openai-api-key"):
        load_config(tmp_path / "gw.toml", load_registry(), environ={})


def _expect(master: int, wanted: str, seen: list[str]) -> None:
    """Read the terminal until ``wanted`` appears (a 20 s deadline, not a sleep)."""
    buffer = ""
    while wanted not in buffer:
        ready, _, _ = select.select([master], [], [], 20)
        if not ready:
            raise AssertionError(f"no {wanted!r} on the terminal; got {buffer!r}")
        try:
            chunk = os.read(master, 4096).decode(errors="replace")
        except OSError:
            raise AssertionError(f"terminal closed before {wanted!r}; got {buffer!r}") from None
        buffer += chunk
    seen.append(buffer)


def test_interactive_wizard_on_a_real_terminal(tmp_path):
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "dumb"}
    proc = subprocess.Popen(
        [GATEWAY, "init", "--config", "wizard.toml", "--key-to", "file"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    seen: list[str] = []
    try:
        for prompt, answer in [
            ("data directory", str(tmp_path / "wdata")),
            ("public https URL", "https://gw.example.com"),
            ("first channel", "telegrm"),  # a typo: asked again
            ("please answer one of", "telegram"),
            ("model provider", ""),  # default: the offline FAQ
            ("email of the owner", "dpo@example.com"),
            ("password", PASSWORD),
            ("again", PASSWORD),
        ]:
            _expect(master, prompt, seen)
            os.write(master, answer.encode() + b"\n")
        _expect(master, "next steps:", seen)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    transcript = "".join(seen)
    assert PASSWORD not in transcript  # the password is never echoed
    text = (tmp_path / "wizard.toml").read_text()
    assert 'plugin = "telegram"' in text and 'public_url = "https://gw.example.com"' in text
    assert owners(tmp_path / "wdata") == ["dpo@example.com"]
