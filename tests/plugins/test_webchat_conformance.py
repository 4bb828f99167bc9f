"""The channel conformance suite against the web chat: the "platform" is one websocket client per
thread, each acting as a browser tab of that visitor."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import trio

from gateway.testing import conformance
from gateway.testing.context import MemoryChannelContext
from plugins.webchat import WebchatChannel
from plugins.webchat.convert import new_client_id
from plugins.webchat.testing import ChatClient, open_chat_client


class _ConformanceWebchat(WebchatChannel):
    """The suite uses decimal thread keys ("710001") as visitor ids and expects them as the
    thread. The real channel insists on 32+ hex digits, because a visitor id is the only key to
    a conversation's history, and stores a keyed hash of it as the thread; only for decimal ids
    are both rules relaxed here (their own tests are in test_webchat.py)."""

    def valid_visitor(self, visitor: str) -> bool:
        return visitor.isdigit() or super().valid_visitor(visitor)

    def thread_key(self, visitor: str) -> str:
        return visitor if visitor.isdigit() else super().thread_key(visitor)

    def valid_thread(self, thread: str) -> bool:
        return thread.isdigit() or super().valid_thread(thread)


class WebchatHarness:
    """A browser tab per thread, speaking the page's protocol; a message the server refuses with
    ``retry`` is sent again, as the page does."""

    plugin_class = WebchatChannel

    def __init__(self) -> None:
        self.url: str | None = None
        self.channel_name = ""
        self.tabs: dict[str, ChatClient] = {}
        self.last: tuple[str, str, str] | None = None
        self._nursery: trio.Nursery | None = None

    def raw_config(self) -> dict[str, Any]:
        return {"plugin": "webchat", "title": "Conformance chat"}

    @contextlib.asynccontextmanager
    async def open(self, context: MemoryChannelContext) -> AsyncIterator[WebchatChannel]:
        config = WebchatChannel.Config.model_validate(self.raw_config())
        channel = _ConformanceWebchat(context.name, config, context)
        async with conformance.serve_channels(channel) as url:
            context.public_url = url
            self.url = url
            self.channel_name = context.name
            async with trio.open_nursery() as tabs, trio.open_nursery() as runner:
                self._nursery = tabs
                await runner.start(channel.run)
                try:
                    yield channel
                finally:
                    runner.cancel_scope.cancel()
                    tabs.cancel_scope.cancel()
                    self.tabs.clear()
                    self._nursery = None

    async def _tab(self, thread_key: str) -> ChatClient:
        if thread_key not in self.tabs:
            assert self._nursery is not None and self.url is not None
            self.tabs[thread_key] = await self._nursery.start(self._keep_tab, thread_key)
        return self.tabs[thread_key]

    async def _keep_tab(self, thread_key: str, *, task_status: trio.TaskStatus[ChatClient]) -> None:
        assert self.url is not None
        async with open_chat_client(
            self.url, self.channel_name, visitor=thread_key, hello=False
        ) as tab:
            await tab.send_frame({"type": "hello", "visitor": thread_key})
            await tab.wait_for(lambda f: f["type"] == "history")
            task_status.started(tab)
            await trio.sleep_forever()

    async def deliver(self, thread_key: str, sender_id: str, text: str) -> None:
        # On the web the visitor is both the thread and the sender; the suite passes the same.
        assert sender_id == thread_key, "web chat threads are their visitor"
        self.last = (thread_key, new_client_id(), text)
        await self._send_until_acked(*self.last)

    async def redeliver_last(self) -> None:
        assert self.last is not None
        await self._send_until_acked(*self.last)

    async def _send_until_acked(self, thread_key: str, client_id: str, text: str) -> None:
        tab = await self._tab(thread_key)
        while True:
            answer = await tab.send_message(text, client_id)
            if answer["type"] == "ack":
                return
            assert answer["retry"], f"the server refused the message for good: {answer}"
            # The pause the server asks for (only when rate limited), as the page keeps it.
            await trio.sleep(answer.get("retry_after", 0))

    async def sent_texts(self, thread_key: str) -> list[str]:
        tab = await self._tab(thread_key)
        await tab.sync()  # every reply queued before the pong has arrived
        return [reply["text"] for reply in tab.replies]


async def test_webchat_conformance() -> None:
    await conformance.check_channel(WebchatHarness())
