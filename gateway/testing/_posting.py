"""How the fake platforms POST webhooks with httpx, so that a receiver that dies mid-request (a
``kill -9`` test) raises a transport error and nothing else.

httpx sends a body through ``ByteStream.__aiter__``, an async generator. When the write fails
half-way, the generator is dropped unfinished, and trio reports that as a ResourceWarning from the
garbage collector, which the test suite's ``filterwarnings = error`` turns into a failure in
whichever test is running then (before this, tests/resilience/test_random_kills.py failed 4
runs in 6 so). Upstream: encode/httpx#3686, fixes open as encode/httpx#3777 and #3700. Here
the body is an object that iterates itself instead of a generator;
``tests/testing/test_posting.py`` checks both the premise and the fix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx


class OneShotBody(httpx.AsyncByteStream):
    """A request body of known bytes, sent in one chunk; dropping it half-sent is silent."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._sent = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._sent = False
        return self

    async def __anext__(self) -> bytes:
        if self._sent:
            raise StopAsyncIteration
        self._sent = True
        return self._body


async def post(
    client: httpx.AsyncClient,
    url: str,
    *,
    content: bytes | None = None,
    json: Any = None,
    data: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """``client.post(url, ...)`` with exactly one of ``content``, ``json`` or ``data`` (a form),
    the body sent as a :class:`OneShotBody`."""
    request = client.build_request(
        "POST",
        url,
        content=content,
        json=json,
        data=dict(data) if data is not None else None,
        headers=headers,
    )
    request.stream = OneShotBody(request.content)
    return await client.send(request)


__all__ = ["OneShotBody", "post"]
