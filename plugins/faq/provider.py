"""The built-in offline provider: answers from a knowledge file of questions and answers.

It is what the embedded default configuration uses when no LLM is set up, so a fresh install
answers its demo chat page with no network and no API key. Format and matching:
:mod:`plugins.faq.knowledge`; the shipped example is ``gateway/defaults/faq.md``.

Departure from the plugin contract's "the constructor must not do I/O": the knowledge file is
read and indexed in the constructor. It is one small local file (~1 ms for 100 entries), and
reading it there makes a broken file fail at start-up (and in ``gateway check-config``) with
file and line, instead of on the first visitor's question.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import trio
from pydantic import Field

from gateway.messages import Completion, CompletionRequest
from gateway.plugin import ProviderConfig, ProviderContext
from plugins.faq.knowledge import KnowledgeBase, load_knowledge

__all__ = ["FaqProvider", "default_knowledge"]

DEFAULT_UNKNOWN_ANSWER = (
    "I'm sorry, I don't know the answer to that yet. A member of our team will follow up if "
    "you leave your question here."
)


def default_knowledge() -> KnowledgeBase:
    """The shipped example knowledge file, read from the installed package."""
    resource = importlib.resources.files("gateway") / "defaults" / "faq.md"
    return load_knowledge("gateway/defaults/faq.md", text=resource.read_text(encoding="utf-8"))


class FaqProvider:
    """Answers the last user message with the best-matching entry of the knowledge file."""

    class Config(ProviderConfig):
        """``[providers.NAME]`` with ``plugin = "faq"``."""

        # Runs in this process: nothing leaves the server, so personal data may be read.
        region: str = Field("local", description='Always "local": the FAQ runs in-process.')
        personal_data: bool = Field(True, description="In-process: may read personal data.")

        knowledge: str | None = Field(
            None,
            description=(
                "Path of the knowledge file (Markdown, '## Question' then the answer); relative "
                "to the config file's directory. Leave out for the shipped example."
            ),
        )
        min_score: float = Field(
            0.5,
            ge=0,
            le=1,
            description="How well (0..1) a question must match an entry; below it, unknown_answer.",
        )
        unknown_answer: str = Field(
            DEFAULT_UNKNOWN_ANSWER,
            min_length=1,
            description="The reply when nothing in the knowledge file matches well enough.",
        )

    def __init__(self, name: str, config: Any, context: ProviderContext) -> None:
        self.name = name
        self.config: FaqProvider.Config = config
        self.context = context
        if self.config.knowledge is None:
            self.knowledge = default_knowledge()
        else:
            path = Path(self.config.knowledge).expanduser()
            if not path.is_absolute():
                path = Path(context.config_dir) / path
            self.knowledge = load_knowledge(path)

    async def complete(self, request: CompletionRequest) -> Completion:
        """Answer the newest user turn; ``unknown_answer`` when no entry scores ``min_score``."""
        # A checkpoint like any real provider's call: cancellation is honoured here.
        await trio.lowlevel.checkpoint()
        question = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        match = self.knowledge.match(question)
        if match is None or match.score < self.config.min_score:
            # Log the score, never the visitor's words.
            self.context.log.debug(
                "provider %s: no entry matched (best %.2f)", self.name, match.score if match else 0
            )
            return Completion(text=self.config.unknown_answer, model="faq")
        self.context.log.debug(
            "provider %s: answered with entry at line %d (score %.2f)",
            self.name,
            match.entry.line,
            match.score,
        )
        return Completion(text=match.entry.answer, model="faq")

    async def aclose(self) -> None:
        """Nothing to release; harmless to call any number of times."""
