"""The fake Telegram Bot API behaves like the real one for the calls the gateway makes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import quart
import trio

from gateway.testing.conformance import serve_blueprint
from gateway.testing.fake_telegram import SentMessage, open_fake_telegram

TOKEN = "4440001:fake-TEST_token"


async def call(
    http: httpx.AsyncClient, base: str, method: str, token: str = TOKEN, **params: Any
) -> httpx.Response:
    return await http.post(f"{base}/bot{token}/{method}", json=params)


async def test_get_me_and_wrong_token() -> None:
    async with open_fake_telegram(TOKEN) as server, httpx.AsyncClient() as http:
        me = (await call(http, server.api_base, "getMe")).json()
        assert me["ok"] and me["result"]["id"] == 4440001 and me["result"]["is_bot"] is True
        wrong = await call(http, server.api_base, "getMe", token="4440001:other")
        assert wrong.status_code == 401
        assert wrong.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}


async def test_offset_confirms_and_unconfirmed_updates_come_again() -> None:
    async with open_fake_telegram(TOKEN) as server, httpx.AsyncClient() as http:
        first = server.push_message(42, "one")
        second = server.push_message(42, "two", first_name="Bo", username="bo")
        assert second["update_id"] == first["update_id"] + 1
        got = (await call(http, server.api_base, "getUpdates", timeout=0)).json()["result"]
        assert [u["message"]["text"] for u in got] == ["one", "two"]
        message = got[1]["message"]
        assert message["chat"] == {
            "id": 42,
            "first_name": "Bo",
            "username": "bo",
            "type": "private",
        }
        assert message["from"]["id"] == 42 and message["from"]["is_bot"] is False
        assert message["message_id"] == 2 and isinstance(message["date"], int)

        again = (await call(http, server.api_base, "getUpdates", timeout=0)).json()["result"]
        assert [u["update_id"] for u in again] == [first["update_id"], second["update_id"]]

        rest = (
            await call(http, server.api_base, "getUpdates", offset=first["update_id"] + 1)
        ).json()
        assert [u["message"]["text"] for u in rest["result"]] == ["two"]
        await call(http, server.api_base, "getUpdates", offset=second["update_id"] + 1)
        # confirmed updates are gone for good, even for a caller that forgot its offset
        assert (await call(http, server.api_base, "getUpdates", timeout=0)).json()["result"] == []


async def test_limit_and_form_encoded_parameters() -> None:
    async with open_fake_telegram(TOKEN) as server, httpx.AsyncClient() as http:
        for i in range(5):
            server.push_message(7, f"m{i}")
        response = await http.post(
            f"{server.api_base}/bot{TOKEN}/getUpdates", data={"limit": "2", "timeout": "0"}
        )
        assert [u["message"]["text"] for u in response.json()["result"]] == ["m0", "m1"]
        query = await http.get(f"{server.api_base}/bot{TOKEN}/getUpdates", params={"limit": 3})
        assert len(query.json()["result"]) == 3


async def test_long_poll_wakes_on_push_and_a_newer_poll_ends_the_older() -> None:
    async with open_fake_telegram(TOKEN) as server, httpx.AsyncClient(timeout=10) as http:
        results: list[httpx.Response] = []
        polled = trio.Event()
        server.on_get_updates = lambda params: polled.set()

        async def poll() -> None:
            results.append(await call(http, server.api_base, "getUpdates", timeout=30))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await polled.wait()
                server.push_message(9, "wake up")
        assert results[0].json()["result"][0]["message"]["text"] == "wake up"

        offset = results[0].json()["result"][0]["update_id"] + 1
        arrived = [trio.Event(), trio.Event()]
        server.on_get_updates = lambda params: arrived[
            server.requests.count("getupdates") - 2
        ].set()

        async def poll_from_offset() -> None:
            results.append(
                await call(http, server.api_base, "getUpdates", offset=offset, timeout=30)
            )

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll_from_offset)
                await arrived[0].wait()
                nursery.start_soon(poll_from_offset)
                await arrived[1].wait()
                server.push_message(9, "later")
        statuses = sorted(r.status_code for r in results[1:])
        assert statuses == [200, 409]
        conflict = next(r for r in results[1:] if r.status_code == 409).json()
        assert conflict["description"].startswith(
            "Conflict: terminated by other getUpdates request"
        )


async def test_webhook_blocks_get_updates_until_deleted() -> None:
    async with open_fake_telegram(TOKEN) as server, httpx.AsyncClient() as http:
        ok = await call(
            http,
            server.api_base,
            "setWebhook",
            url="http://127.0.0.1:9/hook",
            secret_token="s3cret",
        )
        assert ok.json() == {"ok": True, "result": True}
        assert (server.webhook_url, server.webhook_secret) == ("http://127.0.0.1:9/hook", "s3cret")
        info = (await call(http, server.api_base, "getWebhookInfo")).json()["result"]
        assert info["url"] == "http://127.0.0.1:9/hook"
        assert "s3cret" not in json.dumps(info)  # the real API never echoes the secret
        conflict = await call(http, server.api_base, "getUpdates")
        assert conflict.status_code == 409 and "webhook is active" in conflict.json()["description"]
        bad = await call(
            http, server.api_base, "setWebhook", url="http://x/y", secret_token="no spaces!"
        )
        assert bad.status_code == 400
        await call(http, server.api_base, "deleteWebhook")
        assert (await call(http, server.api_base, "getUpdates")).status_code == 200
        assert (await call(http, server.api_base, "getWebhookInfo")).json()["result"]["url"] == ""


async def test_send_message_records_and_answers_a_message() -> None:
    async with open_fake_telegram(TOKEN) as server, httpx.AsyncClient() as http:
        server.push_message(42, "hi")  # message 1 of chat 42
        recorded: list[SentMessage] = []
        server.on_send = recorded.append
        first = (await call(http, server.api_base, "sendMessage", chat_id=42, text="hello")).json()[
            "result"
        ]
        second = await http.post(
            f"{server.api_base}/bot{TOKEN}/sendMessage", data={"chat_id": "42", "text": "again"}
        )
        assert first["message_id"] == 2 and second.json()["result"]["message_id"] == 3
        assert first["chat"]["id"] == 42 and first["chat"]["type"] == "private"
        assert first["from"]["is_bot"] is True and first["text"] == "hello"
        assert [(m.chat_id, m.text, m.message_id) for m in server.sent] == [
            (42, "hello", 2),
            (42, "again", 3),
        ]
        assert recorded == server.sent
        with trio.fail_after(5):
            assert await server.wait_sent(2) == server.sent
        empty = await call(http, server.api_base, "sendMessage", chat_id=42, text="")
        assert (
            empty.status_code == 400
            and empty.json()["description"] == "Bad Request: message text is empty"
        )
        unknown = await call(http, server.api_base, "sendMessage", chat_id="@nobody", text="x")
        assert unknown.json()["description"] == "Bad Request: chat not found"


async def test_injected_faults_look_like_the_real_api() -> None:
    async with open_fake_telegram(TOKEN) as server, httpx.AsyncClient() as http:
        server.fail_next("sendMessage", status=429, retry_after=3)
        server.fail_next("sendMessage", status=403)
        flood = await call(http, server.api_base, "sendMessage", chat_id=1, text="a")
        assert flood.status_code == 429
        assert flood.json() == {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 3",
            "parameters": {"retry_after": 3},
        }
        blocked = await call(http, server.api_base, "sendMessage", chat_id=1, text="a")
        assert blocked.json()["description"] == "Forbidden: bot was blocked by the user"
        assert (
            await call(http, server.api_base, "sendMessage", chat_id=1, text="a")
        ).status_code == 200
        assert [m.text for m in server.sent] == ["a"]

        server.fail_next("sendMessage", disconnect=True)
        try:
            await call(http, server.api_base, "sendMessage", chat_id=1, text="lost answer")
        except httpx.RemoteProtocolError:
            pass
        else:
            raise AssertionError("the fake answered although told to disconnect")
        assert [m.text for m in server.sent] == ["a", "lost answer"]


async def test_post_webhook_sends_update_and_secret_header() -> None:
    received: list[tuple[str | None, Any]] = []
    blueprint = quart.Blueprint("hook", __name__)

    @blueprint.post("/hook")
    async def hook() -> tuple[str, int]:
        received.append(
            (
                quart.request.headers.get("X-Telegram-Bot-Api-Secret-Token"),
                await quart.request.get_json(),
            )
        )
        return "", 200 if len(received) > 1 else 500

    async with open_fake_telegram(TOKEN) as server, serve_blueprint(blueprint) as base:
        update = server.push_message(5, "via webhook")
        assert await server.post_webhook(f"{base}/hook", update, "s3cret") == 500
        async with httpx.AsyncClient() as http:
            await call(
                http, server.api_base, "setWebhook", url=f"{base}/hook", secret_token="s3cret"
            )
        assert await server.deliver_to_webhook(update) == 200
        assert received == [("s3cret", update), ("s3cret", update)]
        assert server.updates == []  # acknowledged by a 2xx


async def test_standalone_process_with_control_endpoints() -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway.testing.fake_telegram", "--port", "0", "--token", TOKEN],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            assert chunk, "the fake exited before printing its URL"
            line += chunk
        base = line.decode().strip()
        assert base.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as http:
            pushed = (
                await http.post(f"{base}/_fake/push", json={"chat_id": 77, "text": "hey"})
            ).json()
            assert pushed["result"]["message"]["text"] == "hey"
            updates = (await call(http, base, "getUpdates")).json()["result"]
            assert updates == [pushed["result"]]
            await call(http, base, "sendMessage", chat_id=77, text="yo")
            sent = (await http.get(f"{base}/_fake/sent")).json()["result"]
            assert [(m["chat_id"], m["text"]) for m in sent] == [(77, "yo")]
    finally:
        process.terminate()
        await process.wait()
        await process.stdout.aclose()  # type: ignore[union-attr]
