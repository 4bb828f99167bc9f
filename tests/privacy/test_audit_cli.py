"""`gateway audit verify | show | export` on a real data directory: exit codes and where the
chain broke, filters, and exports a DPO can check (with the verification beside them)."""

from __future__ import annotations

import csv
import io
import json

from gateway import cli
from gateway.keys import DATABASE_FILE
from gateway.privacy import audit
from gateway.store.db import connect
from tests.privacy.test_backup_support import master, opened, write_config


async def setup(tmp_path, n: int = 8):
    config = write_config(tmp_path)
    async with opened(config) as store:
        for i in range(n):
            await store.write(
                "audit",
                audit.append_txn,
                actor=("admin:ann@example.com", "system")[i % 2],
                action=("privacy.export", "login.ok")[i % 2],
                target=f"contact:{i}",
                detail={"i": i, "note": "naïve, with a comma"},
            )
    return config, ["-c", str(tmp_path / "gateway.toml")]


def raw_sql(config, sql: str, *args) -> None:
    db = connect(config.data_dir / DATABASE_FILE, master(config).derive("sqlcipher"))
    try:
        db.conn.execute(sql, args)
        db.conn.commit()
    finally:
        db.conn.close()


async def test_verify_exit_codes_and_where(tmp_path, capsys):
    config, cfg = await setup(tmp_path)
    assert cli.main(["audit", "verify", *cfg]) == 0
    out = capsys.readouterr().out
    assert "audit log intact: 8 entries checked; head id 8 hash" in out
    head = out.split("hash ")[-1].strip()

    raw_sql(config, "UPDATE audit_log SET target = 'contact:99' WHERE id = 3")
    assert cli.main(["audit", "verify", *cfg]) == 1
    out = capsys.readouterr().out
    assert "BROKEN at entry 3: its content was changed" in out
    assert "last good entry: id 2" in out

    raw_sql(config, "UPDATE audit_log SET target = 'contact:2' WHERE id = 3")  # put back
    assert cli.main(["audit", "verify", *cfg]) == 0
    capsys.readouterr()
    raw_sql(config, "DELETE FROM audit_log WHERE id = 5")
    assert cli.main(["audit", "verify", *cfg]) == 1
    assert "BROKEN at entry 5: entries 5..5 are missing" in capsys.readouterr().out

    # The newest entries cut off: only the noted head tells.
    raw_sql(config, "DELETE FROM audit_log WHERE id >= 5")
    assert cli.main(["audit", "verify", *cfg]) == 0
    capsys.readouterr()
    assert cli.main(["audit", "verify", "--expect-head", head, *cfg]) == 1
    assert f"the expected head {head} is not in the log" in capsys.readouterr().out


async def test_truncation_then_verify(tmp_path, capsys):
    config, cfg = await setup(tmp_path)
    async with opened(config) as store:
        cutoff = await store.read(
            "at", lambda db: db.conn.execute("SELECT at FROM audit_log WHERE id = 5").fetchone()[0]
        )
        assert await store.write("truncate", audit.truncate_before_txn, cutoff) == 4
    assert cli.main(["audit", "verify", *cfg]) == 0
    assert "intact: 5 entries checked; head id 9" in capsys.readouterr().out
    raw_sql(config, "DELETE FROM audit_log WHERE id = 5")  # the first after the anchor
    assert cli.main(["audit", "verify", *cfg]) == 1
    assert "BROKEN at entry 5" in capsys.readouterr().out


async def test_show_filters(tmp_path, capsys):
    _, cfg = await setup(tmp_path)
    assert cli.main(["audit", "show", "--action", "privacy.", "--limit", "2", *cfg]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["5", "7"]  # newest two, oldest first
    assert all("privacy.export" in line for line in lines)
    assert cli.main(["audit", "show", "--actor", "system", "--target", "contact:3", *cfg]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.split()[0] == "4" and '"i": 3' in line
    assert cli.main(["audit", "show", "--since", "2999-01-01", *cfg]) == 0
    assert "no audit entries match" in capsys.readouterr().out
    assert cli.main(["audit", "show", "--limit", "0", *cfg]) == 2


async def test_export_jsonl_and_csv_with_the_verification_beside(tmp_path, capsys):
    config, cfg = await setup(tmp_path)
    out = tmp_path / "audit.jsonl"
    assert cli.main(["audit", "export", "--format", "jsonl", "--output", str(out), *cfg]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(1, 9))
    assert rows[2]["detail"] == {"i": 2, "note": "naïve, with a comma"}
    side = json.loads((tmp_path / "audit.jsonl.verification.json").read_text())
    assert side["ok"] is True and side["entries_exported"] == 8
    assert side["last_entry"] == {"id": 8, "hash": rows[-1]["hash"]}
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    # The export itself is audited (after the exported range), and the chain still holds.
    db = connect(config.data_dir / DATABASE_FILE, master(config).derive("sqlcipher"))
    try:
        last = list(audit.entries(db.conn))[-1]
        assert last.action == "audit.export" and last.detail["entries"] == 8
        assert audit.verify(db.conn).ok
    finally:
        db.conn.close()

    raw_sql(config, "UPDATE audit_log SET actor = 'admin:eve' WHERE id = 2")
    out_csv = tmp_path / "audit.csv"
    assert cli.main(["audit", "export", "--format", "csv", "--output", str(out_csv), *cfg]) == 1
    table = list(csv.DictReader(io.StringIO(out_csv.read_text(encoding="utf-8"), newline="")))
    assert len(table) == 9 and table[1]["actor"] == "admin:eve"  # a broken log exports in full
    assert json.loads(table[0]["detail"]) == {"i": 0, "note": "naïve, with a comma"}
    side = json.loads((tmp_path / "audit.csv.verification.json").read_text())
    assert side["ok"] is False and side["first_bad_id"] == 2
    assert "content was changed" in side["problem"]
    capsys.readouterr()
    assert cli.main(["audit", "export", *cfg]) == 2
    assert "needs --output" in capsys.readouterr().err
