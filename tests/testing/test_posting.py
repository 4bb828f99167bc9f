"""The fakes' webhook POST survives a receiver killed mid-request with a transport error only.

A real server on 127.0.0.1 resets the connection while the client is still writing a body too
big for the socket buffers: exactly what a ``kill -9`` of the daemon does to a webhook delivery.
"""

from __future__ import annotations

import functools
import gc
import socket
import struct

import httpx
import pytest
import trio
import trio.testing

from gateway.testing._http import Answer, serve_requests
from gateway.testing._posting import OneShotBody, post

BODY = b"x" * (32 * 1024 * 1024)  # more than loopback's socket buffers hold: the write blocks


async def _resetting_server(nursery: trio.Nursery) -> str:
    """Accept one connection at a time, read the first bytes of its request (the client is then
    writing the body) and reset it (RST)."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]

    async def serve() -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                await stream.receive_some(65536)
                sock = stream.socket
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await stream.aclose()

    nursery.start_soon(serve)
    port = listener.socket.getsockname()[1]
    return f"http://127.0.0.1:{port}/webhook"


async def _settle() -> None:
    """Let trio finalize what the collector found abandoned, inside the caller's block."""
    for _ in range(3):
        gc.collect()
        await trio.testing.wait_all_tasks_blocked()


async def test_premise_httpx_warns_when_its_body_generator_is_dropped_half_sent():
    """If this fails, httpx fixed encode/httpx#3686 and gateway/testing/_posting.py can go."""
    async with trio.open_nursery() as nursery:
        url = await _resetting_server(nursery)
        async with httpx.AsyncClient() as client:
            with pytest.warns(ResourceWarning, match="ByteStream.__aiter__"):
                with pytest.raises(httpx.TransportError):
                    await client.post(url, content=BODY)
                await _settle()
        nursery.cancel_scope.cancel()


async def test_post_to_a_receiver_reset_mid_body_raises_a_transport_error_and_no_warning():
    # filterwarnings=error: a ResourceWarning here, or one the collector raises later, fails.
    async with trio.open_nursery() as nursery:
        url = await _resetting_server(nursery)
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                with pytest.raises(httpx.TransportError):
                    await post(client, url, content=BODY)
                await _settle()
        nursery.cancel_scope.cancel()


async def test_post_sends_json_forms_and_bytes_as_httpx_would():
    received: list[tuple[str, str | None, bytes]] = []

    async def answer(method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        assert headers["content-length"] == str(len(body))
        received.append((target, headers.get("content-type"), body))
        return 200, [], b""

    async with trio.open_nursery() as nursery:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        nursery.start_soon(
            trio.serve_listeners, functools.partial(serve_requests, answer=answer), [listener]
        )
        base = f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
        async with httpx.AsyncClient() as client:
            statuses = [
                (
                    await post(client, f"{base}/a", json={"ok": True}, headers={"X-Sig": "s"})
                ).status_code,
                (await post(client, f"{base}/b", data={"Body": "hi there"})).status_code,
                (await post(client, f"{base}/c", content=b"\x00raw")).status_code,
            ]
        nursery.cancel_scope.cancel()
    assert statuses == [200, 200, 200]
    assert received == [
        ("/a", "application/json", b'{"ok":true}'),
        ("/b", "application/x-www-form-urlencoded", b"Body=hi+there"),
        ("/c", None, b"\x00raw"),
    ]


async def test_a_one_shot_body_iterates_once_per_send():
    body = OneShotBody(b"abc")
    assert [chunk async for chunk in body] == [b"abc"]
    assert [chunk async for chunk in body] == [b"abc"]  # a second send (a retry) sends it again
