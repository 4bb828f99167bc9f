"""SIGHUP reloads the config of the running process: a channel added to the file is served
without a restart (same PID); an invalid file is rejected with a clear error and the daemon
keeps serving the config it has."""

from __future__ import annotations

import re
import signal

import httpx
import trio

from gateway.testing.process import open_daemon_process

CONFIG = """
[gateway]
data_dir = "data"
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
[channels.web]
plugin = "webchat"
[agents.default]
provider = "faq"
[providers.faq]
plugin = "faq"
"""

SHOP = """
[channels.shop]
plugin = "webchat"
title = "Shop chat"
"""


async def test_sighup_applies_a_valid_config_and_rejects_an_invalid_one(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    env = {"GATEWAY_MASTER_KEY": "11" * 32}
    async with open_daemon_process(config, env, tmp_path / "log") as daemon:
        with trio.fail_after(20):
            await daemon.wait_for_output("stop with Ctrl-C")  # the announcement's last line
        public = re.search(r"public:\s+(http://127\.0\.0\.1:\d+)", daemon.text())
        admin = re.search(r"admin:\s+(http://127\.0\.0\.1:\d+)", daemon.text())
        assert public and admin, daemon.text()
        pid = daemon.pid
        async with httpx.AsyncClient(base_url=public[1]) as http:
            assert (await http.get("/chat/shop/")).status_code == 404

            config.write_text(CONFIG + SHOP)
            daemon.process.send_signal(signal.SIGHUP)
            with trio.fail_after(20):
                await daemon.wait_for_output("config reloaded from")
            page = await http.get("/chat/shop/")
            assert page.status_code == 200 and "Shop chat" in page.text
            status = (await http.get(f"{admin[1]}/status")).json()
            assert sorted(status["channels"]) == ["shop", "web"]

            config.write_text(CONFIG.replace('plugin = "faq"', 'plugin = "fqa"') + SHOP)
            daemon.process.send_signal(signal.SIGHUP)
            with trio.fail_after(20):
                await daemon.wait_for_output("config reload rejected")
            assert (await http.get("/chat/shop/")).status_code == 200
            assert (await http.get("/chat/web/")).status_code == 200
            # `gateway run` runs the stall monitor (gateway/stalls.py): after two reloads it has
            # measured the loop many times, 20 a second.
            metrics = (await http.get(f"{admin[1]}/metrics")).text
            count = re.search(r"^gateway_event_loop_lag_seconds_count (\S+)$", metrics, re.M)
            assert count and float(count[1]) > 0, metrics
        assert daemon.process.returncode is None and daemon.pid == pid
        daemon.terminate()
        assert await daemon.wait() == 0
    log = daemon.text()
    assert "config reloaded from" in log and "channels +shop" in log
    rejected = next(line for line in log.splitlines() if "config reload rejected" in line)
    assert f"{config}:" in rejected and "[providers.faq]" in rejected
    assert "unknown llm plugin 'fqa'" in rejected
    assert log.count("is running") == 1  # never restarted
