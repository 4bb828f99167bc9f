"""The agent alone: failover chain, cooldown, residency decisions and the transfer log."""

from __future__ import annotations

import pytest
import trio

from gateway.config import AgentConfig
from gateway.pipeline.agent import Agent, ProviderSlot, Transfer
from gateway.privacy.residency import ResidencyPolicy
from gateway.store.journal import PendingWork, Turn
from gateway.testing.context import MemoryProviderContext
from gateway.testing.fake_llm import FakeProvider


def work(text: str = "hello", journal_id: int = 1) -> PendingWork:
    return PendingWork(
        journal_id=journal_id,
        conversation_id=7,
        message_id=journal_id,
        channel="web",
        account="web",
        thread_key="t",
        agent="default",
        external_id=None,
        history=(Turn("in", text),),
    )


@pytest.fixture
async def context():
    ctx = MemoryProviderContext()
    yield ctx
    await ctx.http.aclose()


def slot(name: str, context, **config) -> ProviderSlot:
    cfg = FakeProvider.Config(plugin="fake", reply_prefix=f"{name}: ", **config)
    return ProviderSlot(name, "fake", FakeProvider(name, cfg, context), cfg)


class Log:
    def __init__(self) -> None:
        self.transfers: list[Transfer] = []

    async def __call__(self, work: PendingWork, transfer: Transfer) -> None:
        await trio.lowlevel.checkpoint()
        self.transfers.append(transfer)

    def outcomes(self) -> list[tuple[str, str]]:
        return [(t.provider, t.outcome) for t in self.transfers]


def agent(chain, log: Log, **config) -> Agent:
    defaults = {"provider": chain[0].name, "retry_backoff": 0.5, "fallback_text": "Sorry."}
    return Agent("default", AgentConfig(**{**defaults, **config}), chain, record=log)


async def test_failover_to_next_provider_and_cooldown(context, autojump_clock):
    primary, backup = slot("primary", context), slot("backup", context)
    log = Log()
    a = agent([primary, backup], log, max_attempts=2, cooldown=60)
    primary.provider.fail_next(2, retryable=True)
    assert await a.answer(work("one")) == ("backup: one", "ai")
    assert log.outcomes() == [("primary", "error"), ("primary", "error"), ("backup", "ok")]
    # The primary is cooling down: the next message goes straight to the backup...
    assert await a.answer(work("two", 2)) == ("backup: two", "ai")
    assert len(primary.provider.requests) == 2
    # ...until the cooldown has passed.
    await trio.sleep(61)
    assert await a.answer(work("three", 3)) == ("primary: three", "ai")


async def test_non_retryable_error_moves_on_at_once(context):
    primary, backup = slot("primary", context), slot("backup", context)
    log = Log()
    primary.provider.fail_next(1, retryable=False)
    assert await agent([primary, backup], log).answer(work()) == ("backup: hello", "ai")
    assert log.outcomes() == [("primary", "error"), ("backup", "ok")]


async def test_all_cooling_down_are_tried_anyway(context, autojump_clock):
    only = slot("only", context)
    log = Log()
    a = agent([only], log, max_attempts=1)
    only.provider.fail_next(1)
    assert await a.answer(work()) == ("Sorry.", "fallback")
    assert only.cooling()
    assert await a.answer(work("again", 2)) == ("only: again", "ai")


async def test_residency_policy_refuses_a_region_and_uses_the_next(context):
    us, eu = slot("us", context, region="US"), slot("eu", context, region="EU")
    log = Log()
    a = agent([us, eu], log, residency=ResidencyPolicy(message_text=["local", "EU"]))
    assert await a.answer(work()) == ("eu: hello", "ai")
    assert us.provider.requests == []
    refused = log.transfers[0]
    assert (refused.provider, refused.outcome, refused.bytes_out) == ("us", "refused", 0)
    assert "message text" in refused.detail
    sent = log.transfers[1]
    assert sent.region == "EU" and sent.categories == ("message_text",) and sent.bytes_out > 0


async def test_channel_policy_applies_on_top_of_the_agent(context):
    eu, local = slot("eu", context, region="EU"), slot("local", context, region="local")
    a = agent([eu, local], Log())
    channel = ResidencyPolicy(message_text=["local"])
    assert await a.answer(work(), channel) == ("local: hello", "ai")
    assert eu.provider.requests == []


async def test_local_only_never_calls_a_remote_provider(context):
    remote, local = slot("remote", context, region="US"), slot("local", context, region="local")
    log = Log()
    a = Agent(
        "default", AgentConfig(provider="remote"), [remote, local], local_only=True, record=log
    )
    assert await a.answer(work()) == ("local: hello", "ai")
    assert remote.provider.requests == []
    assert log.outcomes() == [("remote", "refused"), ("local", "ok")]


async def test_everything_refused_gives_fallback(context):
    remote = slot("remote", context, region="US")
    a = Agent(
        "default", AgentConfig(provider="remote", fallback_text="Sorry."), [remote], local_only=True
    )
    assert await a.answer(work()) == ("Sorry.", "fallback")
    assert remote.provider.requests == []


async def test_transfer_records_legal_basis_and_sizes(context):
    p = slot("p", context, region="EU", legal_basis="contract")
    log = Log()
    await agent([p], log, system_prompt="Be brief.").answer(work("hello there"))
    (t,) = log.transfers
    assert t.legal_basis == "contract" and t.purpose == "reply" and not t.redacted
    assert t.bytes_out == len("Be brief.") + len("hello there")
    assert t.bytes_in == len("p: hello there")


async def test_history_window_in_turns_and_tokens(context):
    p = slot("p", context)
    history = tuple(Turn("in" if n % 2 == 0 else "out", f"turn {n} " + "x" * 40) for n in range(9))
    w = PendingWork(1, 7, 1, "web", "web", "t", "default", None, history)
    by_turns = agent([p], Log(), history_turns=4).request_for(w)
    assert [m.content[:6] for m in by_turns.messages] == [
        "turn 4",
        "turn 5",
        "turn 6",
        "turn 7",
        "turn 8",
    ]
    by_tokens = agent([p], Log(), history_tokens=30).request_for(w)  # ~120 characters
    assert [m.content[:6] for m in by_tokens.messages] == ["turn 7", "turn 8"]
    tiny = agent([p], Log(), history_tokens=1).request_for(w)
    assert [m.content[:6] for m in tiny.messages] == ["turn 8"]  # the newest message always goes


def redacting_agent(chain, log: Log, **config) -> Agent:
    from gateway.config import redactor_for
    from gateway.privacy.redaction import PlaceholderMap

    cfg = AgentConfig(**{"provider": chain[0].name, **config})
    return Agent(
        "default", cfg, chain, redactor=redactor_for(cfg), new_mapping=PlaceholderMap, record=log
    )


PII = "Call me on +7 912 345-67-89 or mail ivan.petrov@example.ru, card 4111 1111 1111 1111"


async def test_provider_that_may_not_see_personal_data_gets_placeholders(context):
    remote = slot("remote", context, region="US", personal_data=False)
    remote.provider.reply_with(lambda r: "Sure, I will call <PHONE_1> and write to <EMAIL_1>.")
    log = Log()
    text, author = await redacting_agent([remote], log).answer(work(PII))
    sent = remote.provider.requests[0].messages[-1].content
    assert "912" not in sent and "example.ru" not in sent and "4111" not in sent
    assert "<PHONE_1>" in sent and "<EMAIL_1>" in sent and "<CARD_1>" in sent
    # The reply the user reads has the real values back.
    assert text == "Sure, I will call +7 912 345-67-89 and write to ivan.petrov@example.ru."
    assert log.transfers[0].redacted and log.transfers[0].categories == ("message_text",)


async def test_policy_keeps_contact_details_home_even_for_a_trusted_provider(context):
    eu = slot("eu", context, region="EU", personal_data=True)
    log = Log()
    policy = ResidencyPolicy(contact_details=["local"])
    await redacting_agent([eu], log, residency=policy).answer(work(PII))
    assert "912" not in eu.provider.requests[0].messages[-1].content
    assert log.transfers[0].redacted


async def test_trusted_provider_without_policy_gets_the_text_and_the_log_says_so(context):
    local = slot("local", context, region="local", personal_data=True)
    log = Log()
    await redacting_agent([local], log).answer(work(PII))
    assert local.provider.requests[0].messages[-1].content == PII
    (t,) = log.transfers
    assert not t.redacted and t.categories == ("message_text", "contact_details")


async def test_configured_patterns_and_names_are_redacted(context):
    remote = slot("remote", context, region="US")
    await redacting_agent(
        [remote], Log(), redact_patterns={"ORDER_REF": "ORD-[0-9]{6}"}, redact_names=["Ivan Petrov"]
    ).answer(work("Ivan Petrov here, about ORD-123456"))
    sent = remote.provider.requests[0].messages[-1].content
    assert "Ivan" not in sent and "Petrov" not in sent and "ORD-123456" not in sent
    assert "<ORDER_REF_1>" in sent


async def test_without_personal_data_nothing_is_redacted(context):
    remote = slot("remote", context, region="US")
    log = Log()
    await redacting_agent([remote], log).answer(work("Do you ship to Lisbon? Order total 120 EUR"))
    assert (
        remote.provider.requests[0].messages[-1].content
        == "Do you ship to Lisbon? Order total 120 EUR"
    )
    assert not log.transfers[0].redacted
