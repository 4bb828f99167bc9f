"""The plugin registry lists every installed plugin but imports only those a config names.

Each built-in plugin costs memory once imported (the FAQ provider's rapidfuzz, the email
channel's imapclient...); a daemon configured with Telegram and the FAQ provider should pay for
those two only (issue #9's memory target). A plugin that fails to import must still say so when
the config names it, and ``gateway plugins`` must still list every plugin and every failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import cli
from gateway.config import load_config
from gateway.errors import ConfigError, PluginError
from gateway.plugin import PluginInfo, Registry, load_registry

BUILT_IN_CHANNELS = {
    "telegram",
    "webchat",
    "whatsapp",
    "messenger",
    "instagram",
    "twilio",
    "max",
    "email",
}
BUILT_IN_PROVIDERS = {"openai", "faq", "anthropic", "gemini"}

TELEGRAM_AND_FAQ = """\
[gateway]
data_dir = "data"
[channels.support]
plugin = "telegram"
token = "env:TELEGRAM_TOKEN"
[agents.default]
provider = "faq"
[providers.faq]
plugin = "faq"
"""

PROBE = """\
import json, sys
from gateway.config import load_config
from gateway.plugin import load_registry

registry = load_registry()
listed = sys.modules.copy()
config = load_config(sys.argv[1], registry, environ={"TELEGRAM_TOKEN": "123:abc"})
print(json.dumps({
    "listed": sorted(m for m in listed if m.startswith("plugins.")),
    "loaded": sorted(m for m in sys.modules if m.startswith("plugins.")),
    "third_party": sorted(m for m in ("rapidfuzz", "imapclient", "openai") if m in sys.modules),
    "channels": registry.channels.names(),
    "providers": registry.providers.names(),
}))
"""


def test_a_config_imports_only_the_plugins_it_names(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(TELEGRAM_AND_FAQ)
    # A fresh interpreter: this one has imported every plugin already (other tests).
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(config)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    seen = json.loads(done.stdout)
    assert seen["listed"] == []  # building the registry imports no plugin
    packages = {m.split(".")[1] for m in seen["loaded"]}
    assert packages == {"telegram", "faq"}
    assert seen["third_party"] == ["rapidfuzz"]  # the FAQ provider's; no imapclient, no openai
    assert BUILT_IN_CHANNELS <= set(seen["channels"])
    assert BUILT_IN_PROVIDERS <= set(seen["providers"])


@pytest.fixture
def broken_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed distribution whose channel plugin fails to import, found through its entry
    point like any third-party plugin."""
    site = tmp_path / "site"
    info = site / "brokenchat-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenchat\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[gateway.channels]\nbrokenchat = brokenchat_plugin:BrokenChannel\n"
    )
    (site / "brokenchat_plugin.py").write_text(
        "raise ImportError('brokenchat needs libbroken 2, install it with the package')\n"
    )
    monkeypatch.syspath_prepend(str(site))
    return "ImportError: brokenchat needs libbroken 2, install it with the package"


def test_a_named_plugin_that_fails_to_import_says_so(tmp_path: Path, broken_plugin: str) -> None:
    registry = load_registry()
    assert "brokenchat" in registry.channels.names()  # listed: installed, not yet imported
    config = tmp_path / "gateway.toml"
    config.write_text(TELEGRAM_AND_FAQ.replace('plugin = "telegram"', 'plugin = "brokenchat"'))
    for _ in range(2):  # the same answer again (a reload), not "unknown plugin"
        with pytest.raises(ConfigError) as info:
            load_config(config, registry, environ={"TELEGRAM_TOKEN": "x"})
        text = str(info.value)
        assert "channel plugin 'brokenchat' is installed but failed to load" in text
        assert broken_plugin in text
        assert info.value.table == "channels.support" and info.value.key == "plugin"
    assert registry.failures == {"gateway.channels:brokenchat": broken_plugin}


def test_gateway_plugins_lists_every_plugin_and_the_failure(
    broken_plugin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    channels, _, rest = out.partition("llm providers:")
    providers, _, failed = rest.partition("failed to load:")
    listed = {line.split()[0] for line in channels.splitlines()[1:] if line.strip()}
    assert listed == BUILT_IN_CHANNELS  # the broken one is under failures, not here
    assert {line.split()[0] for line in providers.splitlines() if line.strip()} == (
        BUILT_IN_PROVIDERS
    )
    assert failed.strip() == f"gateway.channels:brokenchat: {broken_plugin}"


def test_verbose_listing_shows_each_plugins_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plugins", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "      token:" in out  # telegram's Config, imported for the listing
    assert "      base_url:" in out  # openai's


def test_lookup_imports_one_plugin_and_unknown_names_list_the_installed() -> None:
    registry = load_registry()
    info = registry.lookup("llm", "faq")
    assert info.loaded and info.cls.__name__ == "FaqProvider"
    assert info.source.endswith("(plugins.faq:FaqProvider)")
    assert not registry.providers._entries["gemini"].loaded  # listed, never looked up
    with pytest.raises(PluginError) as err:
        registry.lookup("llm", "nope")
    assert "unknown llm plugin 'nope'; installed: anthropic, faq, gemini, openai" in str(err.value)
    assert not registry.providers._entries["gemini"].loaded  # the message imported nothing


def test_only_limits_what_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(load_registry(only=["telegram", "faq"]).channels.names()) == {"telegram"}
    monkeypatch.setenv("GATEWAY_PLUGINS", "openai, webchat")
    registry = load_registry()
    assert registry.channels.names() == ["webchat"]
    assert registry.providers.names() == ["openai"]


def test_classes_handed_in_by_tests_work_as_before() -> None:
    class Fake:
        pass

    registry = Registry()
    registry.add("channel", "fake", Fake)
    assert registry.lookup("channel", "fake").cls is Fake
    assert dict(registry.channels) == {
        "fake": PluginInfo("channel", "fake", Fake, registry.channels["fake"].source)
    }
    assert "fake" in registry.channels and len(registry.channels) == 1
    assert registry.failures == {}


def test_entries_of_two_registries_compare_equal() -> None:
    # A reload compares the entries of the old and the new config (gateway/reload.py).
    first, second = load_registry(), load_registry()
    assert first.lookup("channel", "telegram") == second.lookup("channel", "telegram")
    assert first.lookup("channel", "telegram") != first.lookup("channel", "webchat")
    assert len({first.lookup("llm", "faq"), second.lookup("llm", "faq")}) == 1


def test_the_daemons_modules_leave_out_what_it_never_uses() -> None:
    # What `gateway run` imports before it loads a config: no terminal drawing (rich, pygments:
    # the retention CLI's tables, httpx's command-line client) and no holiday calendars (the
    # first privacy deadline imports them), ~7 MiB the daemon would keep for nothing.
    probe = (
        "import sys, gateway.cli, gateway.app, httpx\n"
        "print(sorted(m for m in ('rich', 'pygments', 'holidays', 'httpx._main')"
        " if sys.modules.get(m)))\n"
        "print(callable(httpx.main))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == ["[]", "True"]


def test_store_connections_keep_small_page_caches(tmp_path: Path) -> None:
    # SQLCipher's default cache is 8,000 KiB per connection: the writer's filled up as the
    # soak's database grew, the daemon's memory growth after warm-up (bench/soak.py --probe).
    from gateway.store.db import READER_CACHE_KIB, WRITER_CACHE_KIB, connect

    key = bytes(range(32))
    writer = connect(tmp_path / "gateway.db", key)
    reader = connect(tmp_path / "gateway.db", key, readonly=True)
    try:
        assert writer.conn.execute("PRAGMA cache_size").fetchone()[0] == -WRITER_CACHE_KIB
        assert reader.conn.execute("PRAGMA cache_size").fetchone()[0] == -READER_CACHE_KIB
        assert WRITER_CACHE_KIB <= 2048 and READER_CACHE_KIB <= 512
    finally:
        reader.conn.close()
        writer.conn.close()


CHOOSER_PROBE = """\
import json, sys
from gateway.http.ui.config_views import plugin_doc
from gateway.plugin import load_registry

registry = load_registry()
before = set(sys.modules)
docs = {
    name: plugin_doc(table.unloaded(name))
    for table in (registry.channels, registry.providers)
    for name in table.names()
}
print(json.dumps({"docs": docs, "imported": sorted(set(sys.modules) - before)}))
"""


def test_the_plugin_chooser_describes_plugins_without_importing_them(tmp_path: Path) -> None:
    # The admin UI's "add a channel" page describes every installed plugin; importing them all
    # for it would keep every platform's and vendor's SDK in the daemon (~8 MiB) from then on.
    # Run from another folder: the editable install's finder, not the checkout on sys.path.
    done = subprocess.run(
        [sys.executable, "-c", CHOOSER_PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    seen = json.loads(done.stdout)
    assert seen["imported"] == ["gateway.plugin_docs"]
    from gateway.http.ui.config_views import plugin_doc

    registry = load_registry()
    for table, built_in in (
        (registry.channels, BUILT_IN_CHANNELS),
        (registry.providers, BUILT_IN_PROVIDERS),
    ):
        for name in built_in:
            assert plugin_doc(table[name]) == seen["docs"][name] != "", name  # as imported
    assert seen["docs"]["telegram"] == "A Telegram bot as a gateway channel."
    # through a re-export (plugins/whatsapp/__init__.py) and `Config = WhatsAppConfig`
    assert seen["docs"]["whatsapp"] == "One WhatsApp business phone number."


def test_a_plugin_whose_source_cannot_be_read_is_listed_without_a_description(
    broken_plugin: str,
) -> None:
    from gateway.http.ui.config_views import plugin_doc

    registry = load_registry()
    info = registry.channels.unloaded("brokenchat")
    assert plugin_doc(info) == "" and not info.loaded  # the module raises; it is not run
