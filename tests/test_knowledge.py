"""Agent knowledge: chunking a folder, re-indexing it idempotently, searching it with FTS5."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.knowledge import (
    HEADER,
    KnowledgeError,
    Snippet,
    format_snippets,
    load_chunks,
    m004_create_knowledge,
    match_expression,
    search_knowledge_txn,
    sync_knowledge_txn,
)
from gateway.store import Store, open_store
from gateway.store.db import connect
from gateway.store.migrations import migrations

# isort: split
import sqlite_utils
from sqlite_utils.migrations import Migrations

KEY = bytes(32)

SHIPPING_EN = """\
# Shipping

We ship orders worldwide from our warehouse in Rotterdam. Orders placed before 2 pm leave the
same day. Delivery to Germany, France and the rest of the European Union takes three to five
business days; to the United States about ten days.

# Returns

You can return any unused item within 30 days of receipt. Send it back in its original box with
the return form; once the parcel arrives, the refund goes to your original payment method within
a week.

# Payment

We accept Visa, Mastercard, PayPal and bank transfer. Invoices are issued automatically.
"""

DOSTAVKA_RU = """\
# Доставка

Курьерская доставка по Москве занимает один день и стоит 300 рублей. В регионы заказы
отправляем Почтой России, срок — от трёх до семи дней.

# Возврат

Возврат товара возможен в течение 14 дней после получения. Деньги возвращаются на карту в
течение десяти рабочих дней.

# Оплата

Принимаем банковские карты, СБП и наличные при получении.
"""

ENVIO_ES = """\
# Envío

Enviamos pedidos a toda España en 48 horas. El envío es gratuito a partir de 50 euros.
"""

FAQ_HTML = """\
<html><head><title>Warranty</title><style>p { color: red }</style></head>
<body><h2>Warranty terms</h2><p>Every kettle carries a two&nbsp;year warranty &amp; free repair.</p>
<script>alert("warranty hack")</script></body></html>
"""


def write_kb(root: Path) -> Path:
    kb = root / "kb"
    (kb / "ru").mkdir(parents=True)
    (kb / ".git").mkdir()
    (kb / "shipping.md").write_text(SHIPPING_EN)
    (kb / "ru" / "dostavka.md").write_text(DOSTAVKA_RU)
    (kb / "envio.txt").write_text(ENVIO_ES.replace("# Envío\n\n", ""))
    (kb / "warranty.html").write_text(FAQ_HTML)
    (kb / ".draft.md").write_text("# Secret\n\nunreleased flamingo pricing")
    (kb / ".git" / "notes.md").write_text("flamingo")
    (kb / "brochure.pdf").write_bytes(b"%PDF-1.4 \xff\xfe flamingo")
    return kb


def ensure_knowledge_tables(db: sqlite_utils.Database) -> None:
    # The lead registers m004 in gateway.store.migrations; until then the test runs it itself.
    if not db["knowledge_sources"].exists():
        m004_create_knowledge(db)


@pytest.fixture
async def store(tmp_path):
    async with open_store(tmp_path / "g.db", KEY) as store:
        await store.write("migrate knowledge", ensure_knowledge_tables)
        yield store


async def sync(store: Store, agent: str, kb: Path):
    return await store.write("sync knowledge", sync_knowledge_txn, agent, load_chunks(kb))


async def search(store: Store, agent: str, query: str, limit: int = 3) -> list[Snippet]:
    return await store.read("search knowledge", search_knowledge_txn, agent, query, limit)


# --- reading and chunking ----------------------------------------------------------------------


def test_load_reads_md_txt_html_and_ignores_hidden_and_other_files(tmp_path):
    chunks = load_chunks(write_kb(tmp_path))
    assert sorted({c.source for c in chunks}) == [
        "envio.txt",
        "ru/dostavka.md",
        "shipping.md",
        "warranty.html",
    ]
    assert not any("flamingo" in c.text for c in chunks)
    titles = [(c.source, c.title) for c in chunks]
    assert ("shipping.md", "Returns") in titles and ("ru/dostavka.md", "Оплата") in titles
    returns = next(c for c in chunks if c.title == "Returns")
    assert returns.text.startswith("You can return") and "Payment" not in returns.text
    # A .txt file has no headings: its title is the file name.
    assert [c.title for c in chunks if c.source == "envio.txt"] == ["envio"]
    (html,) = [c for c in chunks if c.source == "warranty.html"]
    assert html.title == "Warranty terms"
    assert html.text == "Every kettle carries a two year warranty & free repair."


def test_markdown_front_matter_fences_and_setext_headings(tmp_path):
    (tmp_path / "a.md").write_text(
        "---\nlayout: faq\n---\nIntro line.\n\nOpening hours\n-------------\n\n"
        "We open at 9.\n\n```\n# not a heading\n\nstill code\n```\n"
    )
    chunks = load_chunks(tmp_path)
    assert [(c.title, c.text) for c in chunks] == [
        ("a", "Intro line."),
        ("Opening hours", "We open at 9.\n\n```\n# not a heading\n\nstill code\n```"),
    ]


def test_long_sections_are_cut_within_size_with_overlap(tmp_path):
    sentences = [
        f"Sentence number {i} talks about topic {i * 7 % 13} in detail." for i in range(120)
    ]
    paragraphs = ["  ".join(sentences[i : i + 6]) for i in range(0, 120, 6)]
    (tmp_path / "long.md").write_text(
        "# First\n\n" + "\n\n".join(paragraphs) + "\n\n# Second\n\nShort closing section.\n"
    )
    chunks = load_chunks(tmp_path)
    first = [c for c in chunks if c.title == "First"]
    assert len(first) >= 8
    assert all(len(c.text) <= 800 for c in chunks)
    # Pieces are filled: all but the last are well over half the size.
    assert all(len(c.text) > 500 for c in first[:-1])
    for prev, nxt in zip(first, first[1:], strict=False):
        overlap = next(
            k
            for k in range(120, 0, -1)
            if nxt.text[k : k + 1] == " " and prev.text.endswith(nxt.text[:k])
        )
        assert 20 <= overlap <= 120, (prev.text[-150:], nxt.text[:150])
        # The overlap starts at a sentence, not mid-word.
        assert nxt.text[0] == "S"
    # Nothing is lost, and a heading always starts a fresh chunk (no overlap across sections).
    joined = " ".join(c.text for c in first)
    assert all(s in joined for s in sentences)
    assert [c.text for c in chunks if c.title == "Second"] == ["Short closing section."]


def test_chunking_cuts_unbreakable_text_and_keeps_digests_stable(tmp_path):
    (tmp_path / "blob.txt").write_text("x" * 1000 + "\n\n" + "word " * 300)
    chunks = load_chunks(tmp_path, chunk_chars=200, overlap_chars=40)
    assert all(0 < len(c.text) <= 200 for c in chunks)
    assert "".join(c.text for c in chunks if set(c.text) == {"x"}) == "x" * 1000
    assert [c.digest for c in load_chunks(tmp_path, chunk_chars=200, overlap_chars=40)] == [
        c.digest for c in chunks
    ]
    assert len({c.digest for c in chunks}) > 1


def test_unreadable_files_raise_an_error_naming_the_file(tmp_path):
    (tmp_path / "ok.md").write_text("fine")
    (tmp_path / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    with pytest.raises(KnowledgeError, match=r"latin1\.txt is not UTF-8 .*0xe9"):
        load_chunks(tmp_path)
    (tmp_path / "latin1.txt").unlink()
    (tmp_path / "gone.md").symlink_to(tmp_path / "missing.md")
    with pytest.raises(KnowledgeError, match=r"cannot read knowledge file .*gone\.md"):
        load_chunks(tmp_path)
    with pytest.raises(KnowledgeError, match="does not exist"):
        load_chunks(tmp_path / "nope")


# --- storage -----------------------------------------------------------------------------------


def test_migration_runs_under_sqlite_utils_migrations(tmp_path):
    db = connect(tmp_path / "m.db", KEY)
    try:
        test_set = Migrations("knowledge-test")
        test_set()(m004_create_knowledge)
        test_set.apply(db)
        test_set.apply(db)
        assert {"knowledge", "knowledge_sources"} <= set(db.table_names())
    finally:
        db.conn.close()


async def test_resync_rewrites_only_changed_sources(store, tmp_path):
    kb = write_kb(tmp_path)
    first = await sync(store, "shop", kb)
    assert (first.added, first.updated, first.removed, first.unchanged) == (4, 0, 0, 0)
    assert first.chunks_written == len(load_chunks(kb))

    def rows(db):
        return db.conn.execute(
            "SELECT k.rowid, k.source, s.indexed_at FROM knowledge k "
            "JOIN knowledge_sources s ON s.agent = k.agent AND s.source = k.source ORDER BY k.rowid"
        ).fetchall()

    before = await store.read("rows", rows)
    again = await sync(store, "shop", kb)
    assert (again.unchanged, again.chunks_written, again.chunks_deleted) == (4, 0, 0)
    assert await store.read("rows", rows) == before

    (kb / "shipping.md").write_text(SHIPPING_EN.replace("Rotterdam", "Antwerp"))
    (kb / "envio.txt").unlink()
    changed = await sync(store, "shop", kb)
    assert (changed.added, changed.updated, changed.removed, changed.unchanged) == (0, 1, 1, 2)
    after = await store.read("rows", rows)
    untouched = {"ru/dostavka.md", "warranty.html"}
    assert [r for r in after if r[1] in untouched] == [r for r in before if r[1] in untouched]
    assert {r[1] for r in after} == {"shipping.md"} | untouched
    assert (await search(store, "shop", "warehouse Antwerp"))[0].source == "shipping.md"
    assert await search(store, "shop", "Rotterdam") == []
    assert await search(store, "shop", "gratuito envío") == []

    def integrity(db):
        db.conn.execute("INSERT INTO knowledge (knowledge) VALUES ('integrity-check')")

    await store.write("check", integrity)


async def test_empty_folder_removes_everything(store, tmp_path):
    kb = write_kb(tmp_path)
    first = await sync(store, "shop", kb)
    report = await store.write("sync", sync_knowledge_txn, "shop", [])
    assert (report.removed, report.chunks_deleted) == (4, first.chunks_written)
    assert await store.read("count", lambda db: db["knowledge"].count) == 0


# --- search ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "source", "title"),
    [
        ("How long does delivery to Germany take?", "shipping.md", "Shipping"),
        ("Can I get a refund if I send the item back?", "shipping.md", "Returns"),
        ("do you take paypal", "shipping.md", "Payment"),
        ("Какие сроки доставки заказов в регион?", "ru/dostavka.md", "Доставка"),
        ("Можно ли вернуть товары и получить деньги обратно?", "ru/dostavka.md", "Возврат"),
        ("ОПЛАТА КАРТОЙ", "ru/dostavka.md", "Оплата"),
        ("¿Cuánto tarda el envio a España?", "envio.txt", "envio"),
        ("is the KETTLE under warranty?", "warranty.html", "Warranty terms"),
    ],
)
async def test_search_puts_the_right_chunk_first(store, tmp_path, question, source, title):
    await sync(store, "shop", write_kb(tmp_path))
    found = await search(store, "shop", question)
    assert (found[0].source, found[0].title) == (source, title), found
    assert len(found) <= 3
    assert found == sorted(found, key=lambda s: s.score)


def test_match_expression_quotes_drops_stopwords_and_stems():
    assert match_expression("What is the delivery?") == '"delivery" OR "delivery"*'
    assert match_expression("сроки доставки заказов") == (
        '"сроки" OR "срок"* OR "доставки" OR "доставк"* OR "заказов" OR "заказ"*'
    )
    assert match_expression('NEAR("a" "b") OR -x:y*') == '"near" OR "near"*'
    assert match_expression("ИСТАНБУЛ İstanbul") == (
        '"истанбул" OR "истанбул"* OR "i\u0307stanbul" OR "i\u0307stanbul"*'
    )
    assert match_expression("как это?") is None
    assert match_expression("") is None
    long = match_expression("word " * 5000 + " ".join(f"term{i}" for i in range(1000)))
    assert long is not None and long.count(" OR ") < 60


HOSTILE = [
    "",
    "   ",
    '"',
    '""',
    "'\"'",
    'say "hello',
    "NEAR",
    "NEAR(shipping refund, 2)",
    "a NEAR b",
    "*",
    "shipping*",
    "**refund**",
    "(",
    "())(",
    "-",
    "- refund",
    "NOT refund",
    "AND OR NOT",
    "title:refund",
    "{title text}: refund",
    "^refund",
    "refund + delivery",
    "😀🚚📦",
    "доставка 🚚",
    "\x00\x01\x1f",
    "\u202e\u200b\ufeff",
    "x" * 10_000,
    ("delivery refund? " * 600)[:10_240],
    "ё" * 5000,
    "%_\\",
    "'; DROP TABLE knowledge; --",
]


async def test_yo_and_ye_match_each_other(store, tmp_path):
    await sync(store, "shop", write_kb(tmp_path))
    for query in ("трех", "ТРЁХ"):
        (found, *_) = await search(store, "shop", query)
        assert found.title == "Доставка" and "от трех до семи дней" in found.text


async def test_hostile_queries_never_raise(store, tmp_path):
    await sync(store, "shop", write_kb(tmp_path))
    for query in HOSTILE:
        result = await search(store, "shop", query)
        assert isinstance(result, list)
    assert (await search(store, "shop", "NOT refund"))[0].title == "Returns"
    assert await search(store, "shop", "refund", limit=0) == []
    assert await store.read("count", lambda db: db["knowledge"].count) > 0


async def test_agents_never_see_each_others_knowledge(store, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "same.md").write_text("# Pricing\n\nThe premium plan costs 99 euros.")
    (tmp_path / "b" / "same.md").write_text("# Pricing\n\nThe basic plan is free for schools.")
    await sync(store, "agent-a", tmp_path / "a")
    await sync(store, "agent-b", tmp_path / "b")
    assert await search(store, "agent-b", "premium plan 99 euros") != []
    assert all("premium" not in s.text for s in await search(store, "agent-b", "premium 99 euros"))
    assert [s.text for s in await search(store, "agent-a", "plan")] == [
        "The premium plan costs 99 euros."
    ]
    assert await search(store, "agent-c", "plan") == []
    # Re-syncing one agent with an empty folder leaves the other's index alone.
    await store.write("sync", sync_knowledge_txn, "agent-a", [])
    assert await search(store, "agent-a", "plan") == []
    assert len(await search(store, "agent-b", "plan")) == 1


# --- prompt block ------------------------------------------------------------------------------


def test_format_snippets_is_bounded():
    snippets = [
        Snippet(f"Title {i}", f"doc{i}.md", ("lorem ipsum dolor " * 60).strip(), -1.0)
        for i in range(5)
    ]
    assert format_snippets([]) == ""
    one = format_snippets(snippets[:1], max_chars=5000)
    assert one.startswith(HEADER) and "[Title 0 (doc0.md)]" in one
    for limit in (0, 50, 200, 1200, 2000, 3000):
        text = format_snippets(snippets, max_chars=limit)
        assert len(text) <= limit
    block = format_snippets(snippets)
    assert "[Title 1 (doc1.md)]" in block and block.endswith("…")
    assert "[Title 3" not in block


# --- performance -------------------------------------------------------------------------------


async def test_performance_for_1000_chunks(store, tmp_path):
    kb = tmp_path / "big"
    kb.mkdir()
    words = (
        "order delivery refund invoice warranty kettle courier parcel warehouse customs tariff "
        "доставка возврат оплата заказ курьер посылка склад гарантия чайник счёт"
    ).split()
    for f in range(100):
        sections = []
        for s in range(10):
            body = " ".join(
                words[(f * 7 + s * 3 + i) % len(words)] + f"{i % 17}" for i in range(70)
            )
            sections.append(f"# Topic {f}-{s}\n\n{body}.")
        (kb / f"doc{f:03}.md").write_text("\n\n".join(sections))
    t0 = time.perf_counter()
    chunks = load_chunks(kb)
    t1 = time.perf_counter()
    report = await store.write("sync knowledge", sync_knowledge_txn, "perf", chunks)
    t2 = time.perf_counter()
    again = await store.write("sync knowledge", sync_knowledge_txn, "perf", chunks)
    t3 = time.perf_counter()
    queries = ["when will my parcel be delivered", "возврат заказа курьером", "kettle3 warranty9"]
    n = 60
    for i in range(n):
        assert await search(store, "perf", queries[i % 3])
    t4 = time.perf_counter()
    assert len(chunks) == report.chunks_written >= 1000 and again.unchanged == 100
    print(
        f"\nknowledge, {len(chunks)} chunks: load {1e3 * (t1 - t0):.0f} ms, "
        f"index {1e3 * (t2 - t1):.0f} ms, unchanged re-sync {1e3 * (t3 - t2):.1f} ms, "
        f"query {1e3 * (t4 - t3) / n:.2f} ms each (through store.read)"
    )
    assert t2 - t1 < 10 and (t4 - t3) / n < 0.25


# --- property ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_db(tmp_path_factory):
    # Hypothesis runs many examples per test: a direct SQLCipher connection, not the async store.
    path = tmp_path_factory.mktemp("knowledge") / "h.db"
    db = connect(path, KEY)
    migrations.apply(db)
    ensure_knowledge_tables(db)
    with db.atomic():
        sync_knowledge_txn(db, "shop", load_chunks(write_kb(path.parent)))
    yield db
    db.conn.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(),
        st.text(alphabet=st.sampled_from(list("\"*()-:^{}+ NEARORNOTAND.,'доставкаé😀_"))),
        st.lists(st.sampled_from(["NEAR", "OR", "AND", "NOT", '"', "*", "(", ")", "refund"])).map(
            " ".join
        ),
    )
)
def test_search_never_raises_for_any_text(plain_db, query):
    result = search_knowledge_txn(plain_db, "shop", query)
    assert all(isinstance(s, Snippet) for s in result)
