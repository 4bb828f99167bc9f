"""PUBLIC: an in-process LLM provider for pipeline tests, with no HTTP at all.

``FakeProvider`` is a real :class:`~gateway.plugin.LLMProvider` (nested ``Config``, constructed
as ``FakeProvider(name, config, context)``) whose behaviour is scripted through a
:class:`FakeModel`: deterministic replies (``reply_prefix`` + the last user message), failures,
hangs, and a record of every request.

Used directly::

    provider = FakeProvider("fake", FakeProvider.Config(plugin="fake"), MemoryProviderContext())
    provider.fail_next(1, retryable=True)
    await provider.complete(request)           # raises ProviderError(retryable=True)

Used through the daemon, where the core constructs the provider from config: share a model and
register a class bound to it, so the test can script the instance it never sees::

    model = FakeModel()
    registry.add("llm", "fake", FakeProvider.bound_to(model))
    model.hang_next(1)
    await model.wait_requests(1)

A hang behaves like a real provider facing a silent server: it raises a retryable
``ProviderError`` once ``config.timeout`` has passed (``trio.sleep``: an autojump clock skips it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import trio
from pydantic import Field

from gateway.errors import ProviderError
from gateway.messages import Completion, CompletionRequest
from gateway.plugin import ProviderConfig, ProviderContext

__all__ = ["FakeModel", "FakeProvider"]

ReplyFunction = Callable[[CompletionRequest], str]


@dataclasses.dataclass
class _Failure:
    retryable: bool
    retry_after: float | None
    message: str


class FakeModel:
    """The scripted behaviour and the request record behind one or more :class:`FakeProvider`.

    - ``requests``: every request passed to ``complete``, in order, including failed and hung ones.
    - ``latency``: seconds each answer takes (``trio.sleep``).
    - ``reply_prefix``: when not None, overrides the provider config's ``reply_prefix``.
    """

    def __init__(self, *, latency: float = 0.0) -> None:
        self.requests: list[CompletionRequest] = []
        self.latency = latency
        self.reply_prefix: str | None = None
        self._failures: list[_Failure] = []
        self._hangs = 0
        self._reply: ReplyFunction | None = None
        self._changed = trio.Condition()

    def fail_next(
        self,
        count: int = 1,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        message: str = "FakeModel: simulated failure",
    ) -> None:
        """Make the next ``count`` calls raise ``ProviderError(retryable, retry_after)``."""
        self._failures += [_Failure(retryable, retry_after, message) for _ in range(count)]

    def hang_next(self, count: int = 1) -> None:
        """Make the next ``count`` calls wait ``config.timeout``, then raise a retryable timeout."""
        self._hangs += count

    def reply_with(self, fn: ReplyFunction | None) -> None:
        """Compute replies with ``fn(request)``; None restores ``reply_prefix + last user text``.

        A function returning "" makes ``complete`` raise the retryable empty-answer error a real
        provider raises.
        """
        self._reply = fn

    async def wait_requests(self, count: int) -> list[CompletionRequest]:
        """Wait until at least ``count`` calls have been made; return all requests so far."""
        async with self._changed:
            while len(self.requests) < count:
                await self._changed.wait()
        return list(self.requests)

    async def _answer(self, request: CompletionRequest, config: FakeProvider.Config) -> Completion:
        self.requests.append(request)
        async with self._changed:
            self._changed.notify_all()
        if self._hangs:
            self._hangs -= 1
            await trio.sleep(config.timeout)
            raise ProviderError(
                f"fake model did not answer within {config.timeout:g} s", retryable=True
            )
        if self.latency:
            await trio.sleep(self.latency)
        else:
            # complete() is a checkpoint like any real call: cancellation is seen here.
            await trio.lowlevel.checkpoint()
        if self._failures:
            failure = self._failures.pop(0)
            raise ProviderError(
                failure.message, retryable=failure.retryable, retry_after=failure.retry_after
            )
        if self._reply is not None:
            text = self._reply(request)
        else:
            prefix = self.reply_prefix if self.reply_prefix is not None else config.reply_prefix
            text = prefix + last_user_text(request)
        if not text.strip():
            raise ProviderError("fake model returned an empty answer", retryable=True)
        return Completion(
            text=text,
            model=config.model,
            input_tokens=sum(len(m.content.split()) for m in request.messages)
            + len(request.system.split()),
            output_tokens=len(text.split()),
        )


class FakeProvider:
    """An :class:`~gateway.plugin.LLMProvider` answering from a :class:`FakeModel`.

    Each instance has its own model unless the class was made by :meth:`bound_to`. The
    scripting methods (``fail_next``, ``hang_next``, ``reply_with``, ``wait_requests``) and
    ``requests`` are shortcuts to that model.
    """

    class Config(ProviderConfig):
        """``[providers.NAME]`` with ``plugin = "fake"`` (registered by tests)."""

        reply_prefix: str = Field("echo: ", description="Put before the last user message.")
        model: str = Field("fake-model", description="Reported as Completion.model.")

    _shared_model: FakeModel | None = None

    def __init__(self, name: str, config: Any, context: ProviderContext) -> None:
        self.name = name
        self.config: FakeProvider.Config = config
        self.context = context
        self.model = self._shared_model if self._shared_model is not None else FakeModel()
        self.closed = 0
        """How many times aclose was called (the core calls it once; twice must be harmless)."""

    @classmethod
    def bound_to(cls, model: FakeModel) -> type[FakeProvider]:
        """A subclass whose every instance answers from ``model`` (for registries in tests)."""
        return type(cls.__name__, (cls,), {"_shared_model": model, "__module__": cls.__module__})

    @property
    def requests(self) -> list[CompletionRequest]:
        return self.model.requests

    def fail_next(
        self, count: int = 1, *, retryable: bool = True, retry_after: float | None = None
    ) -> None:
        """See :meth:`FakeModel.fail_next`."""
        self.model.fail_next(count, retryable=retryable, retry_after=retry_after)

    def hang_next(self, count: int = 1) -> None:
        """See :meth:`FakeModel.hang_next`."""
        self.model.hang_next(count)

    def reply_with(self, fn: ReplyFunction | None) -> None:
        """See :meth:`FakeModel.reply_with`."""
        self.model.reply_with(fn)

    async def wait_requests(self, count: int) -> list[CompletionRequest]:
        """See :meth:`FakeModel.wait_requests`."""
        return await self.model.wait_requests(count)

    async def complete(self, request: CompletionRequest) -> Completion:
        """Answer from the model's script; raise ProviderError as scripted."""
        if self.closed:
            raise ProviderError(f"provider {self.name!r} is closed", retryable=False)
        return await self.model._answer(request, self.config)

    async def aclose(self) -> None:
        """Mark the provider closed; further ``complete`` calls fail. Harmless to repeat."""
        await trio.lowlevel.checkpoint()
        self.closed += 1


def last_user_text(request: CompletionRequest) -> str:
    """The content of the newest user turn of ``request`` ("" if there is none)."""
    for message in reversed(request.messages):
        if message.role == "user":
            return message.content
    return ""
