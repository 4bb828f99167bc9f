"""FaqProvider: real visitor questions (typos, Russian), unknown ones, custom and broken files."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
import pydantic
import pytest
import trio

from gateway.errors import ConfigError
from gateway.messages import ChatMessage, CompletionRequest
from gateway.testing.context import MemoryProviderContext
from plugins.faq import FaqProvider
from plugins.faq.knowledge import load_knowledge, parse_knowledge, stem
from plugins.faq.provider import DEFAULT_UNKNOWN_ANSWER, default_knowledge

# One CA bundle for all contexts: a fresh one costs ~30 ms per httpx client (the FAQ never uses it).
SSL = ssl.create_default_context()


def make_provider(tmp_path: Path | None = None, **table: object) -> FaqProvider:
    config = FaqProvider.Config.model_validate({"plugin": "faq", **table})
    http = httpx.AsyncClient(verify=SSL)
    context = MemoryProviderContext(name="faq", http=http, config_dir=str(tmp_path or "."))
    return FaqProvider("faq", config, context)


@pytest.fixture
async def default_provider():
    provider = make_provider()
    yield provider
    await provider.aclose()
    await provider.context.http.aclose()


def ask(*turns: str) -> CompletionRequest:
    """User turns, with an assistant turn between each pair."""
    messages: list[ChatMessage] = []
    for i, text in enumerate(turns):
        if i:
            messages.append(ChatMessage("assistant", "..."))
        messages.append(ChatMessage("user", text))
    return CompletionRequest(system="You are the support assistant.", messages=tuple(messages))


def answer_of(question: str) -> str:
    return next(e.answer for e in default_knowledge().entries if e.question == question)


@pytest.mark.parametrize(
    ("question", "entry"),
    [
        ("hello", "Hello"),
        ("Hi there!", "Hello"),
        ("heloo", "Hello"),
        ("wat is ths", "What is this?"),
        ("Am I talking to a bot?", "What is this?"),
        ("how do i delte my data", "How do I delete my data?"),
        ("Please erase all my messages", "How do I delete my data?"),
        ("Hello, how do I delete my data?", "How do I delete my data?"),
        ("Where is my data stored?", "Is my data stored?"),
        ("do you store my mesages", "Is my data stored?"),
        ("is my personal information safe with you", "Is my data stored?"),
        ("can i talk to a humn", "How do I talk to a human?"),
        ("I want to speak to someone from support", "How do I talk to a human?"),
        ("opening hours?", "What are your opening hours?"),
        ("when are you open on weekends", "What are your opening hours?"),
        ("what are ur prices", "How much does it cost?"),
        ("pricng", "How much does it cost?"),
        ("is this chatgpt", "Do you use AI?"),
        ("adress?", "How can I contact you?"),
        ("thx", "Thank you"),
        ("thnaks a lot!", "Thank you"),
        ("BYE", "Goodbye"),
    ],
)
async def test_answers_english_questions_with_typos(default_provider, question, entry):
    completion = await default_provider.complete(ask(question))
    assert completion.text == answer_of(entry)
    assert completion.model == "faq"


@pytest.mark.parametrize(
    ("question", "entry"),
    [
        ("Где хранятся мои данные?", "Где хранятся мои данные?"),
        ("где храните мои сообщения", "Где хранятся мои данные?"),
        ("как удалить данные", "Как удалить мои данные?"),
        ("позовите оператора", "Как связаться с оператором?"),
        ("хочу поговорить с живым человеком", "Как связаться с оператором?"),
        ("сколько стоит", "Сколько это стоит?"),
        ("Какие у вас цены", "Сколько это стоит?"),
        ("режим работы в выходные", "Когда вы работаете?"),
        ("вы робот?", "Что это за чат?"),
        ("ЗДРАВСТВУЙТЕ", "Привет"),
        ("спасибо большое!", "Спасибо"),
        ("Ёщё раз спасибо", "Спасибо"),
    ],
)
async def test_answers_russian_questions(default_provider, question, entry):
    completion = await default_provider.complete(ask(question))
    assert completion.text == answer_of(entry)


@pytest.mark.parametrize(
    "question",
    [
        "what's the weather in Paris",
        "how do I cook pasta",
        "my order has not arrived",
        "how do i reset my password",
        "какая погода в москве",
        "как оформить заказ",
        "",
    ],
)
async def test_unknown_questions_get_the_unknown_answer(default_provider, question):
    completion = await default_provider.complete(ask(question))
    assert completion.text == DEFAULT_UNKNOWN_ANSWER


async def test_answers_the_last_user_message_only(default_provider):
    completion = await default_provider.complete(
        ask("What are your opening hours?", "How much does it cost?")
    )
    assert completion.text == answer_of("How much does it cost?")


async def test_no_user_message_gets_the_unknown_answer(default_provider):
    request = CompletionRequest(
        system="s", messages=(ChatMessage("assistant", "How much does it cost?"),)
    )
    assert (await default_provider.complete(request)).text == DEFAULT_UNKNOWN_ANSWER


async def test_min_score_and_unknown_answer_are_configurable():
    strict = make_provider(min_score=1.0, unknown_answer="Ask Anna at the desk.")
    assert (await strict.complete(ask("pricng"))).text == "Ask Anna at the desk."
    assert (await strict.complete(ask("How much does it cost?"))).text == answer_of(
        "How much does it cost?"
    )


def test_every_shipped_question_finds_its_own_entry():
    """The shipped file is self-consistent: each question and 'also:' phrasing wins for itself."""
    knowledge = default_knowledge()
    assert len(knowledge.entries) >= 10
    for entry in knowledge.entries:
        for phrasing in (entry.question, *entry.also):
            match = knowledge.match(phrasing)
            assert match is not None and match.entry is entry, (phrasing, match)


CUSTOM = """\
<!-- Our shop's answers.
     Edited by hand. -->
# Shop

## Do you deliver?
also: Shipping | Can you send it to me?
keywords: delivery, courier, shipping

Yes, we deliver within the city in 2 days.

### Abroad

Not yet.

<!-- TODO: prices -->
## Can I pay by card?
keywords: card, visa, mastercard, мир

Yes, all cards.
"""


async def test_custom_knowledge_file_relative_to_the_config_dir(tmp_path):
    (tmp_path / "shop.md").write_text(CUSTOM, encoding="utf-8")
    provider = make_provider(tmp_path, knowledge="shop.md")
    delivery = await provider.complete(ask("do you delivr to my house?"))
    assert delivery.text == "Yes, we deliver within the city in 2 days.\n\n### Abroad\n\nNot yet."
    assert (await provider.complete(ask("visa?"))).text == "Yes, all cards."
    assert (await provider.complete(ask("What is this?"))).text == DEFAULT_UNKNOWN_ANSWER


async def test_absolute_knowledge_path(tmp_path):
    path = tmp_path / "elsewhere" / "shop.md"
    path.parent.mkdir()
    path.write_text(CUSTOM, encoding="utf-8")
    provider = make_provider(Path("/nonexistent"), knowledge=str(path))
    assert (await provider.complete(ask("shipping"))).text.startswith("Yes, we deliver")


def test_format_parts_are_parsed():
    entries = parse_knowledge(CUSTOM, source="shop.md")
    assert [(e.question, e.line) for e in entries] == [
        ("Do you deliver?", 5),
        ("Can I pay by card?", 16),
    ]
    assert entries[0].also == ("Shipping", "Can you send it to me?")
    assert entries[1].keywords == ("card", "visa", "mastercard", "мир")
    assert "TODO" not in entries[0].answer


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("Welcome!\n\n## Q\n\nA\n", 1, "text before the first question"),
        ("## First\n\nanswer\n\n## Second\n\n## Third\nanswer\n", 5, "'Second' has no answer"),
        ("## Q\nanswer\n##\nmore\n", 3, "without a question"),
        ("## Q\nanswer\n<!-- note\nmore\n", 3, "never closed"),
        ("## Q\nkeywords:  , \nanswer\n", 2, "'keywords:' line lists nothing"),
        ("## Q\nalso:\nanswer\n", 2, "'also:' line lists nothing"),
        ("## How much?\nA\n\n## how MUCH\nB\n", 4, "already asked on line 1"),
    ],
)
def test_malformed_file_names_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "faq.md"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        make_provider(tmp_path, knowledge="faq.md")
    assert info.value.file == str(path) and info.value.line == line
    assert words in str(info.value)
    assert f"{path}:{line}" in str(info.value) and "fix:" in str(info.value)


@pytest.mark.parametrize(
    ("content", "words", "line"),
    [
        (b"# Only a title\n", "no questions found", None),
        (b"## Q\n\xff\xfe broken\n", "not UTF-8", 2),
    ],
)
def test_unusable_files_are_config_errors(tmp_path, content, words, line):
    (tmp_path / "faq.md").write_bytes(content)
    with pytest.raises(ConfigError, match=words) as info:
        make_provider(tmp_path, knowledge="faq.md")
    assert info.value.line == line


def test_missing_file_names_the_resolved_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as info:
        make_provider(tmp_path, knowledge="nope.md")
    assert info.value.file == str(tmp_path / "nope.md")


def test_config_validation():
    with pytest.raises(pydantic.ValidationError, match="min_score"):
        FaqProvider.Config.model_validate({"plugin": "faq", "min_score": 1.5})
    with pytest.raises(pydantic.ValidationError, match="unknown_answer"):
        FaqProvider.Config.model_validate({"plugin": "faq", "unknown_answer": ""})
    with pytest.raises(pydantic.ValidationError, match="knowlege"):
        FaqProvider.Config.model_validate({"plugin": "faq", "knowlege": "x.md"})


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("prices", "price"),
        ("hours", "hour"),
        ("policies", "policy"),
        ("boxes", "box"),
        ("status", "status"),
        ("данные", "данн"),
        ("данных", "данн"),
        ("хранятся", "хран"),
        ("храните", "хран"),
    ],
)
def test_stems(word, expected):
    assert stem(word) == expected


async def test_cancellation_propagates(default_provider):
    with trio.CancelScope() as scope:
        scope.cancel()
        await default_provider.complete(ask("hello"))
        pytest.fail("complete() finished inside a cancelled scope")
    assert scope.cancelled_caught


def test_hundred_entries_load_fast_and_answer_in_under_a_millisecond(tmp_path):
    topics = [
        "delivery", "payment", "refund", "warranty", "account", "password", "invoice", "discount",
        "membership", "gift", "voucher", "exchange", "size", "colour", "stock", "order", "tracking",
        "cancel", "subscription", "newsletter",
    ]  # fmt: skip
    verbs = ["How do I get", "Can I change my", "Where is my", "What is the", "Why was my"]
    lines = []
    for i in range(100):
        topic, verb = topics[i % 20], verbs[i // 20]
        lines += [
            f"## {verb} {topic} number {i}?",
            f"keywords: {topic}{i}, topic{i}",
            "",
            f"Answer {i}.",
            "",
        ]
    path = tmp_path / "big.md"
    path.write_text("\n".join(lines), encoding="utf-8")

    started = time.perf_counter()
    knowledge = load_knowledge(path)
    load_seconds = time.perf_counter() - started

    questions = [f"{verbs[i // 20].lower()} {topics[i % 20]} numbr {i}" for i in range(100)]
    questions += ["hwo do I get a refnd", "где мой заказ", "completely unrelated words here"]
    started = time.perf_counter()
    results = [knowledge.match(q) for q in questions * 3]
    per_query = (time.perf_counter() - started) / (len(questions) * 3)

    assert len(knowledge.entries) == 100
    assert results[7] is not None and results[7].entry.answer == "Answer 7."
    assert load_seconds < 0.1, f"loading took {load_seconds * 1000:.1f} ms"
    assert per_query < 0.001, f"a query took {per_query * 1e6:.0f} µs"
