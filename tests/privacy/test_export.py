"""Export: the ZIP against its own documented schema, its contents, the audit, bad input, and
memory that does not grow with the number of messages."""

from __future__ import annotations

import csv
import io
import json
import sys
import tracemalloc
import zipfile
from pathlib import Path

import jsonschema
import pytest
import trio

from gateway.config import load_config
from gateway.messages import Inbound
from gateway.plugin import Registry
from gateway.privacy import audit
from gateway.privacy import requests as reg
from gateway.privacy.erasure import erase_contact_txn
from gateway.privacy.export import record_export_txn, write_export
from gateway.privacy.export_schema import FILES
from gateway.privacy.requests import RequestError
from gateway.store.journal import Intake, accept_txn
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider

from ._dsr import ACCOUNT, SECRET_FILE, SECRET_TEXT, open_db, populate

BENCH = Path(__file__).resolve().parents[2] / "bench" / "export.py"
CONFIG = """
[gateway]
data_dir = "data"
[privacy]
controller = "Example Ltd, 1 Main St"
privacy_contact = "dpo@example.com"
[channels.tg]
plugin = "fake"
[agents.default]
provider = "main"
[providers.main]
plugin = "fake"
region = "EU"
personal_data = false
"""


@pytest.fixture
def d(tmp_path):
    d = open_db(tmp_path)
    yield d
    d.db.conn.close()


@pytest.fixture
def config(tmp_path):
    registry = Registry()
    registry.add("channel", "fake", FakeChannel)
    registry.add("llm", "fake", FakeProvider)
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG)
    # The store here is opened with a key of its own (open_db), not one the config can find.
    return load_config(path, registry, managed="skip")


def read_zip(path):
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_export_matches_its_documented_schema_and_holds_everything(d, config, tmp_path):
    subject = populate(d)
    populate(d, sender="user-55502", name="Bob Bystander")
    out = tmp_path / "ann.zip"
    summary = write_export(d.conn, d.sealer, subject.contact_id, out, config=config)
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    files = read_zip(out)
    schema = json.loads(files["schema.json"])
    for name, spec in FILES.items():
        data = json.loads(files[f"{name}.json"])
        jsonschema.validate(data, schema["files"][f"{name}.json"])
        rows = list(csv.reader(io.StringIO(files[f"{name}.csv"].decode())))
        assert rows[0] == [f[0] for f in spec["fields"]]
        assert len(rows) - 1 == len(data) == summary.counts[name], name
        assert f"## {name}.json" in files["README.md"].decode()
    messages = json.loads(files["messages.json"])
    assert len(messages) == 5 and any(SECRET_TEXT in m["text"] for m in messages)
    assert (
        "Bob" not in json.dumps(messages) and "user-55502" not in files["identities.json"].decode()
    )
    assert {i["channel"] for i in json.loads(files["identities.json"])} == {"tg", "wa"}
    (analysed,) = json.loads(files["analysis.json"])
    assert analysed["intent"] == "question" and analysed["category"] == "billing"
    attachments = json.loads(files["attachments.json"])
    document = next(a for a in attachments if a["kind"] == "document")
    assert files[document["file"]] == SECRET_FILE
    voicemail = next(a for a in attachments if a["kind"] == "audio")
    assert files[voicemail["file"]] == b"VOICEMAIL" * 50 and voicemail["event_id"]
    (event,) = json.loads(files["events.json"])
    assert event["kind"] == "call" and event["detail"] == {"duration": 31}
    (consent,) = json.loads(files["consents.json"])
    assert (consent["purpose"], consent["state"], consent["source"]) == (
        "messages", "withdrawn", "keyword:STOP")  # fmt: skip
    (transfer,) = json.loads(files["transfers.json"])
    assert (transfer["provider"], transfer["region"], transfer["categories"]) == (
        "main", "EU", ["message_text"])  # fmt: skip
    text = files["summary.txt"].decode()
    for expected in (
        "Example Ltd, 1 Main St",
        "dpo@example.com",
        "AI provider main (fake), region EU: receives text with personal details replaced",
        "Messaging platform of channel tg",
        "5 message(s)",
        "Marketing: messages we start ourselves (you said no)",
        "main (region EU): 1 time(s)",
        "/mydata or /forgetme",
    ):
        assert expected in text, expected


def test_export_is_audited_and_completes_its_request(d, config, tmp_path):
    subject = populate(d)
    r = d.txn(reg.create_request_txn, kind="portability", channel="chat", actor="contact:1",
              contact_id=subject.contact_id)  # fmt: skip
    with pytest.raises(RequestError, match="not verified"):
        write_export(d.conn, d.sealer, subject.contact_id, tmp_path / "x.zip", request_id=r.id)
    d.txn(reg.verify_request_txn, r.id, verified=True, method="platform identity", actor="cli:t")
    summary = write_export(
        d.conn, d.sealer, subject.contact_id, tmp_path / "x.zip", config=config, request_id=r.id
    )
    d.txn(record_export_txn, summary, actor="cli:t", request_id=r.id)
    done = reg.get_request(d.conn, r.id)
    assert done.status == "completed" and done.outcome["export"]["sha256"] == summary.sha256
    entry = next(audit.entries(d.conn, action_prefix="privacy.export"))
    assert entry.detail["messages"] == 5 and entry.target == f"contact:{subject.contact_id}"
    requests = json.loads(read_zip(tmp_path / "x.zip")["requests.json"])
    assert [(x["kind"], x["verification"]) for x in requests] == [("portability", "verified")]


def test_bad_exports_write_nothing(d, tmp_path):
    subject = populate(d)
    other = populate(d, sender="user-55502", name="Bob")
    with pytest.raises(RequestError, match="no contact with id 404"):
        write_export(d.conn, d.sealer, 404, tmp_path / "a.zip")
    with pytest.raises(RequestError, match=r"name it \*\.zip"):
        write_export(d.conn, d.sealer, subject.contact_id, tmp_path / "a.tar")
    with pytest.raises(RequestError, match="does not exist"):
        write_export(d.conn, d.sealer, subject.contact_id, tmp_path / "no" / "a.zip")
    r = d.txn(reg.create_request_txn, kind="access", channel="cli", actor="cli:t",
              contact_id=other.contact_id)  # fmt: skip
    with pytest.raises(RequestError, match="about contact"):
        write_export(d.conn, d.sealer, subject.contact_id, tmp_path / "a.zip", request_id=r.id)
    d.txn(erase_contact_txn, d.sealer, subject.contact_id, actor="cli:t", basis="test")
    with pytest.raises(RequestError, match="was erased"):
        write_export(d.conn, d.sealer, subject.contact_id, tmp_path / "a.zip")
    assert list(tmp_path.glob("*.zip")) == [] and list(tmp_path.glob(".*tmp")) == []


def add_messages(d, sender, start, count):
    items = [
        Intake(
            d.dedupe_key("tg", f"{sender}-bulk-{n}"),
            "tg",
            "default",
            Inbound(ACCOUNT, f"{sender}-bulk-{n}", f"chat-{sender}", sender, f"message {n} " * 20),
        )
        for n in range(start, start + count)
    ]
    d.txn(accept_txn, items, d.sealer)


def peak_of_export(d, contact_id, path):
    tracemalloc.start()
    try:
        write_export(d.conn, d.sealer, contact_id, path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_messages(d, tmp_path):
    subject = populate(d)
    add_messages(d, "user-77731", 0, 1_000)
    small = peak_of_export(d, subject.contact_id, tmp_path / "small.zip")
    add_messages(d, "user-77731", 1_000, 7_000)
    large = peak_of_export(d, subject.contact_id, tmp_path / "large.zip")
    with zipfile.ZipFile(tmp_path / "large.zip") as zf:
        assert len(json.loads(zf.read("messages.json"))) == 8_005
    # 8x the messages, the same peak (a list of all messages would add ~2 MB of Python
    # objects per 7,000 of these; measured here: 696 kB and 701 kB).
    assert large < small + 150_000, (small, large)


async def test_bench_export_runs_and_reports_its_figures():
    """bench/export.py as a user runs it, tiny: the report's shape, no speed asserted."""
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, str(BENCH), "--messages", "330", "--json"], capture_stdout=True
        )
    result = json.loads(done.stdout)
    assert result["messages"] == 330
    assert {"export_seconds", "cpu_seconds", "zip_mb", "peak_rss_mb"} <= set(result)
