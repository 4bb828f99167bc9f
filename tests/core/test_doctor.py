"""``gateway doctor`` against the fake Telegram and fake OpenAI servers: a healthy setup reads
all OK (exit 0); each broken setup reads FAIL with a fix line (exit 2)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import doctor
from gateway.keys import DATABASE_FILE, KEY_FILE, load_master_key
from gateway.plugin import load_registry
from gateway.store import open_store
from gateway.testing.fake_openai import FakeOpenAIServer, open_fake_openai
from gateway.testing.fake_telegram import FakeTelegramServer, open_fake_telegram

TOKEN = "7770001:doctor-TEST_token-xyz"
OPENAI_KEY = "sk-doctor-test-key-0123"
ENV = {"TELEGRAM_TOKEN": TOKEN, "OPENAI_API_KEY": OPENAI_KEY}

CONFIG = """
[gateway]
data_dir = "data"
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
public_url = "https://gw.example.com"
[channels.support_bot]
plugin = "telegram"
agent = "default"
token = "env:TELEGRAM_TOKEN"
api_base = "{telegram}"
{telegram_extra}
[agents.default]
provider = "openai"
[providers.openai]
plugin = "openai"
base_url = "{openai}"
api_key = "env:OPENAI_API_KEY"
model = "fake-model"
"""


@contextlib.asynccontextmanager
async def fakes(token: str = TOKEN) -> AsyncIterator[tuple[FakeTelegramServer, FakeOpenAIServer]]:
    async with open_fake_telegram(token) as telegram, open_fake_openai(api_key=OPENAI_KEY) as ai:
        yield telegram, ai


async def setup(
    tmp_path: Path,
    telegram: FakeTelegramServer,
    openai_url: str,
    *,
    telegram_extra: str = "",
) -> Path:
    """A config file and an initialised data dir (key file + database), as `gateway init`."""
    path = tmp_path / "gateway.toml"
    path.write_text(
        CONFIG.format(telegram=telegram.api_base, openai=openai_url, telegram_extra=telegram_extra)
    )
    data = tmp_path / "data"
    master = load_master_key(data, environ={})
    async with open_store(data / DATABASE_FILE, master.derive("sqlcipher")):
        pass
    return path


async def diagnose(path: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    results = await doctor.diagnose(path, load_registry(), environ=env or ENV)
    return doctor.exit_code(results), doctor.render(results)


def line(output: str, name: str) -> str:
    found = [x for x in output.splitlines() if re.match(rf"(OK|WARN|FAIL) +{name}:", x)]
    assert len(found) == 1, f"no single {name!r} line in:\n{output}"
    return found[0]


def fix_after(output: str, name: str) -> str:
    lines = output.splitlines()
    index = lines.index(line(output, name))
    assert lines[index + 1].strip().startswith("fix: "), output
    return lines[index + 1].strip()


async def test_healthy_setup_is_all_ok(tmp_path):
    async with fakes() as (telegram, ai):
        path = await setup(tmp_path, telegram, ai.base_url)
        code, output = await diagnose(path)
    print(output)
    assert code == 0, output
    assert "WARN" not in output and "FAIL" not in output and "fix:" not in output
    for name in ("config", "data dir", "disk", "master key", "key file", "database", "clock"):
        assert line(output, name).startswith("OK  "), output
    assert "bot @fake_gateway_bot (id 7770001), polling" in line(output, "channel support_bot")
    assert "model 'fake-model' available" in line(output, "provider openai")
    assert "schema current" in line(output, "database")
    # Never a secret: not the master key, not the bot token, not the API key.
    key = (tmp_path / "data" / KEY_FILE).read_text().strip()
    for secret in (key, TOKEN, OPENAI_KEY):
        assert secret not in output


async def test_wrong_master_key_fails_the_database(tmp_path):
    async with fakes() as (telegram, ai):
        path = await setup(tmp_path, telegram, ai.base_url)
        code, output = await diagnose(path, {**ENV, "GATEWAY_MASTER_KEY": "ab" * 32})
    print(output)
    assert code == 2
    assert "found: environment variable GATEWAY_MASTER_KEY" in line(output, "master key")
    assert line(output, "database").startswith("FAIL")
    assert "does not open" in line(output, "database")
    assert "restore the key" in fix_after(output, "database")
    # The key file next to the database is not the one in use: worth a look.
    assert line(output, "key file").startswith("WARN")


async def test_bad_permissions_fail_with_chmod_fixes(tmp_path):
    async with fakes() as (telegram, ai):
        path = await setup(tmp_path, telegram, ai.base_url)
        data = tmp_path / "data"
        os.chmod(data / KEY_FILE, 0o644)
        os.chmod(data, 0o777)
        code, output = await diagnose(path)
    print(output)
    assert code == 2
    assert line(output, "master key").startswith("FAIL")
    assert fix_after(output, "master key") == f"fix: chmod 600 {data / KEY_FILE}"
    assert line(output, "database").endswith("not checked: it needs the master key")
    assert line(output, "data dir").startswith("FAIL")
    assert fix_after(output, "data dir") == f"fix: chmod 700 {data}"


async def test_group_readable_data_dir_is_a_warning(tmp_path):
    async with fakes() as (telegram, ai):
        path = await setup(tmp_path, telegram, ai.base_url)
        os.chmod(tmp_path / "data", 0o750)
        code, output = await diagnose(path)
    assert code == 1, output
    assert line(output, "data dir").startswith("WARN")


async def test_unreachable_provider_fails(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with fakes() as (telegram, _ai):
        path = await setup(tmp_path, telegram, f"http://127.0.0.1:{port}/v1")
        code, output = await diagnose(path)
    print(output)
    assert code == 2
    assert line(output, "provider openai").startswith("FAIL")
    assert f"cannot reach 127.0.0.1:{port}" in line(output, "provider openai")
    assert "[providers.openai]" in fix_after(output, "provider openai")
    assert line(output, "channel support_bot").startswith("OK")


async def test_provider_refusing_the_key_fails(tmp_path):
    async with fakes() as (telegram, ai):
        path = await setup(tmp_path, telegram, ai.base_url)
        code, output = await diagnose(path, {**ENV, "OPENAI_API_KEY": "sk-wrong-key-000"})
    assert code == 2, output
    assert "HTTP 401" in line(output, "provider openai")
    assert "check api_key" in line(output, "provider openai")


async def test_telegram_rejecting_the_token_fails(tmp_path):
    async with fakes(token="7770001:another-token-the-server-knows") as (telegram, ai):
        path = await setup(tmp_path, telegram, ai.base_url)
        code, output = await diagnose(path)
    print(output)
    assert code == 2
    assert line(output, "channel support_bot").startswith("FAIL")
    assert "Telegram rejected the bot token" in line(output, "channel support_bot")
    assert "[channels.support_bot]" in fix_after(output, "channel support_bot")
    assert TOKEN not in output


async def test_webhook_pointing_elsewhere_is_a_warning(tmp_path):
    async with fakes() as (telegram, ai):
        path = await setup(
            tmp_path,
            telegram,
            ai.base_url,
            telegram_extra='mode = "webhook"\nwebhook_secret = "env:HOOK_SECRET"',
        )
        telegram.webhook_url = "https://old.example.com/hook"
        code, output = await diagnose(path, {**ENV, "HOOK_SECRET": "hook-secret_1"})
        assert code == 1, output
        assert "posts updates to https://old.example.com/hook" in line(
            output, "channel support_bot"
        )
        telegram.webhook_url = "https://gw.example.com/webhooks/support_bot"
        code, output = await diagnose(path, {**ENV, "HOOK_SECRET": "hook-secret_1"})
    assert code == 0, output
    assert "webhook https://gw.example.com/webhooks/support_bot" in output


async def test_invalid_config_fails_first_and_alone(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text("[gateway]\nlog_levle = 'INFO'\n")
    code, output = await diagnose(path)
    assert code == 2
    assert output.splitlines()[0].startswith("FAIL  config:")
    assert "did you mean 'log_level'" in output


async def test_clock_behind_the_newest_record_warns(tmp_path):
    from gateway.store.db import connect

    async with fakes() as (telegram, ai):
        path = await setup(tmp_path, telegram, ai.base_url)
        data = tmp_path / "data"
        master = load_master_key(data, environ={})
        db = connect(data / DATABASE_FILE, master.derive("sqlcipher"))
        with db.conn:
            db.conn.execute(
                "INSERT INTO channel_state VALUES ('x', 'y', 'z')"
            )  # any write; then a record from the future
            db.conn.execute(
                "INSERT INTO contacts (created_at, updated_at) VALUES ('2999-01-01', '2999-01-01')"
            )
            db.conn.execute(
                "INSERT INTO conversations (channel, account, thread_key, contact_id, agent, "
                "created_at, last_message_at) VALUES ('c', 'a', 't', 1, 'default', '', '')"
            )
            db.conn.execute(
                "INSERT INTO messages (conversation_id, direction, text, author, created_at) "
                "VALUES (1, 'in', 'x', 'contact', '2999-01-01T00:00:00+00:00')"
            )
        db.conn.close()
        code, output = await diagnose(path)
    assert code == 1, output
    assert "went backwards" in line(output, "clock")
    assert "timedatectl" in fix_after(output, "clock")


def test_cli_prints_the_report_and_exits_with_its_status(tmp_path, capsys, monkeypatch):
    from gateway.cli import main

    path = tmp_path / "gateway.toml"
    path.write_text("[gateway]\nworkers = 0\n")
    assert main(["doctor", "--config", str(path)]) == 2
    out = capsys.readouterr().out
    assert out.startswith("FAIL  config:")
    assert "fix:" in out


@pytest.mark.parametrize("status", ["OK", "WARN", "FAIL"])
def test_exit_code_follows_the_worst_status(status):
    results = [doctor.Result("OK", "a", "fine"), doctor.Result(status, "b", "x", "do y")]
    assert doctor.exit_code(results) == {"OK": 0, "WARN": 1, "FAIL": 2}[status]
