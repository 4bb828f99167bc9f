"""/metrics, /healthz and /readyz on the admin bind of a whole in-process daemon (fake channel,
fake model), scraped over real HTTP: the numbers a sysadmin would read after known traffic.

No autojump clock here: it would time out the HTTP client while the handler waits on database
threads."""

from __future__ import annotations

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import SendError
from gateway.metrics import Metrics, provider_outcome
from gateway.plugin import Registry
from gateway.store.db import connect
from gateway.testing.daemon import GatewayUnderTest, open_gateway
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeModel, FakeProvider

CONFIG = """
[gateway]
data_dir = "data"
shutdown_grace = 5
[http]
public_bind = "127.0.0.1:0"
admin_bind = "127.0.0.1:0"
[channels.support]
plugin = "fake"
agent = "default"
[channels.sales]
plugin = "fake"
agent = "default"
[agents.default]
provider = "model"
max_attempts = 1
fallback_text = "Sorry, try later."
[providers.model]
plugin = "fake"
timeout = 5
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def registry(model: FakeModel) -> Registry:
    registry = Registry()
    registry.add("channel", "fake", FakeChannel)
    registry.add("llm", "fake", FakeProvider.bound_to(model))
    return registry


async def scrape(gw: GatewayUnderTest) -> tuple[httpx.Response, Samples]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{gw.running.admin_urls[0]}/metrics")
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_counters_after_known_traffic(tmp_path, registry, model):
    async with open_gateway(CONFIG, registry, tmp_path) as gw:
        support: FakeChannel = gw.channel("support")
        # 3 messages, one delivered twice by the platform; the model fails once (-> fallback);
        # one send hits flood control once before it goes out.
        model.fail_next(1, retryable=False)
        support.fail_next(SendError("flood control", retry_after=0))
        await support.deliver("chat-aurora", "alice-7", "zebra kiwi", external_id="1")
        await support.deliver("chat-aurora", "alice-7", "zebra kiwi", external_id="1")
        await support.deliver("chat-aurora", "alice-7", "quokka mango", external_id="2")
        await support.deliver("chat-borealis", "bob-9", "walrus lime", external_id="3")
        await support.wait_sent(3)
        await gw.wait_idle()
        response, samples = await scrape(gw)

    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    received = "gateway_messages_received_total"
    assert value(samples, received, channel="support", result="accepted") == 3
    assert value(samples, received, channel="support", result="duplicate") == 1
    assert value(samples, received, channel="sales", result="accepted") == 0  # series exists
    replies = "gateway_replies_total"
    assert value(samples, replies, channel="support", author="ai") == 2
    assert value(samples, replies, channel="support", author="fallback") == 1
    sends = "gateway_sends_total"
    assert value(samples, sends, channel="support", outcome="sent") == 3
    assert value(samples, sends, channel="support", outcome="retry") == 1
    assert value(samples, sends, channel="support", outcome="failed") == 0
    calls = "gateway_provider_call_seconds_count"
    assert value(samples, calls, provider="model", outcome="ok") == 2
    assert value(samples, calls, provider="model", outcome="error") == 1
    assert (
        value(
            samples,
            "gateway_provider_call_seconds_bucket",
            provider="model",
            outcome="ok",
            le="+Inf",
        )
        == 2
    )
    # Nothing waits once idle.
    assert value(samples, "gateway_journal_pending", channel="support") == 0
    assert value(samples, "gateway_journal_oldest_pending_age_seconds", channel="support") == 0
    assert value(samples, "gateway_outbox_open", channel="support", state="pending") == 0
    assert value(samples, "gateway_lanes_active", lane="answer") == 0
    # Store and process figures are there and plausible.
    assert value(samples, "gateway_store_writes_total") >= 10
    assert (
        1
        <= value(samples, "gateway_store_commits_total")
        <= value(samples, "gateway_store_writes_total")
    )
    assert value(samples, "gateway_database_bytes", file="main") > 0
    # Both outcomes are exported (a KeyError if not); none failed.
    assert value(samples, "gateway_store_checkpoints_total", outcome="ok") >= 0
    assert value(samples, "gateway_store_checkpoints_total", outcome="failed") == 0
    assert value(samples, "gateway_accepting") == 1
    # The stall monitor's loop-lag histogram is exported (a KeyError if not).
    assert value(samples, "gateway_event_loop_lag_seconds_count") >= 0
    assert value(samples, "process_resident_memory_bytes") > 10_000_000
    assert ("process_cpu_seconds_total", frozenset()) in samples
    # No contact, thread or text ever becomes a label or a value.
    for secret in ("alice-7", "bob-9", "aurora", "borealis", "zebra", "quokka", "walrus"):
        assert secret not in response.text


async def test_handoff_and_messages_left_to_people(tmp_path, registry):
    async with open_gateway(CONFIG, registry, tmp_path) as gw:
        sales: FakeChannel = gw.channel("sales")
        await sales.deliver("chat-h", "carol-3", "I want to talk to a human please")
        await sales.wait_sent(1)
        await gw.wait_idle()
        await sales.deliver("chat-h", "carol-3", "hello? still there")
        await gw.wait_idle()
        _, samples = await scrape(gw)
    assert value(samples, "gateway_replies_total", channel="sales", author="handoff") == 1
    assert value(samples, "gateway_replies_total", channel="sales", author="ai") == 0
    assert value(samples, "gateway_messages_left_to_people_total", channel="sales") == 1
    assert value(samples, "gateway_messages_left_to_people_total", channel="support") == 0


async def test_journal_lag_and_open_outbox_while_work_is_in_flight(tmp_path, registry, model):
    async with open_gateway(CONFIG, registry, tmp_path) as gw:
        support: FakeChannel = gw.channel("support")
        # chat1: a reply held at the send (outbox 'sending'), and a second reply queued behind
        # it (outbox 'pending'); chat2: the model is slow (journal pending, answer lane busy).
        support.send_gate = trio.Event()
        await support.deliver("chat1", "alice", "one")
        await support.at_gate.wait()
        await support.deliver("chat1", "alice", "two")
        await gw.running.pipeline.answers.wait_idle()  # "two" is committed, queued
        model.latency = 1.0
        await support.deliver("chat2", "bob", "slow")
        await model.wait_requests(3)
        await trio.sleep(0.2)  # let the journal lag grow measurably
        _, samples = await scrape(gw)
        support.send_gate.set()
        model.latency = 0
        await support.wait_sent(3)

    assert value(samples, "gateway_journal_pending", channel="support") == 1
    assert (
        0.1 <= value(samples, "gateway_journal_oldest_pending_age_seconds", channel="support") < 30
    )
    assert value(samples, "gateway_outbox_open", channel="support", state="sending") == 1
    assert value(samples, "gateway_outbox_open", channel="support", state="pending") == 1
    assert value(samples, "gateway_lanes_active", lane="answer") == 1
    assert value(samples, "gateway_lanes_active", lane="deliver") == 1


async def test_healthz_and_readyz(tmp_path, registry, monkeypatch):
    monkeypatch.setenv("GATEWAY_DB_BUSY_TIMEOUT", "0.2")
    async with open_gateway(CONFIG, registry, tmp_path) as gw:
        admin = gw.running.admin_urls[0]
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{admin}/healthz")).json() == {"status": "ok"}
            ready = await http.get(f"{admin}/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"status": "ready"}

            # Another connection holds the write lock past the busy timeout: not writable.
            other = connect(gw.running.store.path, gw.running.store._key)
            other.conn.execute("BEGIN EXCLUSIVE")
            try:
                broken = await http.get(f"{admin}/readyz")
            finally:
                other.conn.rollback()
                other.conn.close()
            assert broken.status_code == 503
            assert broken.json()["status"] == "not ready"
            assert broken.json()["reasons"][0].startswith("store not writable")

            # Shutdown begins by refusing new messages; from then on the gateway is not ready.
            gw.running.pipeline.accepting = False
            stopping = await http.get(f"{admin}/readyz")
            assert stopping.status_code == 503
            assert stopping.json() == {"status": "not ready", "reasons": ["shutting down"]}
            assert (await http.get(f"{admin}/healthz")).json() == {"status": "stopping"}
            _, samples = await scrape(gw)
            assert value(samples, "gateway_accepting") == 0


def test_two_metrics_objects_do_not_share_a_registry():
    first, second = Metrics(["a"]), Metrics(["a"])
    first.received("a", duplicate=False)
    assert first.messages.labels("a", "accepted")._value.get() == 1
    assert second.messages.labels("a", "accepted")._value.get() == 0


@pytest.mark.parametrize(
    ("outcome", "label"),
    [
        ("ok", "ok"),
        ("error", "error"),
        ("error: 127.0.0.1 answered HTTP 500", "error"),
        ("timeout", "timeout"),
        ("timeout (provider ignored its own timeout)", "timeout"),
        ("empty", "empty"),
        ("empty answer", "empty"),
        ("bug: KeyError", "bug"),
        ("something new", "error"),
    ],
)
def test_provider_outcomes_are_a_closed_set(outcome, label):
    assert provider_outcome(outcome) == label
