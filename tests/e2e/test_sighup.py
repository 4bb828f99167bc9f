"""SIGHUP does not kill the daemon: it checks the config on disk and says whether a restart would
apply it (live reload comes later)."""

from __future__ import annotations

import signal

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


async def test_sighup_checks_the_config_and_keeps_running(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    env = {"GATEWAY_MASTER_KEY": "11" * 32}
    async with open_daemon_process(config, env, tmp_path / "log") as daemon:
        daemon.process.send_signal(signal.SIGHUP)
        with trio.fail_after(20):
            await daemon.wait_for_output("SIGHUP: the config on disk is valid")
        config.write_text(CONFIG.replace('plugin = "faq"', 'plugin = "fqa"'))
        daemon.process.send_signal(signal.SIGHUP)
        with trio.fail_after(20):
            await daemon.wait_for_output("SIGHUP: the config on disk is NOT valid")
        assert daemon.process.returncode is None
        daemon.terminate()
        assert await daemon.wait() == 0
    assert "unknown llm plugin 'fqa'" in daemon.text()
