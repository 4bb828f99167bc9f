"""What the README's first command gives a new user: `gateway run` with no config starts on the
embedded default, makes and announces a 0600 master key, and serves a web chat page that answers
at once from the offline FAQ. A real daemon process, a real websocket client."""

from __future__ import annotations

import re
import stat

import httpx
import pytest
import trio

from gateway.testing.process import open_daemon_process
from plugins.webchat.testing import new_visitor, open_chat_client

pytestmark = pytest.mark.slow

ENV = {
    "GATEWAY_PUBLIC_BIND": "127.0.0.1:0",
    "GATEWAY_ADMIN_BIND": "127.0.0.1:0",
    "OPENAI_API_KEY": "",  # the offline default, whatever the developer's shell has
    "GATEWAY_MASTER_KEY": "",
    "CREDENTIALS_DIRECTORY": "",
}


async def test_embedded_default_chat_answers_offline_and_survives_restart(tmp_path):
    log = tmp_path / "daemon.log"
    visitor = new_visitor()
    async with open_daemon_process(None, ENV, log, cwd=tmp_path) as daemon:
        out = daemon.text()
        assert "A NEW MASTER KEY WAS GENERATED" in out and "systemd-creds encrypt" in out
        key_file = tmp_path / "gateway-data" / "master.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        match = re.search(r"web chat:\s+(http://127\.0\.0\.1:\d+)/chat/web/", out)
        assert match, out
        base = match.group(1)
        async with httpx.AsyncClient() as http:
            page = await http.get(f"{base}/chat/web/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        async with open_chat_client(base, "web", visitor=visitor) as chat:
            assert chat.history == []
            ack = await chat.send_message("Where is my data stored?")
            assert ack["type"] == "ack"
            with trio.fail_after(20):
                known = await chat.wait_for(lambda f: f["type"] == "reply")
            ack = await chat.send_message("xyzzy plugh frobnicate")
            with trio.fail_after(20):
                unknown = await chat.wait_for(lambda f: f["type"] == "reply" and f is not known)
        assert "don't know" not in known["text"].lower()
        assert "don't know" in unknown["text"].lower() or "do not know" in unknown["text"].lower()
        daemon.terminate()
        assert await daemon.wait() == 0

    async with open_daemon_process(None, ENV, log, cwd=tmp_path) as daemon:
        assert "A NEW MASTER KEY" not in daemon.text()  # the same key, found again
        base = re.search(r"web chat:\s+(http://127\.0\.0\.1:\d+)", daemon.text()).group(1)
        async with open_chat_client(base, "web", visitor=visitor) as chat:
            texts = [m["text"] for m in chat.history]
        assert texts == [
            "Where is my data stored?",
            known["text"],
            "xyzzy plugh frobnicate",
            unknown["text"],
        ]
        daemon.terminate()
        assert await daemon.wait() == 0
    data = tmp_path / "gateway-data"
    raw = b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith("gateway.db"))
    assert b"Where is my data" not in raw and b"xyzzy" not in raw
    # The master key is in its file only: not in the output, the log, or the database.
    key_hex = (data / "master.key").read_text().strip()
    assert key_hex not in log.read_text()
    assert bytes.fromhex(key_hex) not in raw and key_hex.encode() not in raw
