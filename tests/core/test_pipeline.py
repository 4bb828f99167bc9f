"""The whole daemon in-process (real config loader, store, pipeline, HTTP) with a fake channel
and a fake model: ordering, dedupe, retries, fallback, rate limits, drain and recovery."""

from __future__ import annotations

import functools

import trio
import trio.testing

from gateway.errors import SendError
from gateway.testing.daemon import open_gateway
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider

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
{channel_extra}
[agents.default]
provider = "model"
system_prompt = "Be brief."
max_attempts = 3
retry_backoff = 1.0
fallback_text = "Sorry, try later."
[providers.model]
plugin = "fake"
timeout = 5
"""


def config(channel_extra: str = "") -> str:
    return CONFIG.format(channel_extra=channel_extra)


async def test_replies_in_order_and_stores_conversation(tmp_path, fake_registry):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        for text in ("first", "second", "third"):
            await channel.deliver("chat1", "alice", text)
        await channel.wait_sent(3)
        texts = channel.texts("chat1")
        assert [
            t.endswith(w) for t, w in zip(texts, ("first", "second", "third"), strict=True)
        ] == [True] * 3
        # The model saw the conversation so far: the third request carries all earlier turns.
        provider: FakeProvider = gw.provider()
        third = provider.requests[2]
        assert [m.content for m in third.messages if m.role == "user"] == [
            "first",
            "second",
            "third",
        ]
        assert third.system == "Be brief."
        counts = await gw.running.store.read(
            "counts", lambda db: {t: db[t].count for t in ("contacts", "conversations", "messages")}
        )
        assert counts == {"contacts": 1, "conversations": 1, "messages": 6}


async def test_redelivered_message_is_acknowledged_but_answered_once(tmp_path, fake_registry):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        first = await channel.deliver("chat1", "alice", "hello", external_id="42")
        again = await channel.deliver("chat1", "alice", "hello", external_id="42")
        assert not first.duplicate and again.duplicate
        await channel.deliver("chat1", "alice", "bye", external_id="43")
        await channel.wait_sent(2)
        await gw.wait_idle()
        assert len(channel.sent) == 2
        assert len(gw.provider().requests) == 2


async def test_many_chats_proceed_concurrently(tmp_path, fake_registry):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        provider: FakeProvider = gw.provider()
        provider.model.latency = 0.05
        in_flight = peak = 0
        complete = provider.complete

        async def counting_complete(request):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await complete(request)
            finally:
                in_flight -= 1

        provider.complete = counting_complete  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            for chat in range(40):
                for n in range(3):
                    nursery.start_soon(
                        functools.partial(channel.deliver, external_id=f"{chat}-{n}"),
                        f"chat{chat}",
                        f"user{chat}",
                        f"m{n}",
                    )
        await channel.wait_sent(120)
        for chat in range(40):
            assert len(channel.texts(f"chat{chat}")) == 3
        assert peak > 1  # chats were answered side by side


async def test_model_errors_are_retried_then_answered(tmp_path, fake_registry, autojump_clock):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        provider: FakeProvider = gw.provider()
        provider.fail_next(2, retryable=True)
        await channel.deliver("chat1", "alice", "are you there")
        (reply,) = await channel.wait_sent(1)
        assert reply.text.endswith("are you there")
        assert len(provider.requests) == 3


async def test_model_down_gives_fallback_text_not_silence(tmp_path, fake_registry, autojump_clock):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        provider: FakeProvider = gw.provider()
        provider.fail_next(3, retryable=True)
        await channel.deliver("chat1", "alice", "hello")
        (reply,) = await channel.wait_sent(1)
        assert reply.text == "Sorry, try later."
        provider.fail_next(1, retryable=False)  # a bad request is not retried
        await channel.deliver("chat1", "alice", "hello again")
        await channel.wait_sent(2)
        assert channel.sent[1].text == "Sorry, try later."
        assert len(provider.requests) == 4


async def test_model_hang_times_out_and_falls_back(tmp_path, fake_registry, autojump_clock):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        provider: FakeProvider = gw.provider()
        provider.hang_next(3)
        await channel.deliver("chat1", "alice", "hello")
        (reply,) = await channel.wait_sent(1)
        assert reply.text == "Sorry, try later."


async def test_platform_flood_control_is_honoured(tmp_path, fake_registry, autojump_clock):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        channel.fail_next(SendError("Too Many Requests", retry_after=30))
        start = trio.current_time()
        await channel.deliver("chat1", "alice", "hello")
        await channel.wait_sent(1)
        assert trio.current_time() - start >= 30
        assert len(channel.sent) == 1


async def test_permanent_send_error_is_not_retried(tmp_path, fake_registry):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        channel.fail_next(SendError("Forbidden: bot was blocked by the user", permanent=True))
        await channel.deliver("chat1", "alice", "hello")
        await channel.deliver("chat1", "alice", "again")
        await channel.wait_sent(1)
        await gw.wait_idle()
        assert len(channel.sent) == 1 and channel.sent[0].text.endswith("again")
        states = await gw.running.store.read(
            "s", lambda db: [r[0] for r in db.conn.execute("SELECT state FROM outbox ORDER BY id")]
        )
        assert states == ["failed", "sent"]


async def test_a_row_sent_meanwhile_is_not_sent_again_from_commit_replys_read(
    tmp_path, fake_registry
):
    # The delivery lane starts from the outbox row "commit reply" read in its transaction. If
    # that row was claimed and sent meanwhile (a lane already running for the conversation),
    # "claim outbox row" refuses it and the lane reads again: nothing goes out twice.
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        pipeline = gw.running.pipeline
        kinds = gw.running.store.writes_by_kind
        handed: dict[int, object] = {}

        class Recording(dict):  # type: ignore[type-arg]
            def __setitem__(self, key: int, value: object) -> None:
                handed[key] = value
                super().__setitem__(key, value)

        pipeline._next_rows = Recording()
        await channel.deliver("chat1", "alice", "first")
        await channel.wait_sent(1)
        await gw.wait_idle()
        ((conversation_id, first_row),) = handed.items()
        assert kinds["next outbox row"] == 0
        # The first reply's row again, as a stale read would leave it: already sent.
        pipeline._next_rows[conversation_id] = first_row  # type: ignore[assignment]
        pipeline.deliveries.notify(conversation_id)
        await gw.wait_idle()
        assert len(channel.sent) == 1
        assert kinds["claim outbox row"] == 2 and kinds["next outbox row"] == 1
        await channel.deliver("chat1", "alice", "second")
        await channel.wait_sent(2)
        await gw.wait_idle()
        assert [m.text.rsplit(" ", 1)[-1] for m in channel.sent] == ["first", "second"]
        assert pipeline._next_rows == {}


async def test_per_chat_send_rate(tmp_path, fake_registry, autojump_clock):
    extra = "send_rate_per_chat = 1.0\nsend_burst_per_chat = 1"
    async with open_gateway(config(extra), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        times: list[float] = []
        # When the limiter lets each send go. (Not when the send is made: between the two the
        # row is marked 'sending' on the writer thread, and the autojump clock may jump while a
        # thread works, by different amounts each time.)
        limiter = gw.running.pipeline.channels["support"].limiter
        assert limiter is not None
        original = limiter.wait

        async def timed_wait(thread_key: str) -> None:
            await original(thread_key)
            times.append(trio.current_time())

        limiter.wait = timed_wait  # type: ignore[method-assign]
        for n in range(4):
            await channel.deliver("chat1", "alice", f"m{n}")
        await channel.wait_sent(4)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(gap >= 0.99 for gap in gaps), gaps


async def test_shutdown_drains_in_flight_work(tmp_path, fake_registry):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        provider: FakeProvider = gw.provider()
        provider.model.latency = 0.2
        await channel.deliver("chat1", "alice", "hello")
        await provider.wait_requests(1)
        gw.stop.set()
    # serve() returned only after the reply went out.
    assert [o.text for o in channel.sent] == ["echo: hello"]


async def test_crash_then_restart_resumes_without_duplicates(tmp_path, fake_registry):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        provider: FakeProvider = gw.provider()
        provider.hang_next(1)  # the first message is mid-answer when we crash
        await channel.deliver("chat1", "alice", "one")
        await provider.wait_requests(1)
        await channel.deliver("chat2", "bob", "two")
        await channel.wait_sent(1)  # chat2 answered and sent
        channel.send_gate = trio.Event()  # the next send stays in flight...
        await channel.deliver("chat3", "carol", "three")
        await channel.at_gate.wait()
        gw.crash()  # ...when the process dies
    sent_before = [o.text for o in channel.sent]
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel2: FakeChannel = gw.channel("support")
        await channel2.wait_sent(1)
        await gw.wait_idle()
        # chat1 resumed from the journal; chat2 not resent; chat3 was in flight: not resent.
        assert [o.thread_key for o in channel2.sent] == ["chat1"]
        assert sent_before == ["echo: two"]
        states = await gw.running.store.read(
            "s", lambda db: dict(db.conn.execute("SELECT thread_key, state FROM outbox"))
        )
        assert states == {"chat1": "sent", "chat2": "sent", "chat3": "unknown"}


async def test_message_without_text_gets_a_notice_not_a_model_call(tmp_path, fake_registry):
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        await channel.deliver("chat1", "alice", "")
        (reply,) = await channel.wait_sent(1)
        assert reply.text.startswith("Sorry, I can only read text messages")
        assert gw.provider().requests == []


async def test_a_message_takes_one_lookup_per_lane_and_no_empty_ones(tmp_path, fake_registry):
    # Each lane reads "is there more?" with its item, so a lone message costs one "next pending
    # message", not a second look that finds nothing (a writer transaction each: bench/README
    # "Where the time goes"); the delivery lane starts from the row "commit reply" read in its
    # own transaction, with no "next outbox row" of its own.
    async with open_gateway(config(), fake_registry, tmp_path) as gw:
        channel: FakeChannel = gw.channel("support")
        kinds = gw.running.store.writes_by_kind
        for n, text in enumerate(("first", "second", "third"), start=1):
            await channel.deliver("chat1", "alice", text)
            await channel.wait_sent(n)
            await gw.wait_idle()
        assert kinds["next pending message"] == 3
        assert kinds["next outbox row"] == 0
        assert kinds["commit reply"] == 3 and kinds["claim outbox row"] == 3
        # The transfer log is written without a round trip of its own, and still commits.
        assert kinds["record transfer"] == 3
        rows = await gw.running.store.read("t", lambda db: db["transfers"].count)
        assert rows == 3
