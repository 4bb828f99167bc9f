"""PII redaction: personal data out before text goes to a provider that may not see it, back after.

Pure functions and pure objects, no I/O. The agent calls, per conversation::

    sent = redactor.redact(user_text, mapping)      # "Call me on <PHONE_1>"
    reply = redactor.restore(model_reply, mapping)  # "<PHONE_1>" -> "+7 912 345-67-89"

and stores ``mapping.to_json()`` encrypted with the conversation, so a value keeps its placeholder
across the messages of one conversation. Numbering restarts in every conversation: a placeholder
says only "the first phone of this conversation" and links nothing across conversations.

What is found: phones, emails, payment cards (Luhn), IBANs (mod 97), Russian SNILS, INN and passport,
Spanish DNI/NIE, Portuguese NIF and Brazilian CPF (each checksum-validated), names from a configured
dictionary and anything a configured :class:`RedactionRule` matches (addresses, order formats...).
Detection is rule-based: no model, so a name or address nobody configured passes through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

__all__ = [
    "ALL_CATEGORIES",
    "Finding",
    "PlaceholderMap",
    "RedactionRule",
    "Redactor",
]

ALL_CATEGORIES: frozenset[str] = frozenset(
    {"phone", "email", "card", "iban", "national_id", "name", "address", "custom"}
)

_LABEL = re.compile(r"[A-Z]+(?:_[A-Z]+)*")


@dataclass(frozen=True)
class RedactionRule:
    """A configured pattern: every match becomes ``<PLACEHOLDER_n>``.

    ``pattern`` is a Python regex (use inline flags such as ``(?i)`` for case); the whole match is
    replaced. ``placeholder`` is upper-case letters and underscores (``"ORDER_REF"``): a trailing
    digit would be confused with the number appended to it. ``category`` is what the transfer log
    records; ``"address"`` and ``"name"`` are for rules that find those, else ``"custom"``.
    Raises ``ValueError`` naming the rule when any field is unusable.
    """

    name: str
    pattern: str
    placeholder: str
    category: str = "custom"

    def __post_init__(self) -> None:
        if not _LABEL.fullmatch(self.placeholder):
            raise ValueError(
                f"redaction rule {self.name!r}: placeholder {self.placeholder!r} must be upper-case"
                " letters and underscores, such as 'ORDER_REF'"
            )
        if self.category not in ALL_CATEGORIES:
            raise ValueError(
                f"redaction rule {self.name!r}: category {self.category!r} is not one of"
                f" {sorted(ALL_CATEGORIES)}"
            )
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"redaction rule {self.name!r}: bad pattern: {exc}") from None


@dataclass(frozen=True)
class Finding:
    """One piece of personal data in a text: ``text[start:end]``.

    ``label`` is the placeholder stem (``PHONE``, ``INN``...); ``key`` is the normalised value that
    decides identity (a phone's digits, an email folded to lower case), so the same value written
    twice gets one placeholder.
    """

    start: int
    end: int
    category: str
    label: str
    key: str


class PlaceholderMap:
    """The placeholders of one conversation and the originals they stand for.

    Mutable: :meth:`Redactor.redact` adds to it. Holds personal data in clear, so store it the way
    the conversation's messages are stored (sealed); :meth:`to_json` / :meth:`from_json` round-trip.
    A value written two ways (``+7 912...`` then ``8 912...``) shares one placeholder and is restored
    in the spelling first seen.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, str, str]] = {}  # placeholder: category, key, original
        self._by_key: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}

    def _assign(self, finding: Finding, original: str) -> str:
        placeholder = self._by_key.get((finding.label, finding.key))
        if placeholder is None:
            self._counts[finding.label] = n = self._counts.get(finding.label, 0) + 1
            placeholder = f"{finding.label}_{n}"
            self._by_key[finding.label, finding.key] = placeholder
            self._entries[placeholder] = (finding.category, finding.key, original)
        return placeholder

    def original(self, placeholder: str) -> str | None:
        """The value behind ``"PHONE_1"`` (no brackets), or None if this map never issued it."""
        entry = self._entries.get(placeholder)
        return None if entry is None else entry[2]

    @property
    def categories_found(self) -> set[str]:
        """Categories redacted so far in this conversation, for the transfer log. For one message
        alone, use the categories of :meth:`Redactor.find`."""
        return {category for category, _, _ in self._entries.values()}

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlaceholderMap) and self._entries == other._entries

    __hash__ = None  # type: ignore[assignment]  # mutable

    def to_json(self) -> str:
        entries = [[p, *entry] for p, entry in self._entries.items()]
        return json.dumps({"version": 1, "entries": entries}, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str) -> PlaceholderMap:
        """Raises ``ValueError`` if ``data`` is not what :meth:`to_json` wrote."""
        try:
            doc = json.loads(data)
            if doc["version"] != 1:
                raise ValueError(f"unknown placeholder map version {doc['version']!r}")
            mapping = cls()
            for placeholder, category, key, original in doc["entries"]:
                finding = Finding(0, 0, category, placeholder.rpartition("_")[0], key)
                if mapping._assign(finding, original) != placeholder:
                    raise ValueError(f"placeholder {placeholder!r} out of order")
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a placeholder map: {exc}") from None
        return mapping


# --- checksums -----------------------------------------------------------------------------------


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Lengths per country (ECBS registry, countries our users write from); unknown countries are
# refused because a random letters+digits run passes mod 97 once in 97 tries.
_IBAN_LENGTHS = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "BR": 29, "CH": 21, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28,
    "IE": 22, "IT": 27, "LT": 20, "LU": 20, "LV": 21, "MT": 31, "NL": 18, "NO": 15, "PL": 28,
    "PT": 25, "RO": 24, "RU": 33, "SE": 24, "SI": 19, "SK": 24, "TR": 26, "UA": 29, "BY": 28,
    "KZ": 20, "GE": 22, "AZ": 28, "MD": 24, "AE": 23, "SA": 24, "IL": 23,
}  # fmt: skip


def _iban_ok(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _snils_ok(d: str) -> bool:
    if int(d[:9]) <= 1001998:  # numbers up to 001-001-998 were issued without a checksum
        return False
    total = sum(int(c) * (9 - i) for i, c in enumerate(d[:9]))
    check = total % 101 if total > 101 else total
    return (0 if check in (100, 101) else check) == int(d[9:])


def _inn_check(d: str, weights: tuple[int, ...]) -> int:
    return sum(int(c) * w for c, w in zip(d, weights, strict=False)) % 11 % 10


def _inn_ok(d: str) -> bool:
    if len(d) == 10:
        return _inn_check(d, (2, 4, 10, 3, 5, 9, 4, 6, 8)) == int(d[9])
    return _inn_check(d, (7, 2, 4, 10, 3, 5, 9, 4, 6, 8)) == int(d[10]) and _inn_check(
        d, (3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)
    ) == int(d[11])


def _cpf_ok(d: str) -> bool:
    if d == d[0] * 11:
        return False
    for n in (9, 10):
        check = sum(int(c) * (n + 1 - i) for i, c in enumerate(d[:n])) * 10 % 11 % 10
        if check != int(d[n]):
            return False
    return True


def _nif_ok(d: str) -> bool:
    if d[0] not in "1235689":
        return False
    r = sum(int(c) * (9 - i) for i, c in enumerate(d[:8])) % 11
    return (0 if r < 2 else 11 - r) == int(d[8])


_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


# --- patterns ------------------------------------------------------------------------------------

# Explicit boundaries: \b alone fails next to "+" and treats "тел89..." as one word. Digits glued to
# Latin letters are codes (tracking "RU123456789CN"); glued to Cyrillic they are prose ("тел89...").
_L = r"(?<![0-9A-Za-z_@+])(?<![0-9][.,:/])"
_R = r"(?![0-9A-Za-z_@])(?![.,:/][0-9])"

_EMAIL = re.compile(r"(?<![\w.%+-])[\w%+-]+(?:\.[\w%+-]+)*@(?:[\w-]+\.)+[^\W\d_]{2,}(?![\w-])")
_IBAN = re.compile(r"(?<![0-9A-Za-z])[A-Z]{2}[0-9]{2}(?: ?[0-9A-Z]){11,31}(?![0-9A-Za-z])")
_CARD = re.compile(_L + r"[0-9](?:[ -]?[0-9]){12,}" + _R)
_SNILS = re.compile(_L + r"[0-9]{3}[- ][0-9]{3}[- ][0-9]{3}[- ][0-9]{2}" + _R)
_CPF = re.compile(_L + r"[0-9]{3}\.[0-9]{3}\.[0-9]{3}-[0-9]{2}" + _R)
_BARE = re.compile(_L + r"[0-9]{9,12}" + _R)
_NIF = re.compile(_L + r"(?:PT ?)?([0-9]{3}[ .]?[0-9]{3}[ .]?[0-9]{3})" + _R)
_DNI_NIE = re.compile(
    r"(?:(?<![\w@])([XYZxyz])[ -]?([0-9]{7})|" + _L + r"([0-9]{2}\.?[0-9]{3}\.?[0-9]{3}))"
    r"([ -]?)([A-Za-z])(?!\w)"
)
_PASSPORT = re.compile(
    _L + r"([0-9]{2} ?[0-9]{2})[ ,]*(?:(?:№|N|No\.?|номер|number)[ ]*)?([0-9]{6})" + _R
)
_PHONE_RUN = re.compile(
    r"(?<![0-9A-Za-z_@+])(?<![0-9][.,:/])(?:\(?\+ ?)?\(?[0-9][0-9() .\-\u00a0\u2010-\u2013]*[0-9]\)?"
)
# Unformatted national mobiles: Russia (8/7 9xx), Spain (6/7), Portugal (91/92/93/96), UK (07).
_BARE_MOBILE = re.compile(r"[78]9[0-9]{9}|[67][0-9]{8}|9[1236][0-9]{7}|07[0-9]{9}")
# Every numeric detector needs seven digits close together (NIE has the fewest; "4510 номер 123456"
# the widest gaps): a message without them skips them all.
_SEVEN_DIGITS = re.compile(r"[0-9](?:[^0-9\n]{0,8}[0-9]){6}")
_NON_DIGIT = re.compile(r"[^0-9]")
_GROUP = re.compile(r"\(?[0-9]+\)?")
_JOIN = re.compile(r"[ \u00a0]?[-.\u2010-\u2013]?[ \u00a0]?|[ \u00a0]?\(|\)[ \u00a0]?-?[ \u00a0]?")
_AFTER_OK = re.compile(r"(?![0-9A-Za-z_@])(?![.,:/][0-9])")


def _words(*words: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)(?:" + "|".join(words) + r")(?!\w)", re.IGNORECASE)


_CONTEXT = {
    "INN": _words("инн", "inn", "taxpayer"),
    "SNILS": _words("снилс", "snils", r"страхов\w*"),
    "CPF": _words("cpf"),
    "NIF": _words("nif", "nipc", r"contribuinte", r"fiscal"),
    "PASSPORT": _words(r"паспорт\w*", r"passports?", r"сери[яиюей]", r"pasaporte", r"passaporte"),
    "PHONE": _words(
        r"тел\.?", r"телефон\w*", r"phone", "tel", "tlf", "call", r"звон\w*", r"позвон\w*",
        r"móvil", r"telemóvel", r"telefone", r"teléfono", "celular", "whatsapp", "mobile",
    ),
}  # fmt: skip
# A number right after one of these words (or one word later: "order number 123...") is an
# identifier of something else. Checked on the last two words by set lookup: one big IGNORECASE
# alternation searched backwards cost 40 µs a number.
_NOT_PII_WORDS = frozenset(
    "order pedido encomenda tracking track invoice factura fatura ticket тикет ref reference"
    " referencia referência артикул sku version versão versión rastreio seguimiento id isbn"
    " flight vuelo voo serial lot lote batch партия кпп огрн бик окпо # №".split()
)
_NOT_PII_STEMS = (
    "заказ", "трек", "верси", "накладн", "посылк", "отправлени", "счет", "счёт", "рейс", "серийн",
)  # fmt: skip
_TOKEN = re.compile(r"[#№]|\w+")
_MONEY_AFTER = re.compile(
    r"\s?(?:₽|€|\$|£|руб|р\.|eur|euros?|usd|dólares|reais|rub|gbp|km|kg|шт|units?|people"
    r"|pessoas|personas)(?!\w)",
    re.IGNORECASE,
)
_MONEY_BEFORE = re.compile(r"(?:₽|€|\$|£|R\$|USD|EUR)\s?$")

# Country code -> national number lengths (ITU-T E.164 national plans), for the codes our users
# write from; other codes fall back to the E.164 limits.
_COUNTRY_LENGTHS: dict[str, tuple[int, ...]] = {
    "1": (10,), "7": (10,), "20": (10,), "30": (10,), "31": (9,), "32": (8, 9), "33": (9,),
    "34": (9,), "39": (6, 7, 8, 9, 10, 11), "40": (9,), "41": (9,), "43": tuple(range(4, 14)),
    "44": (9, 10), "45": (8,), "46": (7, 8, 9), "47": (8,), "48": (9,),
    "49": tuple(range(6, 14)), "51": (9,), "52": (10,), "54": (10, 11), "55": (10, 11),
    "56": (9,), "57": (10,), "58": (10,), "61": (9,), "86": (11,), "90": (10,), "91": (10,),
    "351": (9,), "353": (7, 8, 9), "375": (9,), "380": (9,), "244": (9,), "258": (8, 9),
    "238": (7,), "239": (7,), "245": (7, 9), "995": (9,), "998": (9,), "996": (9,), "992": (9,),
    "374": (8,), "373": (8,), "371": (8,), "370": (8,), "372": (7, 8),
}  # fmt: skip


def _national_lengths(digits: str) -> tuple[int, ...] | None:
    for n in (1, 2, 3):
        lengths = _COUNTRY_LENGTHS.get(digits[:n])
        if lengths is not None:
            return tuple(n + length for length in lengths)
    return None


def _phone_ok(
    groups: list[str], seps: list[str], intl: bool, phone_context: Callable[[], bool]
) -> bool:
    """Whether the digit groups (joined by ``seps``) look like one phone number."""
    if intl:
        # "+44 (0) 20 ...": the national trunk prefix in brackets is not dialled from abroad.
        groups = [g for g in groups if g != "(0)"]
        # A lone digit inside is a Brazilian mobile's leading 9 ("+55 11 9 1234-5678").
        if len(groups[-1].strip("()")) < 2:
            return False
        digits = "".join(g.strip("()") for g in groups)
        lengths = _national_lengths(digits)
        return (
            digits[0] != "0"
            and len(digits) >= 8
            and (len(digits) in lengths if lengths else len(digits) <= 15)
        )
    if any(len(g.strip("()")) < 2 for g in groups[1:]):
        return False  # "1 2 3 4 5 6 7 8 9" is a list, not a number
    digits = "".join(g.strip("()") for g in groups)
    n = len(digits)
    if not 9 <= n <= 11:
        return False
    # Dots only as the sole separator (415.555.2671); mixed with others they are dates, versions.
    if "." in "".join(seps) and (any(s != "." for s in seps) or "(" in "".join(groups)):
        return False
    if sum(g == "000" for g in groups) >= 2:
        return False  # thousands: "250 000 000"
    first = groups[0]
    if len(groups) == 1:
        # Unformatted: only the national mobile shapes that nothing else in a chat has.
        if _BARE_MOBILE.fullmatch(digits):
            return True
        # Ten bare digits are as often an INN or an order as a phone: only after "тел", "call"...
        return n == 10 and digits[0] in "23456789" and phone_context()
    if first.startswith("("):
        return True
    if len(first) == 1:
        return first in "178" and n == 11
    if n == 9:
        return digits[0] in "26789"  # Spain 6-9, Portugal 2 and 9; nobody dials 9 digits from 3-5
    if n == 10:
        return digits[0] in "023456789"
    # 11 digits: UK trunk 0, or Brazil "11 91234-5678" (area code then a mobile starting with 9).
    return digits[0] == "0" or (len(first) == 2 and groups[1].startswith("9"))


class Redactor:
    """Finds personal data and swaps it for placeholders; puts it back into model replies.

    Immutable after construction and safe to share between conversations and tasks: the per
    conversation state is the :class:`PlaceholderMap` passed in. ``names`` is a dictionary of person
    names (a contact's display name, staff names); each word of at least two letters is matched on
    its own, case-insensitively, and Cyrillic words also in their declined forms (Иван, Ивана,
    Иваном). ``categories`` limits what is looked for; a rule whose category is left out is skipped.
    """

    def __init__(
        self,
        *,
        rules: Sequence[RedactionRule] = (),
        names: Iterable[str] = (),
        categories: Collection[str] = ALL_CATEGORIES,
    ) -> None:
        unknown = set(categories) - ALL_CATEGORIES
        if unknown:
            raise ValueError(f"unknown redaction categories {sorted(unknown)}")
        self._categories = frozenset(categories)
        self._rules = [
            (rule, re.compile(rule.pattern)) for rule in rules if rule.category in self._categories
        ]
        self._names = self._compile_names(names) if "name" in self._categories else None

    @staticmethod
    def _compile_names(names: Iterable[str]) -> tuple[re.Pattern[str], list[str]] | None:
        words = sorted(
            {w.casefold() for name in names for w in re.findall(r"[^\W\d_]{2,}", name)},
            key=lambda w: (-len(w), w),
        )
        if not words:
            return None
        alternatives = []
        for i, word in enumerate(words):
            if re.fullmatch(r"[а-яё]{3,}", word):
                # Russian declension changes the ending: Мария -> Марии, Петров -> Петровым.
                stem = word[:-1] if word[-1] in "аяеиоуыйь" else word
                alternatives.append(f"(?P<n{i}>{re.escape(stem)}[а-яё]{{0,3}})")
            else:
                alternatives.append(f"(?P<n{i}>{re.escape(word)})")
        pattern = r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)"
        return re.compile(pattern, re.IGNORECASE), words

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings in ``text``, in order. Where detectors overlap, the stronger
        evidence wins: configured rules, then checksummed formats, then phones, then names."""
        candidates: list[tuple[int, Finding]] = []
        for rule, pattern in self._rules:
            for m in pattern.finditer(text):
                if m.end() > m.start():
                    f = Finding(
                        m.start(), m.end(), rule.category, rule.placeholder, m.group().casefold()
                    )
                    candidates.append((0, f))
        if "@" in text and "email" in self._categories:
            for m in _EMAIL.finditer(text):
                f = Finding(m.start(), m.end(), "email", "EMAIL", m.group().casefold())
                candidates.append((1, f))
        if _SEVEN_DIGITS.search(text):
            candidates.extend(self._numbers(text))
        if self._names is not None:
            pattern, words = self._names
            for m in pattern.finditer(text):
                word = words[int(str(m.lastgroup)[1:])]
                candidates.append((5, Finding(m.start(), m.end(), "name", "NAME", word)))
        chosen: list[Finding] = []
        for _, f in sorted(candidates, key=lambda c: (c[0], c[1].start - c[1].end, c[1].start)):
            if all(f.end <= c.start or f.start >= c.end for c in chosen):
                chosen.append(f)
        return sorted(chosen, key=lambda f: f.start)

    def _numbers(self, text: str) -> Iterator[tuple[int, Finding]]:
        cats = self._categories
        if "iban" in cats:
            for m in _IBAN.finditer(text):
                yield from _iban(text, m)
        if "card" in cats:
            for m in _CARD.finditer(text):
                yield from _card(text, m)
        if "national_id" in cats:
            yield from _national_ids(text)
        if "phone" in cats:
            for m in _PHONE_RUN.finditer(text):
                yield from _phones(text, m)

    def redact(self, text: str, mapping: PlaceholderMap) -> str:
        """``text`` with every finding replaced by ``<LABEL_n>``, recorded in ``mapping``."""
        out: list[str] = []
        pos = 0
        for f in self.find(text):
            out.append(text[pos : f.start])
            out.append(f"<{mapping._assign(f, text[f.start : f.end])}>")
            pos = f.end
        out.append(text[pos:])
        return "".join(out)

    def restore(self, text: str, mapping: PlaceholderMap) -> str:
        """Put the originals back into a model reply.

        Forgiving about what models do to placeholders: ``<PHONE_1>``, ``<phone 1>``, ``[PHONE-1]``,
        ``PHONE_1``, ``PHONE 1`` and markdown-escaped ``PHONE\\_1`` all restore. A placeholder
        ``mapping`` never issued is left as written. Literal text in a user's message that reads
        like an issued placeholder (``PHONE_1``) is also replaced.
        """

        def put_back(m: re.Match[str]) -> str:
            label = m.group("bl") or m.group("ul") or m.group("ll")
            n = m.group("bn") or m.group("un") or m.group("ln")
            original = mapping.original(f"{label.upper()}_{int(n)}")
            return m.group() if original is None else original

        return _RESTORE.sub(put_back, text)


_RESTORE = re.compile(
    r"[<\[{]\s*(?P<bl>[A-Za-z]+(?:_[A-Za-z]+)*)(?:\s|_|\\_|-)*(?P<bn>[0-9]+)\s*[>\]}]"
    r"|(?<![\w<\[{])(?P<ul>[A-Z]+(?:_[A-Z]+)*)(?:[ _-]|\\_)?(?P<un>[0-9]+)(?![\w>\]}])"
    r"|(?<![\w<\[{])(?P<ll>[A-Za-z]+(?:_[A-Za-z]+)*)(?:_|\\_)(?P<ln>[0-9]+)(?![\w>\]}])"
)


def _iban(text: str, m: re.Match[str]) -> Iterator[tuple[int, Finding]]:
    length = _IBAN_LENGTHS.get(m.group()[:2])
    if length is None:
        return
    taken = 0
    for end in range(m.start(), m.end()):
        if text[end] != " ":
            taken += 1
            if taken == length:
                break
    else:
        return
    end += 1
    compact = text[m.start() : end].replace(" ", "")
    if (end == m.end() or text[end] == " ") and _iban_ok(compact):
        yield 2, Finding(m.start(), end, "iban", "IBAN", compact)


def _split(text: str, start: int, end: int) -> tuple[list[re.Match[str]], list[str]]:
    groups = list(_GROUP.finditer(text, start, end))
    seps = [text[a.end() : b.start()] for a, b in zip(groups, groups[1:], strict=False)]
    return groups, seps


def _scan(
    text: str,
    m: re.Match[str],
    priority: int,
    max_groups: int,
    accept: Callable[[list[re.Match[str]], list[str], int, int], Finding | None],
) -> Iterator[tuple[int, Finding]]:
    """Offer ``accept`` the runs of up to ``max_groups`` digit groups in ``m`` that may stand
    alone, leftmost then longest first, and go on after each accepted one: "612 345 678 699 111
    222" is two phones. A run is only cut where a space separates, so "1-800" keeps its "1".
    Linear in the length of ``m``: a message of 3,000 numbers must not cost seconds."""
    groups, seps = _split(text, m.start(), m.end())
    n = len(groups)
    cut = [" " in sep or "\u00a0" in sep for sep in seps] + [True]
    joined = [_JOIN.fullmatch(sep) is not None for sep in seps] + [False]
    next_start = 0
    for i in range(n):
        if i < next_start or (i and not cut[i - 1]):
            continue
        ends = []
        for j in range(i, min(n, i + max_groups)):
            if cut[j]:
                ends.append(j)
            if not joined[j]:
                break
        for j in reversed(ends):
            if j == n - 1 and not _AFTER_OK.match(text, groups[j].end()):
                continue
            found = accept(groups, seps, i, j)
            if found is not None:
                yield priority, found
                next_start = j + 1
                break


def _card(text: str, m: re.Match[str]) -> Iterator[tuple[int, Finding]]:
    def accept(groups: list[re.Match[str]], seps: list[str], i: int, j: int) -> Finding | None:
        sizes = [len(g.group()) for g in groups[i : j + 1]]
        # Cards are written in fours (Amex and Diners 4-6-5, 4-6-4) or not split at all; a Luhn
        # check alone passes one random number in ten, such as "345 678 699 111 222".
        if not (len(sizes) == 1 or sizes in ([4, 6, 5], [4, 6, 4]) or set(sizes[:-1]) == {4}):
            return None
        digits = "".join(g.group() for g in groups[i : j + 1])
        if 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn(digits):
            return Finding(groups[i].start(), groups[j].end(), "card", "CARD", digits)
        return None

    return _scan(text, m, 2, 5, accept)


def _context(kind: str, text: str, start: int) -> bool:
    return _CONTEXT[kind].search(text, max(0, start - 48), start) is not None


def _not_pii_context(text: str, start: int) -> bool:
    for token in _TOKEN.findall(text, max(0, start - 32), start)[-2:]:
        word = token.casefold()
        if word in _NOT_PII_WORDS or word.startswith(_NOT_PII_STEMS):
            return True
    return False


def _national_ids(text: str) -> Iterator[tuple[int, Finding]]:
    def found(start: int, end: int, label: str, key: str) -> tuple[int, Finding]:
        return 3, Finding(start, end, "national_id", label, key)

    for pattern, label, valid in ((_SNILS, "SNILS", _snils_ok), (_CPF, "CPF", _cpf_ok)):
        for m in pattern.finditer(text):
            if valid(d := _NON_DIGIT.sub("", m.group())):
                yield found(m.start(), m.end(), label, d)
    for m in _BARE.finditer(text):
        d, s = m.group(), m.start()
        if len(d) in (10, 12) and _inn_ok(d):
            # One check digit in ten-digit INNs: a random number passes one time in ten.
            if _context("INN", text, s) or (len(d) == 12 and not _not_pii_context(text, s)):
                yield found(s, m.end(), "INN", d)
        elif len(d) == 11:
            snils, cpf = _snils_ok(d), _cpf_ok(d)
            if snils and _context("SNILS", text, s):
                yield found(s, m.end(), "SNILS", d)
            elif cpf and _context("CPF", text, s):
                yield found(s, m.end(), "CPF", d)
            elif (snils or cpf) and d[0] not in "78" and not _not_pii_context(text, s):
                yield found(s, m.end(), "SNILS" if snils else "CPF", d)
    for m in _NIF.finditer(text):
        d = _NON_DIGIT.sub("", m.group(1))
        explicit = m.group().startswith("PT") or _context("NIF", text, m.start())
        if explicit and _nif_ok(d):
            yield found(m.start(1), m.end(1), "NIF", d)
    for m in _DNI_NIE.finditer(text):
        prefix, nie, dni, sep, letter = m.groups()
        if sep == " " and letter.islower():
            continue  # "tengo 12345678 y 5": a Spanish "y" after a number is not a check letter
        number = str("XYZ".index(prefix.upper())) + nie if prefix else dni.replace(".", "")
        if _DNI_LETTERS[int(number) % 23] == letter.upper():
            key = (prefix or "").upper() + number[bool(prefix) :] + letter.upper()
            yield found(m.start(), m.end(), "NIE" if prefix else "DNI", key)
    for m in _PASSPORT.finditer(text):
        if _context("PASSPORT", text, m.start()):
            key = m.group(1).replace(" ", "") + m.group(2)
            yield found(m.start(), m.end(), "PASSPORT", key)


def _phones(text: str, m: re.Match[str]) -> Iterator[tuple[int, Finding]]:
    if sum(map(str.isdigit, m.group())) < 8:
        return iter(())  # the common case (times, prices, years) leaves here
    plus = m.group().lstrip("(").startswith("+")

    def accept(groups: list[re.Match[str]], seps: list[str], i: int, j: int) -> Finding | None:
        start = m.start() if i == 0 else groups[i].start()
        end = groups[j].end()
        parts = [g.group() for g in groups[i : j + 1]]
        joins = seps[i:j]
        # Parentheses around the whole number belong to the prose: "(612 345 678)".
        if parts[0].startswith("(") and ")" not in parts[0]:
            parts[0], start = parts[0][1:], groups[i].start() + 1
        if parts[-1].endswith(")") and "(" not in parts[-1]:
            parts[-1], end = parts[-1][:-1], end - 1
        intl = plus and i == 0
        if intl and parts[0].endswith(")") and "(" not in parts[0]:
            parts[0] = parts[0][:-1]  # "(+34) 612 345 678"
        if any(p.count("(") != p.count(")") for p in parts):
            return None
        if not intl and parts[0].startswith("00"):
            intl, parts[0] = True, parts[0][2:]
            if not parts[0]:
                parts, joins = parts[1:], joins[1:]
        if not parts or not _phone_ok(parts, joins, intl, partial(_context, "PHONE", text, start)):
            return None
        if not intl and (
            _not_pii_context(text, start)
            or _MONEY_AFTER.match(text, end)
            or _MONEY_BEFORE.search(text, max(0, start - 4), start)
        ):
            return None
        digits = _NON_DIGIT.sub("", "".join(parts))
        if not intl and len(digits) == 11 and digits[0] == "8":
            digits = "7" + digits[1:]  # Russian trunk prefix: 8 912... is +7 912...
        return Finding(start, end, "phone", "PHONE", digits)

    return _scan(text, m, 4, 7, accept)
