"""Agent knowledge: a folder of documents, chunked, indexed with SQLite FTS5, searched per message.

Use::

    chunks = await trio.to_thread.run_sync(load_chunks, directory)
    report = await store.write("sync knowledge", sync_knowledge_txn, agent, chunks)
    snippets = await store.read("search knowledge", search_knowledge_txn, agent, text, 3)
    system_prompt += "\\n\\n" + format_snippets(snippets)

``m004_create_knowledge`` creates the tables; it must be registered in
``gateway.store.migrations`` before the sync and search functions are used.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import re
import unicodedata
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import GatewayError

if TYPE_CHECKING:
    # Only for annotations: importing gateway.store here would make a cycle once
    # gateway.store.migrations imports m004_create_knowledge from this module.
    import sqlite_utils

CHUNK_CHARS = 800
OVERLAP_CHARS = 120
MAX_FILE_BYTES = 20 * 1024 * 1024
SUFFIXES = {".md": "md", ".markdown": "md", ".txt": "txt", ".html": "html", ".htm": "html"}
# A long message keeps only its longest words: a 10 kB paste must not become a 2,000-term query.
MAX_TERMS = 24
HEADER = "Relevant knowledge from the company's documents:\n"


class KnowledgeError(GatewayError):
    """A knowledge file or folder cannot be read; the message names it and says what to do."""


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    source: str
    """Path relative to the knowledge folder, with ``/`` separators."""
    title: str
    """The nearest heading above the text; the file's <title> or name where there is none."""
    text: str
    digest: str
    """sha256 of source, title and text: a changed chunk changes its source's digest."""


@dataclasses.dataclass(frozen=True, slots=True)
class Snippet:
    title: str
    source: str
    text: str
    score: float
    """bm25 as SQLite reports it: lower (more negative) is more relevant."""


@dataclasses.dataclass(frozen=True, slots=True)
class SyncReport:
    """Counts of sources (files) and chunks touched by one sync."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0

    def __str__(self) -> str:
        return (
            f"{self.added} added, {self.updated} updated, {self.removed} removed, "
            f"{self.unchanged} unchanged sources; {self.chunks_written} chunks written, "
            f"{self.chunks_deleted} deleted"
        )


# --- reading files -----------------------------------------------------------------------------

Block = tuple[bool, str]  # (is_heading, text)

_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def _markdown_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":  # YAML front matter is metadata, not knowledge
        end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), None)
        if end is not None:
            lines = lines[end + 1 :]
    blocks: list[Block] = []
    para: list[str] = []
    fence: str | None = None

    def flush() -> None:
        if "".join(para).strip():
            blocks.append((False, "\n".join(para).strip()))
        para.clear()

    for line in lines:
        opening = _FENCE.match(line)
        if fence is not None:
            para.append(line)
            if opening and opening.group(1) == fence:
                fence = None
                flush()
        elif opening:
            flush()
            fence = opening.group(1)
            para.append(line)
        elif heading := _ATX.match(line):
            flush()
            blocks.append((True, heading.group(2).strip()))
        elif _SETEXT.match(line) and len(para) == 1:
            blocks.append((True, para.pop().strip()))
        elif not line.strip() or _SETEXT.match(line):  # blank line or thematic break
            flush()
        else:
            para.append(line)
    flush()
    return blocks


def _text_blocks(text: str) -> list[Block]:
    return [(False, p.strip()) for p in re.split(r"\n\s*\n", text) if p.strip()]


class _HTMLText(HTMLParser):
    BLOCKS = frozenset(
        "address article aside blockquote br dd div dl dt figcaption footer form header hr li "
        "main nav ol p pre section table td th tr ul".split()
    )
    HEADINGS = frozenset("h1 h2 h3 h4 h5 h6".split())
    SKIP = frozenset("script style noscript template svg".split())

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.title = ""
        self._parts: list[str] = []
        self._skip = 0
        self._in_title = False
        self._in_heading = False
        self._pre = 0

    def _flush(self) -> None:
        raw = "".join(self._parts)
        text = raw.strip() if self._pre else " ".join(raw.split())
        if text:
            self.blocks.append((self._in_heading, text))
        self._parts.clear()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self.HEADINGS:
            self._flush()
            self._in_heading = True
        elif tag in self.BLOCKS:
            self._flush()
            self._pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in self.HEADINGS:
            self._flush()
            self._in_heading = False
        elif tag in self.BLOCKS:
            self._flush()
            self._pre = max(0, self._pre - (tag == "pre"))

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title += data
        else:
            self._parts.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def _read_text(path: Path, shown: str) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise KnowledgeError(
                f"knowledge file {shown} is larger than {MAX_FILE_BYTES // 2**20} MB; "
                "split it or move it out of the knowledge folder"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise KnowledgeError(
            f"cannot read knowledge file {shown}: {exc.strerror or exc}; "
            "check that the gateway user may read it"
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KnowledgeError(
            f"knowledge file {shown} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise KnowledgeError(f"knowledge file {shown} contains NUL bytes: is it really text?")
    return unicodedata.normalize("NFC", text)


def load_chunks(
    directory: Path, *, chunk_chars: int = CHUNK_CHARS, overlap_chars: int = OVERLAP_CHARS
) -> list[Chunk]:
    """Read every .md/.markdown, .txt and .html/.htm file under ``directory`` into chunks.

    Hidden files and folders (a name starting with ``.``) and other suffixes are ignored.
    Files are read in path order, so the result is deterministic. Each chunk holds at most
    ``chunk_chars`` characters; a chunk that continues a section starts with up to
    ``overlap_chars`` characters from the end of the previous one. Sync I/O: call it from a thread.
    Raises ``KnowledgeError`` naming the file that cannot be read or decoded.
    """
    if chunk_chars < 100 or not 0 <= overlap_chars < chunk_chars // 2:
        raise ValueError("need chunk_chars >= 100 and 0 <= overlap_chars < chunk_chars / 2")
    if not directory.is_dir():
        raise KnowledgeError(f"knowledge folder {directory} does not exist or is not a folder")
    files: list[Path] = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(
            Path(root, n)
            for n in names
            if not n.startswith(".") and Path(n).suffix.lower() in SUFFIXES
        )
    chunks: list[Chunk] = []
    for path in sorted(files):
        source = path.relative_to(directory).as_posix()
        text = _read_text(path, str(path))
        kind = SUFFIXES[path.suffix.lower()]
        fallback = path.stem.replace("_", " ").replace("-", " ")
        if kind == "md":
            blocks = _markdown_blocks(text)
        elif kind == "txt":
            blocks = _text_blocks(text)
        else:
            parser = _HTMLText()
            parser.feed(text)
            parser.close()
            blocks = parser.blocks
            fallback = " ".join(parser.title.split()) or fallback
        chunks.extend(_chunk_blocks(source, fallback, blocks, chunk_chars, overlap_chars))
    return chunks


# --- chunking ----------------------------------------------------------------------------------


def _chunk_blocks(
    source: str, fallback: str, blocks: list[Block], size: int, overlap: int
) -> list[Chunk]:
    result: list[Chunk] = []
    title = fallback
    paragraphs: list[str] = []

    def emit() -> None:
        for text in _pack(paragraphs, size, overlap):
            digest = hashlib.sha256(f"{source}\0{title}\0{text}".encode()).hexdigest()
            result.append(Chunk(source, title, text, digest))
        paragraphs.clear()

    for is_heading, text in blocks:
        if is_heading:
            emit()
            title = text
        else:
            paragraphs.append(text)
    emit()
    return result


def _pack(paragraphs: list[str], size: int, overlap: int) -> list[str]:
    """Join paragraphs into pieces of at most ``size`` characters, each continuing with overlap."""
    units: list[tuple[str, bool]] = []  # (text, starts a paragraph)
    for paragraph in paragraphs:
        # Room for the overlap and its separator, so a continued chunk stays within size.
        for i, piece in enumerate(_split_long(paragraph, size - overlap - 2)):
            units.append((piece, i == 0))
    chunks: list[str] = []
    current = ""
    for text, new_paragraph in units:
        separator = "\n\n" if new_paragraph else " "
        candidate = f"{current}{separator}{text}" if current else text
        if len(candidate) <= size:
            current = candidate
            continue
        chunks.append(current)
        tail = _tail(current, overlap)
        current = f"{tail} {text}" if tail else text
    if current:
        chunks.append(current)
    return chunks


_SENTENCE_END = re.compile(r"(?<=[.!?…;])\s+")


def _split_long(text: str, limit: int) -> list[str]:
    """Split text longer than ``limit`` at sentence ends, else at spaces, else anywhere."""
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text):
        words = [sentence] if len(sentence) <= limit else sentence.split()
        for word in words:
            for part in [word[i : i + limit] for i in range(0, len(word), limit)]:
                candidate = f"{current} {part}" if current else part
                if len(candidate) <= limit:
                    current = candidate
                else:
                    pieces.append(current)
                    current = part
    if current:
        pieces.append(current)
    return pieces


def _tail(text: str, overlap: int) -> str:
    """The end of ``text``, at most ``overlap`` characters, starting at a sentence or word."""
    if overlap == 0:
        return ""
    if len(text) <= overlap:
        return text.strip()
    window = text[-overlap:]
    if sentence := _SENTENCE_END.search(window):
        return window[sentence.end() :].strip()
    if text[-overlap - 1].isspace():
        return window.strip()
    space = re.search(r"\s+", window)
    return window[space.end() :].strip() if space else ""


# --- storage -----------------------------------------------------------------------------------


def m004_create_knowledge(db: sqlite_utils.Database) -> None:
    # Plain statements, not executescript: that would COMMIT the writer's open transaction.
    # unicode61 with remove_diacritics 2 folds case for Cyrillic and Latin and matches
    # "cafe" with "café"; agent and source are stored, never matched by a user's words.
    db.execute(
        "CREATE VIRTUAL TABLE knowledge USING fts5("
        "agent UNINDEXED, source UNINDEXED, title, text, "
        "tokenize = 'unicode61 remove_diacritics 2')"
    )
    # One row per indexed file; its chunks hold the rowids first_rowid..last_rowid of
    # `knowledge`, so re-indexing one file deletes a rowid range instead of scanning the table.
    db.execute(
        """
        CREATE TABLE knowledge_sources (
            agent TEXT NOT NULL,
            source TEXT NOT NULL,
            digest TEXT NOT NULL,
            chunks INTEGER NOT NULL,
            first_rowid INTEGER NOT NULL,
            last_rowid INTEGER NOT NULL,
            indexed_at TEXT NOT NULL,
            PRIMARY KEY (agent, source)
        )
        """
    )


def source_digest(chunks: Sequence[Chunk]) -> str:
    return hashlib.sha256("\n".join(c.digest for c in chunks).encode()).hexdigest()


def sync_knowledge_txn(
    db: sqlite_utils.Database, agent: str, chunks: Sequence[Chunk]
) -> SyncReport:
    """Make the agent's index hold exactly ``chunks``; files whose chunks did not change are
    not touched, so running it again with the same chunks writes nothing."""
    conn = db.conn
    known = {
        source: (digest, first, last)
        for source, digest, first, last in conn.execute(
            "SELECT source, digest, first_rowid, last_rowid FROM knowledge_sources WHERE agent = ?",
            (agent,),
        )
    }
    by_source: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        by_source.setdefault(chunk.source, []).append(chunk)
    row = conn.execute("SELECT rowid FROM knowledge ORDER BY rowid DESC LIMIT 1").fetchone()
    next_rowid = (row[0] if row else 0) + 1
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    counts = dict.fromkeys(("added", "updated", "removed", "unchanged", "written", "deleted"), 0)

    def delete(source: str, first: int, last: int) -> None:
        cursor = conn.execute(
            "DELETE FROM knowledge WHERE rowid BETWEEN ? AND ? AND agent = ?", (first, last, agent)
        )
        counts["deleted"] += cursor.rowcount
        conn.execute(
            "DELETE FROM knowledge_sources WHERE agent = ? AND source = ?", (agent, source)
        )

    for source, group in by_source.items():
        digest = source_digest(group)
        old = known.get(source)
        if old is not None and old[0] == digest:
            counts["unchanged"] += 1
            continue
        if old is not None:
            delete(source, old[1], old[2])
        counts["updated" if old else "added"] += 1
        first = next_rowid
        conn.executemany(
            "INSERT INTO knowledge (rowid, agent, source, title, text) VALUES (?, ?, ?, ?, ?)",
            [
                (first + i, agent, source, _fold(c.title), _fold(c.text))
                for i, c in enumerate(group)
            ],
        )
        next_rowid += len(group)
        counts["written"] += len(group)
        conn.execute(
            "INSERT INTO knowledge_sources "
            "(agent, source, digest, chunks, first_rowid, last_rowid, indexed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (agent, source, digest, len(group), first, next_rowid - 1, now),
        )
    for source in known.keys() - by_source.keys():
        counts["removed"] += 1
        delete(source, known[source][1], known[source][2])
    return SyncReport(
        counts["added"],
        counts["updated"],
        counts["removed"],
        counts["unchanged"],
        counts["written"],
        counts["deleted"],
    )


# --- search ------------------------------------------------------------------------------------

# Function words of English, Russian, Spanish and Portuguese: they match every chunk.
STOPWORDS = frozenset(
    """
    a about an and any are as at be been but by can could did do does for from had has have
    how i if in is it its me my no not of on or our please so than that the their them then
    there these they this to us was we were what when where which who why will with would you
    your hi hello thanks

    а без бы был была были было в вам вас весь во вот все всё вы где да для до его ее её если
    есть еще ещё же за и из или им их к как ко когда кто ли либо мне мы на над не нет ни но
    ну о об он она они оно от по под при про с со так там то тоже только ты у уже хочу чем что
    чтобы эта эти это этот я можно нужно подскажите пожалуйста здравствуйте привет спасибо

    al como con cual cuando de del donde el ella ellos en era es esta este esto hay la las le
    les lo los mas me mi muy nos o para pero por porque que qué se si sin sobre su sus te tu
    un una uno unos y ya yo hola gracias

    ao aos as com da das de do dos e ela ele em entre esta este eu isso mais mas meu minha na
    nas nem no nos num numa o os ou para pela pelo por qual quando que se sem seu sua são um
    uma voce você olá obrigado
    """.split()
)

# Inflection endings, longest first; cut so "заказов" finds "заказа" and "deliveries" "delivery".
_ENDINGS = sorted(
    set(
        """
        иями ями ами ого его ому ему ыми ими ией ость ости ться ешь ете ите ует уют ают яют ой ей
        ом ем ах ях ов ев ую юю ая яя ое ее ые ие ый ий ам ям ть ся а я о е ы и у ю ь
        ations ation ings ing ies ied ed es s ly
        ciones ción ções ção mente idades idade idad os as
        """.split()
    ),
    key=len,
    reverse=True,
)
_MIN_STEM = 4


def _stem(word: str) -> str:
    for ending in _ENDINGS:
        if word.endswith(ending) and len(word) - len(ending) >= _MIN_STEM:
            return word[: -len(ending)]
    return word


def _fold(text: str) -> str:
    # Russian writes ё as е as often as not; unicode61 keeps them apart, so both the index and
    # the query use е.
    return text.replace("ё", "е").replace("Ё", "Е")


def _words(text: str) -> list[str]:
    """Runs of letters, digits and combining marks: what unicode61 keeps inside a token.

    Not ``\\w+``: that splits a casefolded "İstanbul" (i, U+0307, stanbul) and Devanagari words
    at their marks.
    """
    words: list[str] = []
    start = None
    for i, ch in enumerate(text + " "):
        if unicodedata.category(ch)[0] in "LNM":
            if start is None:
                start = i
        elif start is not None:
            words.append(text[start:i])
            start = None
    return words


def match_expression(query: str) -> str | None:
    """An FTS5 MATCH expression for a user's words, or None when nothing is worth searching.

    Only runs of letters, digits and marks survive, each quoted, so FTS5 syntax in the text
    (quotes, NEAR, *, parentheses, -, :) is searched as plain words or dropped. Words of four or
    more characters also match by prefix of their stem, to cover inflections. Terms are OR-ed:
    bm25 ranks chunks matching more and rarer terms first.
    """
    seen: dict[str, None] = {}
    for word in _words(_fold(unicodedata.normalize("NFKC", query).casefold())):
        if len(word) > 1 and word not in STOPWORDS:
            seen.setdefault(word, None)
    if not seen:
        return None
    keep = sorted(seen, key=len, reverse=True)[:MAX_TERMS]
    terms: dict[str, None] = {}
    for word in (w for w in seen if w in keep):
        terms.setdefault(f'"{word}"', None)
        if len(word) >= _MIN_STEM:
            terms.setdefault(f'"{_stem(word)}"*', None)
    return " OR ".join(terms)


def search_knowledge_txn(
    db: sqlite_utils.Database, agent: str, query: str, limit: int = 3
) -> list[Snippet]:
    """The agent's chunks best matching ``query`` (bm25, title weighted double), best first.

    Never raises for any text: an empty or stopword-only query returns no snippets.
    """
    expression = match_expression(query)
    if expression is None or limit <= 0:
        return []
    rows = db.conn.execute(
        "SELECT title, source, text, bm25(knowledge, 0.0, 0.0, 2.0, 1.0) AS score "
        "FROM knowledge WHERE knowledge MATCH ? AND agent = ? ORDER BY score LIMIT ?",
        (expression, agent, min(limit, 50)),
    ).fetchall()
    return [Snippet(title, source, text, score) for title, source, text, score in rows]


def format_snippets(snippets: Sequence[Snippet], max_chars: int = 2000) -> str:
    """The block to append to a system prompt, at most ``max_chars`` characters; "" if none fit.

    Snippets are kept in order; the last one that fits only in part is cut at a word and marked
    with "…"; one that would keep under 80 characters is left out.
    """
    out = HEADER
    for snippet in snippets:
        entry = f"\n[{snippet.title} ({snippet.source})]\n{snippet.text.strip()}\n"
        if len(out) + len(entry) <= max_chars:
            out += entry
            continue
        room = max_chars - len(out) - 1
        if room >= 80 + len(entry) - len(snippet.text.strip()):
            cut = entry[:room]
            cut = cut[: cut.rfind(" ")] if " " in cut[-40:] else cut
            out += cut.rstrip() + "…"
        break
    return out if out != HEADER else ""
