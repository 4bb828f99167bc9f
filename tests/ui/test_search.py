"""Full-text search: its own encrypted file, never plaintext, rebuilt from messages, a contact
forgotten on request; the query builder never lets input reach FTS5 syntax."""

from __future__ import annotations

import threading
import time

import pytest
import sqlcipher3
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from gateway.store import READERS, search
from gateway.store.search import SearchIndex, match_expression
from tests.ui.conftest import UI, page


@given(st.text(max_size=200))
def test_any_typed_text_is_a_valid_fts_query(text: str) -> None:
    conn = sqlcipher3.connect(":memory:")  # the SQLite the gateway runs on
    conn.execute(
        "CREATE VIRTUAL TABLE f USING fts5(text, tokenize='unicode61 remove_diacritics 2')"
    )
    conn.execute("INSERT INTO f (text) VALUES ('hello world')")
    expression = match_expression(text)
    if expression is None:
        assert not any(ch.isalnum() for ch in text)
        return
    conn.execute("SELECT rowid FROM f WHERE f MATCH ?", (expression,)).fetchall()


def indexed(index: SearchIndex) -> set[int]:
    with index._open() as conn:
        return {r[0] for r in conn.execute("SELECT message_id FROM indexed")}


def test_words_match_as_prefixes_and_operators_mean_nothing() -> None:
    assert match_expression('lisb "ship" OR NEAR(x)') == '"lisb"* "ship"* "OR"* "NEAR"* "x"*'
    assert match_expression("  ?! ") is None


def test_adding_a_message_again_replaces_its_entry(tmp_path) -> None:
    # Batches insert new ids directly; an id indexed before has its old words removed first.
    index = SearchIndex(tmp_path, b"\x02" * 32)
    at = "2030-01-01T00:00:00+00:00"
    assert index.add_sync([(5, 1, 1, "parcel to Porto", at), (6, 1, 1, "invoice", at)]) == 2
    assert index.add_sync([(5, 2, 1, "refund please", at), (7, 2, 1, "refund", at)]) == 2
    assert index.search_sync("porto", 10) == []
    assert sorted(index.search_sync("refund", 10)) == [(2, 7)]
    assert index.search_sync("invoice", 10) == [(1, 6)]


async def test_search_finds_conversations_and_forgets_a_contact(ui: UI) -> None:
    agent = await ui.add_user("agent@example.com", "agent")
    await ui.channel.deliver("t1", "u1", "Do you ship to Lisbon?")
    await ui.channel.deliver("t2", "u2", "I need a refund for my order")
    await ui.channel.wait_sent(2)
    [[lisbon, contact]] = await ui.sql(
        "SELECT id, contact_id FROM conversations WHERE thread_key = 't1'"
    )
    [[refund]] = await ui.sql("SELECT id FROM conversations WHERE thread_key = 't2'")
    client = await ui.sign_in(agent)

    _status, html = await page(client, "/inbox?q=lisb")
    assert f'data-conversation="{lisbon}"' in html and f'data-conversation="{refund}"' not in html
    _status, html = await page(client, "/inbox?q=REFUND+order")
    assert f'data-conversation="{refund}"' in html and f'data-conversation="{lisbon}"' not in html

    services = ui.gw.running.services
    path = services.config.data_dir / search.SEARCH_FILE
    raw = b"".join(p.read_bytes() for p in path.parent.glob("search.db*"))
    assert raw and b"Lisbon" not in raw and b"lisbon" not in raw and b"SQLite format" not in raw
    main = (services.config.data_dir / "gateway.db").read_bytes()
    assert b"message_fts" not in main  # the index is not in the database that is backed up

    assert await search.forget_contact(services, contact) >= 1
    _status, html = await page(client, "/inbox?q=lisbon")
    assert f'data-conversation="{lisbon}"' not in html
    # The indexer never puts a forgotten contact back, even from a batch read before.
    index = SearchIndex.for_services(services)
    index.add_sync([(10_000, lisbon, contact, "Lisbon again", "2030-01-01T00:00:00+00:00")])
    assert index.search_sync("lisbon", 10) == []

    # Deleted (or unreadable after a key change): rebuilt from the messages on the next search.
    index.delete_files()
    _status, html = await page(client, "/inbox?q=refund")
    assert f'data-conversation="{refund}"' in html
    wrong_key = SearchIndex(services.config.data_dir, b"\x01" * 32)
    assert wrong_key.search_sync("refund", 10) == []  # did not open: started over, empty


async def test_indexer_job_and_prune(ui: UI) -> None:
    services = ui.gw.running.services
    await ui.channel.deliver("t1", "u1", "parcel to Porto")
    await ui.channel.wait_sent(1)
    await ui.gw.wait_idle()
    await search.index_job(services)
    index = SearchIndex.for_services(services)
    [[conversation, inbound]] = await ui.sql(
        "SELECT conversation_id, id FROM messages WHERE direction = 'in'"
    )
    [[reply]] = await ui.sql("SELECT id FROM messages WHERE direction = 'out'")
    assert index.search_sync("porto", 10) == [(conversation, max(inbound, reply))]
    assert indexed(index) == {inbound, reply}
    # Retention deleted the inbound message (the reply stays): the prune drops its entry.
    await services.store.write(
        "retention", lambda db: db.conn.execute("DELETE FROM messages WHERE direction = 'in'")
    )
    assert await index.prune(services.store) == 1
    assert indexed(index) == {reply}
    assert index.search_sync("porto", 10) == [(conversation, reply)]
    # The newest message goes too: entries above the newest remaining message are judged.
    await services.store.write("retention", lambda db: db.conn.execute("DELETE FROM messages"))
    assert await index.prune(services.store) == 1 and indexed(index) == set()


async def test_indexer_in_the_event_loop_never_waits_for_a_lock(ui: UI) -> None:
    # The job runs in the event loop: with the index's write lock held elsewhere (a search or
    # an erasure on a worker thread, a CLI), it gives up at once (the busy timeout is 30 s)
    # and the next run indexes; with every database reader taken (a key rotation), likewise.
    services = ui.gw.running.services
    index = SearchIndex.for_services(services)
    index.last_indexed_sync()  # the file exists, in WAL mode
    other = sqlcipher3.connect(str(index.path))
    other.execute(f"PRAGMA key = \"x'{services.master.derive('search').hex()}'\"")
    other.execute("BEGIN IMMEDIATE")
    await ui.channel.deliver("t1", "u1", "parcel to Faro")
    await ui.channel.wait_sent(1)
    await ui.gw.wait_idle()
    started = time.monotonic()
    await search.index_job(services)
    assert time.monotonic() - started < 5  # gave up, did not sit in the 30 s busy timeout
    assert index.search_sync("faro", 10) == []  # (the scheduled runs gave up too)
    other.execute("ROLLBACK")
    other.close()

    release = threading.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(READERS):
            nursery.start_soon(services.store.read, "hold", lambda db: release.wait(10))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            services.store.read_now("t", lambda db: 1)
        await search.index_job(services)  # returns quietly
        release.set()

    await search.index_job(services)
    [[conversation]] = await ui.sql("SELECT DISTINCT conversation_id FROM messages")
    assert [c for c, _m in index.search_sync("faro", 10)] == [conversation]


async def test_an_index_ahead_of_a_restored_database_is_rebuilt(ui: UI) -> None:
    services = ui.gw.running.services
    index = SearchIndex.for_services(services)
    await ui.channel.deliver("t1", "u1", "parcel to Porto")
    await ui.channel.wait_sent(1)
    await ui.gw.wait_idle()
    await index.catch_up(services.store)
    [[reply]] = await ui.sql("SELECT id FROM messages WHERE direction = 'out'")
    # What a restore of an older backup looks like to the index: the last message it indexed
    # is gone, and new traffic takes its id (SQLite reuses the highest rowid) in another thread.
    await services.store.write(
        "restore", lambda db: db.conn.execute("DELETE FROM messages WHERE id = ?", (reply,))
    )
    await ui.channel.deliver("t2", "u2", "and to Braga?")
    await ui.channel.wait_sent(2)
    await ui.gw.wait_idle()
    await index.catch_up(services.store)
    rows = set(await ui.sql("SELECT m.id, m.conversation_id FROM messages m"))
    with index._open() as conn:
        mapped = set(conn.execute("SELECT message_id, conversation_id FROM indexed"))
    assert mapped == rows  # every id points at the conversation it belongs to now
