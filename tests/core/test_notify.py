"""sd_notify: what systemd would read from its notification socket.

A real AF_UNIX datagram socket stands in for systemd's; the last test starts the gateway as a
real process with ``$NOTIFY_SOCKET`` pointing at it, as a ``Type=notify`` unit would.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from gateway import notify
from gateway.testing.process import open_daemon_process


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.setblocking(False)
    with sock:
        yield sock, path


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_ready_stopping_and_status_reach_the_socket(listener):
    sock, path = listener
    env = {"NOTIFY_SOCKET": path}
    assert notify.notify_ready("public http://127.0.0.1:1\nadmin x", environ=env)
    assert notify.notify_status("draining", environ=env)
    assert notify.notify_stopping(environ=env)
    assert received(sock) == [
        "READY=1\nSTATUS=public http://127.0.0.1:1 admin x",  # a newline cannot inject a key
        "STATUS=draining",
        "STOPPING=1",
    ]


def test_abstract_namespace_socket():
    name = f"sovereign-gateway-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert notify.notify_ready(environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_no_socket_is_a_no_op_and_errors_never_raise(tmp_path, caplog):
    assert not notify.notify_ready(environ={})
    assert not notify.notify_ready(environ={"NOTIFY_SOCKET": ""})
    assert caplog.records == []
    # Nobody listening: logged, not raised.
    assert not notify.notify_stopping(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not notify.notify_ready(environ={"NOTIFY_SOCKET": "vsock:2:1234"})
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert "gone.sock" in caplog.records[0].getMessage()


def test_watchdog_interval_follows_systemd_variables():
    sock = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    assert notify.watchdog_interval({**sock, "WATCHDOG_USEC": "30000000"}) == 15.0
    own = str(os.getpid())
    assert notify.watchdog_interval({**sock, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": own}) == 1
    assert (
        notify.watchdog_interval({**sock, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    )
    assert notify.watchdog_interval({"WATCHDOG_USEC": "2000000"}) is None  # nowhere to send
    assert notify.watchdog_interval(sock) is None
    assert notify.watchdog_interval({**sock, "WATCHDOG_USEC": "soon"}) is None


async def test_watchdog_pings_every_half_period(listener, autojump_clock):
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}  # pings every 5 s
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda **kw: notify.run_watchdog(environ=env, **kw))
        await trio.sleep(22)
        nursery.cancel_scope.cancel()
    assert received(sock) == ["WATCHDOG=1"] * 5  # at 0, 5, 10, 15, 20 s


async def test_watchdog_returns_when_not_wanted(listener):
    sock, path = listener
    with trio.fail_after(1):
        await notify.run_watchdog(environ={"NOTIFY_SOCKET": path})
    assert received(sock) == []


CONFIG = """
[gateway]
data_dir = "{data_dir}"
shutdown_grace = 2
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
[channels.web]
plugin = "webchat"
agent = "default"
[agents.default]
provider = "faq"
system_prompt = "Answer briefly."
[providers.faq]
plugin = "faq"
"""


@pytest.mark.slow
async def test_daemon_tells_systemd_ready_watchdog_and_stopping(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(data_dir=tmp_path / "data"))
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(str(tmp_path / "notify.sock"))
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "200000",  # a ping every 0.1 s
        "GATEWAY_MASTER_KEY": "5a" * 32,
        "CREDENTIALS_DIRECTORY": "",
    }
    with sock, trio.fail_after(60):
        async with open_daemon_process(config, env, tmp_path / "daemon.log") as daemon:
            ready = (await sock.recv(4096)).decode()
            public = re.search(r"public:\s+(http://127\.0\.0\.1:\d+)", daemon.text())
            assert public, daemon.text()
            assert ready.startswith("READY=1\nSTATUS=public " + public.group(1)), ready
            assert "admin http://127.0.0.1:" in ready
            for _ in range(3):
                assert await sock.recv(4096) == b"WATCHDOG=1"
            daemon.terminate()
            while (message := (await sock.recv(4096)).decode()) == "WATCHDOG=1":
                pass
            assert message == "STOPPING=1\nSTATUS=draining for up to 2s"
            assert await daemon.wait() == 0
