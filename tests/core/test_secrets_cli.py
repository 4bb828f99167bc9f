"""gateway secrets set / list / remove, and check-config naming what the admin UI added: a
sysadmin keeps a token in the encrypted vault and the config file names it as store:NAME."""

from __future__ import annotations

import subprocess
import sys

from gateway.keys import DATABASE_FILE, load_master_key
from gateway.store.db import connect
from gateway.store.migrations import migrations

CONFIG = (
    '[gateway]\ndata_dir = "data"\n[channels.web]\nplugin = "webchat"\n'
    '[agents.default]\nprovider = "faq"\n[providers.faq]\nplugin = "faq"\n'
)
WITH_MAX = CONFIG + '[channels.maxbot]\nplugin = "max"\ntoken = "store:max_token"\n'
ENV = {"PATH": "/usr/bin:/bin"}
TOKEN = "max-token-0123456789abcdef"


def gateway(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=ENV,
        input=stdin,
        timeout=60,
    )


def test_secret_set_from_stdin_is_used_by_the_config_and_never_printed(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text(CONFIG)
    made = gateway("keys", "init", "--to", "file", "--config", str(config))
    assert made.returncode == 0, made.stderr
    missing = gateway("secrets", "list", "--config", str(config))
    assert missing.returncode == 2 and "gateway init" in missing.stderr
    # The daemon's first start (or `gateway init`) creates and migrates the database.
    master = load_master_key(tmp_path / "data", environ={}, create=False)
    db = connect(tmp_path / "data" / DATABASE_FILE, master.derive("sqlcipher"))
    migrations.apply(db)
    db.conn.close()
    assert "the vault is empty" in gateway("secrets", "list", "--config", str(config)).stdout
    config.write_text(WITH_MAX)
    before = gateway("check-config", str(config))
    assert before.returncode == 2
    assert "gateway secrets set max_token" in before.stderr and "g.toml:11" in before.stderr
    stored = gateway("secrets", "set", "max_token", "--config", str(config), stdin=TOKEN + "\n")
    assert stored.returncode == 0, stored.stderr
    assert "store:max_token" in stored.stdout and TOKEN not in stored.stdout + stored.stderr
    checked = gateway("check-config", str(config))
    assert checked.returncode == 0, checked.stderr
    listed = gateway("secrets", "list", "--config", str(config))
    assert "max_token" in listed.stdout and "by cli:" in listed.stdout
    assert TOKEN not in listed.stdout + listed.stderr
    raw = (tmp_path / "data" / DATABASE_FILE).read_bytes()
    assert TOKEN.encode() not in raw
    removed = gateway("secrets", "remove", "max_token", "--config", str(config))
    assert removed.returncode == 0 and "removed max_token" in removed.stdout
    again = gateway("secrets", "remove", "max_token", "--config", str(config))
    assert again.returncode == 2 and "holds no secret" in again.stderr
    bad = gateway("secrets", "set", "../x", "--config", str(config), stdin="v")
    assert bad.returncode == 2 and "not a valid secret name" in bad.stderr
    empty = gateway("secrets", "set", "x", "--config", str(config), stdin="")
    assert empty.returncode == 2 and "no value given" in empty.stderr
