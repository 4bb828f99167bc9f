"""PUBLIC: the conformance suite every channel plugin must pass.

A plugin's tests write a small *harness* (:class:`ChannelHarness`) that runs the plugin against a
fake of its platform, then call::

    async def test_conformance():
        await check_channel(MyHarness())

Each check is also a public async function (``check_delivery_accepted(harness)``...) so a test
can run one alone; :data:`CHECKS` lists them in order. A failed check raises ``AssertionError``
whose message starts with the check's name.

What a harness must do
----------------------
- ``open(context)`` starts the fake platform and the channel (``run`` through
  ``nursery.start``; its routes served on a real 127.0.0.1 HTTP server by :func:`serve_channels`,
  and
  ``context.public_url`` set to it, if the plugin has one), yields the running channel and tears
  everything down when the block exits (cancelling ``run``).
- ``deliver(thread_key, sender_id, text)`` has the platform send a user message and returns once
  it was handed over. It must behave like the real platform when the plugin does not acknowledge:
  a push platform (webhooks) keeps re-sending the same message until it gets a 2xx, a polling
  platform keeps it until the plugin confirms it. The suite relies on that to check that a
  message is never lost when the journal fails.
- ``redeliver_last()`` has the platform send the last delivered message again, unchanged (a
  retry, or the same message reaching the bot by a second path).
- ``sent_texts(thread_key)`` is what the platform received from the bot in that thread, in order,
  as of the moment ``send`` returned.

Thread keys and sender ids the suite uses are decimal strings ("710001"), so platforms with
numeric chat ids can use them directly.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import httpx
import pydantic
import trio

from gateway.messages import Inbound, Outbound, SendResult, utcnow
from gateway.plugin import Accepted, Channel, ChannelConfig
from gateway.testing.context import MemoryChannelContext

__all__ = [
    "CHECKS",
    "ChannelHarness",
    "ConformanceContext",
    "check_accept_failure_not_lost",
    "check_cancel_promptly",
    "check_channel",
    "check_concurrent_sends",
    "check_config_rejects_unknown_key",
    "check_delivery_accepted",
    "check_order_preserved",
    "check_redelivery_dedupes",
    "check_send_reaches_thread",
    "serve_blueprint",
    "serve_channels",
    "public_client",
]

STEP_TIMEOUT = 10.0
"""Seconds any one step may take before the check fails (generous: fakes answer in ms)."""
CANCEL_DEADLINE = 2.0
"""Seconds a channel may take to stop once cancelled."""


class ChannelHarness(Protocol):
    """Runs one channel plugin against a fake of its platform. See the module docstring."""

    plugin_class: type

    def raw_config(self) -> dict[str, Any]:
        """A valid ``[channels.NAME]`` table as the TOML loader gives it (secrets as
        ``Secret`` objects or references resolvable from ``os.environ``)."""
        ...

    def open(self, context: MemoryChannelContext) -> AbstractAsyncContextManager[Channel]:
        """Start the fake platform and the channel; yield the running channel."""
        ...

    async def deliver(self, thread_key: str, sender_id: str, text: str) -> None:
        """The platform sends a user message to the bot; return once it was handed over."""
        ...

    async def redeliver_last(self) -> None:
        """The platform re-sends the last delivered message unchanged."""
        ...

    async def sent_texts(self, thread_key: str) -> list[str]:
        """What the platform received from the bot in ``thread_key``, in order."""
        ...


class ConformanceContext(MemoryChannelContext):
    """A MemoryChannelContext that also counts accept calls (failed ones too) and lets a check
    wait for any condition on it without sleeping."""

    def __init__(self, name: str = "conformance", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.accept_calls = 0
        self._event = trio.Event()

    async def accept_many(self, inbounds: Sequence[Inbound]) -> list[Accepted]:
        self.accept_calls += 1
        try:
            return await super().accept_many(inbounds)
        finally:
            self._event.set()
            self._event = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait until ``predicate()`` holds after some accept; AssertionError naming ``what``
        after STEP_TIMEOUT."""
        with trio.move_on_after(STEP_TIMEOUT):
            while not predicate():
                await self._event.wait()
            return
        raise AssertionError(f"timed out after {STEP_TIMEOUT:g} s waiting for {what}")


_Check = Callable[[ChannelHarness], Awaitable[None]]


def _check(fn: Callable[[ChannelHarness, ConformanceContext], Awaitable[None]]) -> _Check:
    """Give ``fn`` a fresh ConformanceContext and name the check in any failure."""

    @functools.wraps(fn)
    async def run(harness: ChannelHarness) -> None:
        context = ConformanceContext()
        try:
            await fn(harness, context)
        except (AssertionError, trio.TooSlowError, BaseExceptionGroup) as exc:
            # Failures inside the harness's nurseries arrive wrapped in exception groups.
            failures = _leaves(exc)
            if not all(isinstance(f, AssertionError | trio.TooSlowError) for f in failures):
                raise
            first = failures[0]
            text = (
                str(first)
                if isinstance(first, AssertionError)
                else f"timed out after {STEP_TIMEOUT:g} s"
            )
            raise AssertionError(f"{fn.__name__}: {text}") from exc
        finally:
            with trio.CancelScope(shield=True):
                await context.aclose()

    return run


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _opened(
    harness: ChannelHarness, context: ConformanceContext
) -> AbstractAsyncContextManager[Channel]:
    # No deadline around opening: a cancel scope must not end inside the harness's nursery.
    return harness.open(context)


async def _deliver(
    harness: ChannelHarness, thread_key: str, text: str, sender_id: str | None = None
) -> None:
    with trio.fail_after(STEP_TIMEOUT):
        await harness.deliver(thread_key, sender_id or thread_key, text)


def _texts(context: MemoryChannelContext) -> list[str]:
    return [m.text for m in context.inbound]


# -- the checks ---------------------------------------------------------------------------------


@_check
async def check_config_rejects_unknown_key(
    harness: ChannelHarness, context: ConformanceContext
) -> None:
    """Config is a ChannelConfig subclass that accepts the harness's table and rejects a typo."""
    config_class = getattr(harness.plugin_class, "Config", None)
    assert isinstance(config_class, type) and issubclass(config_class, ChannelConfig), (
        f"{harness.plugin_class.__name__}.Config must subclass gateway.plugin.ChannelConfig"
    )
    raw = harness.raw_config()
    config_class.model_validate(raw)
    try:
        config_class.model_validate({**raw, "no_such_key_xyz": 1})
    except pydantic.ValidationError as exc:
        assert "no_such_key_xyz" in str(exc), f"the error does not name the unknown key: {exc}"
    else:
        raise AssertionError(
            "an unknown key was accepted (use extra='forbid', as ChannelConfig does)"
        )


@_check
async def check_delivery_accepted(harness: ChannelHarness, context: ConformanceContext) -> None:
    """A delivered message reaches accept with its thread, sender and text."""
    async with _opened(harness, context):
        await _deliver(harness, "710001", "hello from conformance")
        await context.wait_until(
            lambda: len(context.inbound) >= 1, "the delivered message to be accepted"
        )
        inbound = context.inbound[0]
        for field in ("account", "external_id", "thread_key", "sender_id"):
            assert getattr(inbound, field), f"Inbound.{field} is empty: {inbound!r}"
        assert inbound.text == "hello from conformance", f"text arrived as {inbound.text!r}"
        assert inbound.thread_key == "710001", (
            f"thread_key is {inbound.thread_key!r}, delivered to '710001'"
        )
        assert inbound.sender_id == "710001", (
            f"sender_id is {inbound.sender_id!r}, sent by '710001'"
        )


@_check
async def check_redelivery_dedupes(harness: ChannelHarness, context: ConformanceContext) -> None:
    """A platform retry gives the same (account, external_id), so the journal keeps one message."""
    async with _opened(harness, context):
        await _deliver(harness, "710002", "only once please")
        await context.wait_until(
            lambda: len(context.inbound) >= 1, "the first delivery to be accepted"
        )
        with trio.fail_after(STEP_TIMEOUT):
            await harness.redeliver_last()
        await context.wait_until(
            lambda: len(context.duplicates) >= 1 or len(context.inbound) >= 2,
            "the redelivered message to reach accept",
        )
        first = context.inbound[0]
        assert len(context.inbound) == 1, (
            f"the redelivery became a second message: external ids {first.external_id!r} and "
            f"{context.inbound[1].external_id!r} (derive external_id from the platform's message "
            "id, not from the delivery)"
        )
        again = context.duplicates[0]
        assert (again.account, again.external_id) == (first.account, first.external_id)


@_check
async def check_order_preserved(harness: ChannelHarness, context: ConformanceContext) -> None:
    """Three messages delivered in order are accepted in that order."""
    texts = ["first", "second", "third"]
    async with _opened(harness, context):
        for text in texts:
            await _deliver(harness, "710003", text)
        await context.wait_until(lambda: len(context.inbound) >= 3, "three messages to be accepted")
        assert _texts(context) == texts, f"accepted in the order {_texts(context)}"
        assert len({m.external_id for m in context.inbound}) == 3, (
            "distinct messages share an external_id"
        )


@_check
async def check_send_reaches_thread(harness: ChannelHarness, context: ConformanceContext) -> None:
    """send() returns a SendResult and the platform shows the text in that thread."""
    async with _opened(harness, context) as channel:
        await _deliver(harness, "710004", "please answer")
        await context.wait_until(lambda: len(context.inbound) >= 1, "the message to be accepted")
        inbound = context.inbound[0]
        # A reply to a message that just arrived: inside any platform's messaging window.
        outbound = Outbound(
            1,
            "conformance-send-1",
            inbound.account,
            inbound.thread_key,
            "the answer",
            last_inbound_at=utcnow(),
        )
        with trio.fail_after(STEP_TIMEOUT):
            result = await channel.send(outbound)
            sent = await harness.sent_texts(inbound.thread_key)
        assert isinstance(result, SendResult), f"send returned {result!r}, not a SendResult"
        assert sent == ["the answer"], f"the platform shows {sent!r} in thread {inbound.thread_key}"


@_check
async def check_concurrent_sends(harness: ChannelHarness, context: ConformanceContext) -> None:
    """Sends to different threads at the same time all arrive, each in its own thread."""
    threads = [f"71001{i}" for i in range(5)]
    async with _opened(harness, context) as channel:
        for thread in threads:
            await _deliver(harness, thread, f"hi from {thread}")
        await context.wait_until(
            lambda: len(context.inbound) >= len(threads), "one message per thread"
        )
        account = context.inbound[0].account
        results: dict[str, Any] = {}

        async def send(i: int, thread: str) -> None:
            results[thread] = await channel.send(
                Outbound(
                    100 + i,
                    f"conformance-concurrent-{i}",
                    account,
                    thread,
                    f"reply to {thread}",
                    last_inbound_at=utcnow(),
                )
            )

        with trio.fail_after(STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for i, thread in enumerate(threads):
                    nursery.start_soon(send, i, thread)
            for thread in threads:
                assert isinstance(results[thread], SendResult), (
                    f"send to {thread} returned {results[thread]!r}"
                )
                sent = await harness.sent_texts(thread)
                assert sent == [f"reply to {thread}"], f"thread {thread} shows {sent!r}"


@_check
async def check_cancel_promptly(harness: ChannelHarness, context: ConformanceContext) -> None:
    """Cancelling run() (closing the harness) while it is receiving ends it promptly and cleanly."""
    async with _opened(harness, context):
        await _deliver(harness, "710005", "are you there")
        await context.wait_until(lambda: len(context.inbound) >= 1, "the message to be accepted")
        # run() is now back to waiting for the platform (a long poll, an idle webhook).
        stopping = trio.current_time()
    took = trio.current_time() - stopping
    assert took < CANCEL_DEADLINE, f"the channel took {took:.1f} s to stop once cancelled"


@_check
async def check_accept_failure_not_lost(
    harness: ChannelHarness, context: ConformanceContext
) -> None:
    """When the journal fails (accept raises StoreError), the message is not acknowledged and
    arrives on the platform's next attempt: a poll that was not confirmed, a webhook re-sent
    after a non-2xx."""
    async with _opened(harness, context):
        context.fail_accepts = 1
        await _deliver(harness, "710006", "do not lose me")
        await context.wait_until(
            lambda: len(context.inbound) >= 1, "the message to be accepted after the failure"
        )
        assert context.fail_accepts == 0, "the plugin never called accept while it was failing"
        assert _texts(context) == ["do not lose me"], f"accepted {_texts(context)}"
        assert context.accept_calls >= 2, "accepted without a retry after the failure"


CHECKS: tuple[_Check, ...] = (
    check_config_rejects_unknown_key,
    check_delivery_accepted,
    check_redelivery_dedupes,
    check_order_preserved,
    check_send_reaches_thread,
    check_concurrent_sends,
    check_cancel_promptly,
    check_accept_failure_not_lost,
)


async def check_channel(harness: ChannelHarness) -> None:
    """Run every check in :data:`CHECKS`; the first failure raises AssertionError naming it."""
    for check in CHECKS:
        await check(harness)


@contextlib.asynccontextmanager
async def serve_blueprint(*blueprints: Any, graceful_timeout: float = 0.2) -> AsyncIterator[str]:
    """Serve quart blueprints on 127.0.0.1 (a random port) with hypercorn, as the daemon's
    public bind would; yield the base URL ("http://127.0.0.1:PORT"). For harness writers.

    On exit hypercorn waits ``graceful_timeout`` for open connections, idle keep-alive ones
    included (it does not close those early), so the default is short to keep tests fast.
    """
    from quart_trio import QuartTrio

    app = QuartTrio("conformance")
    for blueprint in blueprints:
        if blueprint is not None:
            app.register_blueprint(blueprint)
    async with _serve(app, graceful_timeout) as base:
        yield base


@contextlib.asynccontextmanager
async def serve_channels(*channels: Any, graceful_timeout: float = 0.2) -> AsyncIterator[str]:
    """Serve the channels' public routes (``webhooks()`` and ``blueprint()``) on 127.0.0.1 with
    the daemon's own public app (``gateway.http.public``); yield the base URL. Each channel is
    mounted under its ``name``. ``graceful_timeout`` as for :func:`serve_blueprint`."""
    from gateway.http.public import make_public_app

    app = make_public_app({channel.name: channel for channel in channels})
    async with _serve(app, graceful_timeout) as base:
        yield base


def public_client(*channels: Any) -> httpx.AsyncClient:
    """An httpx client that calls the daemon's public app (``gateway.http.public``) with the
    channels mounted, in-process (no socket): for fuzzing a webhook route by the thousand. Use
    as ``async with public_client(channel) as client: await client.post("/webhooks/NAME", ...)``.
    """
    from gateway.http.public import make_public_app

    app = make_public_app({channel.name: channel for channel in channels})
    # httpx types ASGI loosely (MutableMapping events); the app is typed with hypercorn's.
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test")


@contextlib.asynccontextmanager
async def _serve(app: Any, graceful_timeout: float) -> AsyncIterator[str]:
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = graceful_timeout
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            functools.partial(serve, app, config, shutdown_trigger=stop.wait)
        )
        try:
            yield binds[0]
        finally:
            stop.set()
