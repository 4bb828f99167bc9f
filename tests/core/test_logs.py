"""Logging: JSON lines with structured fields, one correlation id across a message's answer and
delivery lines, no message text, secrets redacted, per-logger levels."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from gateway.config import load_config
from gateway.logs import JsonFormatter, log_context, make_handler, setup_logging
from gateway.plugin import Registry, load_registry
from gateway.testing.daemon import open_gateway
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider

TOKEN = "7770001:logs-TEST_token-xyz"

DAEMON = """
[gateway]
data_dir = "data"
log_format = "json"
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
[channels.support]
plugin = "fake"
agent = "default"
[agents.default]
provider = "model"
[providers.model]
plugin = "fake"
"""

TELEGRAM = """
[gateway]
data_dir = "data"
log_format = "{format}"
log_levels = {{ "gateway.channel.support_bot" = "debug", "gateway.agent" = "WARNING" }}
[channels.support_bot]
plugin = "telegram"
agent = "default"
token = "env:TG_TOKEN"
[agents.default]
provider = "faq"
[providers.faq]
plugin = "faq"
"""


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    names = ("gateway.channel.support_bot", "gateway.agent", "httpx", "httpcore", "telegram")
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def telegram_config(tmp_path, fmt: str = "json"):
    path = tmp_path / "gateway.toml"
    path.write_text(TELEGRAM.format(format=fmt))
    return load_config(path, load_registry(), environ={"TG_TOKEN": TOKEN})


def test_json_line_has_the_fields_and_nothing_else():
    record = logging.LogRecord(
        "gateway.pipeline", logging.WARNING, __file__, 1, "send %s", ("x",), None
    )
    record.channel, record.outbox, record.attempt, record.outcome = "support", 7, 2, "retry"
    record.sender_name = "Ada Lovelace"  # not a field: never copied into the line
    line = json.loads(JsonFormatter().format(record))
    assert line.pop("ts").endswith("+00:00")
    assert line == {
        "level": "WARNING",
        "logger": "gateway.pipeline",
        "msg": "send x",
        "channel": "support",
        "outbox": 7,
        "attempt": 2,
        "outcome": "retry",
    }


def test_exceptions_stay_on_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("gateway", logging.ERROR, __file__, 1, "failed", None, True)
        import sys

        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exc"]


def test_secrets_are_redacted_in_json(tmp_path, restore_logging):
    config = telegram_config(tmp_path)
    stream = io.StringIO()
    setup_logging(config, stream)
    logging.getLogger("gateway.test").warning("GET https://api.telegram.org/bot%s/getMe", TOKEN)
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert TOKEN not in stream.getvalue()
    assert line["msg"] == "GET https://api.telegram.org/bot<env:TG_TOKEN>/getMe"


def test_per_logger_levels(tmp_path, restore_logging):
    config = telegram_config(tmp_path, fmt="text")
    assert config.gateway.log_levels == {
        "gateway.channel.support_bot": "DEBUG",
        "gateway.agent": "WARNING",
    }
    stream = io.StringIO()
    setup_logging(config, stream)
    logging.getLogger("gateway.channel.support_bot").debug("poll details")
    logging.getLogger("gateway.channel.other").debug("hidden: root stays at INFO")
    logging.getLogger("gateway.agent").info("hidden: lowered to WARNING")
    logging.getLogger("gateway.agent").warning("shown")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "DEBUG   gateway.channel.support_bot: poll details" in lines[0]  # the text format
    assert lines[1].endswith("gateway.agent: shown")


def test_bad_level_is_a_config_error(tmp_path):
    from gateway.errors import ConfigError

    path = tmp_path / "gateway.toml"
    path.write_text(TELEGRAM.format(format="json").replace('"debug"', '"LOUD"'))
    with pytest.raises(ConfigError, match="gateway.channel.support_bot"):
        load_config(path, load_registry(), environ={"TG_TOKEN": TOKEN})


def test_context_fields_reach_every_record_of_the_task(restore_logging):
    from gateway.logs import AddContext

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(AddContext())
    logger = logging.getLogger("gateway.test.context")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        log_context(channel="support", conversation=3, journal=41)
        logger.warning("one")
        logger.warning("two", extra={"outcome": "ok", "channel": "explicit wins"})
        log_context()
        logger.warning("three")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    one, two, three = (json.loads(x) for x in stream.getvalue().splitlines())
    assert (one["correlation_id"], one["journal"], one["conversation"]) == (41, 41, 3)
    assert (two["channel"], two["outcome"], two["correlation_id"]) == ("explicit wins", "ok", 41)
    assert "correlation_id" not in three


async def test_one_message_answer_and_delivery_share_a_correlation_id(tmp_path, restore_logging):
    registry = Registry()
    registry.add("channel", "fake", FakeChannel)
    registry.add("llm", "fake", FakeProvider)
    stream = io.StringIO()
    root = logging.getLogger()
    async with open_gateway(DAEMON, registry, tmp_path) as gw:
        root.addHandler(make_handler(gw.config, stream))
        root.setLevel(logging.INFO)
        channel: FakeChannel = gw.channel("support")
        await channel.deliver("chat-9", "user-9", "my pineapple passport number")
        await channel.deliver("chat-9", "user-9", "second kumquat question")
        await channel.wait_sent(2)
        await gw.wait_idle()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]  # every line is JSON
    assert lines and all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    answers = [x for x in lines if x["logger"] == "gateway.agent" and x.get("outcome") == "ok"]
    sends = [x for x in lines if x["logger"] == "gateway.pipeline" and x.get("outcome") == "sent"]
    assert len(answers) == len(sends) == 2
    for answer, send in zip(answers, sends, strict=True):
        assert answer["correlation_id"] == send["correlation_id"] == send["journal"]
        assert answer["channel"] == send["channel"] == "support"
        assert answer["conversation"] == send["conversation"]
        assert answer["provider"] == "model" and answer["attempt"] == 1
        assert isinstance(send["outbox"], int)
    assert answers[0]["correlation_id"] != answers[1]["correlation_id"]
    text = stream.getvalue()
    for private in ("pineapple", "passport", "kumquat", "chat-9", "user-9"):
        assert private not in text
