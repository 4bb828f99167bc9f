"""Agents from the admin UI: prompt, failover chain, residency and redaction from the form, and
knowledge files uploaded into data_dir/knowledge/<agent>/ and indexed."""

from __future__ import annotations

import io
import stat
from typing import Any

import pytest
from quart.datastructures import FileStorage

from gateway.http.ui.knowledge_files import MAX_FILE_BYTES
from gateway.knowledge import search_knowledge_txn
from gateway.plugin import Registry, load_registry
from gateway.privacy.residency import ResidencyPolicy
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider
from tests.ui.conftest import UI, csrf_of, page, post

PRICES = "# Prices\n\nThe premium plan costs 42 euros a month, billed yearly.\n"


@pytest.fixture
def registry() -> Registry:
    registry = load_registry()
    registry.add("channel", "fake", FakeChannel)
    registry.add("llm", "fake", FakeProvider)
    return registry


async def signed_in(ui: UI) -> Any:
    return await ui.sign_in(await ui.add_user("owner@example.com", "owner"))


async def upload(client: Any, agent: str, name: str, data: bytes) -> Any:
    _status, html = await page(client, f"/agents/{agent}/edit")
    return await client.post(
        f"/agents/{agent}/knowledge",
        form={"csrf": csrf_of(html)},
        files={"file": FileStorage(io.BytesIO(data), filename=name)},
    )


async def search(ui: UI, agent: str, text: str) -> list[str]:
    found = await ui.gw.running.store.read("test search", search_knowledge_txn, agent, text, 3)
    return [s.source for s in found]


async def test_an_agent_from_the_form(ui: UI) -> None:
    client = await signed_in(ui)
    response = await post(
        client,
        "/providers/new",
        {"name": "offline", "plugin": "faq", "region": "local"},
        from_page="/providers/new?plugin=faq",
    )
    assert response.status_code == 303, await response.get_data(as_text=True)
    form = {
        "name": "sales",
        "provider": "model",
        "failover": "offline",
        "system_prompt": "You sell the premium plan.\nNever promise discounts.",
        "residency": '[residency]\ncontact_details = ["local"]',
        "redact_patterns": "ORDER_REF = ORD-[0-9]{6}",
        "redact_names": "Kari Nordmann",
        "handoff_when_angry": "on",
        "history_turns": "8",
    }
    response = await post(client, "/agents/new", form, from_page="/agents/new")
    assert response.status_code == 303, await response.get_data(as_text=True)
    agent = ui.gw.running.services.config.agents["sales"]
    assert agent.provider == "model" and agent.failover == ["offline"]
    assert agent.system_prompt == "You sell the premium plan.\nNever promise discounts."
    assert agent.residency == ResidencyPolicy.model_validate({"contact_details": ["local"]})
    assert agent.redact_patterns == {"ORDER_REF": "ORD-[0-9]{6}"}
    assert agent.redact_names == ["Kari Nordmann"] and agent.handoff_when_angry
    assert agent.history_turns == 8 and agent.knowledge_dir is None
    assert "sales" in ui.gw.running.pipeline.agents  # swapped in live
    status, html = await page(client, "/agents/sales/edit")
    assert status == 200
    assert '<option value="offline" selected>1. offline</option>' in html  # failover, in order
    assert "contact_details = [\n    &#34;local&#34;,\n]" in html
    assert "ORDER_REF = ORD-[0-9]{6}" in html and 'id="knowledge"' in html
    _status, listing = await page(client, "/agents")
    assert 'id="edit-agent-sales"' in listing and 'id="edit-agent-default"' not in listing


async def test_knowledge_files_upload_index_and_delete(ui: UI) -> None:
    client = await signed_in(ui)
    response = await post(
        client, "/agents/new", {"name": "kb", "provider": "model"}, from_page="/agents/new"
    )
    assert response.status_code == 303
    response = await upload(client, "kb", "Цены (2025).md", PRICES.encode())
    assert response.status_code == 303, await response.get_data(as_text=True)
    assert response.location == "/agents/kb/edit#knowledge"
    folder = ui.gw.running.services.config.data_dir / "knowledge" / "kb"
    file = folder / "Цены (2025).md"
    assert file.read_text() == PRICES
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert ui.gw.running.services.config.agents["kb"].knowledge_dir == folder
    assert await search(ui, "kb", "how much is the premium plan") == ["Цены (2025).md"]
    # A second file is indexed at once, without a config change.
    response = await upload(client, "kb", "hours.txt", b"We are open on weekdays from nine.")
    assert response.status_code == 303
    assert await search(ui, "kb", "open weekdays") == ["hours.txt"]
    status, html = await page(client, "/agents/kb/edit")
    assert "Цены (2025).md" in html and "hours.txt" in html and "not in use yet" not in html
    # Refused: wrong type, hidden or odd names, not UTF-8, too big, nothing chosen.
    refusals = [
        ("notes.pdf", b"%PDF-1.7", "upload .md, .markdown, .txt, .html or .htm"),
        (".hidden.md", b"x", "is not a plain file name"),
        ("a<b>.md", b"x", "is not a plain file name"),
        ("latin1.txt", "Prix: 42 €".encode("latin-1", "replace") + b"\xe9", "not UTF-8"),
        ("big.md", b"x" * (MAX_FILE_BYTES + 1), "the limit is 1,000,000"),
        ("empty.md", b"  \n", "is empty"),
    ]
    for name, data, problem in refusals:
        response = await upload(client, "kb", name, data)
        assert response.status_code == 400, name
        assert problem in await response.get_data(as_text=True), name
    response = await upload(client, "kb", "huge.md", b"x" * (2 << 20))  # over the form limit
    assert response.status_code == 413
    assert "Nothing was changed" in await response.get_data(as_text=True)
    assert sorted(p.name for p in folder.iterdir()) == ["hours.txt", "Цены (2025).md"]
    # A path in the name is dropped: the file lands in the agent's folder, nowhere else.
    response = await upload(client, "kb", "../../outside.md", b"# Outside\n\nstill inside")
    assert response.status_code == 303 and (folder / "outside.md").exists()
    assert not (folder.parent.parent / "outside.md").exists()
    # Delete: only a listed name; the index forgets it.
    response = await post(
        client, "/agents/kb/knowledge/remove", {"file": "Цены (2025).md"}, from_page="/agents"
    )
    assert response.status_code == 303
    assert await search(ui, "kb", "premium plan") == []
    response = await post(
        client, "/agents/kb/knowledge/remove", {"file": "../kb/hours.txt"}, from_page="/agents"
    )
    assert response.status_code == 404 and (folder / "hours.txt").exists()
    actions = [(e.action, e.outcome, e.detail) for e in await ui.audit("agent.knowledge")]
    assert actions[0] == (
        "agent.knowledge.add",
        "ok",
        {"file": "Цены (2025).md", "bytes": len(PRICES.encode()), "replaced": False},
    )
    assert actions[-1] == ("agent.knowledge.remove", "ok", {"file": "Цены (2025).md"})
    # Removing the agent removes its folder.
    _status, html = await page(client, "/agents/kb/edit")
    version = html.split('name="version" value="')[1].split('"')[0]
    response = await post(client, "/agents/kb/remove", {"version": version}, from_page="/agents")
    assert response.status_code == 303, await response.get_data(as_text=True)
    assert not folder.exists() and "kb" not in ui.gw.running.services.config.agents


async def test_file_agents_keep_their_knowledge_on_disk(ui: UI) -> None:
    client = await signed_in(ui)
    response = await upload(client, "default", "a.md", b"# A\n\ntext")
    assert response.status_code == 409
    assert "knowledge_dir names there" in await response.get_data(as_text=True)
    response = await upload(client, "nobody", "a.md", b"# A\n\ntext")
    assert response.status_code == 404
    assert not (ui.gw.running.services.config.data_dir / "knowledge").exists()
