"""PUBLIC: the conformance suite every LLM provider plugin must pass.

A plugin author writes a *harness*, which says how to build the provider's raw config and how
to script the fake server it talks to, and runs the suite from a test::

    async def test_conformance(harness):
        await check_provider(harness)

``check_provider`` runs every check in :data:`CHECKS` (or the ``only`` ones) and raises
``AssertionError`` naming the first check that failed. It checks what the agent relies on:

- ``config``: ``Config`` subclasses ``ProviderConfig``, accepts the harness's config and rejects
  unknown keys;
- ``answers_last_message``: ``complete`` returns a non-empty ``Completion`` answering the newest
  user turn;
- ``sends_conversation``: the system prompt and the turns reach the server, in order;
- ``error_500``, ``error_429``, ``error_400``: server failures map to ``ProviderError`` with the
  right ``retryable`` and ``retry_after``; no message carries conversation content or a secret;
  the provider still answers afterwards;
- ``hang``: a server that never answers gives a retryable ``ProviderError`` once
  ``config.timeout`` has passed, not a hang; the provider answers afterwards;
- ``aclose_twice``: ``aclose`` before any call, and twice, is harmless;
- ``cancellation``: cancelling a call in flight propagates ``trio.Cancelled`` (never a
  ``ProviderError``, never swallowed).

An *offline* harness (a provider with no server, such as ``faq``) skips the checks that need a
server to script. Run the suite under ``trio.testing.MockClock`` with autojump, so the hang check
takes no real time (a fake on 127.0.0.1 in the same process is fine with it). Use a small
non-zero ``autojump_threshold`` (0.05) when the provider's SDK hops to a worker thread: with 0,
the clock jumps to the call's deadline while the thread runs. The openai SDK does so on every
client's first request (it computes platform headers with ``to_thread``).

Ready-made harnesses: :class:`FakeOpenAIHarness` (any provider speaking the OpenAI API, against
:class:`~gateway.testing.fake_openai.FakeOpenAIServer`), :class:`FakeAnthropicHarness` (any
provider speaking Anthropic's Messages API, against
:class:`~gateway.testing.fake_anthropic.FakeAnthropicServer`) and :class:`FakeProviderHarness`.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import httpx
import pydantic
import trio

from gateway.errors import ProviderError
from gateway.messages import ChatMessage, Completion, CompletionRequest
from gateway.plugin import ProviderConfig
from gateway.secretref import Secret
from gateway.testing._http import text_of
from gateway.testing.context import MemoryProviderContext
from gateway.testing.fake_anthropic import FakeAnthropicServer, open_fake_anthropic
from gateway.testing.fake_llm import FakeModel, FakeProvider
from gateway.testing.fake_openai import FakeOpenAIServer, open_fake_openai

__all__ = [
    "CHECKS",
    "FakeAnthropicHarness",
    "FakeOpenAIHarness",
    "FakeProviderHarness",
    "ProviderHarness",
    "check_provider",
]

Turn = tuple[str, str]
"""(role, content) of one message as the server received it; the system prompt is "system"."""


class ProviderHarness(abc.ABC):
    """How the suite builds one provider and scripts its fake. Subclass and override.

    Must override: ``provider_class``, :meth:`config`; unless ``offline``, also
    :meth:`fail_next`, :meth:`hang_next`, :meth:`received` and :meth:`wait_received`.
    """

    provider_class: type[Any]
    offline: bool = False
    """True for a provider with no server: the checks that script a server are skipped."""
    hang_timeout: float = 5.0
    """The ``timeout`` the hang check configures (virtual seconds under an autojump clock)."""

    def _online_only(self, hook: str) -> TypeError:
        # Only the checks that script a fake server call these; an offline harness never does.
        return TypeError(
            f"{type(self).__name__} must define {hook}() for the checks that script a fake "
            "server, or set offline = True"
        )

    def open(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Start the fake for the duration of the suite (default: nothing to start)."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def config(self, **overrides: Any) -> dict[str, Any]:
        """The raw ``[providers.NAME]`` table (with ``plugin``), updated with ``overrides``."""

    def context(self) -> MemoryProviderContext:
        """A fresh context per provider; its ``http`` client is closed by the suite."""
        return MemoryProviderContext(
            name="conformance", http=httpx.AsyncClient(verify=_ssl_context())
        )

    def conversation(self) -> CompletionRequest:
        """The request the answer checks send: a system prompt and three turns."""
        return CompletionRequest(
            system="You are the conformance assistant. Conformance-system-marker.",
            messages=(
                ChatMessage("user", "first question alpha-marker"),
                ChatMessage("assistant", "first answer"),
                ChatMessage("user", "second question bravo-marker"),
            ),
        )

    def check_answer(self, request: CompletionRequest, completion: Completion) -> None:
        """Assert that ``completion`` answers the last user turn (default: a fake that echoes)."""
        last = request.messages[-1].content
        assert last in completion.text, (
            f"the answer does not answer the last user message: {completion.text!r}"
        )

    def fail_next(self, status: int, *, retry_after: float | None = None) -> None:
        """Make the fake answer the next request with HTTP ``status`` (and ``retry-after``)."""
        raise self._online_only("fail_next")

    def hang_next(self) -> None:
        """Make the fake never answer the next request."""
        raise self._online_only("hang_next")

    def received(self) -> list[list[Turn]]:
        """Every conversation the fake received, oldest first, system prompt first."""
        raise self._online_only("received")

    async def wait_received(self, count: int) -> None:
        """Wait until the fake has received ``count`` requests."""
        raise self._online_only("wait_received")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Building the CA bundle costs ~30 ms per httpx client; the suite makes one client per check.
    return ssl.create_default_context()


# -- the checks ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _provider(harness: ProviderHarness, **overrides: Any) -> AsyncIterator[Any]:
    cls = harness.provider_class
    config = cls.Config.model_validate(harness.config(**overrides))
    context = harness.context()
    provider = cls("conformance", config, context)
    try:
        yield provider
    finally:
        with trio.CancelScope(shield=True):
            await provider.aclose()
            await context.http.aclose()


def _secrets(harness: ProviderHarness) -> list[str]:
    return [v.reveal() for v in harness.config().values() if isinstance(v, Secret)]


def _assert_clean(harness: ProviderHarness, exc: ProviderError, request: CompletionRequest) -> None:
    text = str(exc)
    for message in request.messages:
        assert message.content not in text, (
            f"ProviderError message carries conversation content: {text!r}"
        )
    assert request.system not in text, f"ProviderError message carries the system prompt: {text!r}"
    for secret in _secrets(harness):
        assert secret not in text, "ProviderError message carries a secret from the config"


async def _expect_error(provider: Any, request: CompletionRequest) -> ProviderError:
    try:
        completion = await provider.complete(request)
    except ProviderError as exc:
        return exc
    raise AssertionError(f"expected ProviderError, got an answer: {completion!r}")


async def check_config(harness: ProviderHarness) -> None:
    cls = harness.provider_class
    assert isinstance(getattr(cls, "Config", None), type), "the provider has no nested Config class"
    assert issubclass(cls.Config, ProviderConfig), (
        "Config must subclass gateway.plugin.ProviderConfig"
    )
    config = cls.Config.model_validate(harness.config())
    assert config.timeout > 0
    try:
        cls.Config.model_validate({**harness.config(), "no_such_key_xyz": 1})
    except pydantic.ValidationError as exc:
        assert "no_such_key_xyz" in str(exc), "the validation error does not name the unknown key"
    else:
        raise AssertionError(
            "Config accepted an unknown key (use extra='forbid', the ProviderConfig default)"
        )


async def check_answers_last_message(harness: ProviderHarness) -> None:
    request = harness.conversation()
    async with _provider(harness) as provider:
        completion = await provider.complete(request)
    assert isinstance(completion, Completion), f"complete returned {type(completion).__name__}"
    assert isinstance(completion.text, str) and completion.text.strip(), "empty answer"
    assert completion.model, "Completion.model is empty"
    harness.check_answer(request, completion)


async def check_sends_conversation(harness: ProviderHarness) -> None:
    request = harness.conversation()
    async with _provider(harness) as provider:
        await provider.complete(request)
    expected = [("system", request.system)] + [(m.role, m.content) for m in request.messages]
    assert harness.received()[-1] == expected, (
        f"the server received {harness.received()[-1]!r}, expected {expected!r}"
    )


async def check_error_500(harness: ProviderHarness) -> None:
    request = harness.conversation()
    async with _provider(harness) as provider:
        harness.fail_next(500)
        exc = await _expect_error(provider, request)
        assert exc.retryable, "HTTP 500 must be retryable"
        _assert_clean(harness, exc, request)
        completion = await provider.complete(request)
        assert completion.text, "the provider did not answer after a 500"


async def check_error_429(harness: ProviderHarness) -> None:
    request = harness.conversation()
    async with _provider(harness) as provider:
        harness.fail_next(429, retry_after=7)
        exc = await _expect_error(provider, request)
    assert exc.retryable, "HTTP 429 must be retryable"
    assert exc.retry_after == 7, (
        f"retry_after should carry the server's retry-after 7, got {exc.retry_after!r}"
    )
    _assert_clean(harness, exc, request)


async def check_error_400(harness: ProviderHarness) -> None:
    request = harness.conversation()
    async with _provider(harness) as provider:
        harness.fail_next(400)
        exc = await _expect_error(provider, request)
    assert not exc.retryable, "HTTP 400 must not be retryable: the same request fails again"
    _assert_clean(harness, exc, request)


async def check_hang(harness: ProviderHarness) -> None:
    request = harness.conversation()
    timeout = harness.hang_timeout
    async with _provider(harness, timeout=timeout) as provider:
        harness.hang_next()
        started = trio.current_time()
        # A guard so a non-conforming provider fails this check instead of hanging the suite.
        with trio.move_on_after(timeout * 3 + 1) as guard:
            exc = await _expect_error(provider, request)
        assert not guard.cancelled_caught, f"complete() hung beyond 3x config.timeout ({timeout} s)"
        elapsed = trio.current_time() - started
        assert exc.retryable, "a timeout must be retryable"
        assert elapsed <= timeout * 1.5 + 0.5, (
            f"the timeout error came after {elapsed:.2f} s, config.timeout is {timeout} s"
        )
        _assert_clean(harness, exc, request)
        completion = await provider.complete(request)
        assert completion.text, "the provider did not answer after a timeout"


async def check_aclose_twice(harness: ProviderHarness) -> None:
    async with _provider(harness) as unused:
        await unused.aclose()  # before any call
    async with _provider(harness) as provider:
        await provider.complete(harness.conversation())
        await provider.aclose()
        await provider.aclose()


async def check_cancellation(harness: ProviderHarness) -> None:
    request = harness.conversation()
    outcome: list[object] = []

    async def call(provider: Any) -> None:
        try:
            outcome.append(await provider.complete(request))
        except ProviderError as exc:
            outcome.append(exc)

    async with _provider(harness) as provider:
        if harness.offline:
            # Nothing to wait on: a call started inside a cancelled scope must not finish.
            with trio.CancelScope() as scope:
                scope.cancel()
                await call(provider)
        else:
            harness.hang_next()
            before = len(harness.received())
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call, provider)
                    await harness.wait_received(before + 1)
                    scope.cancel()
        assert scope.cancelled_caught, "trio.Cancelled did not propagate out of complete()"
        assert not outcome, f"a cancelled call returned or raised instead: {outcome!r}"
        completion = await provider.complete(request)
        assert completion.text, "the provider did not answer after a cancelled call"


CHECKS: dict[str, tuple[Callable[[ProviderHarness], Awaitable[None]], bool]] = {
    "config": (check_config, False),
    "answers_last_message": (check_answers_last_message, False),
    "sends_conversation": (check_sends_conversation, True),
    "error_500": (check_error_500, True),
    "error_429": (check_error_429, True),
    "error_400": (check_error_400, True),
    "hang": (check_hang, True),
    "aclose_twice": (check_aclose_twice, False),
    "cancellation": (check_cancellation, False),
}
"""name -> (check, needs a server to script)."""


async def check_provider(
    harness: ProviderHarness, *, only: Collection[str] | None = None
) -> list[str]:
    """Run the conformance checks against ``harness``; return the names of the checks run.

    Raises AssertionError (``check NAME: ...``) at the first failure; ``only`` picks checks by
    name. Checks that need a server are skipped for an offline harness.
    """
    unknown = set(only or ()) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {sorted(CHECKS)}")
    ran = []
    async with harness.open():
        for name, (check, needs_server) in CHECKS.items():
            if (only is not None and name not in only) or (needs_server and harness.offline):
                continue
            try:
                await check(harness)
            except AssertionError as exc:
                raise AssertionError(f"check {name}: {exc}") from exc
            ran.append(name)
    return ran


# -- ready-made harnesses --------------------------------------------------------------------


class FakeOpenAIHarness(ProviderHarness):
    """A provider speaking the OpenAI chat API, against a :class:`FakeOpenAIServer`.

    ``base_config`` is the provider's table without ``base_url`` (added from the fake); it
    must include ``plugin`` and whatever the provider requires (``model``, a ``Secret``...).
    """

    def __init__(self, provider_class: type[Any], base_config: dict[str, Any]) -> None:
        self.provider_class = provider_class
        self.base_config = base_config
        self.server: FakeOpenAIServer | None = None

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[FakeOpenAIServer]:
        async with open_fake_openai() as server:
            self.server = server
            try:
                yield server
            finally:
                self.server = None

    def open(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._open()

    def _server(self) -> FakeOpenAIServer:
        assert self.server is not None, "use the harness inside 'async with harness.open()'"
        return self.server

    def config(self, **overrides: Any) -> dict[str, Any]:
        return {**self.base_config, "base_url": self._server().base_url, **overrides}

    def fail_next(self, status: int, *, retry_after: float | None = None) -> None:
        self._server().fail_next(1, status=status, retry_after=retry_after)

    def hang_next(self) -> None:
        self._server().hang_next(1)

    def received(self) -> list[list[Turn]]:
        return [
            [(m["role"], m["content"]) for m in body["messages"]]
            for body in self._server().requests
        ]

    async def wait_received(self, count: int) -> None:
        await self._server().wait_requests(count)


class FakeAnthropicHarness(ProviderHarness):
    """A provider speaking Anthropic's Messages API, against a :class:`FakeAnthropicServer`.

    ``base_config`` is the provider's table without ``base_url`` (added from the fake); it must
    include ``plugin`` and whatever the provider requires (``model``, a ``Secret`` key...). The
    fake requires the key the config holds when the config holds exactly one ``Secret``.
    Turns sent as content blocks are read back as their texts joined by spaces.
    """

    def __init__(self, provider_class: type[Any], base_config: dict[str, Any]) -> None:
        self.provider_class = provider_class
        self.base_config = base_config
        self.server: FakeAnthropicServer | None = None

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[FakeAnthropicServer]:
        secrets = [v.reveal() for v in self.base_config.values() if isinstance(v, Secret)]
        api_key = secrets[0] if len(secrets) == 1 else None
        async with open_fake_anthropic(api_key=api_key) as server:
            self.server = server
            try:
                yield server
            finally:
                self.server = None

    def open(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._open()

    def _server(self) -> FakeAnthropicServer:
        assert self.server is not None, "use the harness inside 'async with harness.open()'"
        return self.server

    def config(self, **overrides: Any) -> dict[str, Any]:
        return {**self.base_config, "base_url": self._server().base_url, **overrides}

    def fail_next(self, status: int, *, retry_after: float | None = None) -> None:
        self._server().fail_next(1, status=status, retry_after=retry_after)

    def hang_next(self) -> None:
        self._server().hang_next(1)

    def received(self) -> list[list[Turn]]:
        conversations = []
        for body in self._server().requests:
            turns = [("system", text_of(body["system"]))] if "system" in body else []
            turns += [(m["role"], text_of(m["content"])) for m in body["messages"]]
            conversations.append(turns)
        return conversations

    async def wait_received(self, count: int) -> None:
        await self._server().wait_requests(count)


class FakeProviderHarness(ProviderHarness):
    """:class:`~gateway.testing.fake_llm.FakeProvider` itself: the fake must conform too.

    HTTP statuses are translated to what a real provider raises for them.
    """

    def __init__(self) -> None:
        self.model = FakeModel()
        self.provider_class = FakeProvider.bound_to(self.model)

    def config(self, **overrides: Any) -> dict[str, Any]:
        return {"plugin": "fake", **overrides}

    def fail_next(self, status: int, *, retry_after: float | None = None) -> None:
        retryable = status >= 500 or status in (408, 409, 429)
        self.model.fail_next(
            1, retryable=retryable, retry_after=retry_after, message=f"HTTP {status}"
        )

    def hang_next(self) -> None:
        self.model.hang_next(1)

    def received(self) -> list[list[Turn]]:
        return [
            [("system", r.system)] + [(m.role, m.content) for m in r.messages]
            for r in self.model.requests
        ]

    async def wait_received(self, count: int) -> None:
        await self.model.wait_requests(count)
