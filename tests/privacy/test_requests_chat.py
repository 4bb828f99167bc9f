"""End users' chat commands through the whole in-process daemon (real config loader, SQLCipher
store, pipeline, Telegram plugin against the fake Bot API): /mydata and /forgetme register a
request and answer what happens next; an erasure runs after an operator's verification, or at
once in "immediate" mode after its confirmation was sent; a platform retry of an erased message
creates nothing."""

from __future__ import annotations

import datetime as dt
import logging

from gateway.plugin import load_registry
from gateway.privacy import audit
from gateway.privacy import requests as reg
from gateway.privacy.dsr_daemon import create_request, remind, run_erasures
from gateway.privacy.erasure import execute_erasure_txn
from gateway.store.bodies import contact_messages
from gateway.testing.daemon import http_config, open_gateway, openai_agent_config, sql
from gateway.testing.fake_openai import open_fake_openai
from gateway.testing.fake_telegram import open_fake_telegram

TOKEN = "123456:DSR-test-token"
ENV = {"TELEGRAM_TOKEN": TOKEN, "OPENAI_API_KEY": "sk-dsr"}


def config(tg_base: str, llm_base: str, privacy: str = "") -> str:
    return (
        http_config(0, public_url=False)
        + f"""
[privacy]
timezone = "Europe/Moscow"
{privacy}
[channels.support_bot]
plugin = "telegram"
token = "env:TELEGRAM_TOKEN"
mode = "polling"
api_base = "{tg_base}"
poll_timeout = 5
"""
        + openai_agent_config(llm_base)
    )


async def requests_of(gw):
    return await gw.running.store.read(
        "requests", lambda db: reg.list_requests(db.conn, open_only=False)
    )


async def test_mydata_registers_an_access_request_and_says_what_happens(tmp_path):
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        async with open_gateway(
            config(tg.api_base, llm.base_url), load_registry(), tmp_path, environ=ENV
        ) as gw:
            tg.push_message(555, "/mydata", first_name="Ola")
            (reply,) = await tg.wait_sent(1)
            (request,) = await requests_of(gw)
            assert (request.kind, request.channel, request.verification, request.status) == (
                "access", "chat", "unverified", "received")  # fmt: skip
            assert request.identity_id is not None and request.source_ref.startswith("journal:")
            assert reply.chat_id == 555
            assert reply.text == (
                f"We have received your request #{request.id} for a copy of your data. To "
                "protect you, a person first checks that this chat is really yours; you will "
                f"get an answer by {request.next_due.isoformat()}."
            )
            tg.push_message(555, "/MyData@bot again")
            await tg.wait_sent(2)
            assert tg.sent_to(555)[1].text == (
                f"Your request #{request.id} is already being handled; the answer is due by "
                f"{request.next_due.isoformat()}."
            )
            assert len(await requests_of(gw)) == 1 and llm.requests == []
            entries = await gw.running.store.read(
                "audit", lambda db: list(audit.entries(db.conn, target=f"request:{request.id}"))
            )
            assert [(e.actor, e.action) for e in entries] == [
                (f"contact:{request.contact_id}", "privacy.request.created")
            ]
            # The deadline job finds nothing due yet.
            assert await remind(gw.running.services) == []


async def test_forgetme_waits_for_an_operator_then_a_retry_resurrects_nothing(tmp_path):
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        async with open_gateway(
            config(tg.api_base, llm.base_url), load_registry(), tmp_path, environ=ENV
        ) as gw:
            store = gw.running.store
            first = tg.push_message(777, "my phone is +7 900 123-45-67", first_name="Ivan")
            await tg.wait_sent(1)
            tg.push_message(777, "/forgetme")
            await tg.wait_sent(2)
            await gw.wait_idle()
            (request,) = await requests_of(gw)
            assert (request.kind, request.verification) == ("erasure", "unverified")
            assert tg.sent_to(777)[1].text.startswith(
                f"We have received your request #{request.id} to erase your data."
            )
            await run_erasures(gw.running.services)  # not verified: nothing runs
            assert await sql(gw, "SELECT erased_at FROM contacts") == [(None,)]
            # The operator checks it and runs it (what the admin UI or the CLI do).
            await store.write(
                "verify", reg.verify_request_txn, request.id, verified=True,
                method="phone call", actor="admin:op@example.com",
            )  # fmt: skip
            receipt = await store.write(
                "erase", execute_erasure_txn, store.sealer, request.id, actor="admin:op"
            )
            assert receipt.erased["messages"] == 4 and receipt.contact_id == request.contact_id
            journal = await sql(gw, "SELECT count(*) FROM journal")
            # Telegram delivers the first message again: acknowledged, nothing created.
            tg.redeliver(first)
            tg.push_message(777, "hello?", first_name="Ivan")
            await tg.wait_sent(3)
            await gw.wait_idle()
            assert await sql(gw, "SELECT count(*) FROM journal") == [(journal[0][0] + 1,)]
            contacts = await sql(gw, "SELECT id, display_name, erased_at IS NOT NULL FROM contacts")
            assert contacts == [(request.contact_id, None, 1), (request.contact_id + 1, "Ivan", 0)]
            texts = await store.read(
                "texts",
                lambda db: [
                    m.text
                    for (cid,) in db.conn.execute("SELECT id FROM contacts").fetchall()
                    for m in contact_messages(store.sealer, db.conn, cid)
                ],
            )
            assert texts == ["hello?", "echo: hello?"]
            assert gw.running.pipeline.counters["duplicates"] == 1


async def test_forgetme_immediate_erases_once_the_confirmation_was_sent(tmp_path):
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        text = config(tg.api_base, llm.base_url, 'chat_erasure = "immediate"')
        async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
            services = gw.running.services
            assert "data-subject erasures" in services.scheduler.jobs
            tg.push_message(888, "hi, I am Olga", first_name="Olga")
            await tg.wait_sent(1)
            tg.push_message(888, "/forgetme")
            await tg.wait_sent(2)
            (request,) = await requests_of(gw)
            assert (request.verification, request.status, request.verification_method) == (
                "verified", "scheduled", "platform identity")  # fmt: skip
            assert tg.sent_to(888)[1].text.startswith("Your data is being erased now")
            await gw.wait_idle()
            (receipt,) = await run_erasures(services)
            assert receipt.request_id == request.id and receipt.key_destroyed
            done = (await requests_of(gw))[0]
            assert done.status == "completed" and done.outcome["erased"]["messages"] == 4
            assert await sql(gw, "SELECT count(*) FROM messages") == [(0,)]
            assert await sql(gw, "SELECT count(*) FROM outbox") == [(0,)]
            assert await sql(gw, "SELECT count(*) FROM identities") == [(0,)]
            assert await run_erasures(services) == []  # done once


async def test_commands_are_configurable(tmp_path):
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        text = config(
            tg.api_base, llm.base_url, 'access_commands = ["/meusdados"]\nerasure_commands = []'
        )
        async with open_gateway(text, load_registry(), tmp_path, environ=ENV) as gw:
            tg.push_message(999, "/mydata")
            await tg.wait_sent(1)
            tg.push_message(999, "/meusdados")
            await tg.wait_sent(2)
            tg.push_message(999, "/forgetme")
            await tg.wait_sent(3)
            texts = [m.text for m in tg.sent_to(999)]
            assert texts[0] == "echo: /mydata" and texts[2] == "echo: /forgetme"
            assert texts[1].startswith("We have received your request #1 for a copy")
            assert [r.kind for r in await requests_of(gw)] == ["access"]


async def test_deadline_job_logs_and_audits_overdue_requests(tmp_path, caplog):
    async with open_fake_telegram(TOKEN) as tg, open_fake_openai() as llm:
        async with open_gateway(
            config(tg.api_base, llm.base_url), load_registry(), tmp_path, environ=ENV
        ) as gw:
            services = gw.running.services
            assert services.scheduler.jobs["data-subject request deadlines"].interval == 3600
            tg.push_message(321, "hello", first_name="Vera")
            await tg.wait_sent(1)
            (contact_id,) = (await sql(gw, "SELECT id FROM contacts"))[0]
            old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
            request = await create_request(
                services, kind="rectification", channel="api", actor="api:key-1",
                contact_id=contact_id, received_at=old,
            )  # fmt: skip
            assert request.received_on == reg.local_date(old, "Europe/Moscow")
            with caplog.at_level(logging.WARNING, logger="gateway.privacy.requests"):
                (reminded,) = await remind(services)
            assert reminded.id == request.id
            assert f"data-subject request #{request.id} (rectification, received)" in caplog.text
            assert "OVERDUE" in caplog.text
            assert await remind(services) == []  # once a day
            (entry,) = await gw.running.store.read(
                "audit",
                lambda db: list(audit.entries(db.conn, action_prefix="privacy.request.reminder")),
            )
            assert entry.detail["overdue"] is True and entry.actor == "system"
