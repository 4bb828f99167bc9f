"""Config loading: the issue's exact example loads; every kind of mistake names file, table, key, line, fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import EMBEDDED, load_config
from gateway.errors import ConfigError
from gateway.plugin import load_registry

ISSUE_EXAMPLE = """\
[gateway]
data_dir = "/var/lib/gateway"          # database, key file, attachments
[http]
public_bind = "127.0.0.1:8080"         # webhooks, webchat, developer API
admin_bind = "127.0.0.1:8081"
public_url = "https://gw.example.com"  # used to register webhooks
[channels.support_bot]
plugin = "telegram"
token = "env:TELEGRAM_TOKEN"           # secret references: env:NAME, file:PATH, keyring:NAME, credential:NAME
mode = "polling"                       # or "webhook"
api_base = "https://api.telegram.org"  # Bot API root, overridable for tests and local Bot API servers
agent = "default"
[agents.default]
provider = "main"
system_prompt = "You are the support assistant of Example Ltd."
[providers.main]
plugin = "openai"                      # any OpenAI-compatible server via base_url
base_url = "https://api.openai.com/v1"
api_key = "env:OPENAI_API_KEY"
model = "gpt-4o-mini"
"""

ENV = {"TELEGRAM_TOKEN": "123456:ABCDEF-secret-token", "OPENAI_API_KEY": "sk-test-secret-key"}


@pytest.fixture
def registry():
    return load_registry()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str, registry, env=ENV) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), registry, environ=env)
    return info.value


def test_issue_example_loads_with_secrets_resolved(tmp_path, registry):
    config = load_config(write(tmp_path, ISSUE_EXAMPLE), registry, environ=ENV)
    channel = config.channels["support_bot"]
    assert channel.plugin.name == "telegram"
    assert channel.config.token.reveal() == ENV["TELEGRAM_TOKEN"]
    # The secret never shows in a repr (logs, tracebacks).
    assert ENV["TELEGRAM_TOKEN"] not in repr(channel.config)
    assert config.providers["main"].config.model == "gpt-4o-mini"
    assert config.data_dir == Path("/var/lib/gateway")
    assert config.http.public_url == "https://gw.example.com"


def test_unknown_key_names_file_table_key_line_and_suggests(tmp_path, registry):
    err = load_error(
        tmp_path, ISSUE_EXAMPLE.replace('mode = "polling"', 'mdoe = "polling"'), registry
    )
    text = str(err)
    assert err.table == "channels.support_bot" and err.key == "mdoe"
    assert err.line == 10
    assert "gateway.toml:10" in text and "did you mean 'mode'" in text


def test_missing_secret_names_the_variable_and_the_fix(tmp_path, registry):
    err = load_error(tmp_path, ISSUE_EXAMPLE, registry, env={"OPENAI_API_KEY": "x" * 10})
    assert err.table == "channels.support_bot" and err.key == "token" and err.line == 9
    assert "TELEGRAM_TOKEN is not set" in str(err)
    assert "export" in str(err)


def test_literal_secret_is_refused(tmp_path, registry):
    err = load_error(
        tmp_path, ISSUE_EXAMPLE.replace('"env:TELEGRAM_TOKEN"', '"123456:ABCDEF"'), registry
    )
    assert err.key == "token"
    assert "must not be written into the config file" in str(err)
    assert "123456:ABCDEF" not in str(err)


def test_unknown_plugin_lists_installed_ones(tmp_path, registry):
    err = load_error(
        tmp_path, ISSUE_EXAMPLE.replace('plugin = "telegram"', 'plugin = "telegran"'), registry
    )
    assert err.key == "plugin" and err.line == 8
    assert "unknown channel plugin 'telegran'" in str(err) and "telegram" in str(err)


def test_wrong_type_says_what_it_got(tmp_path, registry):
    err = load_error(
        tmp_path,
        ISSUE_EXAMPLE.replace('admin_bind = "127.0.0.1:8081"', "admin_bind = 8081"),
        registry,
    )
    assert err.table == "http" and err.key == "admin_bind" and err.line == 5
    assert "8081" in str(err)


def test_bad_bind_and_url(tmp_path, registry):
    err = load_error(tmp_path, ISSUE_EXAMPLE.replace('"127.0.0.1:8080"', '"localhost"'), registry)
    assert err.key == "public_bind" and "HOST:PORT" in str(err)
    err = load_error(
        tmp_path, ISSUE_EXAMPLE.replace('"https://gw.example.com"', '"gw.example.com"'), registry
    )
    assert err.key == "public_url"


def test_undefined_agent_and_provider(tmp_path, registry):
    err = load_error(
        tmp_path, ISSUE_EXAMPLE.replace('agent = "default"', 'agent = "sales"'), registry
    )
    assert err.table == "channels.support_bot" and err.key == "agent"
    assert "[agents.sales]" in str(err)
    err = load_error(
        tmp_path, ISSUE_EXAMPLE.replace('provider = "main"', 'provider = "gpt"'), registry
    )
    assert err.table == "agents.default" and err.key == "provider" and "main" in str(err)


def test_toml_syntax_error_has_line(tmp_path, registry):
    err = load_error(
        tmp_path, ISSUE_EXAMPLE.replace('mode = "polling"', "mode = polling"), registry
    )
    assert err.line == 10 and "not valid TOML" in str(err)


def test_unknown_table(tmp_path, registry):
    err = load_error(tmp_path, ISSUE_EXAMPLE + "\n[chanels.x]\nplugin='webchat'\n", registry)
    assert "unknown table [chanels]" in str(err) and "did you mean 'channels'" in str(err)


def test_missing_file(tmp_path, registry):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", registry, environ={})


def test_embedded_default_is_webchat_and_faq(registry):
    config = load_config(None, registry, environ={})
    assert config.source == EMBEDDED
    assert config.channels["web"].plugin.name == "webchat"
    assert config.agents["default"].provider == "faq"
    assert config.http.public_bind.startswith("127.0.0.1:")
    assert config.http.admin_bind.startswith("127.0.0.1:")


def test_embedded_default_uses_openai_when_key_is_set(registry):
    config = load_config(None, registry, environ={"OPENAI_API_KEY": "sk-live-looking-key"})
    assert config.agents["default"].provider == "openai"
    assert config.providers["openai"].config.api_key.reveal() == "sk-live-looking-key"


def test_relative_data_dir_is_relative_to_config_file(tmp_path, registry):
    text = ISSUE_EXAMPLE.replace('"/var/lib/gateway"', '"data"')
    config = load_config(write(tmp_path, text), registry, environ=ENV)
    assert config.data_dir == tmp_path / "data"


def test_a_section_naming_an_unknown_channel_fails_at_load(tmp_path, registry):
    # [retention.channels.NAME] is checked against the config's channels by the loader itself,
    # so `gateway check-config` catches it, with the table and a list of the real channels.
    path = tmp_path / "g.toml"
    path.write_text(
        ISSUE_EXAMPLE + "\n[retention.channels.suport_bot]\nmessage_content_days = 30\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, registry, environ={"TELEGRAM_TOKEN": "1:x", "OPENAI_API_KEY": "sk"})
    message = str(info.value)
    assert "suport_bot" in message and "support_bot" in message and "[retention" in message
