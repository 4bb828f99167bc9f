"""Human handoff and "AI off": a user asking for a person gets one notice and then only people
answer; AI can be switched off per conversation and per contact; business hours shape the notice."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from gateway import conversations_cli
from gateway.config import AgentConfig, BusinessHours
from gateway.store.bodies import conversation_messages
from gateway.store.journal import set_contact_ai_txn, set_conversation_txn
from gateway.store.outbox import OptedOut
from gateway.testing.daemon import http_config, open_gateway
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider

CONFIG = (
    http_config(0, public_url=False)
    + """
[channels.support]
plugin = "fake"
[agents.default]
provider = "model"
handoff_phrases = ["get me the boss"]
handoff_text = "A colleague will take over."
disclosure = "(AI reply)"
language = "auto"
[providers.model]
plugin = "fake"
"""
)


async def conversation_status(gw, thread: str) -> tuple[str, int]:
    return await gw.running.store.read(
        "s",
        lambda db: db.conn.execute(
            "SELECT status, id FROM conversations WHERE thread_key = ?", (thread,)
        ).fetchone(),
    )


@pytest.mark.parametrize(
    "phrase",
    [
        "Can I talk to a human?",
        "Позовите оператора, пожалуйста",
        "quiero hablar con una persona",
        "Quero falar com um atendente",
        "GET ME THE BOSS now",
    ],
)
async def test_asking_for_a_person_hands_off_and_silences_the_ai(tmp_path, fake_registry, phrase):
    async with open_gateway(CONFIG, fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        provider: FakeProvider = gw.provider()
        await channel.deliver("c1", "u1", phrase)
        (notice,) = await channel.wait_sent(1)
        assert notice.text == "A colleague will take over."
        status, conversation = await conversation_status(gw, "c1")
        assert status == "handoff"
        await channel.deliver("c1", "u1", "hello? anyone?")
        await gw.wait_idle()
        assert len(channel.sent) == 1 and provider.requests == []  # silent, and no model call
        stored = await gw.running.store.read(
            "m",
            lambda db: [
                m.text
                for m in conversation_messages(gw.running.store.sealer, db.conn, conversation)
                if m.direction == "in"
            ],
        )
        assert stored == [phrase, "hello? anyone?"]  # kept for the person who answers
        # A person hands the conversation back: the AI answers again.
        await gw.running.store.write(
            "release", set_conversation_txn, conversation, kind="release", actor="cli"
        )
        await channel.deliver("c1", "u1", "thanks, one more question")
        await channel.wait_sent(2)
        assert channel.sent[1].text == "echo: thanks, one more question\n\n(AI reply)"
        events = await gw.running.store.read(
            "e",
            lambda db: [
                r[0] for r in db.conn.execute("SELECT kind FROM conversation_events ORDER BY id")
            ],
        )
        assert events == ["handoff", "release"]


async def test_ai_off_per_conversation_and_per_contact(tmp_path, fake_registry):
    async with open_gateway(CONFIG, fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        provider: FakeProvider = gw.provider()
        first = await channel.deliver("c1", "alice", "hi")
        await channel.wait_sent(1)
        await gw.running.store.write(
            "off", set_conversation_txn, first.conversation_id, kind="ai_off", actor="cli"
        )
        await channel.deliver("c1", "alice", "are you a bot?")
        second = await channel.deliver("c2", "bob", "hi")
        await channel.wait_sent(2)
        contact = await gw.running.store.read(
            "k",
            lambda db: db.conn.execute(
                "SELECT contact_id FROM conversations WHERE id = ?", (second.conversation_id,)
            ).fetchone()[0],
        )
        await gw.running.store.write("off", set_contact_ai_txn, contact, False)
        await channel.deliver("c2", "bob", "still there?")
        await gw.wait_idle()
        assert [o.thread_key for o in channel.sent] == ["c1", "c2"]
        assert len(provider.requests) == 2
        assert gw.running.pipeline.counters["silent"] == 2


async def test_language_instruction_reaches_the_model(tmp_path, fake_registry):
    async with open_gateway(CONFIG, fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        await channel.deliver("c1", "u1", "Привет")
        await channel.wait_sent(1)
        assert "language of the user's last message" in gw.provider().requests[0].system


def test_business_hours_shape_the_handoff_notice():
    hours = BusinessHours(timezone="Europe/Moscow", days=["mon", "tue", "wed", "thu", "fri"])
    agent_config = AgentConfig(provider="x", business_hours=hours, handoff_text="Now.")
    from gateway.pipeline.agent import Agent

    agent = Agent("a", agent_config, [])
    monday_noon_msk = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)  # 12:00 in Moscow
    saturday = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)
    monday_late = dt.datetime(2026, 11, 23, 16, 0, tzinfo=dt.UTC)  # 19:00 in Moscow
    assert agent.handoff_text(monday_noon_msk) == "Now."
    for moment in (saturday, monday_late):
        assert agent.handoff_text(moment).endswith(
            "We are at work mon-fri 09:00-18:00 (Europe/Moscow); we will answer then."
        )


def test_business_hours_validation():
    with pytest.raises(ValueError, match="unknown time zone"):
        BusinessHours(timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="HH:MM"):
        BusinessHours(open="9am")
    with pytest.raises(ValueError, match="unknown day"):
        BusinessHours(days=["monday", "funday"])


ROUTED = CONFIG.replace(
    'handoff_text = "A colleague will take over."',
    'handoff_text = "A colleague will take over."\n'
    'categories = { billing = ["invoice", "refund"], delivery = ["parcel"] }\n'
    'handoff_categories = ["billing"]',
)


async def test_analysis_is_stored_and_routed_categories_go_to_people(
    tmp_path, fake_registry, capsys
):
    async with open_gateway(ROUTED, fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        await channel.deliver("c1", "u1", "Where is my parcel?")
        await channel.deliver("c2", "u2", "I was charged twice, I want a refund on this invoice!")
        await channel.wait_sent(2)
        await channel.deliver("c2", "u2", "Hello?? This is urgent!!!")
        await gw.wait_idle()
        rows = await gw.running.store.read(
            "a",
            lambda db: [
                (thread, m.text, m.analysis, m.suggestions)
                for thread, cid in db.conn.execute("SELECT thread_key, id FROM conversations")
                for m in conversation_messages(gw.running.store.sealer, db.conn, cid)
                if m.direction == "in"
            ],
        )
        conversation = (await conversation_status(gw, "c2"))[1]
        capsys.readouterr()
        await gw.running.store.read(
            "show", conversations_cli._show, gw.running.store.sealer, conversation
        )
        shown = capsys.readouterr().out
    # What the person taking over sees (`gateway conversations show`).
    assert "handoff" in shown and "category=billing sentiment=negative" in shown
    assert "urgency=high" in shown and "suggested replies:\n  1. " in shown
    parcel, refund, urgent = rows
    assert json.loads(parcel[2])["category"] == "delivery" and parcel[3] is None
    refund_labels = json.loads(refund[2])
    assert refund_labels["category"] == "billing" and refund_labels["sentiment"] == "negative"
    assert [o.text for o in channel.sent if o.thread_key == "c2"] == ["A colleague will take over."]
    assert len(json.loads(urgent[3])) >= 2  # suggested replies for the person in charge
    assert json.loads(urgent[2])["urgency"] == "high"
    assert "charged twice" not in refund[2]  # labels only, never the text


def test_undefined_handoff_category_is_a_config_error(tmp_path, fake_registry):
    from gateway.config import load_config
    from gateway.errors import ConfigError

    path = tmp_path / "g.toml"
    path.write_text(
        ROUTED.replace('handoff_categories = ["billing"]', 'handoff_categories = ["biling"]')
    )
    with pytest.raises(ConfigError, match="biling"):
        load_config(path, fake_registry, environ={})


ANGRY = CONFIG.replace(
    'handoff_phrases = ["get me the boss"]',
    'handoff_phrases = { ru = ["дайте начальника"] }\nhandoff_when_angry = true',
)


async def test_angry_and_urgent_goes_to_a_person_and_phrases_per_language(tmp_path, fake_registry):
    async with open_gateway(ANGRY, fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        await channel.deliver(
            "c1", "u1", "This is UNACCEPTABLE, my order is broken and I need it fixed NOW!!!"
        )
        await channel.deliver("c2", "u2", "дайте начальника")
        await channel.deliver("c3", "u3", "What are your opening hours?")
        await channel.wait_sent(3)
        texts = {o.thread_key: o.text for o in channel.sent}
    assert texts["c1"] == texts["c2"] == "A colleague will take over."
    assert texts["c3"].startswith("echo: ")


async def test_restricted_contact_is_never_sent_to_a_model(tmp_path, fake_registry):
    async with open_gateway(CONFIG, fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        first = await channel.deliver("c1", "u1", "hello")
        await channel.wait_sent(1)
        await gw.running.store.write(
            "restrict",
            lambda db: db.conn.execute(
                "UPDATE contacts SET restricted = 1 WHERE id = "
                "(SELECT contact_id FROM conversations WHERE id = ?)",
                (first.conversation_id,),
            ),
        )
        await channel.deliver("c1", "u1", "my private question")
        await gw.wait_idle()
        assert len(gw.provider().requests) == 1 and len(channel.sent) == 1
        # Stored for people, but not analysed either (restriction covers analytics), and no
        # notification may go to them; a person's reply still may.
        page = await gw.running.store.read(
            "m",
            lambda db: conversation_messages(
                gw.running.store.sealer, db.conn, first.conversation_id
            ),
        )
        assert page[-1].text == "my private question" and page[-1].analysis is None
        with pytest.raises(OptedOut, match=r"restricted \(GDPR Art. 18\)"):
            await gw.running.pipeline.send_notification(
                "support", "fake-bot", "c1", "sale!", key="n1"
            )
        await gw.running.pipeline.reply_as_human(
            first.conversation_id, "a person answers", actor="admin:a@example.com", key="h1"
        )
        (human,) = (await channel.wait_sent(2))[1:]
        assert human.text == "a person answers" and human.author == "human"
