"""Chat commands: a message such as ``/mydata`` or ``/start acme`` answered by a feature of the
gateway (data-subject requests, developer-project subscriptions) instead of the AI agent.

A feature registers a handler in :func:`gateway.features.install`::

    services.pipeline.commands.add("/mydata", handler)

The pipeline calls ``handler(call)`` in the conversation's answer lane (so in order with the
contact's other messages), before opt-out keywords and the agent. The handler returns the
reply text (committed to the outbox as a transactional notice, sent at most once like every
reply), ``""`` to answer nothing, or ``None`` to let the message go on to the keywords and the
agent as if it were no command (e.g. ``/start`` without a known project). A handler runs its own
store transactions through the ``Services`` it was built with; it must be idempotent for the
same ``call.journal_id`` (a crash before the reply commits runs it again).

Names are matched case-insensitively on the first word, with a Telegram-style ``@botname``
suffix removed: ``/MyData@acme_bot please`` is ``/mydata`` with args ``please``.

A command that starts a short dialogue (``/unsubscribe`` -> "reply with a number" -> "YES to
confirm") also needs the plain replies: ``commands.expect_replies("/unsubscribe", waiting,
on_reply)``. While ``waiting()`` is true, a message that is no registered command goes to
``on_reply`` with the whole message as ``args``; it answers None for conversations it is not
waiting on, and the message goes on as usual (each waiting feature is asked in turn).
``waiting`` runs for every message: keep it an in-memory check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

Handler = Callable[["CommandCall"], Awaitable[str | None]]


@dataclasses.dataclass(frozen=True)
class CommandCall:
    command: str
    """The command, lower case, with its slash: ``/mydata``."""
    args: str
    """The rest of the message, stripped."""
    channel: str
    account: str
    thread_key: str
    conversation_id: int
    contact_id: int
    identity_id: int | None
    """The identity (channel + platform user id) that wrote, when the conversation has one."""
    journal_id: int
    message_id: int


def parse(text: str) -> tuple[str, str] | None:
    stripped = text.strip()
    if not stripped.startswith("/") or len(stripped) < 2:
        return None
    head, _, rest = stripped.partition(" ")
    if "\n" in head:
        head, _, more = head.partition("\n")
        rest = f"{more}\n{rest}".strip()
    name = head.split("@", 1)[0].lower()
    if len(name) < 2:
        return None
    return name, rest.strip()


class Commands:
    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.replies: list[tuple[str, Callable[[], bool], Handler]] = []

    def add(self, name: str, handler: Handler) -> None:
        key = name.strip().lower()
        if not key.startswith("/") or len(key) < 2 or " " in key:
            raise ValueError(f"a chat command is a slash and a word, like /mydata, not {name!r}")
        if key in self.handlers:
            raise ValueError(f"chat command {key} is registered twice")
        self.handlers[key] = handler

    def expect_replies(self, name: str, waiting: Callable[[], bool], on_reply: Handler) -> None:
        """Plain messages go to ``on_reply`` while ``waiting()`` (see the module doc); ``name``
        is the dialogue's command, given as ``call.command``."""
        key = name.strip().lower()
        if key not in self.handlers:
            raise ValueError(f"register chat command {key} before expecting replies to it")
        self.replies.append((key, waiting, on_reply))

    def match(self, text: str) -> tuple[Handler, str, str] | None:
        if not self.handlers:
            return None
        parsed = parse(text)
        if parsed is not None and parsed[0] in self.handlers:
            return self.handlers[parsed[0]], parsed[0], parsed[1]
        waiting = [(name, on_reply) for name, wait, on_reply in self.replies if wait()]
        if not waiting:
            return None

        async def ask_each(call: CommandCall) -> str | None:
            for name, handler in waiting:
                reply = await handler(dataclasses.replace(call, command=name))
                if reply is not None:
                    return reply
            return None

        return ask_each, waiting[0][0], text.strip()
