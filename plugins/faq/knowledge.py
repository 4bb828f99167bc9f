"""The FAQ knowledge file: parsing and matching, pure functions with no I/O but one file read.

File format (Markdown, so an operator can edit it in any editor and preview it anywhere)::

    <!-- HTML comments are ignored, across lines too. -->
    # A title or section heading (one "#"): ignored, use it to group questions

    ## How do I delete my data?
    also: Can you erase my messages? | Forget me
    keywords: delete, erase, remove, forget

    The answer: every line up to the next "## " heading, blank lines and
    Markdown (lists, links, "###" sub-headings) included.

- ``## `` starts an entry; the rest of the line is the question.
- Directly under it, before the answer, optional lines ``also:`` (other phrasings of the
  question, separated by ``|``) and ``keywords:`` (comma-separated words that point here).
- Everything else up to the next ``## `` is the answer; it must not be empty.

Matching (case-insensitive, Unicode-aware, for English and Russian alike): words are reduced to
rough stems (English plurals, common Russian endings), each query word is matched to the words
of every entry exactly or, for words of 4+ letters, with one or two typos (optimal string
alignment similarity >= 0.75), and words are weighted by how rare they are across entries
(function words such as "how", "the", "как" count for little). An entry's score mixes how much
of the question it covers with how much of its own question was asked; a whole-sentence fuzzy
ratio rescues short questions mangled by typos. The best entry wins if its score reaches
``min_score``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from pathlib import Path

from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA

from gateway.errors import ConfigError

__all__ = ["Entry", "KnowledgeBase", "Match", "load_knowledge", "parse_knowledge"]

_WORD = re.compile(r"\w+")
_META = re.compile(r"^(also|keywords)\s*:(.*)$", re.IGNORECASE)
_CYRILLIC = re.compile(r"[а-я]")

# Function words: kept (a question made only of them, "what is this?", must still match) but
# weighted low, so "what is your price" is decided by "price".
_STOPWORDS = frozenset(
    """
    a an the is are am was were be been being do does did i me my mine you your yours we our us
    it its this that these those what which who whom whose how where when why can could would
    should will shall may might must to of in on at for from with by about as and or but if then
    so not no yes please there here have has had get got any some just also there's what's
    я мне меня мой моя мое мои вы вас вам ваш ваша ваше ваши мы нас нам наш это этот эта эти то
    что кто как где когда почему зачем какой какая какие можно ли и или но а в во на с со к ко
    по о об от до из за для у не нет да же бы есть ещё еще пожалуйста тут здесь там
    """.split()
)
_STOP_WEIGHT = 0.15
# Longest first, so "ами" is stripped before "и". A rough light stemmer, not Snowball: the
# same word form must meet the same stem in the file and in the question, nothing more.
_RU_ENDINGS = tuple(
    sorted(
        """
        ими ыми его ого ему ому ая яя ое ее ие ые ой ей ый ий ую юю ем им ым ом их ых ами ями ах ях
        ов ев ам ям а я о е ы и у ю ь й ть ешь ет ете ут ют ит ат ят ишь ите ал ала али ало ил ила
        или ать ять ить еть уть ться ется ются ится ятся ается
        """.split(),
        key=len,
        reverse=True,
    )
)
_FUZZY_MIN_LEN = 4
_FUZZY_CUTOFF = 0.75
_RATIO_CUTOFF = 85.0
_QUERY_WEIGHT = 0.6
_CACHE_LIMIT = 20_000


@dataclasses.dataclass(frozen=True)
class Entry:
    """One question of the knowledge file and its answer; ``line`` is where its heading is."""

    question: str
    answer: str
    also: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    line: int = 0


@dataclasses.dataclass(frozen=True)
class Match:
    """The best entry for a question and its score in [0, 1]."""

    entry: Entry
    score: float


def normalize(text: str) -> str:
    """Case-fold and fold "ё" into "е" (Russian texts write either)."""
    return text.casefold().replace("ё", "е")


def words(text: str) -> list[str]:
    """Unicode words of ``text``, normalized; one-letter words dropped except digits."""
    return [w for w in _WORD.findall(normalize(text)) if len(w) > 1 or w.isdigit()]


def stem(word: str) -> str:
    """A rough stem: English plural endings, common Russian inflections."""
    if _CYRILLIC.search(word):
        for ending in _RU_ENDINGS:
            if word.endswith(ending) and len(word) - len(ending) >= 3:
                return word[: -len(ending)]
        return word
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def stems(text: str) -> list[str]:
    """The distinct stems of ``text`` in order of first appearance."""
    return list(dict.fromkeys(stem(w) for w in words(text)))


_STOP_STEMS = frozenset(stem(w) for w in _STOPWORDS)


class KnowledgeBase:
    """An index over entries answering questions in well under a millisecond for ~100 entries."""

    def __init__(self, entries: Iterable[Entry], *, source: str = "<memory>") -> None:
        self.entries = tuple(entries)
        self.source = source
        self._vocab: dict[str, int] = {}
        entry_sets: list[set[int]] = []
        # (entry index, vocab ids of one phrasing) for question and every "also:" phrasing.
        self._phrasings: list[tuple[int, tuple[int, ...]]] = []
        phrasing_texts: list[str] = []
        self._text_owner: list[int] = []  # entry index of each of phrasing_texts
        for index, entry in enumerate(self.entries):
            ids: set[int] = set()
            for phrasing in (entry.question, *entry.also):
                phrasing_ids = tuple(self._intern(s) for s in stems(phrasing))
                ids.update(phrasing_ids)
                self._phrasings.append((index, phrasing_ids))
                phrasing_texts.append(" ".join(words(phrasing)))
                self._text_owner.append(index)
            for keyword in entry.keywords:
                # A keyword counts as a phrasing of its own: "thx" alone fully asks "Thank you".
                keyword_ids = tuple(self._intern(s) for s in stems(keyword))
                ids.update(keyword_ids)
                self._phrasings.append((index, keyword_ids))
            entry_sets.append(ids)
        self._phrasing_texts = phrasing_texts
        self._vocab_list = list(self._vocab)
        self._postings: list[list[int]] = [[] for _ in self._vocab_list]
        for index, ids in enumerate(entry_sets):
            for vid in ids:
                self._postings[vid].append(index)
        count = max(1, len(self.entries))
        self._unknown_weight = math.log(1 + count)
        self._weights = [
            math.log(1 + count / len(self._postings[vid]))
            * (_STOP_WEIGHT if term in _STOP_STEMS else 1.0)
            for vid, term in enumerate(self._vocab_list)
        ]
        self._fuzzy_cache: dict[str, tuple[tuple[int, float], ...]] = {}

    def _intern(self, term: str) -> int:
        return self._vocab.setdefault(term, len(self._vocab))

    def _weight(self, term: str) -> float:
        vid = self._vocab.get(term)
        if vid is not None:
            return self._weights[vid]
        return self._unknown_weight * (_STOP_WEIGHT if term in _STOP_STEMS else 1.0)

    def _candidates(self, term: str) -> tuple[tuple[int, float], ...]:
        """Vocabulary ids matching ``term`` exactly (1.0) or with a typo or two (< 1.0)."""
        vid = self._vocab.get(term)
        if vid is not None:
            return ((vid, 1.0),)
        if len(term) < _FUZZY_MIN_LEN:
            return ()
        cached = self._fuzzy_cache.get(term)
        if cached is None:
            found = process.extract(
                term,
                self._vocab_list,
                scorer=OSA.normalized_similarity,
                score_cutoff=_FUZZY_CUTOFF,
                limit=5,
            )
            cached = tuple((index, float(score)) for _, score, index in found)
            if len(self._fuzzy_cache) > _CACHE_LIMIT:
                self._fuzzy_cache.clear()
            self._fuzzy_cache[term] = cached
        return cached

    def match(self, question: str) -> Match | None:
        """The best-scoring entry for ``question`` (None for an empty index or question)."""
        terms = stems(question)
        if not terms or not self.entries:
            return None
        total = 0.0
        covered: dict[int, float] = {}  # entry -> weighted coverage of the question
        seen: dict[int, float] = {}  # vocab id -> best similarity to any query word
        for term in terms:
            weight = self._weight(term)
            total += weight
            best_for_entry: dict[int, float] = {}
            for vid, similarity in self._candidates(term):
                if similarity > seen.get(vid, 0.0):
                    seen[vid] = similarity
                for index in self._postings[vid]:
                    if similarity > best_for_entry.get(index, 0.0):
                        best_for_entry[index] = similarity
            for index, similarity in best_for_entry.items():
                covered[index] = covered.get(index, 0.0) + weight * similarity

        scores: dict[int, float] = {}
        if seen:
            answered: dict[int, float] = {}  # entry -> best share of one phrasing asked about
            for index, ids in self._phrasings:
                if index not in covered or not ids:
                    continue
                own = sum(self._weights[v] for v in ids)
                got = sum(self._weights[v] * seen.get(v, 0.0) for v in ids)
                share = got / own if own else 0.0
                if share > answered.get(index, 0.0):
                    answered[index] = share
            for index, amount in covered.items():
                scores[index] = _QUERY_WEIGHT * (amount / total) + (
                    1 - _QUERY_WEIGHT
                ) * answered.get(index, 0.0)

        # A whole-sentence ratio catches "wat is ths" where no single word survives the typos.
        text = " ".join(words(question))
        for _, ratio, position in process.extract(
            text, self._phrasing_texts, scorer=fuzz.ratio, score_cutoff=_RATIO_CUTOFF, limit=3
        ):
            index = self._text_owner[position]
            scores[index] = max(scores.get(index, 0.0), ratio / 100)

        if not scores:
            return None
        # Ties go to the entry written first: the operator's order is the tie-breaker.
        best = max(scores, key=lambda i: (scores[i], -i))
        return Match(self.entries[best], round(scores[best], 4))


def _strip_comments(
    line: str, number: int, open_since: int | None
) -> tuple[str | None, int | None]:
    """Remove HTML comments from one line; carry an unclosed one over to the next lines.

    Returns the remaining text (None when the line held nothing but comment) and the line
    number where a still-open comment began.
    """
    had_comment = open_since is not None
    if open_since is not None:
        end = line.find("-->")
        if end < 0:
            return None, open_since
        line = line[end + 3 :]
        open_since = None
    while "<!--" in line:
        had_comment = True
        start = line.index("<!--")
        end = line.find("-->", start + 4)
        if end < 0:
            line, open_since = line[:start], number
            break
        line = line[:start] + line[end + 3 :]
    if had_comment and not line.strip():
        return None, open_since
    return line, open_since


@dataclasses.dataclass
class _Draft:
    question: str
    line: int
    also: list[str] = dataclasses.field(default_factory=list)
    keywords: list[str] = dataclasses.field(default_factory=list)
    answer: list[str] = dataclasses.field(default_factory=list)


def parse_knowledge(text: str, *, source: str) -> list[Entry]:
    """Parse the knowledge file format (module docstring); ConfigError names file and line."""
    entries: list[Entry] = []
    seen_questions: dict[str, int] = {}
    current: _Draft | None = None
    in_comment_since: int | None = None

    def finish(draft: _Draft | None) -> None:
        if draft is None:
            return
        answer = "\n".join(draft.answer).strip()
        if not answer:
            raise ConfigError(
                f"question {draft.question!r} has no answer",
                file=source,
                line=draft.line,
                fix="write the answer on the lines below the '## ' heading",
            )
        entries.append(
            Entry(draft.question, answer, tuple(draft.also), tuple(draft.keywords), draft.line)
        )

    for number, raw in enumerate(text.splitlines(), start=1):
        line, in_comment_since = _strip_comments(raw, number, in_comment_since)
        if line is None:
            continue  # the line was all comment: not even a blank line of an answer
        stripped = line.strip()

        if stripped.startswith("##") and not stripped.startswith("###"):
            finish(current)
            question = stripped[2:].strip()
            if not question:
                raise ConfigError(
                    "a '##' heading without a question",
                    file=source,
                    line=number,
                    fix="write the question after '## ', or remove the line",
                )
            key = " ".join(words(question)) or question
            if key in seen_questions:
                raise ConfigError(
                    f"question {question!r} is already asked on line {seen_questions[key]}",
                    file=source,
                    line=number,
                    fix="merge the two entries, or add the phrasing as an 'also:' line",
                )
            seen_questions[key] = number
            current = _Draft(question, number)
            continue
        if stripped.startswith("# ") or stripped == "#":
            continue  # a title or section heading
        if current is None:
            if stripped:
                raise ConfigError(
                    "text before the first question",
                    file=source,
                    line=number,
                    fix="start every entry with a '## Question' heading (a '# Title' is allowed)",
                )
            continue
        meta = _META.match(stripped)
        if meta and not any(a.strip() for a in current.answer):
            key_name = meta.group(1).lower()
            separator = "|" if key_name == "also" else ","
            values = [v.strip() for v in meta.group(2).split(separator) if v.strip()]
            if not values:
                what = (
                    "phrasings separated by |" if key_name == "also" else "comma-separated keywords"
                )
                raise ConfigError(
                    f"'{key_name}:' line lists nothing",
                    file=source,
                    line=number,
                    fix=f"list {what} or remove the line",
                )
            (current.also if key_name == "also" else current.keywords).extend(values)
            continue
        current.answer.append(line.rstrip())

    if in_comment_since is not None:
        raise ConfigError(
            "an HTML comment '<!--' is never closed",
            file=source,
            line=in_comment_since,
            fix="close it with '-->'",
        )
    finish(current)
    if not entries:
        raise ConfigError(
            "no questions found",
            file=source,
            fix="add entries: a '## Question' heading followed by the answer",
        )
    return entries


def load_knowledge(path: Path | str, *, text: str | None = None) -> KnowledgeBase:
    """Read and index a knowledge file (or ``text`` attributed to ``path``)."""
    source = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                "knowledge file does not exist",
                file=source,
                fix="fix the 'knowledge' path (relative paths start at the config file's directory)",
            ) from None
        except UnicodeDecodeError as exc:
            line = Path(path).read_bytes()[: exc.start].count(b"\n") + 1
            raise ConfigError(
                "knowledge file is not UTF-8 text", file=source, line=line, fix="save it as UTF-8"
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot read knowledge file: {exc.strerror}", file=source) from None
    return KnowledgeBase(parse_knowledge(text, source=source), source=source)
