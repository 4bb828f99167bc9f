"""WhatsAppChannel.send against the fake Cloud API: text, reply context, media by link and by
upload, the 24-hour window and its template, and Graph errors mapped to SendError."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.errors import SendError
from gateway.messages import Attachment, Outbound
from gateway.secretref import Secret
from gateway.testing.context import MemoryChannelContext
from gateway.testing.fake_whatsapp import (
    DEFAULT_APP_SECRET,
    DEFAULT_PHONE_NUMBER_ID,
    DEFAULT_TOKEN,
    FakeWhatsAppServer,
    open_fake_whatsapp,
)
from plugins.whatsapp import WhatsAppChannel, WhatsAppConfig

USER = "4915112345678"
NOW = dt.datetime.now(dt.UTC)
TEMPLATES = {("reply_later", "en_US"): "We have an answer to your question: {{1}}"}


def config(server: FakeWhatsAppServer, **overrides: Any) -> WhatsAppConfig:
    return WhatsAppConfig.model_validate(
        {
            "plugin": "whatsapp",
            "phone_number_id": DEFAULT_PHONE_NUMBER_ID,
            "access_token": Secret(DEFAULT_TOKEN),
            "app_secret": Secret(DEFAULT_APP_SECRET),
            "verify_token": Secret("v"),
            "api_base": server.api_base,
            **overrides,
        }
    )


@contextlib.asynccontextmanager
async def sending(**overrides: Any) -> AsyncIterator[tuple[FakeWhatsAppServer, WhatsAppChannel]]:
    context = MemoryChannelContext("wa")
    async with open_fake_whatsapp(templates=TEMPLATES) as server:
        server.push_message(USER, "hello")  # the user wrote: Meta's window is open
        yield server, WhatsAppChannel("wa", config(server, **overrides), context)
    await context.aclose()


def outbound(text: str = "Your parcel left today.", **fields: Any) -> Outbound:
    fields.setdefault("last_inbound_at", NOW - dt.timedelta(minutes=5))
    return Outbound(7, "key-7", DEFAULT_PHONE_NUMBER_ID, fields.pop("to", USER), text, **fields)


async def test_text_reply_with_context() -> None:
    async with sending() as (server, channel):
        result = await channel.send(outbound(reply_to_external_id="wamid.IN1"))
        [sent] = server.sent
        assert (sent.to, sent.type, sent.text, sent.reply_to) == (
            USER,
            "text",
            "Your parcel left today.",
            "wamid.IN1",
        )
        assert result.external_id == sent.message_id
        assert server.requests[-1] == ("POST", f"/v23.0/{DEFAULT_PHONE_NUMBER_ID}/messages")


# -- the 24-hour window ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "says"),
    [(None, "has never written"), (NOW - dt.timedelta(hours=25), "more than 24 hours ago")],
)
async def test_outside_the_window_without_template_is_refused(
    last: dt.datetime | None, says: str
) -> None:
    async with sending() as (server, channel):
        with pytest.raises(SendError) as excinfo:
            await channel.send(outbound(last_inbound_at=last))
        error = excinfo.value
        assert error.permanent and says in str(error)
        assert "within 24 hours" in str(error)
        assert 'window_template = { name = "...", language = "en_US" }' in str(error)
        assert "[channels.wa]" in str(error)
        assert server.sent == []


async def test_outside_the_window_the_template_carries_the_text() -> None:
    template = {"name": "reply_later", "language": "en_US", "body_parameter": True}
    async with sending(window_template=template) as (server, channel):
        old = NOW - dt.timedelta(days=3)
        result = await channel.send(outbound("Line one.\nLine two.", last_inbound_at=old))
        [sent] = server.sent
        assert sent.type == "template" and result.external_id == sent.message_id
        assert sent.text == "We have an answer to your question: Line one. Line two."


async def test_a_template_without_parameter_is_sent_as_approved() -> None:
    async with sending(window_template={"name": "hello_world"}) as (server, channel):
        await channel.send(outbound(last_inbound_at=None))
        assert [(m.type, m.text) for m in server.sent] == [("template", "Hello World")]


async def test_meta_closing_the_window_falls_back_to_the_template() -> None:
    """Our last_inbound_at says inside, Meta says 131047 (clock skew, a late webhook)."""
    async with sending(window_template={"name": "hello_world"}) as (server, channel):
        server.last_inbound[USER] = server.clock() - 25 * 3600
        result = await channel.send(outbound())
        [sent] = server.sent
        assert sent.type == "template" and result.external_id == sent.message_id


async def test_meta_closing_the_window_without_template_is_permanent() -> None:
    async with sending() as (server, channel):
        server.last_inbound[USER] = server.clock() - 25 * 3600
        with pytest.raises(SendError) as excinfo:
            await channel.send(outbound())
        assert excinfo.value.permanent
        assert "131047" in str(excinfo.value) and "window_template" in str(excinfo.value)


async def test_an_unknown_template_is_permanent() -> None:
    async with sending(window_template={"name": "no_such", "language": "de"}) as (_, channel):
        with pytest.raises(SendError, match="132001") as excinfo:
            await channel.send(outbound(last_inbound_at=None))
        assert excinfo.value.permanent


async def test_files_cannot_go_outside_the_window() -> None:
    async with sending(window_template={"name": "hello_world"}) as (server, channel):
        photo = Attachment(kind="image", url="https://cdn.example/p.jpg")
        with pytest.raises(SendError, match="not files") as excinfo:
            await channel.send(outbound(attachments=(photo,), last_inbound_at=None))
        assert excinfo.value.permanent and server.sent == []


# -- media -----------------------------------------------------------------------------------


async def test_media_by_link_takes_the_text_as_caption() -> None:
    async with sending() as (server, channel):
        photo = Attachment(kind="image", url="https://cdn.example/p.jpg")
        await channel.send(outbound("Here it is", attachments=(photo,)))
        [sent] = server.sent
        assert sent.type == "image" and sent.text == "Here it is"
        assert sent.payload["image"] == {
            "link": "https://cdn.example/p.jpg",
            "caption": "Here it is",
        }


async def test_media_with_bytes_is_uploaded_then_sent_by_id() -> None:
    pdf = Attachment(kind="document", mime_type="application/pdf", filename="i.pdf", data=b"%PDF")
    async with sending() as (server, channel):
        await channel.send(
            outbound("Your invoice", attachments=(pdf,), reply_to_external_id="wamid.Q")
        )
        [sent] = server.sent
        media_id = sent.payload["document"]["id"]
        assert server.uploads[media_id] == (b"%PDF", "application/pdf")
        assert sent.media == b"%PDF" and sent.payload["document"]["filename"] == "i.pdf"
        assert (sent.text, sent.reply_to) == ("Your invoice", "wamid.Q")


async def test_audio_goes_after_the_text_and_a_late_failure_is_not_resent() -> None:
    voice = Attachment(kind="audio", mime_type="audio/ogg", data=b"OggS")
    async with sending() as (server, channel):
        await channel.send(
            outbound("Listen:", attachments=(voice,), reply_to_external_id="wamid.Q")
        )
        assert [(m.type, m.reply_to) for m in server.sent] == [("text", "wamid.Q"), ("audio", None)]
        server.fail_next("messages", code=131026, after=1)
        with pytest.raises(SendError, match="1 of 2 parts") as excinfo:
            await channel.send(outbound("Again:", attachments=(voice,)))
        assert excinfo.value.uncertain  # the text arrived: a retry would repeat it


async def test_upload_failures_send_nothing_and_may_be_retried() -> None:
    pdf = Attachment(kind="document", mime_type="application/pdf", data=b"%PDF")
    async with sending() as (server, channel):
        server.fail_next("media", status=500)
        server.fail_next("media", disconnect=True)
        for _ in range(2):
            with pytest.raises(SendError) as excinfo:
                await channel.send(outbound(attachments=(pdf,)))
            assert not (excinfo.value.permanent or excinfo.value.uncertain)
        assert server.sent == []


# -- refusals and errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": "x" * 4097}, "at most 4096"),
        ({"to": "visitor-abc"}, "not a WhatsApp id"),
        ({"text": ""}, "nothing to send"),
    ],
)
async def test_unsendable_outbounds_are_permanent(fields: dict[str, Any], message: str) -> None:
    async with sending() as (server, channel):
        with pytest.raises(SendError, match=message) as excinfo:
            await channel.send(outbound(**fields))
        assert excinfo.value.permanent and server.sent == []


@pytest.mark.parametrize(
    ("fault", "kind", "expected"),
    [
        ({"status": 429, "retry_after": 3}, "retry_after", 3.0),
        ({"status": 400, "code": 131056}, "retry_after", 6.0),
        ({"status": 400, "code": 130429}, "retry_after", 1.0),
        ({"status": 400, "code": 80007}, "retry_after", 60.0),
        ({"status": 400, "code": 131026}, "permanent", None),
        ({"status": 400, "code": 100}, "permanent", None),
        ({"status": 500}, "transient", None),
        ({"status": 503, "code": 131016}, "transient", None),
        ({"disconnect": True}, "uncertain", None),
    ],
)
async def test_graph_errors_map_to_send_error(
    fault: dict[str, Any], kind: str, expected: float | None
) -> None:
    async with sending() as (server, channel):
        server.fail_next("messages", **fault)
        with pytest.raises(SendError) as excinfo:
            await channel.send(outbound())
        error = excinfo.value
        assert (error.retry_after, error.permanent, error.uncertain) == (
            expected,
            kind == "permanent",
            kind == "uncertain",
        )
        # a dropped answer still delivered the message; every other fault delivered nothing
        assert len(server.sent) == (1 if kind == "uncertain" else 0)
        await channel.send(outbound("after"))  # the next one goes through
        assert server.sent[-1].text == "after"


async def test_a_wrong_token_is_permanent_and_says_which_key() -> None:
    async with sending(access_token=Secret("EAA-revoked")) as (_, channel):
        with pytest.raises(SendError, match="access_token") as excinfo:
            await channel.send(outbound())
        assert excinfo.value.permanent and "EAA-revoked" not in str(excinfo.value)


async def test_unreachable_meta_is_transient() -> None:
    async with open_fake_whatsapp() as server:
        cfg = config(server)
    context = MemoryChannelContext("wa")
    with pytest.raises(SendError) as excinfo:
        await WhatsAppChannel("wa", cfg, context).send(outbound())
    assert not (excinfo.value.permanent or excinfo.value.uncertain)
    await context.aclose()
