"""Conversation analysis by local rules: accuracy on a labelled set, then each promise on its own.

``analysis_samples.json`` holds messages in English, Russian, Spanish and Portuguese with the
labels a support agent would give. ``round`` says how the rules met them: round 1 was written
before the rules, which were then tuned on it; round 2 was written after that and measured
before tuning on it; round 3 was written last and only its clear lexicon gaps were filled. The
figures per round show how far the set flatters the rules (see the accuracy test's output).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.analysis import (
    INTENTS,
    LANGUAGES,
    SENTIMENTS,
    URGENCIES,
    Analysis,
    AnalysisConfig,
    Analyzer,
)

SAMPLES = json.loads((Path(__file__).parent / "analysis_samples.json").read_text("utf-8"))
FIELDS = ("intent", "sentiment", "urgency", "wants_human", "language")
ANALYZER = Analyzer()


def analyze(text: str, **kwargs: object) -> Analysis:
    return ANALYZER.analyze(text, **kwargs)  # type: ignore[arg-type]


def test_sample_set_is_labelled_with_known_values():
    assert len(SAMPLES) >= 100
    for s in SAMPLES:
        assert s["intent"] in INTENTS and s["sentiment"] in SENTIMENTS, s
        assert s["urgency"] in URGENCIES and s["language"] in (*LANGUAGES, None), s
    by_language = Counter(s["language"] for s in SAMPLES)
    assert all(by_language[lang] >= 25 for lang in LANGUAGES), by_language
    assert set(INTENTS) == {s["intent"] for s in SAMPLES}


def test_accuracy_on_labelled_samples():
    hits: dict[object, Counter[str]] = {}
    sizes: Counter[object] = Counter()
    misses = []
    true_pos = positives = false_pos = 0
    for s in SAMPLES:
        got = analyze(s["text"], history=s.get("history", ()))
        for key in ("all", s["round"]):
            sizes[key] += 1
            for f in FIELDS:
                hits.setdefault(key, Counter())[f] += getattr(got, f) == s[f]
        positives += s["wants_human"]
        true_pos += s["wants_human"] and got.wants_human
        false_pos += got.wants_human and not s["wants_human"]
        wrong = [
            f"{f}={getattr(got, f)!r} (want {s[f]!r})" for f in FIELDS if getattr(got, f) != s[f]
        ]
        if wrong:
            misses.append(f"  {s['text'][:50]!r}: {', '.join(wrong)}")

    def accuracy(key: object, f: str) -> float:
        return hits[key][f] / sizes[key]

    print(f"\naccuracy on {len(SAMPLES)} labelled messages")
    for key in ("all", 1, 2, 3):
        figures = "  ".join(f"{f} {accuracy(key, f):.3f}" for f in FIELDS)
        print(f"  {'round ' + str(key) if key != 'all' else 'all':8} n={sizes[key]:3}  {figures}")
    print(f"  wants_human recall {true_pos}/{positives}, false positives {false_pos}")
    print("\n".join(misses))

    assert true_pos / positives >= 0.95
    assert false_pos == 0
    assert accuracy("all", "intent") >= 0.8
    assert accuracy("all", "sentiment") >= 0.8
    assert accuracy("all", "urgency") >= 0.8
    assert accuracy("all", "language") >= 0.9


def test_cpu_time_per_message():
    # The target is 0.1 ms; the bound is ten times that, so a busy CI machine does not fail it
    # while an accidental quadratic loop still does.
    texts = [(s["text"], s.get("history", ())) for s in SAMPLES]
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(10):
            for text, history in texts:
                ANALYZER.analyze(text, history=history)
        best = min(best, (time.process_time() - start) / (10 * len(texts)))
    print(f"\n{best * 1e6:.1f} µs CPU per message over {len(texts)} messages")
    assert best < 1e-3


@pytest.mark.parametrize(
    ("plain", "negated"),
    [
        ("The result is good", "The result is not good"),
        ("Я доволен", "Я не доволен"),
        ("Estoy contento con el producto", "No estoy contento con el producto"),
        ("Estou satisfeito", "Não estou satisfeito"),
        ("Мне понравилось", "Мне не понравилось"),
    ],
)
def test_negation_turns_praise_into_a_complaint(plain, negated):
    assert analyze(plain).sentiment == "positive"
    got = analyze(negated)
    assert (got.sentiment, got.intent) == ("negative", "complaint")


def test_negation_stays_inside_its_clause_and_flips_a_bad_word_to_mildly_good():
    assert analyze("No, gracias").sentiment == "positive"
    assert analyze("not bad at all").sentiment != "negative"


@pytest.mark.parametrize(
    "text",
    [
        "I don't need a human, just the price",
        "Мне не нужен оператор",
        "No necesito un agente",
        "Não preciso de atendente",
        "Your operator was rude to me",
        "Ваш оператор мне нагрубил",
        "the agent",
    ],
)
def test_mentioning_a_person_is_not_asking_for_one(text):
    assert analyze(text).wants_human is False


@pytest.mark.parametrize(
    "text",
    [
        "оператор",
        "Оператора!",
        "Позовите оператора",
        "Хочу поговорить с оператором",
        "Соедините с менеджером",
        "Позовите менеджера",
        "Хочу поговорить с живым человеком",
        "Не могу дозвониться до оператора",
        "talk to a human",
        "I can't get through to an agent",
        # "can't" / "не могу" before a request make it stronger, not a negation.
        "Why can't I talk to a human?",
        "Почему я не могу поговорить с оператором?",
        "hablar con una persona",
        "falar com um atendente",
    ],
)
def test_request_for_a_person_in_any_inflection(text):
    got = analyze(text)
    assert got.wants_human is True
    assert got.urgency != "low"


def test_categories_come_from_the_operator_keywords():
    analyzer = Analyzer(
        AnalysisConfig(
            categories={
                "billing": ["invoice", "refund*", "счёт", "возврат*", "factura"],
                "delivery": ["courier", "доставк*", "трек-номер", "rastreio"],
                "account": ["password", "reset link"],
            }
        )
    )
    assert analyzer.analyze("Two invoices are missing").category == "billing"
    assert analyzer.analyze("Пришлите счета за май").category == "billing"
    assert analyzer.analyze("Где мой трек-номер? Доставкой недоволен").category == "delivery"
    assert analyzer.analyze("The reset link expired").category == "account"
    assert analyzer.analyze("Hello there").category is None
    # One keyword each: the category listed first wins.
    assert analyzer.analyze("refund the courier fee").category == "billing"
    # More keywords win over order.
    assert analyzer.analyze("password reset link for my invoice").category == "account"
    assert ANALYZER.analyze("Two invoices are missing").category is None


@pytest.mark.parametrize(
    "config",
    [
        AnalysisConfig(categories={"billing": "invoice"}),  # type: ignore[dict-item]
        AnalysisConfig(categories={"billing": ["!!!"]}),
        AnalysisConfig(human_phrases={"en": ["   "]}),
    ],
)
def test_unusable_config_is_refused(config):
    with pytest.raises(ValueError, match="billing|phrase"):
        Analyzer(config)


def test_custom_human_phrases_count_in_every_language():
    text = "Pásame con alguien del mostrador"
    assert analyze(text).wants_human is False
    analyzer = Analyzer(AnalysisConfig(human_phrases={"es": ["alguien del mostrador"]}))
    got = analyzer.analyze(text)
    assert (got.wants_human, got.intent) == (True, "request_human")
    # Phrases filed under a language apply to all: a short message's language is a guess.
    assert analyzer.analyze("alguien del mostrador!").wants_human is True


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Where is my parcel?", "en"),
        ("Где моя посылка?", "ru"),
        ("¿Dónde está mi paquete?", "es"),
        ("Cadê minha encomenda?", "pt"),
        ("Quero falar com o gerente", "pt"),
        ("Quiero hablar con el gerente", "es"),
        ("Привіт, як справи?", None),  # Ukrainian
        ("ok", None),
        ("12345", None),
        ("", None),
    ],
)
def test_language_by_script_and_common_words(text, language):
    assert analyze(text).language == language


def test_urgency_from_words_deadlines_anger_and_repeats():
    assert analyze("Urgent: the site is down").urgency == "high"
    assert analyze("Срочно нужна помощь").urgency == "high"
    assert analyze("Не срочно, ответьте когда будет время").urgency == "low"
    assert analyze("Es urgente, necesito pagar hoy").urgency == "high"
    assert analyze("Where is my refund?").urgency == "normal"
    again = analyze("Where is my refund?", history=["Where is my refund?", "where is my refund"])
    assert (again.urgency, again.sentiment) == ("high", "negative")
    shouted = analyze("WHY IS NOBODY ANSWERING!!!")
    assert (shouted.sentiment, shouted.urgency) == ("negative", "normal")
    assert analyze("Fuck, the site is down and I need it today").urgency == "high"
    assert analyze("Thanks!").urgency == "low"


def test_suggested_replies_follow_the_conversation_language():
    for text, lang, word in [
        ("Where is my order?", "en", "order"),
        ("Где мой заказ?", "ru", "заказ"),
        ("¿Dónde está mi pedido?", "es", "pedido"),
        ("Cadê meu pedido?", "pt", "pedido"),
    ]:
        got = analyze(text)
        replies = ANALYZER.suggest_replies(got, text)
        assert got.language == lang
        assert 2 <= len(replies) <= 3 and all(replies)
        assert any(word in r.lower() for r in replies), replies
    # The contact's own language setting wins; unknown ones fall back.
    got = analyze("Where is my order?")
    assert "pedido" in ANALYZER.suggest_replies(got, "", language="pt-BR")[0]
    assert "order" in ANALYZER.suggest_replies(got, "", language="de")[0]
    unknown = analyze("12345")
    assert unknown.language is None
    english = ANALYZER.suggest_replies(unknown, "", language="en")
    assert ANALYZER.suggest_replies(unknown, "", language=None) == english


def test_suggested_replies_use_the_reference_and_open_a_handoff():
    text = "Where is my order #48213?"
    assert "48213" in ANALYZER.suggest_replies(analyze(text), text)[0]
    text = "This is awful, get me a person"
    got = analyze(text)
    replies = ANALYZER.suggest_replies(got, text)
    assert got.wants_human and "support team" in replies[0]
    text = "Все сломалось, хочу поговорить с оператором"
    assert "сотрудник" in ANALYZER.suggest_replies(analyze(text), text)[0]


@pytest.mark.parametrize("intent", INTENTS)
@pytest.mark.parametrize("language", LANGUAGES)
def test_every_intent_has_replies_in_every_language(intent, language):
    got = Analysis(intent, None, "neutral", "normal", False, 0.5, language)
    replies = ANALYZER.suggest_replies(got, "")
    assert len(replies) == 2 and all(r.strip() for r in replies)
    assert len(set(replies)) == 2


def test_json_round_trip():
    got = analyze("Позовите оператора, срочно!!!")
    assert Analysis.from_json(got.to_json()) == got
    assert "оператор" not in got.to_json()  # only the labels are stored, not the text
    with_category = Analysis("billing", "счета", "negative", "high", False, 0.81, None)
    assert Analysis.from_json(with_category.to_json()) == with_category


@pytest.mark.parametrize(
    "payload",
    [
        "[]",
        '{"intent": "billing"}',
        '{"intent": "shopping", "category": null, "sentiment": "neutral", "urgency": "low",'
        ' "wants_human": false, "confidence": 0.5, "language": null}',
        '{"intent": "other", "category": null, "sentiment": "neutral", "urgency": "low",'
        ' "wants_human": "no", "confidence": 0.5, "language": null}',
        '{"intent": "other", "category": null, "sentiment": "neutral", "urgency": "low",'
        ' "wants_human": false, "confidence": 1.5, "language": null}',
        '{"intent": "other", "category": 3, "sentiment": "neutral", "urgency": "low",'
        ' "wants_human": false, "confidence": 0.5, "language": null}',
    ],
)
def test_from_json_refuses_what_to_json_never_writes(payload):
    with pytest.raises(ValueError):
        Analysis.from_json(payload)


@settings(max_examples=300)
@given(
    text=st.text(max_size=300),
    history=st.lists(st.text(max_size=80), max_size=6),
    language=st.none() | st.text(max_size=5),
)
def test_analyze_never_raises(text, history, language):
    got = ANALYZER.analyze(text, history=history)
    assert got == ANALYZER.analyze(text, history=history)
    assert Analysis.from_json(got.to_json()) == got
    assert 2 <= len(ANALYZER.suggest_replies(got, text, language=language)) <= 3


@settings(max_examples=200)
@given(
    words=st.lists(
        st.sampled_from(
            "оператор не хочу talk to a human no! ¿ ? срочно pedido #123 😡 NOW , . спасибо "
            "não quero falar atendente cancel delete my data".split()
        ),
        max_size=30,
    )
)
def test_analyze_never_raises_on_lexicon_words(words):
    # Random text rarely hits the lexicon; shuffled lexicon words exercise every rule path.
    text = " ".join(words)
    got = ANALYZER.analyze(text, history=[text, text])
    assert got.intent in INTENTS and 0.0 <= got.confidence <= 1.0
