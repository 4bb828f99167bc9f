"""`gateway api projects|keys`: keys shown once and stored only as a keyed hash, scoped,
revocable, every change audited; clear errors for mistakes."""

from __future__ import annotations

import hashlib
import hmac
import re
import subprocess
import sys

from gateway.cli import main
from gateway.cli_db import open_database
from gateway.config import load_config
from gateway.devapi.keys import server_key
from gateway.plugin import load_registry

CONFIG = (
    '[gateway]\ndata_dir = "data"\n[channels.web]\nplugin = "webchat"\n'
    '[agents.default]\nprovider = "faq"\n[providers.faq]\nplugin = "faq"\n'
)


def test_projects_and_keys_from_the_command_line(tmp_path, capsys, monkeypatch):
    config = tmp_path / "g.toml"
    config.write_text(CONFIG)
    init = subprocess.run(
        [sys.executable, "-m", "gateway", "init", "--config", str(config)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    monkeypatch.delenv("GATEWAY_MASTER_KEY", raising=False)

    def gateway(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = gateway(
        "api", "projects", "add", "acme", "--title", "Acme Shop", "--config", str(config)
    )
    assert code == 0 and "/start acme" in out and "t.me/<your bot>?start=acme" in out
    code, _, err = gateway("api", "--config", str(config), "projects", "add", "acme")
    assert code == 2 and "exists already" in err
    code, _, err = gateway("api", "projects", "add", "STOP!", "-c", str(config))
    assert code == 2 and "not a project name" in err
    code, _, err = gateway("api", "projects", "add", "stop", "-c", str(config))
    assert code == 2 and "opt-out" in err

    code, out, _ = gateway(
        "api",
        "keys",
        "create",
        "acme",
        "--scopes",
        "notify,otp",
        "--rate",
        "20/s",
        "-c",
        str(config),
    )
    assert code == 0
    key = re.search(r"(sgw_\w{8}_[A-Za-z0-9_-]{43})", out).group(1)  # type: ignore[union-attr]
    prefix = key[:12]
    code, out, _ = gateway("api", "keys", "list", "-c", str(config))
    assert prefix in out and key not in out and "notify,otp" in out and "20/s" in out
    code, out, _ = gateway("api", "projects", "list", "-c", str(config))
    assert re.search(r"acme\s+Acme Shop\s+1\s+0", out), out

    loaded = load_config(config, load_registry(), defer_secrets=True)
    with open_database(loaded) as db:
        (stored,) = db.conn.execute("SELECT hash FROM api_keys").fetchall()
        expected = hmac.new(server_key(db.conn), key.encode(), hashlib.sha256).digest()
        assert bytes(stored[0]) == expected
        row = db.conn.execute("SELECT * FROM api_keys").fetchone()
        assert all(key.split("_", 2)[2] not in str(value) for value in row)

    for bad, words in (
        (["--scopes", "notify,admin"], "unknown scope"),
        (["--scopes", ""], "at least one scope"),
        (["--scopes", "otp", "--rate", "fast"], "not a rate"),
    ):
        code, _, err = gateway("api", "keys", "create", "acme", *bad, "-c", str(config))
        assert code == 2 and words in err, err
    code, _, err = gateway("api", "keys", "create", "nope", "--scopes", "otp", "-c", str(config))
    assert code == 2 and "gateway api projects add nope" in err

    code, out, _ = gateway("api", "keys", "revoke", prefix, "-c", str(config))
    assert code == 0 and "revoked" in out
    code, _, err = gateway("api", "keys", "revoke", key, "-c", str(config))
    assert code == 2 and "revoked already" in err
    code, out, _ = gateway("api", "keys", "list", "acme", "-c", str(config))
    assert "revoked" in out

    with open_database(loaded) as db:
        actions = [
            r[0]
            for r in db.conn.execute(
                "SELECT action FROM audit_log WHERE action LIKE 'api.%' ORDER BY id"
            )
        ]
        actors = {r[0] for r in db.conn.execute("SELECT actor FROM audit_log")}
        details = " ".join(str(r[0]) for r in db.conn.execute("SELECT detail FROM audit_log"))
    assert actions == ["api.project.add", "api.key.create", "api.key.revoke"]
    assert all(a.startswith("cli:") for a in actors) and key not in details
