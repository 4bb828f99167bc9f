"""The record of processing activities, generated from a real config and transfer log:
recipients with their regions, transfers abroad flagged against the home country, retention
from [retention], security measures; as JSON, Markdown and HTML from `gateway report`."""

from __future__ import annotations

import json

import pytest

from gateway import cli
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.keys import DATABASE_FILE
from gateway.privacy import audit, processing
from gateway.privacy.report_render import to_html, to_markdown
from gateway.store.db import connect
from tests.privacy.test_backup_support import CONFIG as BASE
from tests.privacy.test_backup_support import master, opened, registry

ENV = {"OPENAI_API_KEY": "sk-test"}
CONFIG = """
[gateway]
data_dir = "data"
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
public_url = "https://gw.example.ru"
[channels.site]
plugin = "webchat"
[channels.bot]
plugin = "fake"
agent = "eu"
[agents.default]
provider = "gpt"
failover = ["local"]
residency = { contact_details = ["local"] }
[agents.eu]
provider = "mistral"
[providers.gpt]
plugin = "openai"
api_key = "env:OPENAI_API_KEY"
model = "m1"
region = "US"
legal_basis = "consent"
[providers.mistral]
plugin = "openai"
api_key = "env:OPENAI_API_KEY"
model = "m1"
base_url = "https://api.mistral.example/v1"
region = "EU"
personal_data = true
[providers.mystery]
plugin = "openai"
api_key = "env:OPENAI_API_KEY"
model = "m1"
[providers.local]
plugin = "faq"
region = "local"
[privacy_record]
controller_name = "OOO Primer <script>alert(1)</script>"
controller_contact = "privacy@primer.example"
dpo_name = "I. Ivanova"
home_country = "ru"
transfer_safeguards = { US = "EU SCCs 2021/914; consent of the subject (152-FZ Art. 12)" }
[retention]
message_content_days = 30
[retention.channels.site]
attachments_days = 7
"""

TRANSFERS = [
    # provider, plugin, region, outcome, categories, redacted, count
    ("gpt", "openai", "US", "ok", ["message_text"], 1, 3),
    ("gpt", "openai", "US", "refused", [], 0, 1),
    ("mistral", "openai", "EU", "ok", ["message_text", "contact_names"], 0, 2),
    ("local", "faq", "local", "ok", ["message_text"], 0, 5),
]


async def make(tmp_path, text: str = CONFIG):
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    config = load_config(path, registry(), environ=ENV)
    async with opened(config) as store:

        def fill(db) -> None:
            for provider, plugin, region, outcome, cats, redacted, n in TRANSFERS:
                for i in range(n):
                    db.conn.execute(
                        "INSERT INTO transfers (at, agent, provider, plugin, region, purpose, "
                        "categories, redacted, bytes_out, bytes_in, outcome, duration_ms) "
                        "VALUES (?, 'default', ?, ?, ?, 'reply', ?, ?, 10, 10, ?, 5)",
                        (f"2026-0{i + 1}-01T00:00:00+00:00", provider, plugin, region,
                         json.dumps(cats), redacted, outcome),
                    )  # fmt: skip

        await store.write("transfers", fill)
    return config


def record_of(config):
    db = connect(config.data_dir / DATABASE_FILE, master(config).derive("sqlcipher"))
    try:
        return processing.build_record(config, db.conn)
    finally:
        db.conn.close()


async def test_recipients_and_transfers_abroad(tmp_path):
    record = record_of(await make(tmp_path))
    assert record["home_country"] == "RU"
    providers = {p["name"]: p for p in record["recipients"]["providers"]}
    assert providers["gpt"]["abroad"] is True and providers["gpt"]["agents"] == ["default"]
    assert providers["gpt"]["residency"] == {"default": {"contact_details": ["local"]}}
    assert providers["mistral"]["abroad"] is True and providers["mistral"]["personal_data"]
    assert providers["local"]["abroad"] is False and providers["local"]["agents"] == ["default"]
    assert providers["mystery"]["abroad"] is None  # region not stated: flagged as unknown
    assert record["recipients"]["platforms"] == ["fake"]  # webchat runs here: no platform
    summary = {t["provider"]: t for t in record["transfers"]["providers"]}
    assert (summary["gpt"]["calls"], summary["gpt"]["refused"], summary["gpt"]["redacted"]) == (
        3,
        1,
        3,
    )
    assert summary["mistral"]["categories"] == ["contact_names", "message_text"]
    assert summary["gpt"]["first"].startswith("2026-01") and summary["gpt"]["last"] >= "2026-03"
    assert [t["provider"] for t in record["transfers"]["abroad"]] == ["gpt", "mistral"]
    assert record["controller"]["name"].startswith("OOO Primer")


async def test_since_limits_the_transfer_counts(tmp_path):
    config = await make(tmp_path)
    db = connect(config.data_dir / DATABASE_FILE, master(config).derive("sqlcipher"))
    try:
        record = processing.build_record(config, db.conn, since="2026-02-01")
    finally:
        db.conn.close()
    summary = {t["provider"]: t["calls"] for t in record["transfers"]["providers"]}
    assert summary == {"gpt": 2, "mistral": 1, "local": 4}


async def test_retention_security_and_rendering(tmp_path):
    record = record_of(await make(tmp_path))
    periods = {p["category"]: p["days"] for p in record["retention"]["periods"]}
    assert periods["message content"] == 30 and periods["audit log"] == 365
    assert {"channel": "site", "category": "attachments", "days": 7} in record["retention"][
        "channel_overrides"
    ]
    security = "\n".join(record["security"])
    assert (
        "SQLCipher" in security and "TLS on the public endpoint (https://gw.example.ru)" in security
    )
    assert "Audit: every admin and privacy action in a hash-chained log; now intact" in security
    doc = processing.document(record)
    markdown = to_markdown(doc)
    assert "| gpt | openai | US | yes | redacted only | consent | default |" in markdown
    assert "gpt in US: 3 calls with message_text; safeguard: EU SCCs 2021/914" in markdown
    assert "mistral in EU: 2 calls" in markdown and "NOT DOCUMENTED" in markdown
    page = to_html(doc)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "<script>" not in markdown
    separators = [line for line in markdown.splitlines() if line.startswith("|---")]
    assert page.count("<table>") == len(separators) >= 4


async def test_without_tls_or_transfers_the_record_says_so(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(BASE)
    config = load_config(path, registry(), environ={})
    async with opened(config):
        pass
    record = record_of(config)
    assert "WARNING no https public_url" in "\n".join(record["security"])
    assert record["transfers"]["providers"] == [] and record["transfers"]["abroad"] == []
    sections = {s.title: s for s in processing.document(record).sections}
    assert "None recorded outside EU." in str(sections["Transfers to third countries"].blocks)


@pytest.mark.parametrize(
    ("region", "home", "abroad"),
    [
        ("local", "RU", False),
        ("RU", "RU", False),
        ("EU", "RU", True),
        ("US", "EU", True),
        ("DE", "EU", False),
        ("NO", "EU", False),  # EEA
        ("EU", "DE", False),
        ("FR", "DE", True),
        ("unspecified", "EU", None),
    ],
)
def test_is_abroad(region, home, abroad):
    assert processing.is_abroad(region, home) is abroad


def test_a_bad_home_country_is_a_config_error(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(BASE + '\n[privacy_record]\nhome_country = "Russia"\n')
    with pytest.raises(ConfigError, match="privacy_record.*home_country.*two-letter"):
        load_config(path, registry(), environ={})


async def test_the_report_command(tmp_path, capsys):
    config = await make(tmp_path)
    cfg = ["-c", str(tmp_path / "gateway.toml")]
    out = tmp_path / "ropa.html"
    # The CLI loads the real plugins only: `fake` is not one, so give it a config without it.
    (tmp_path / "gateway.toml").write_text(CONFIG.replace('plugin = "fake"', 'plugin = "webchat"'))
    assert cli.main(["report", "processing", "--format", "html", "-o", str(out), *cfg]) == 0
    assert out.read_text().startswith("<!doctype html>") and oct(out.stat().st_mode)[-3:] == "600"
    capsys.readouterr()
    assert cli.main(["report", "processing", "--format", "json", *cfg]) == 0
    assert json.loads(capsys.readouterr().out)["home_country"] == "RU"
    assert cli.main(["report", "processing", *cfg]) == 0
    assert capsys.readouterr().out.startswith("# Record of processing activities")
    db = connect(config.data_dir / DATABASE_FILE, master(config).derive("sqlcipher"))
    try:
        entries = list(audit.entries(db.conn, action_prefix="report."))
        assert [e.detail["format"] for e in entries] == ["html", "json", "md"]
    finally:
        db.conn.close()
