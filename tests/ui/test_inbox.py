"""The inbox: masked by default, reveal audited, take over / reply / hand back / close / assign,
attachments, suggested replies and the live stream, on a running daemon."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import trio

from gateway.messages import Attachment, Inbound
from tests.ui.conftest import UI, csrf_of, page, post

MESSAGE = (
    "Hi, I'm Ola Nordmann, call me on +47 912 34 567 or ola.nordmann@example.com about ORD-123456"
)


async def deliver_named(ui: UI, thread: str, text: str, name: str = "Ola Nordmann") -> int:
    accepted = await ui.channel.context.accept(
        Inbound(
            account="fake-bot",
            external_id=f"{thread}-{text[:12]}",
            thread_key=thread,
            sender_id="4791234567",
            sender_name=name,
            text=text,
        )
    )
    return accepted.conversation_id


async def test_personal_data_is_masked_until_revealed_with_a_reason(ui: UI) -> None:
    agent = await ui.add_user("agent@example.com", "agent")
    conversation = await deliver_named(ui, "t1", MESSAGE)
    await ui.channel.wait_sent(1)
    await ui.gw.wait_idle()
    client = await ui.sign_in(agent)
    _status, inbox = await page(client, "/inbox")
    assert "O\u2022\u2022 N\u2022\u2022\u2022\u2022\u2022\u2022\u2022" in inbox
    assert "\u2022\u2022\u202267" in inbox
    path = f"/conversations/{conversation}"
    status, html = await page(client, path)
    assert status == 200
    for secret in ("Nordmann", "912 34 567", "ola.nordmann", "ORD-123456", "4791234567"):
        assert secret not in inbox and secret not in html, secret
    assert "&lt;PHONE_1&gt;" in html and "&lt;EMAIL_1&gt;" in html and "&lt;ORDER_REF_1&gt;" in html

    refused = await post(client, f"{path}/reveal", {"reason": " "}, from_page=path)
    assert refused.status_code == 400
    assert await ui.audit("conversation.reveal") == []
    done = await post(
        client, f"{path}/reveal", {"reason": "customer asked for a call back"}, from_page=path
    )
    assert done.status_code == 303
    _status, html = await page(client, path)
    assert "ola.nordmann@example.com" in html and "ORD-123456" in html and 'id="revealed"' in html
    [entry] = await ui.audit("conversation.reveal")
    assert (
        entry.actor == "admin:agent@example.com" and entry.target == f"conversation:{conversation}"
    )
    assert entry.detail and entry.detail["reason"] == "customer asked for a call back"
    # A reveal belongs to the session that asked: another sign-in still sees masks.
    other = await ui.sign_in(agent, steps_ahead=1)
    _status, html = await page(other, path)
    assert "ola.nordmann@example.com" not in html


async def test_take_over_reply_hand_back_assign_and_close(ui: UI) -> None:
    agent = await ui.add_user("agent@example.com", "agent")
    owner = await ui.add_user("owner@example.com", "owner")
    await ui.channel.deliver("t1", "u1", "where is my parcel?")
    await ui.channel.wait_sent(1)
    [[conversation]] = await ui.sql("SELECT id FROM conversations")
    path = f"/conversations/{conversation}"
    client = await ui.sign_in(agent)

    assert (
        await post(client, f"{path}/status", {"action": "takeover"}, from_page=path)
    ).status_code == 303
    assert await ui.sql("SELECT status, assignee_user_id FROM conversations") == [
        ("handoff", agent.id)
    ]
    await ui.channel.deliver("t1", "u1", "hello?")
    await ui.gw.wait_idle()
    assert len(ui.channel.sent) == 1  # the AI stays silent while a person has it

    _status, html = await page(client, path)
    key = html.split('name="key" value="')[1].split('"')[0]
    form = {"text": "Your parcel left our warehouse today.", "key": key, "csrf": csrf_of(html)}
    assert (await client.post(f"{path}/reply", form=form)).status_code == 303
    assert (await client.post(f"{path}/reply", form=form)).status_code == 303  # a double submit
    sent = await ui.channel.wait_sent(2)
    await ui.gw.wait_idle()
    assert [o.text for o in ui.channel.sent] == [
        sent[0].text,
        "Your parcel left our warehouse today.",
    ]
    assert sent[1].author == "human"
    assert await ui.sql("SELECT author FROM messages WHERE direction = 'out' ORDER BY id") == [
        ("ai",),
        ("human",),
    ]

    assert (
        await post(client, f"{path}/assign", {"assignee": str(owner.id)}, from_page=path)
    ).status_code == 303
    assert await ui.sql("SELECT assignee_user_id FROM conversations") == [(owner.id,)]
    assert (
        await post(client, f"{path}/status", {"action": "release"}, from_page=path)
    ).status_code == 303
    await ui.channel.deliver("t1", "u1", "thanks, one more question")
    await ui.channel.wait_sent(3)
    assert (
        await post(client, f"{path}/status", {"action": "close"}, from_page=path)
    ).status_code == 303
    assert await ui.sql("SELECT status FROM conversations") == [("closed",)]

    actions = [e.action for e in await ui.audit("conversation.")]
    assert actions == [
        "conversation.takeover",
        "conversation.reply",  # once: the double submit queued nothing, so audited nothing
        "conversation.assign",
        "conversation.release",
        "conversation.close",
    ]
    events = await ui.sql("SELECT kind, actor FROM conversation_events ORDER BY id")
    assert events == [
        ("handoff", "admin:agent@example.com"),
        ("human_reply", "admin:agent@example.com"),
        ("assign", "admin:agent@example.com"),
        ("release", "admin:agent@example.com"),
        ("close", "admin:agent@example.com"),
    ]
    _status, listing = await page(client, "/inbox?status=closed")
    assert f'data-conversation="{conversation}"' in listing
    _status, listing = await page(client, "/inbox?status=open")
    assert f'data-conversation="{conversation}"' not in listing


async def test_bad_input_gets_a_reason_not_a_500(ui: UI) -> None:
    agent = await ui.add_user("agent@example.com", "agent")
    await ui.channel.deliver("t1", "u1", "hi")
    [[conversation]] = await ui.sql("SELECT id FROM conversations")
    client = await ui.sign_in(agent)
    path = f"/conversations/{conversation}"
    cases = [
        (f"{path}/status", {"action": "explode"}, 400),
        (f"{path}/reply", {"text": "", "key": "k" * 20}, 400),
        (f"{path}/reply", {"text": "hello", "key": "short"}, 400),
        (f"{path}/reply", {"text": "x" * 5000, "key": "k" * 20}, 400),
        (f"{path}/assign", {"assignee": "someone"}, 400),
        (f"{path}/assign", {"assignee": "999"}, 400),
        ("/conversations/999/status", {"action": "close"}, 404),
        ("/conversations/999/reply", {"text": "hello", "key": "k" * 20}, 404),
    ]
    for target, form, expected in cases:
        response = await post(client, target, form, from_page=path)
        assert response.status_code == expected, (target, form)
    assert (await client.get("/conversations/999")).status_code == 404
    assert (await client.get("/conversations/abc")).status_code == 404


async def test_attachments_download_only_once_revealed_and_audited(ui: UI) -> None:
    agent = await ui.add_user("agent@example.com", "agent")
    data = b"%PDF-1.4 invoice 2041"
    await ui.channel.deliver(
        "t1",
        "u1",
        "my invoice",
        attachments=(Attachment("document", "application/pdf", "invoice 2041.pdf", data),),
    )
    [[conversation, attachment]] = await ui.sql("SELECT conversation_id, id FROM attachments")
    client = await ui.sign_in(agent)
    path = f"/conversations/{conversation}"
    url = f"{path}/attachments/{attachment}"
    _status, html = await page(client, path)
    assert url not in html and "invoice 2041" not in html
    assert (await client.get(url)).status_code == 403
    await post(client, f"{path}/reveal", {"reason": "checking the invoice"}, from_page=path)
    _status, html = await page(client, path)
    assert url in html
    response = await client.get(url)
    assert response.status_code == 200 and await response.get_data() == data
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == 'attachment; filename="invoice_2041.pdf"'
    [entry] = await ui.audit("attachment.download")
    assert (
        entry.target == f"attachment:{attachment}"
        and entry.detail
        and entry.detail["bytes"] == len(data)
    )
    assert (
        await client.get(f"/conversations/{conversation + 1}/attachments/{attachment}")
    ).status_code == 404


async def test_suggested_replies_are_offered_and_sent(ui: UI) -> None:
    agent = await ui.add_user("agent@example.com", "agent")
    await ui.channel.deliver("t1", "u1", "I want a refund")
    await ui.channel.wait_sent(1)
    suggestions = ["Sorry to hear that. Could you share your order number?", "Refunds take 3 days."]
    await ui.gw.running.store.write(
        "suggest",
        lambda db: db.conn.execute(
            "UPDATE messages SET suggestions = ? WHERE direction = 'in'", (json.dumps(suggestions),)
        ),
    )
    [[conversation]] = await ui.sql("SELECT id FROM conversations")
    client = await ui.sign_in(agent)
    path = f"/conversations/{conversation}"
    _status, html = await page(client, path)
    assert html.count('class="suggestion"') == 2 and "Refunds take 3 days." in html
    form_html = html.split('class="suggestions"')[1]
    key = form_html.split('name="key" value="')[1].split('"')[0]
    response = await client.post(
        f"{path}/reply", form={"text": suggestions[1], "key": key, "csrf": csrf_of(html)}
    )
    assert response.status_code == 303
    sent = await ui.channel.wait_sent(2)
    assert sent[-1].text == "Refunds take 3 days."


async def test_live_stream_reports_new_messages_and_status_changes(ui: UI) -> None:
    agent = await ui.add_user("agent@example.com", "agent")
    client = await ui.sign_in(agent)
    seen = bytearray()
    earlier = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat(timespec="seconds")
    await ui.gw.running.store.write(
        "age", lambda db: db.conn.execute("UPDATE admin_sessions SET last_seen_at = ?", (earlier,))
    )

    async def read_until(connection: Any, marker: bytes) -> None:
        while marker not in seen:
            seen.extend(await connection.receive())

    with trio.fail_after(10):
        async with client.request("/live") as connection:
            await connection.send_complete()
            await read_until(connection, b"event: ready")
            # Watching is not activity: opening the stream did not move the idle clock.
            assert await ui.sql("SELECT last_seen_at FROM admin_sessions") == [(earlier,)]
            await ui.channel.deliver("t1", "u1", "anyone there?")
            await read_until(connection, b"event: change")
            [[conversation]] = await ui.sql("SELECT id FROM conversations")
            await ui.gw.wait_idle()
            seen.clear()
            await post(client, f"/conversations/{conversation}/status", {"action": "takeover"})
            await read_until(connection, b"event: change")
            # Signing out (in another tab) ends the stream at once.
            await post(client, "/logout", {})
            await read_until(connection, b"event: signout")


async def test_live_stream_needs_a_session(ui: UI) -> None:
    response = await ui.client().get("/live")
    assert response.status_code == 401


async def test_inbox_pages_by_last_activity(ui: UI) -> None:
    agent = await ui.add_user("agent@example.com", "agent")
    for n in range(53):
        await ui.channel.deliver(f"t{n}", f"u{n}", f"question {n}")
    await ui.channel.wait_sent(53)
    await ui.gw.wait_idle()
    client = await ui.sign_in(agent)
    _status, first = await page(client, "/inbox?status=open")
    older = first.split('id="older"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    _status, second = await page(client, older)
    shown = [html.count("data-conversation=") for html in (first, second)]
    assert shown == [50, 3] and 'id="older"' not in second
    ids = {int(x.split('"')[0]) for x in (first + second).split('data-conversation="')[1:]}
    assert len(ids) == 53
