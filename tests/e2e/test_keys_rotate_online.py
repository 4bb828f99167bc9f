"""`gateway keys rotate` against a running daemon process: the database is re-keyed through the
control socket while a web chat keeps talking; every message is answered, the daemon never
restarts, and afterwards only the new key opens the database."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import trio

from gateway.errors import MasterKeyError
from gateway.keys import MasterKey
from gateway.store.db import connect
from gateway.testing.process import open_daemon_process
from plugins.webchat.testing import new_visitor, open_chat_client

pytestmark = pytest.mark.slow

ENV = {
    "GATEWAY_PUBLIC_BIND": "127.0.0.1:0",
    "GATEWAY_ADMIN_BIND": "127.0.0.1:0",
    "OPENAI_API_KEY": "",
    "GATEWAY_MASTER_KEY": "",
    "CREDENTIALS_DIRECTORY": "",
}
GATEWAY = str(Path(sys.executable).with_name("gateway"))


def opens(data: Path, key_hex: str) -> bool:
    key = MasterKey(bytes.fromhex(key_hex), "t").derive("sqlcipher")
    try:
        connect(data / "gateway.db", key, readonly=True).conn.close()
    except MasterKeyError:
        return False
    return True


async def test_rotation_while_chatting(tmp_path):
    data = tmp_path / "gateway-data"
    async with open_daemon_process(None, ENV, tmp_path / "daemon.log", cwd=tmp_path) as daemon:
        old_key = (data / "master.key").read_text().strip()
        base = re.search(r"web chat:\s+(http://127\.0\.0\.1:\d+)", daemon.text()).group(1)
        replies: list[dict] = []

        async def talk(chat, n: int) -> None:
            # Under the web chat's per-tab burst (10), so every message is accepted.
            for i in range(n):
                ack = await chat.send_message(f"where is my data stored? ({i})")
                assert ack["type"] == "ack", ack
                with trio.fail_after(20):
                    replies.append(await chat.wait_for(lambda f: f["type"] == "reply"))

        async with (
            open_chat_client(base, "web", visitor=new_visitor()) as one,
            open_chat_client(base, "web", visitor=new_visitor()) as two,
            open_chat_client(base, "web", visitor=new_visitor()) as three,
        ):
            chats = (one, two, three)
            async with trio.open_nursery() as nursery:
                for chat in chats:
                    nursery.start_soon(talk, chat, 6)
                result = await trio.run_process(
                    [GATEWAY, "keys", "rotate"],
                    cwd=tmp_path,
                    env={**os.environ, **ENV},
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            out = result.stdout.decode() + result.stderr.decode()
            assert result.returncode == 0, out
            assert "the running gateway re-keyed the database" in out
            for chat in chats:
                await talk(chat, 2)  # and after it
        assert len(replies) == 24
        assert daemon.process.returncode is None  # the same process all along
        daemon.terminate()
        assert await daemon.wait() == 0
    new_key = (data / "master.key").read_text().strip()
    assert new_key != old_key
    assert opens(data, new_key) and not opens(data, old_key)
    assert not (data / "master.key.next").exists()
    assert not (data / "control.sock").exists()
