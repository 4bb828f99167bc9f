"""Fuzzing with Hypothesis: the Telegram converter and the webhook endpoint never crash on
arbitrary input; the endpoint answers 200 for updates and only clear 4xx otherwise, never 5xx."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.secretref import Secret
from gateway.testing.conformance import public_client
from gateway.testing.context import MemoryChannelContext
from plugins.telegram.channel import TelegramChannel
from plugins.telegram.convert import update_to_inbound

SECRET = "fuzz-Secret_1"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
updates = st.fixed_dictionaries(
    {"update_id": st.integers(min_value=0, max_value=2**40)},
    optional={
        "message": st.dictionaries(
            st.sampled_from(
                ["message_id", "chat", "from", "text", "date", "caption", "photo", "sender_chat"]
            ),
            json_values | st.fixed_dictionaries({"id": st.integers(), "type": st.text(max_size=8)}),
            max_size=8,
        ),
        "edited_message": json_values,
        "callback_query": json_values,
    },
)


@settings(max_examples=500, deadline=None)
@given(updates)
def test_converter_never_raises_on_arbitrary_updates(update):
    inbound = update_to_inbound(update, account="123")
    if inbound is not None:
        assert inbound.external_id and inbound.thread_key and inbound.sender_id


def webhook_app() -> tuple[TelegramChannel, MemoryChannelContext]:
    context = MemoryChannelContext("tg", public_url="https://gw.example.com")
    config = TelegramChannel.Config(
        plugin="telegram",
        token=Secret("123456:ABCdefGHIjkl"),
        mode="webhook",
        webhook_secret=Secret(SECRET),
    )
    return TelegramChannel("tg", config, context), context


@settings(max_examples=120, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=400),
        json_values.map(lambda v: json.dumps(v).encode()),
        updates.map(lambda u: json.dumps(u).encode()),
    ),
    secret=st.sampled_from([SECRET, None, "wrong", SECRET + "x"]),
)
async def test_webhook_answers_200_or_4xx_never_5xx(body, secret):
    channel, context = webhook_app()
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    async with public_client(channel) as client:
        response = await client.post("/webhooks/tg", content=body, headers=headers)
    assert response.status_code < 500, (response.status_code, body[:80])
    if secret != SECRET:
        assert response.status_code in (401, 403) and context.inbound == []
    elif response.status_code == 200:
        assert len(context.inbound) <= 1
    else:
        assert response.status_code in (400, 413) and context.inbound == []
    await context.aclose()
