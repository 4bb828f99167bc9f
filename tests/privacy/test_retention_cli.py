"""``gateway retention`` and ``gateway holds`` as a sysadmin runs them, beside an open store (the
daemon's), with exit codes, clear errors and nothing changed by a bad command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.privacy.test_retention import open_env, seed

ENV = {"PATH": "/usr/bin:/bin", "COLUMNS": "200"}


def gateway(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )


async def test_holds_and_a_sweep_from_the_command_line(tmp_path):
    async with open_env(tmp_path) as env:
        config = tmp_path / "gateway.toml"
        held = await seed(env, days=200)
        free = await seed(env, days=200)

        async def redacted(conversation_id: int) -> Any:
            return await env.one(
                "SELECT count(*) FROM messages WHERE conversation_id = ? AND redacted_at IS NOT NULL",
                conversation_id,
            )

        # Holds: bad input changes nothing.
        for args, problem in (
            (("holds", "add", "--contact", "999", "--reason", "x"), "no contact 999"),
            (("holds", "add", "--contact", str(held.contact_id), "--reason", " "), "reason"),
            (("holds", "add", "--contact", str(held.contact_id)), "--reason"),
            (("holds", "release", "5", "--reason", "x"), "no legal hold 5"),
        ):
            result = gateway(config, *args)
            assert result.returncode == 2, (args, result.stdout)
            assert problem in result.stderr and "Traceback" not in result.stderr
        assert await env.one("SELECT count(*) FROM legal_holds") == 0

        added = gateway(
            config, "holds", "add", "--contact", str(held.contact_id), "--reason", "claim 17"
        )
        assert added.returncode == 0, added.stderr
        assert f"legal hold 1 placed on contact:{held.contact_id}" in added.stdout
        listed = gateway(config, "holds", "list")
        assert listed.returncode == 0 and "claim 17" in listed.stdout
        assert "cli:" in listed.stdout

        # A dry run: counts, changes nothing.
        preview = gateway(config, "retention", "run", "--dry-run", "--category", "message_content")
        assert preview.returncode == 0, preview.stderr
        assert "dry run: nothing changed" in preview.stdout and "would go" in preview.stdout
        row = next(line for line in preview.stdout.splitlines() if "message_content" in line)
        assert " 3 " in row and "dry-run" in row  # 3 would go, 3 held
        assert await redacted(free.conversation_id) == 0

        swept = gateway(config, "retention", "run", "--category", "message_content")
        assert swept.returncode == 0, swept.stderr
        assert await redacted(free.conversation_id) == 3
        assert await redacted(held.conversation_id) == 0
        act_file = tmp_path / "data" / "retention-acts" / "act-000002.json"
        assert f"act written to {act_file}" in swept.stdout
        document = json.loads(act_file.read_text())
        assert document["totals"] == {"records": 3, "held": 3}
        assert document["act"]["performed_by"].startswith("cli:")
        assert "message_content" in swept.stderr  # the progress bar

        listed_acts = gateway(config, "retention", "acts")
        assert listed_acts.returncode == 0
        assert "yes" in listed_acts.stdout and "done" in listed_acts.stdout
        out = tmp_path / "act.html"
        shown = gateway(
            config, "retention", "acts", "--show", "2", "--format", "html", "--output", str(out)
        )
        assert shown.returncode == 0, shown.stderr
        assert "Act of destruction of personal data No. 2" in out.read_text()
        as_json = gateway(config, "retention", "acts", "--show", "2")
        assert json.loads(as_json.stdout)["act"]["id"] == 2
        missing = gateway(config, "retention", "acts", "--show", "99")
        assert missing.returncode == 2 and "no retention act #99" in missing.stderr

        unknown = gateway(config, "retention", "run", "--category", "mesages")
        assert unknown.returncode == 2 and "unknown retention category" in unknown.stderr
        assert await env.one("SELECT count(*) FROM retention_acts") == 2

        released = gateway(config, "holds", "release", "1", "--reason", "settled")
        assert released.returncode == 0 and "released" in released.stdout
        again = gateway(config, "holds", "release", "1", "--reason", "settled")
        assert again.returncode == 2 and "already released" in again.stderr
        gateway(config, "retention", "run", "--category", "message_content")
        assert await redacted(held.conversation_id) == 3
