"""The Max plugin's webhook (secret checked in constant time, fail-closed, replays deduped) and
its own TLS trust (ca_file) against the fake Bot API served over HTTPS by a test CA."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import trustme

from gateway.errors import PluginError
from gateway.secretref import Secret
from gateway.testing.context import MemoryChannelContext
from gateway.testing.fake_max import open_fake_max
from plugins.max import MaxChannel
from tests.plugins.test_max_channel import CHAT, channel_for, context, reply, running

__all__ = ["context"]  # the fixture, imported for these tests

SECRET = "whk-Secret_0123"
WEBHOOK = {"mode": "webhook", "webhook_secret": Secret(SECRET, "env:MAX_WEBHOOK_SECRET")}


async def test_webhook_is_subscribed_with_its_secret(context: MemoryChannelContext) -> None:
    async with open_fake_max() as server, running(server, context, **WEBHOOK):
        (subscription,) = server.subscriptions
        assert subscription["url"] == f"{context.public_url}/webhooks/maxbot"
        assert subscription["secret"] == SECRET
        assert subscription["update_types"] == [
            "message_created",
            "message_callback",
            "bot_started",
        ]


async def test_webhook_secret_cases(context: MemoryChannelContext) -> None:
    async with open_fake_max() as server, running(server, context, **WEBHOOK):
        update = server.push_message(CHAT, "hello by webhook")
        assert await server.post_webhook(update, secret=None) == 401
        assert await server.post_webhook(update, secret="whk-Secret_0124") == 403
        assert await server.post_webhook(update, secret=SECRET[:-1]) == 403
        assert context.inbound == [] and context.duplicates == []
        assert await server.post_webhook(update) == 200
        assert [m.text for m in context.inbound] == ["hello by webhook"]  # before the 200


async def test_a_replayed_press_is_stored_and_answered_once(
    context: MemoryChannelContext,
) -> None:
    async with open_fake_max() as server, running(server, context, **WEBHOOK):
        press = server.push_callback(CHAT, "/unsubscribe", label="Unsubscribe")
        assert await server.post_webhook(press) == 200
        assert await server.post_webhook(press) == 200  # Max's retry, or a replay
        assert [m.text for m in context.inbound] == ["/unsubscribe"]
        assert len(context.duplicates) == 1
        assert [a.callback_id for a in server.answers] == [press["callback"]["callback_id"]]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b"[1, 2]", 400),
        (b'{"message": {}}', 400),
        (b"x" * (2 << 20), 413),
    ],
)
async def test_malformed_bodies_are_refused(
    context: MemoryChannelContext, body: bytes, status: int
) -> None:
    async with open_fake_max() as server, running(server, context, **WEBHOOK):
        assert await server.post_webhook(body) == status
        assert context.inbound == []


async def test_an_update_that_is_no_message_is_acknowledged(
    context: MemoryChannelContext,
) -> None:
    async with open_fake_max() as server, running(server, context, **WEBHOOK):
        edit = {"update_type": "message_edited", "timestamp": 1, "message": {}}
        assert await server.post_webhook(edit) == 200  # else Max retries it for 8 hours
        assert context.inbound == []


async def test_webhook_mode_without_a_secret_does_not_start() -> None:
    with pytest.raises(pydantic.ValidationError, match="requires webhook_secret"):
        MaxChannel.Config.model_validate(
            {"plugin": "max", "token": Secret("t", "env:T"), "mode": "webhook"}
        )
    with pytest.raises(pydantic.ValidationError, match="5-256 characters"):
        MaxChannel.Config.model_validate(
            {
                **WEBHOOK,
                "plugin": "max",
                "token": Secret("t", "env:T"),
                "webhook_secret": Secret("bad secret!", "env:S"),
            }  # fmt: skip
        )


async def test_the_route_is_404_in_polling_mode(context: MemoryChannelContext) -> None:
    async with open_fake_max() as server, running(server, context):
        url = f"{context.public_url}/webhooks/maxbot"
        update = server.push_message(CHAT, "x")
        assert await server.post_webhook(update, url=url, secret=SECRET) == 404


async def test_webhook_mode_needs_a_public_url(context: MemoryChannelContext) -> None:
    async with open_fake_max() as server:
        channel = channel_for(server, context, **WEBHOOK)
        with pytest.raises(PluginError, match="needs \\[http\\] public_url"):
            await channel.run()
        assert server.subscriptions == []


# -- ca_file: Max's certificates chain to a root most systems lack -------------------------------


@pytest.fixture(scope="module")
def test_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(test_ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "russian_trusted_root_ca.pem"
    test_ca.cert_pem.write_to_path(str(path))
    return path


def tls_server(test_ca: trustme.CA) -> Any:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("127.0.0.1").configure_cert(context)
    return open_fake_max(tls=context)


async def test_ca_file_makes_max_trusted_for_this_channel_only(
    context: MemoryChannelContext, test_ca: trustme.CA, ca_file: Path
) -> None:
    async with tls_server(test_ca) as server:
        assert server.api_base.startswith("https://")
        untrusting = channel_for(server, context)
        with pytest.raises(PluginError, match="not trusted .* set ca_file"):
            await untrusting.check()
        channel = channel_for(server, context, ca_file=str(ca_file))
        assert (await channel.check()).endswith("polling")
        await channel.send(reply("over TLS"))
        assert [m.text for m in server.sent] == ["over TLS"]
        # The daemon's shared client does not trust the extra CA.
        with pytest.raises(httpx.ConnectError):
            await context.http.get(f"{server.api_base}/me")


async def test_polling_over_tls_with_ca_file(
    context: MemoryChannelContext, test_ca: trustme.CA, ca_file: Path
) -> None:
    async with tls_server(test_ca) as server, running(server, context, ca_file=str(ca_file)):
        photo = server.file_attachment(b"jpeg bytes", "image/jpeg")
        server.push_message(CHAT, "hi over TLS", attachments=[photo])
        (inbound,) = await context.wait_inbound(1)
        assert inbound.attachments[0].data == b"jpeg bytes"


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("relative/ca.pem", "must be an absolute path"),
        ("/nonexistent/ca.pem", "does not exist"),
    ],
)
def test_a_bad_ca_file_is_a_config_error(value: str, match: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=match):
        MaxChannel.Config.model_validate(
            {"plugin": "max", "token": Secret("t", "env:T"), "ca_file": value}
        )


def test_a_ca_file_that_is_not_pem_is_a_config_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(pydantic.ValidationError, match="not a readable PEM file"):
        MaxChannel.Config.model_validate(
            {"plugin": "max", "token": Secret("t", "env:T"), "ca_file": str(junk)}
        )
