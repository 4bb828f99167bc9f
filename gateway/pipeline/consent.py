"""Opt-out and opt-in keywords: a whole message that says STOP (or /unsubscribe, СТОП...)
withdraws the contact's consent to messages we initiate; START (or /start after an opt-out)
gives it back. Matching ignores case, surrounding spaces and punctuation, and a Telegram-style
``@botname`` suffix on commands."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Literal

# Carrier-standard SMS words (CTIA / Twilio's defaults) and the commands chat users type.
DEFAULT_OPT_OUT: dict[str, list[str]] = {
    "en": ["stop", "stopall", "unsubscribe", "cancel", "end", "quit", "/stop", "/unsubscribe"],
    "ru": ["стоп", "отписаться", "отписка", "/отписаться"],
    "es": ["baja", "parar", "cancelar suscripción"],
    "pt": ["parar", "sair", "cancelar inscrição"],
}
DEFAULT_OPT_IN: dict[str, list[str]] = {
    "en": ["start", "unstop", "subscribe", "/start", "/subscribe"],
    "ru": ["старт", "подписаться", "/подписаться"],
    "es": ["alta"],
    "pt": ["voltar"],
}

SUBSCRIPTION_MENU = ("/unsubscribe", "/отписаться")
"""Opt-out commands that a channel with ``subscription_menu = true`` leaves to the developer
API's subscription menu (gateway.devapi.chat: which project to leave, then confirm): there they
are no global opt-out, while STOP, /stop and every other word still are."""

_COMMAND_BOT = re.compile(r"^(/\w+)@\w+$")


def normalise(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold().strip()
    folded = folded.strip(" \t\r\n.!?,;:\"'«»()")
    match = _COMMAND_BOT.match(folded)
    return match.group(1) if match else " ".join(folded.split())


def _words(source: list[str] | Mapping[str, list[str]] | None) -> Iterable[str]:
    if source is None:
        return
    if isinstance(source, Mapping):
        for words in source.values():
            yield from words
    else:
        yield from source


class Keywords:
    """The opt-out/opt-in vocabulary of one channel (defaults plus the channel's own words)."""

    def __init__(
        self,
        opt_out: list[str] | Mapping[str, list[str]] | None = None,
        opt_in: list[str] | Mapping[str, list[str]] | None = None,
        *,
        defaults: bool = True,
        except_words: Iterable[str] = (),
    ) -> None:
        out = set(_words(DEFAULT_OPT_OUT)) if defaults else set()
        into = set(_words(DEFAULT_OPT_IN)) if defaults else set()
        skip = {normalise(w) for w in except_words}
        self.opt_out = frozenset(normalise(w) for w in (*out, *_words(opt_out))) - skip
        self.opt_in = (
            frozenset(normalise(w) for w in (*into, *_words(opt_in))) - self.opt_out - skip
        )

    def match(self, text: str) -> Literal["withdrawn", "granted"] | None:
        if len(text) > 64:  # a keyword is a whole short message, never a sentence
            return None
        word = normalise(text)
        if word in self.opt_out:
            return "withdrawn"
        if word in self.opt_in:
            return "granted"
        return None
