"""End users subscribe with /start <project> and leave with /unsubscribe (pick, confirm), in
chat; the consent keywords stay global opt-outs (STOP everywhere, /unsubscribe on channels
without subscription_menu)."""

from __future__ import annotations

from gateway.pipeline.consent import Keywords
from gateway.testing.fake_channel import FakeChannel
from tests.api.conftest import bearer


async def subscriber_ids(api, key):
    response = await api.client.get("/api/v1/subscribers", headers=bearer(key))
    return [s["id"] for s in (await response.get_json())["data"]]


def test_subscription_menu_takes_unsubscribe_out_of_the_keywords_only():
    assert Keywords().match("/unsubscribe") == "withdrawn"
    menu = FakeChannel.Config(plugin="fake", subscription_menu=True).consent_keywords()
    assert menu.match("/unsubscribe") is None and menu.match("/Unsubscribe@acme_bot") is None
    assert menu.match("/отписаться") is None
    for word in ("STOP", "/stop", "unsubscribe", "СТОП"):
        assert menu.match(word) == "withdrawn", word
    assert menu.match("START") == "granted" and menu.match("/start") == "granted"
    plain = FakeChannel.Config(plugin="fake").consent_keywords()
    assert plain.match("/unsubscribe") == "withdrawn"


async def test_start_subscribes_lists_and_unknown_projects_go_to_the_agent(api):
    await api.project("news", "Daily News")
    key = await api.key(scopes=["subscribers"])
    assert "You are subscribed to Acme Shop" in await api.say("ann", "ann", "/start acme")
    assert await api.say("ann", "ann", "/start acme") == "You are already subscribed to Acme Shop."
    assert "Daily News" in await api.say("ann", "ann", "/start@acme_bot news")
    # A deep-link tag that is no project is just a /start: the agent answers.
    assert await api.say("ann", "ann", "/start promo2024") == "echo: /start promo2024"
    listing = await api.say("ann", "ann", "/start")
    assert (
        listing.startswith("My subscriptions:")
        and "Acme Shop" in listing
        and "Daily News" in listing
    )
    # Someone with no subscriptions who says /start gets the agent's greeting.
    assert await api.say("bob", "bob", "/start") == "echo: /start"
    assert len(await subscriber_ids(api, key)) == 1
    audit = await api.sql("SELECT action, target FROM audit_log WHERE action = 'api.subscribe'")
    assert ("api.subscribe", "project:acme") in audit and ("api.subscribe", "project:news") in audit


async def test_unsubscribe_menu_pick_confirm_removes_at_once(api):
    await api.project("news", "Daily News")
    key = await api.key(scopes=["subscribers", "notify"])
    sub = await api.subscribe("ann")
    await api.subscribe("ann", "news")
    menu = await api.say("ann", "ann", "/unsubscribe")
    assert "1. Acme Shop" in menu and "2. Daily News" in menu
    assert await api.say("ann", "ann", "7") == "Please reply with a number from 1 to 2, or NO."
    assert await api.say("ann", "ann", "1") == (
        "Unsubscribe from Acme Shop? Reply YES to confirm or NO to keep it."
    )
    done = await api.say("ann", "ann", "yes")
    assert "unsubscribed from Acme Shop" in done and "still subscribed to: Daily News" in done
    assert await subscriber_ids(api, key) == []
    refused = await api.client.post(
        "/api/v1/notifications",
        json={"subscriber": sub, "text": "x"},
        headers=bearer(key, **{"Idempotency-Key": "after"}),
    )
    assert refused.status_code == 404
    # The dialogue is over: a later "yes" is an ordinary message again.
    assert await api.say("ann", "ann", "yes") == "echo: yes"
    # Still consenting to everything else: no opt-out was recorded.
    assert await api.sql("SELECT state FROM consents") == []
    actions = await api.sql("SELECT action FROM audit_log WHERE action = 'api.unsubscribe'")
    assert actions == [("api.unsubscribe",)]


async def test_unsubscribe_by_name_no_and_other_replies(api):
    await api.project("news", "Daily News")
    await api.subscribe("ann")
    await api.subscribe("ann", "news")
    assert "Unsubscribe from Daily News?" in await api.say("ann", "ann", "/unsubscribe news")
    assert "Nothing changed" in await api.say("ann", "ann", "no")
    assert "2. Daily News" in await api.say("ann", "ann", "/unsubscribe")
    assert "Unsubscribe from Acme Shop?" in await api.say("ann", "ann", "acme")
    # Anything else ends the dialogue and is answered as usual.
    assert await api.say("ann", "ann", "what are your opening hours?") == (
        "echo: what are your opening hours?"
    )
    rows = await api.sql("SELECT count(*) FROM api_subscriptions")
    assert rows == [(2,)]
    # STOP during a dialogue is the global opt-out, as always.
    await api.say("ann", "ann", "/unsubscribe")
    assert "You are unsubscribed and will get no more messages" in await api.say(
        "ann", "ann", "STOP"
    )
    assert await api.sql("SELECT state FROM consents") == [("withdrawn",)]
    # Nobody subscribed: the menu says how to stop everything.
    assert "send STOP" in await api.say("cid", "cid", "/unsubscribe")


async def test_without_the_menu_unsubscribe_stays_the_global_opt_out(api):
    await api.subscribe("dee", channel="plain")
    reply = await api.say("dee", "dee", "/unsubscribe", channel="plain")
    assert reply.startswith("You are unsubscribed and will get no more messages")
    assert await api.sql("SELECT state FROM consents") == [("withdrawn",)]
    # Subscribing again after an opt-out gives consent back.
    again = await api.say("dee", "dee", "/start acme", channel="plain")
    assert again == "You are already subscribed to Acme Shop. You will get our messages again."
    await api.project("news", "Daily News")
    other = await api.say("dee", "dee", "/start news", channel="plain")
    assert "You will get our messages again" not in other  # consent was back already
    assert [r[0] for r in await api.sql("SELECT state FROM consents ORDER BY id")] == [
        "withdrawn",
        "granted",
    ]


async def test_subscribers_are_paginated_and_redacted_by_scope(api):
    for name in ("u10001", "u10002", "u10003"):
        await api.subscribe(name)
    redacted = await api.key(scopes=["subscribers"])
    full = await api.key(scopes=["subscribers", "external_ids"])
    first = await (
        await api.client.get("/api/v1/subscribers?limit=2", headers=bearer(redacted))
    ).get_json()
    assert [s["external_id"] for s in first["data"]] == ["***01", "***02"]
    assert first["next_cursor"]
    rest = await (
        await api.client.get(
            f"/api/v1/subscribers?limit=2&cursor={first['next_cursor']}", headers=bearer(full)
        )
    ).get_json()
    assert [s["external_id"] for s in rest["data"]] == ["u10003"] and rest["next_cursor"] is None
    for query in (
        "limit=0",
        "limit=abc",
        "limit=100000",
        "cursor=x",
        "cursor=%C2%B2",
        "colour=red",
    ):
        response = await api.client.get(f"/api/v1/subscribers?{query}", headers=bearer(full))
        assert response.status_code == 400, query
    # Other projects' keys see none of them.
    await api.project("news", "Daily News")
    other = await api.key("news", scopes=["subscribers"])
    assert await subscriber_ids(api, other) == []
