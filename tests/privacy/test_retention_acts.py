"""Destruction acts (content, files, audit extract), categories registered by a feature, a
failing category, the [retention] config and its errors, and the scheduler job."""

from __future__ import annotations

import collections
import functools
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.plugin import load_registry
from gateway.privacy import acts, audit, retention, retention_sweep
from gateway.privacy.holds import add_hold_txn
from gateway.privacy.retention import retention_config
from gateway.privacy.retention_categories import (
    _REGISTRY,
    Category,
    Rows,
    delete_rows,
    register_category,
)
from gateway.scheduler import Scheduler
from gateway.services import Services
from tests.privacy.test_retention import (
    NOW,
    Env,
    ago,
    by_name,
    open_env,
    seed,
    write_config,
)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_env(tmp_path, '[retention]\noperator = "Example Ltd, 1 Main St"\n') as e:
        yield e


async def test_the_act_says_what_went_whose_on_what_basis_with_the_audit_extract(env):
    old = await seed(env, days=100)
    held = await seed(env, days=100)
    await env.store.write(
        "hold",
        lambda db: add_hold_txn(
            db,
            conversation_id=held.conversation_id,
            reason="<script>alert(1)</script> claim",
            author="cli:dpo",
        ),
    )
    # Someone else's audit entry during the sweep window is not part of the act's extract.
    await env.store.write(
        "other", lambda db: audit.append_txn(db, actor="admin:x", action="login.ok")
    )
    result = await env.sweep(only=["message_content", "delivery_log"])
    document = await env.store.read("act", acts.load_act, result.act_id)
    section = retention_config(env.config)
    assert document["act"]["id"] == result.act_id and document["act"]["dry_run"] is False
    assert document["act"]["state"] == "done" and document["act"]["performed_by"] == "system"
    assert document["operator"] == "Example Ltd, 1 Main St"
    assert document["information_system"] == "Sovereign Gateway"
    assert document["policy"]["version"] == section.version()
    assert document["policy"]["settings"]["message_content_days"] == 90
    assert document["legal_basis"] == section.legal_basis
    assert document["totals"] == {"records": 3, "held": 3}
    content = document["categories"][0]
    assert content["name"] == "message_content" and content["records"] == 3
    assert content["held"] == 3 and content["basis"] == "message_content_days = 90"
    assert content["cutoff"] == ago(90) and content["action"] == "anonymised"
    assert document["subjects"] == {f"contact:{old.contact_id}": {"message_content": 3}}
    assert [h["conversation_id"] for h in document["legal_holds"]] == [held.conversation_id]
    actions = [e["action"] for e in document["audit_extract"]]
    assert actions == [
        "retention.sweep.start",
        "retention.category",
        "retention.category",
        "retention.sweep",
    ]
    assert all(e["target"] == f"retention-act:{result.act_id}" for e in document["audit_extract"])
    assert document["audit_extract"][-1]["detail"]["records"] == 3

    # Files: JSON equal to the document, HTML with the content escaped; both private.
    json_file, html_file = result.files
    assert json_file.name == f"act-{result.act_id:06d}.json"
    assert json.loads(json_file.read_text()) == document
    html = html_file.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; claim" in html and "<script>" not in html
    assert "Act of destruction of personal data" in html and "message_content_days = 90" in html
    for path in result.files:
        assert path.stat().st_mode & 0o777 == 0o600
    assert json_file.parent == env.config.data_dir / "retention-acts"


async def test_a_dry_run_act_says_so(env):
    await seed(env, days=100)
    result = await env.sweep(dry_run=True, only=["message_content"])
    document = await env.store.read("act", acts.load_act, result.act_id)
    assert document["act"]["dry_run"] is True and "dry run" in document["act"]["title"]
    assert document["categories"][0]["status"] == "dry-run"
    assert document["categories"][0]["records"] == 3 and document["subjects"] == {}
    assert "nothing was changed" in acts.render_html(document)


@pytest.fixture
def registered() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        _REGISTRY.pop(name, None)


async def test_a_feature_registers_its_own_category(env, registered):
    # What the developer API's form submissions do (a table of the test's own here).
    def create(db: Any) -> None:
        db.conn.execute(
            "CREATE TABLE feature_submissions (id INTEGER PRIMARY KEY, contact_id INTEGER, "
            "created_at TEXT NOT NULL, archived_at TEXT)"
        )
        for created, archived in ((ago(40), None), (ago(10), None), (ago(300), ago(190))):
            db.conn.execute(
                "INSERT INTO feature_submissions (contact_id, created_at, archived_at) VALUES (7, ?, ?)",
                (created, archived),
            )

    await env.store.write("forms", create)

    def archive(db: Any, scope: Any, ids: Any) -> collections.Counter[str]:
        marks = ",".join("?" * len(ids))
        db.conn.execute(
            f"UPDATE feature_submissions SET archived_at = ? WHERE id IN ({marks})",
            [scope.now, *ids],
        )
        return collections.Counter({"contact:7": len(ids)})

    register_category(
        Category(
            name="test_forms_active",
            key="form_submissions_active_days",
            title="Form submissions",
            action="archived",
            what="moved to the archive",
            rows=Rows(
                "feature_submissions f",
                "f.id",
                lambda s: (f"f.archived_at IS NULL AND {s.older('f.created_at')[0]}", [s.cutoff]),
                contact="f.contact_id",
            ),
            apply=archive,
        )
    )
    register_category(
        Category(
            name="test_forms_archive",
            key="form_submissions_archive_days",
            title="Form submissions (archive)",
            action="deleted",
            what="every field",
            rows=Rows(
                "feature_submissions f",
                "f.id",
                lambda s: s.older("f.archived_at"),
                contact="f.contact_id",
            ),
            apply=delete_rows("feature_submissions", subject="contact_id"),
        )
    )
    registered += ["test_forms_active", "test_forms_archive"]
    result = await env.sweep(only=["test_forms_active", "test_forms_archive"])
    found = by_name(result)
    assert found["test_forms_active"].records == 1
    assert found["test_forms_archive"].records == 1
    rows = await env.rows("SELECT created_at, archived_at FROM feature_submissions ORDER BY id")
    assert rows == [(ago(40), NOW.isoformat(timespec="microseconds")), (ago(10), None)]


async def test_a_failing_category_is_recorded_and_the_others_still_run(env, registered):
    await seed(env, days=100)

    def broken(db: Any, scope: Any, ids: Any) -> Any:
        raise RuntimeError("disk on fire")

    register_category(
        Category(
            name="broken",
            key="message_content_days",
            title="Broken",
            action="deleted",
            what="-",
            rows=Rows("messages m", "m.id", lambda s: ("1", [])),
            apply=broken,
        )
    )
    registered.append("broken")
    result = await env.sweep(only=["broken", "message_content"])
    found = by_name(result)
    assert found["broken"].status == "failed" and "disk on fire" in found["broken"].reason
    assert found["message_content"].records == 3
    assert await env.one("SELECT state FROM retention_acts WHERE id = ?", result.act_id) == "failed"
    outcomes = await env.rows(
        "SELECT outcome FROM audit_log WHERE action = 'retention.category' ORDER BY id"
    )
    assert outcomes == [("ok",), ("failed",)]  # registry order: built-ins first


async def test_an_unknown_category_is_refused_before_anything_runs(env):
    from gateway.errors import GatewayError

    with pytest.raises(GatewayError, match="unknown retention category 'mesages'.*message_content"):
        await env.sweep(only=["mesages"])
    assert await env.one("SELECT count(*) FROM retention_acts") == 0


# Config -----------------------------------------------------------------------------------------


def load(tmp_path: Path, extra: str) -> Any:
    return load_config(write_config(tmp_path, extra), load_registry())


def test_defaults_and_overrides(tmp_path):
    section = retention_config(load(tmp_path, ""))
    assert (section.message_content_days, section.delivery_log_days) == (90, 180)
    assert (section.audit_log_days, section.form_submissions_active_days) == (365, 30)
    assert section.form_submissions_archive_days == 180 and section.sweep_interval_hours == 24
    changed = retention_config(
        load(
            tmp_path,
            "[retention]\naudit_log_days = 730\n[retention.channels.shop]\ncall_logs_days = 7\n",
        )
    )
    assert (
        changed.days("call_logs_days", "shop") == 7 and changed.days("call_logs_days", "web") == 90
    )
    assert changed.days("audit_log_days") == 730
    assert changed.version() != section.version()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "[retention]\nmessage_contents_days = 30\n",
            ["[retention]", "message_contents_days", "did you mean 'message_content_days'"],
        ),
        (
            "[retention]\naudit_log_days = -1\n",
            ["[retention]", "audit_log_days", "greater than or equal to 0"],
        ),
        ("[retention]\nlive_share = 1\n", ["[retention]", "live_share", "less than 1"]),
        (
            "[retention.channels.shop]\nmesage_content_days = 3\n",
            [
                "[retention]",
                "unknown retention key 'mesage_content_days'",
                "[retention.channels.shop]",
                "did you mean 'message_content_days'",
            ],
        ),
        (
            "[retention.channels.shop]\naudit_log_days = 3\n",
            ["[retention.channels.shop]: audit_log_days cannot be set per channel"],
        ),
    ],
)
def test_bad_retention_config_names_file_table_and_key(tmp_path, extra, expected):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, extra)
    message = str(caught.value)
    assert str(tmp_path / "gateway.toml") in message
    for part in expected:
        assert part in message


def test_a_channel_that_does_not_exist_is_named_with_its_line(tmp_path):
    # Caught by the config loader itself (so by `gateway check-config`), which passes the
    # configured channel names to the section's validator.
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "[retention]\n[retention.channels.shopp]\nmessage_content_days = 3\n")
    message = str(caught.value)
    assert f"gateway.toml:{BASE_LINES + 1} [retention]" in message
    assert "[retention.channels.shopp] names no configured channel" in message
    assert "did you mean 'shop'" in message and "shop, web" in message


BASE_LINES = len(write_config.__globals__["BASE_CONFIG"].splitlines())


# Scheduler --------------------------------------------------------------------------------------


def test_the_daemon_sweeps_daily_on_the_scheduler(tmp_path):
    """The job retention.install registers: first run 10 minutes after start, then every
    sweep_interval_hours after the previous run ended; disabled by a reload, it skips."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    runs: list[tuple[float, float, Any]] = []

    async def main() -> None:
        async with open_env(tmp_path) as env:
            await seed(env, days=100)
            scheduler = Scheduler()
            services = Services(env.config, env.store, None, None, scheduler, None)  # type: ignore[arg-type]
            retention.install(services)
            job = scheduler.jobs["retention sweep"]
            assert job.interval == 24 * 3600
            original = job.fn
            finished: trio.MemoryObjectSendChannel[None]
            finished, done = trio.open_memory_channel[None](10)

            async def observed() -> Any:
                start = trio.current_time()
                result = await original()
                runs.append((start, trio.current_time(), result))
                finished.send_nowait(None)
                return result

            job.fn = observed
            async with trio.open_nursery() as nursery:
                await nursery.start(scheduler.run)
                await done.receive()
                await done.receive()
                disabled = load_config(
                    write_config(tmp_path, "[retention]\nenabled = false\n"), load_registry()
                )
                services.config = disabled
                await done.receive()
                nursery.cancel_scope.cancel()
            assert await env.one("SELECT count(*) FROM retention_acts") == 2
            assert await env.one("SELECT count(*) FROM messages WHERE redacted_at IS NULL") == 0

    trio.run(main, clock=clock)
    (s1, e1, r1), (s2, e2, r2), (s3, _e3, r3) = runs
    assert s1 == 600
    assert s2 - e1 == pytest.approx(24 * 3600) and s3 - e2 == pytest.approx(24 * 3600)
    assert by_name(r1)["message_content"].records == 3 and r2.records == 0 and r3 is None


def test_the_section_checks_channel_names_when_the_loader_passes_them():
    from pydantic import ValidationError

    from gateway.privacy.retention import RetentionSection

    with pytest.raises(ValidationError, match="names no configured channel; did you mean 'shop'"):
        RetentionSection.model_validate(
            {"channels": {"shopp": {}}}, context={"channels": {"shop", "web"}}
        )
    ok = RetentionSection.model_validate(
        {"channels": {"shop": {"call_logs_days": 1}}}, context={"channels": {"shop"}}
    )
    assert ok.days("call_logs_days", "shop") == 1


REPOSITORY = Path(__file__).resolve().parents[2]
KILLED_SWEEP = """\
import sys, time
from pathlib import Path

import trio

from gateway.privacy.retention_categories import Category, Rows, register_category
from tests.privacy.test_retention import open_env


def stuck(scope):
    print("stuck", flush=True)  # message_content is done and recorded; now wait to be killed
    time.sleep(3600)
    return "1", []


register_category(
    Category(
        name="stuck",
        key="message_content_days",
        title="Stuck",
        action="deleted",
        what="-",
        rows=Rows("messages m", "m.id", stuck),
        apply=lambda db, scope, ids: None,
    )
)


async def main():
    async with open_env(Path(sys.argv[1])) as env:
        await env.sweep(only=["message_content", "stuck"])


trio.run(main)
"""


async def test_an_act_left_running_by_a_killed_sweep_is_closed_by_the_next_one(env, tmp_path):
    # A sweep from the command line beside the daemon, killed -9 half-way: its act must not say
    # 'running' for ever, and what it removed before dying must stay on record.
    await seed(env, days=100)
    await env.execute(  # an act from before m018 recorded runners, left running
        "INSERT INTO retention_acts (started_at, state, dry_run, actor, policy_version, policy, "
        "legal_basis) VALUES ('2026-01-01T00:00:00+00:00', 'running', 0, 'cli:old', 'v', '{}', '')"
    )
    async with trio.open_nursery() as nursery:
        child = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-c", KILLED_SWEEP, str(tmp_path)],
                stdout=subprocess.PIPE,
                cwd=REPOSITORY,
                check=False,
            )
        )
        assert child.stdout is not None
        with trio.fail_after(60):
            said = b""
            while b"stuck" not in said:
                chunk = await child.stdout.receive_some()
                assert chunk, "the sweep process ended before it got stuck (see its stderr)"
                said += chunk
        (killed,) = await env.rows("SELECT id, runner FROM retention_acts WHERE actor = 'system'")
        assert retention_sweep.runner_alive(killed[1])

        # While it runs, another sweep leaves its act alone and closes only the orphan.
        other = await env.sweep(only=["delivery_log"])
        states = dict(await env.rows("SELECT id, state FROM retention_acts ORDER BY id"))
        assert states == {1: "interrupted", killed[0]: "running", other.act_id: "done"}

        child.kill()  # SIGKILL: no finally, no 'interrupted' written by the sweep itself
        await child.wait()
    assert not retention_sweep.runner_alive(killed[1])
    last = await env.sweep(only=["delivery_log"])
    row = await env.rows(
        "SELECT state, finished_at IS NOT NULL, records, categories FROM retention_acts "
        "WHERE id = ?",
        killed[0],
    )
    state, finished, records, categories = row[0]
    assert (state, finished, records) == ("interrupted", 1, 3)
    assert [c["name"] for c in json.loads(categories)] == ["message_content"]
    entries = await env.rows(
        "SELECT actor, outcome, detail FROM audit_log WHERE action = 'retention.sweep' "
        "AND target = ?",
        f"retention-act:{killed[0]}",
    )
    ((actor, outcome, detail),) = entries
    assert (actor, outcome) == ("system", "failed")
    assert json.loads(detail)["state"] == "interrupted"
    assert "ended without finishing it (killed or crashed" in json.loads(detail)["reason"]
    document = await env.store.read("act", acts.load_act, killed[0])
    assert document["act"]["state"] == "interrupted" and document["totals"]["records"] == 3
    assert (await env.one("SELECT state FROM retention_acts WHERE id = ?", last.act_id)) == "done"
