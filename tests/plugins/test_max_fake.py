"""The fake Max Bot API itself behaves as the published API says: the plugin tests rely on it."""

from __future__ import annotations

import httpx

from gateway.testing.fake_max import DEFAULT_TOKEN, open_fake_max

AUTH = {"Authorization": DEFAULT_TOKEN}


async def test_the_token_goes_in_the_header_only() -> None:
    async with open_fake_max() as mx, httpx.AsyncClient(base_url=mx.api_base) as http:
        assert (await http.get("/me", headers=AUTH)).json()["user_id"] == mx.bot_id
        refused = await http.get("/me", headers={"Authorization": "wrong"})
        assert refused.status_code == 401 and refused.json()["code"] == "verify.token"
        in_query = await http.get("/me", params={"access_token": DEFAULT_TOKEN}, headers=AUTH)
        assert in_query.status_code == 401


async def test_a_marker_commits_every_earlier_update() -> None:
    async with open_fake_max() as mx, httpx.AsyncClient(base_url=mx.api_base) as http:
        mx.push_message(1, "one")
        mx.push_bot_started(1)
        first = (await http.get("/updates", params={"timeout": 0}, headers=AUTH)).json()
        assert [u["update_type"] for u in first["updates"]] == ["message_created", "bot_started"]
        again = (await http.get("/updates", params={"timeout": 0}, headers=AUTH)).json()
        assert len(again["updates"]) == 2  # nothing committed without a marker
        params = {"timeout": 0, "marker": first["marker"]}
        empty = (await http.get("/updates", params=params, headers=AUTH)).json()
        assert empty == {"updates": [], "marker": first["marker"]} and mx.updates == []
        mx.push_message(1, "two")
        mx.push_bot_started(1)
        typed = {"timeout": 0, "types": "bot_started"}
        only = (await http.get("/updates", params=typed, headers=AUTH)).json()
        assert [u["update_type"] for u in only["updates"]] == ["bot_started"]


async def test_polling_is_refused_while_a_webhook_is_subscribed() -> None:
    async with open_fake_max() as mx, httpx.AsyncClient(base_url=mx.api_base) as http:
        hook = {"url": "https://gw.example/webhooks/max", "secret": "abc_12345"}
        assert (await http.post("/subscriptions", json=hook, headers=AUTH)).json() == {
            "success": True
        }
        bad = {"url": "https://gw.example/x", "secret": "no spaces!"}
        assert (await http.post("/subscriptions", json=bad, headers=AUTH)).status_code == 400
        assert (await http.get("/updates", params={"timeout": 0}, headers=AUTH)).status_code == 405
        gone = await http.delete("/subscriptions", params={"url": hook["url"]}, headers=AUTH)
        assert gone.json() == {"success": True}
        assert (await http.get("/updates", params={"timeout": 0}, headers=AUTH)).status_code == 200


async def test_messages_and_answers_are_validated() -> None:
    async with open_fake_max() as mx, httpx.AsyncClient(base_url=mx.api_base) as http:

        async def post(params: dict[str, int], body: dict[str, object]) -> httpx.Response:
            return await http.post("/messages", params=params, json=body, headers=AUTH)

        assert (await post({"chat_id": 5}, {"text": "x" * 4001})).status_code == 400
        assert (await post({"chat_id": 5, "user_id": 5}, {"text": "x"})).status_code == 400
        unknown = {"text": "x", "link": {"type": "reply", "mid": "mid.nope"}}
        assert (await post({"chat_id": 5}, unknown)).status_code == 404
        sent = (await post({"chat_id": 5}, {"text": "hello"})).json()["message"]
        assert sent["body"]["mid"] == mx.sent[0].mid and sent["recipient"]["chat_id"] == 5
        answer = await http.post(
            "/answers", params={"callback_id": "nope"}, json={"notification": "ok"}, headers=AUTH
        )
        assert answer.status_code == 404 and mx.answers == []
