"""The data-subject commands from a shell, on the database a real daemon wrote: requests add /
list / show / verify / extend / close, export, rectify, restrict, object, consent, erase."""

from __future__ import annotations

import json
import zipfile

import pytest

from gateway.cli import main
from gateway.plugin import load_registry
from gateway.testing.daemon import http_config, open_gateway, openai_agent_config
from gateway.testing.fake_openai import open_fake_openai
from gateway.testing.fake_telegram import open_fake_telegram

TOKEN = "123456:DSR-cli-token"
ENV = {"TELEGRAM_TOKEN": TOKEN, "OPENAI_API_KEY": "sk-dsr"}


@pytest.fixture
async def gateway_toml(tmp_path):
    """A config whose database holds two Telegram users' conversations (the daemon stopped)."""
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        text = (
            http_config(0, public_url=False)
            + f"""
[channels.support_bot]
plugin = "telegram"
token = "env:TELEGRAM_TOKEN"
api_base = "{tg.api_base}"
"""
            + openai_agent_config(llm.base_url)
        )
        async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
            tg.push_message(501, "hello, I am Olga", first_name="Olga")
            tg.push_message(502, "hi from Petr", first_name="Petr")
            await tg.wait_sent(2)
            await gw.wait_idle()
    return str(tmp_path / "gateway.toml")


def run(capsys, config, *argv):
    code = main([*argv, "--config", config])
    out = capsys.readouterr()
    return code, out.out + out.err


async def test_a_request_from_registration_to_export(gateway_toml, capsys, tmp_path):
    code, out = run(capsys, gateway_toml, "requests", "add", "--type", "access", "--contact", "1",
                    "--received", "2026-11-20", "--details", "all my chats")  # fmt: skip
    assert code == 0 and "request #1 registered" in out and "unverified" in out
    code, out = run(capsys, gateway_toml, "requests", "list")
    assert "#1" in out and "access" in out and "contact 1" in out
    code, out = run(capsys, gateway_toml, "export", "1", "--output", str(tmp_path / "o.zip"),
                    "--request", "1")  # fmt: skip
    assert code == 2 and "not verified" in out and not (tmp_path / "o.zip").exists()
    code, out = run(capsys, gateway_toml, "requests", "verify", "1", "--method", "id document")
    assert code == 0 and "verified" in out
    code, out = run(capsys, gateway_toml, "export", "1", "--output", str(tmp_path / "o.zip"),
                    "--request", "1")  # fmt: skip
    assert code == 0 and "2 messages" in out
    with zipfile.ZipFile(tmp_path / "o.zip") as zf:
        texts = [m["text"] for m in json.loads(zf.read("messages.json"))]
    assert texts == ["hello, I am Olga", "echo: hello, I am Olga"]
    code, out = run(capsys, gateway_toml, "requests", "show", "1", "--json")
    shown = json.loads(out)
    assert shown["status"] == "completed" and shown["details"] == {"note": "all my chats"}
    assert [e["event"] for e in shown["events"]] == ["created", "verified", "status"]
    code, out = run(capsys, gateway_toml, "requests", "list")
    assert "no requests" in out
    code, out = run(capsys, gateway_toml, "requests", "list", "--all", "--json")
    assert [r["id"] for r in json.loads(out)] == [1]


async def test_extend_close_and_bad_input(gateway_toml, capsys):
    run(capsys, gateway_toml, "requests", "add", "--type", "erasure", "--requester", "Ann <a@x>")
    code, out = run(capsys, gateway_toml, "requests", "extend", "1", "--gdpr-months", "2",
                    "--reason", "identity to be checked by post")  # fmt: skip
    assert code == 0
    code, out = run(capsys, gateway_toml, "requests", "extend", "1", "--ru", "--notice", "letter")
    assert code == 0
    code, out = run(capsys, gateway_toml, "requests", "show", "1")
    assert "GDPR extended by 2 month(s): identity to be checked by post" in out
    assert "152-FZ extended by 5 working days: letter" in out
    code, out = run(capsys, gateway_toml, "requests", "close", "1", "--status", "refused",
                    "--note", "could not verify")  # fmt: skip
    assert code == 0 and "refused" in out
    for argv, error in [
        (("requests", "close", "1", "--status", "withdrawn"), "already refused"),
        (("requests", "show", "9"), "no data-subject request #9"),
        (("requests", "add", "--type", "access"), "needs the contact"),
        (("requests", "add", "--type", "access", "--contact", "7"), "no contact with id 7"),
        (("requests", "add", "--type", "access", "--contact", "1", "--received", "soon"),
         "ISO date"),
        (("requests", "verify", "1"), "needs --method"),
        (("rectify", "1", "--language", "Russian"), "not a language code"),
        (("consent", "withdraw", "1"), "needs --purpose"),
        (("erase", "1", "--basis", "x"), "add --yes"),
        (("erase", "1", "--yes"), "say why"),
        (("erase", "42", "--yes", "--basis", "x"), "no contact with id 42"),
    ]:  # fmt: skip
        code, out = run(capsys, gateway_toml, *argv)
        assert code == 2 and error in out, (argv, out)


async def test_rights_consent_and_erasure_with_receipt(gateway_toml, capsys, tmp_path):
    code, out = run(capsys, gateway_toml, "rectify", "1", "--name", "Olga K", "--identity-name",
                    "1=Olga K.")  # fmt: skip
    assert code == 0 and "'Olga' -> 'Olga K'" in out and "2 correction(s)" in out
    code, out = run(capsys, gateway_toml, "restrict", "1", "--reason", "disputed accuracy")
    assert code == 0 and "restricted" in out
    code, out = run(capsys, gateway_toml, "object", "2")
    assert code == 0 and "AI off and marketing withdrawn on 1 identit(ies)" in out
    code, out = run(capsys, gateway_toml, "consent", "show", "2")
    assert "marketing      withdrawn" in out and "ai_processing  withdrawn" in out
    code, out = run(capsys, gateway_toml, "consent", "grant", "2", "--purpose", "ai_processing",
                    "--evidence", "asked by phone")  # fmt: skip
    assert code == 0 and "ai_processing granted on 1" in out
    run(capsys, gateway_toml, "requests", "add", "--type", "erasure", "--contact", "2")
    run(capsys, gateway_toml, "requests", "verify", "1", "--method", "platform identity")
    receipt = tmp_path / "receipt.json"
    code, out = run(capsys, gateway_toml, "erase", "2", "--request", "1", "--yes", "--receipt",
                    str(receipt), "--vacuum")  # fmt: skip
    assert code == 0 and "Erasure receipt: contact 2" in out and "VACUUM" in out
    assert json.loads(receipt.read_text())["erased"]["messages"] == 2
    assert "Kept, and why:" in receipt.with_suffix(".txt").read_text()
    code, out = run(capsys, gateway_toml, "requests", "show", "1", "--receipt")
    assert code == 0 and out.startswith("Erasure receipt: contact 2")
    code, out = run(capsys, gateway_toml, "erase", "2", "--yes", "--basis", "again")
    assert code == 2 and "was erased" in out
    code, out = run(capsys, gateway_toml, "export", "2", "--output", str(tmp_path / "x.zip"))
    assert code == 2 and "was erased" in out
    code, out = run(capsys, gateway_toml, "audit", "verify")
    assert code == 0
