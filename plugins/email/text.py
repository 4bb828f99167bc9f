"""Mail bodies as the agent should read them: HTML reduced to text, quoted tails and signatures cut.

Pure functions over strings; they never raise on odd input.

HTML goes through the standard library's ``html.parser`` (tolerant of broken markup, no
dependency): the converters on PyPI are either GPL (html2text) or pull in lxml and requests
(inscriptis) for what mail needs, which is paragraphs, line breaks, list items and link targets.
Quote stripping is our own for a similar reason: mail-parser-reply has no Russian, and it cuts at
"Best regards" lines, which would drop what a customer wrote after them.
"""

from __future__ import annotations

import html.parser
import re

_BLOCK = frozenset(
    "address article aside blockquote center dd div dl dt fieldset figcaption figure footer "
    "form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section table tbody tfoot thead tr "
    "ul".split()
)
_SKIP = frozenset({"script", "style", "head", "title", "template", "noscript", "svg"})
_VOID = frozenset("area base br col embed hr img input link meta source track wbr".split())


class _TextParser(html.parser.HTMLParser):
    def __init__(self, drop_quotes: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.drop_quotes = drop_quotes
        self.out: list[str] = []
        self.skip_stack: list[str] = []  # tags whose content is dropped, innermost last
        self.stack: list[str] = []
        self.pre = 0
        self.stopped = False
        self.href: list[str | None] = []

    def _skipping(self) -> bool:
        return bool(self.skip_stack) or self.stopped

    def _newline(self, count: int = 1) -> None:
        """End the line, with ``count`` line breaks in all (not adding to breaks already
        there, so nested blocks do not pile up blank lines)."""
        tail = "".join(self.out[-4:]).rstrip(" \t")
        have = len(tail) - len(tail.rstrip("\n"))
        if have < count:
            self.out.append("\n" * (count - have))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        tag = tag.lower()
        if self.stopped:
            return
        values = {k.lower(): (v or "") for k, v in attrs}
        ident = f"{values.get('id', '')} {values.get('class', '')}".lower()
        if self.drop_quotes and (
            "divrplyfwdmsg" in ident or "appendonsend" in ident or "mail-editor-reference" in ident
        ):
            self.stopped = True  # Outlook: everything after this marker is the quoted mail
            return
        if tag not in _VOID:
            self.stack.append(tag)
        quoted = self.drop_quotes and (
            (tag == "blockquote" and ("cite" in values.get("type", "") or "gmail_quote" in ident))
            or "gmail_quote" in ident
            or "moz-cite-prefix" in ident
            or "yahoo_quoted" in ident
        )
        if tag in _SKIP or quoted:
            if tag not in _VOID:
                self.skip_stack.append(tag)
            return
        if self._skipping():
            return
        if tag == "br":
            self._newline()
        elif tag in ("p", "div", "tr") or tag in _BLOCK:
            self._newline(2 if tag in ("p", "h1", "h2", "h3", "table", "ul", "ol") else 1)
            if tag == "li":
                self.out.append("- ")
            elif tag == "hr":
                self.out.append("----\n")
        elif tag in ("td", "th"):
            self.out.append("\t")
        if tag == "pre":
            self.pre += 1
        if tag == "a":
            self.href.append(values.get("href") or None)
        elif tag == "img" and values.get("alt"):
            self.out.append(f"[{values['alt']}]")

    def handle_endtag(self, tag: str) -> None:
        tag = tag.lower()
        if self.stopped or tag in _VOID or tag not in self.stack:
            return
        # Close everything opened inside it (browsers do the same with unclosed tags).
        while self.stack:
            open_tag = self.stack.pop()
            if self.skip_stack and self.skip_stack[-1] == open_tag:
                self.skip_stack.pop()
            elif not self._skipping():
                self._closed(open_tag)
            if open_tag == tag:
                break

    def _closed(self, tag: str) -> None:
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag == "a" and self.href:
            href = self.href.pop()
            if href and href.startswith(("http://", "https://", "mailto:")):
                label = self._tail_text()
                target = href.removeprefix("mailto:")
                if target.rstrip("/") not in label:
                    self.out.append(f" ({target})")
        if tag in _BLOCK or tag in ("p", "div"):
            self._newline()

    def _tail_text(self) -> str:
        return "".join(self.out[-20:])

    def handle_data(self, data: str) -> None:
        if self._skipping():
            return
        if not self.pre:
            data = re.sub(r"[ \t\r\n\f\u200b]+", " ", data)
        self.out.append(data)


def html_to_text(markup: str, *, drop_quotes: bool = True) -> str:
    """Readable text of an HTML mail body; with ``drop_quotes``, quoted earlier mail (Gmail,
    Thunderbird, Apple Mail blockquotes, Outlook's reply header and after) is left out."""
    parser = _TextParser(drop_quotes)
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # html.parser is tolerant; anything it still trips on ends the text there
        pass
    text = "".join(parser.out).replace("\xa0", " ")
    lines = [line.strip(" \t") for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def unflow(text: str, *, delsp: bool = False) -> str:
    """Undo ``format=flowed`` (RFC 3676): join soft-broken lines, remove space-stuffing."""
    out: list[str] = []
    joining = False
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if line.startswith(" "):
            line = line[1:]
        soft = line.endswith(" ") and line != "-- "
        if soft and delsp:
            line = line[:-1]
        if joining and out:
            out[-1] += line
        else:
            out.append(line)
        joining = soft
    return "\n".join(out)


# An attribution line that starts the quoted mail: "On <date>, <name> wrote:" in the languages the
# gateway's defaults cover (en, ru, es, pt) and the common European clients' (de, fr, it, nl).
_ATTRIBUTION = re.compile(
    r"^(?:"
    r"On\b.{0,300}\bwrote:"
    r"|.{0,300}\b(?:пишет|написал|написала|написал\(а\)|писал|писала)\s*:"
    r"|El\b.{0,300}\bescribi[oó]:"
    r"|Em\b.{0,300}\bescreveu:"
    r"|Am\b.{0,300}\bschrieb.{0,100}:"
    r"|Le\b.{0,300}\ba [ée]crit\s?:"
    r"|Il\b.{0,300}\bha scritto:"
    r"|Op\b.{0,300}\bschreef.{0,100}:"
    r")\s*$",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(
    r"^\s*(?:-{2,}\s*(?:Original Message|Forwarded message|Ursprüngliche Nachricht|"
    r"Исходное сообщение|Пересылаемое сообщение|Mensaje original|Mensagem original|"
    r"Message d'origine)\s*-{2,}|_{10,})\s*$",
    re.IGNORECASE,
)
_OUTLOOK_FROM = re.compile(r"^\s*\*?(?:From|От|De|Von)\s*:\*?\s", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(
    r"^\s*\*?(?:Sent|Date|To|Subject|Отправлено|Дата|Кому|Тема|Enviado|Fecha|Para|Assunto|Gesendet|"
    r"Envoyé|Objet)\s*:",
    re.IGNORECASE,
)


def strip_quoted(text: str) -> str:
    """The new part of a reply: cut at the quoted earlier mail (an attribution line, an Outlook
    header block, a trailing block of ``>`` lines) and at a ``-- `` signature separator.
    Returns ``text`` unchanged if nothing would be left."""
    lines = text.split("\n")
    cut = len(lines)
    for i, line in enumerate(lines):
        stripped = line.strip()
        two = f"{stripped} {lines[i + 1].strip()}" if i + 1 < len(lines) else stripped
        if (
            line.rstrip("\r") == "-- "
            or _SEPARATOR.match(line)
            or _ATTRIBUTION.match(stripped)
            or (
                stripped.lower().startswith(("on ", "el ", "em ", "le ", "am "))
                and _ATTRIBUTION.match(two)
            )
            or (
                _OUTLOOK_FROM.match(line)
                and any(_OUTLOOK_NEXT.match(n) for n in lines[i + 1 : i + 4])
            )
        ):
            cut = i
            break
        if stripped.startswith(">") and all(
            n.strip().startswith(">") or not n.strip() for n in lines[i:]
        ):
            cut = i
            break
    kept = "\n".join(lines[:cut]).rstrip()
    return kept if kept.strip() else text.strip()


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with a note saying so."""
    if len(text) <= limit:
        return text
    note = f"\n\n[... cut: the mail had {len(text):,} characters, more than max_text_chars]"
    return text[: max(0, limit - len(note))].rstrip() + note
