"""An admin-UI agent's knowledge files: upload, list, delete.

Files live in ``data_dir/knowledge/<agent>/`` (folders 0700, files 0600, written to a hidden
temporary name and renamed, so the indexer never reads half a file). The first upload sets
the agent's ``knowledge_dir`` to that folder through :func:`gateway.managed.save` (the reload
indexes it); later uploads and deletions re-index at once (gateway.agents.sync_knowledge).

Only .md/.markdown/.txt/.html/.htm files in UTF-8, at most :data:`MAX_FILE_BYTES` each and
:data:`MAX_FILES` per agent, with plain names (letters of any script, digits, space, ``. _ -
( )``; no path, no leading dot). Agents from the config file keep their own folder: their
knowledge is managed on disk.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import quart
import trio
from quart import Blueprint, request

from gateway import managed
from gateway.agents import sync_knowledge
from gateway.errors import ConfigError, GatewayError
from gateway.http.ui import security
from gateway.http.ui.security import require, state
from gateway.knowledge import SUFFIXES, KnowledgeError

MAX_FILE_BYTES = 1_000_000
"""Below the admin app's 1 MiB request limit (gateway.http.ui.app.MAX_FORM_BYTES)."""
MAX_FILES = 200
_FILE_RE = re.compile(r"^[\w][\w .()-]{0,119}$")


class KnowledgeRefused(Exception):
    """An upload or deletion that cannot be done; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class KnowledgeFile:
    name: str
    size: int
    modified: str


def folder_of(agent: str) -> Path:
    return state().services.config.data_dir / "knowledge" / agent


def safe_file_name(raw: str) -> str:
    """``raw`` (as a browser sends it) if it is a plain knowledge file name, else
    KnowledgeRefused saying what is allowed."""
    name = unicodedata.normalize("NFC", raw.replace("\\", "/").rsplit("/", 1)[-1].strip())
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIXES:
        raise KnowledgeRefused(
            f"{name[:80]!r} is not a knowledge file: upload .md, .markdown, .txt, .html or .htm"
        )
    if not _FILE_RE.match(name) or ".." in name:
        raise KnowledgeRefused(
            f"{name[:80]!r} is not a plain file name: rename it using letters, digits, spaces "
            "and . _ - ( ) only (at most 120 characters, not starting with a dot)"
        )
    return name


def list_files(folder: Path) -> list[KnowledgeFile]:
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in SUFFIXES:
            info = path.stat()
            when = dt.datetime.fromtimestamp(info.st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M")
            found.append(KnowledgeFile(path.name, info.st_size, when))
    return found


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask


def write_file(folder: Path, name: str, data: bytes) -> bool:
    """Write ``data`` as ``folder/name`` atomically (0600); True if it replaced a file."""
    _private_dir(folder.parent)
    _private_dir(folder)
    target = folder / name
    existed = target.exists()
    if not existed and len(list_files(folder)) >= MAX_FILES:
        raise KnowledgeRefused(f"this agent has {MAX_FILES} knowledge files: delete some first")
    temporary = folder / f".upload-{os.getpid()}-{name}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return existed


def check_content(name: str, data: bytes) -> None:
    if len(data) > MAX_FILE_BYTES:
        raise KnowledgeRefused(
            f"{name} is {len(data):,} bytes; the limit is {MAX_FILE_BYTES:,}: split it into "
            "smaller documents"
        )
    if not data.strip():
        raise KnowledgeRefused(f"{name} is empty")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KnowledgeRefused(
            f"{name} is not UTF-8 text (byte {exc.start}): save it as UTF-8 and upload it again"
        ) from None


async def page_extra(kind: str, agent: str) -> dict[str, Any]:
    """What the agent form shows about its knowledge (nothing for other kinds)."""
    if kind != "agents":
        return {}
    folder = folder_of(agent)
    files = await trio.to_thread.run_sync(list_files, folder)
    running = state().services.config.agents.get(agent)
    return {
        "knowledge": files,
        "knowledge_folder": str(folder),
        "knowledge_active": running is not None and running.knowledge_dir == folder,
        "knowledge_limit": MAX_FILE_BYTES,
        "knowledge_suffixes": ", ".join(sorted(SUFFIXES)),
    }


async def remove_folder(agent: str) -> None:
    folder = folder_of(agent)
    await trio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))


async def _apply(agent: str, folder: Path) -> None:
    """Index the folder: the first time by pointing the agent's table at it (save reloads)."""
    services = state().services
    running = services.config.agents.get(agent)
    if running is not None and running.knowledge_dir == folder:
        await sync_knowledge(services.config, services.store)
        return
    row = await managed.get(services, "agents", agent)
    if row is None:
        raise KnowledgeRefused(f"agent {agent} was removed meanwhile")
    table = {**row.table, "knowledge_dir": str(folder)}
    await managed.save(
        services,
        "agents",
        agent,
        table,
        {},
        actor=security.current().actor,
        expect_version=row.version,
    )


async def _refused(agent: str, problem: str, status: int = 400) -> quart.Response:
    return await security.error_page(
        f"{problem}. Go back to agent {agent} and try again.",
        status,
        "Knowledge file not changed",
    )


async def _managed_agent(agent: str) -> quart.Response | None:
    config = state().services.config
    if agent not in config.agents:
        return await security.error_page(f"There is no agent {agent[:60]!r}.", 404, "No such agent")
    if not managed.is_managed(config, "agents", agent):
        return await security.error_page(
            f"Agent {agent} is written in the config file: its knowledge is the folder its "
            "knowledge_dir names there; add files to it and reload.",
            409,
            "Defined in the config file",
        )
    return None


def register(bp: Blueprint) -> None:
    @bp.post("/agents/<name>/knowledge")
    @require("agents.edit")
    async def knowledge_upload(name: str) -> Any:
        if (refusal := await _managed_agent(name)) is not None:
            return refusal
        files = await request.files
        upload = files.get("file")
        if upload is None or not upload.filename:
            return await _refused(name, "No file was chosen")
        try:
            file_name = safe_file_name(upload.filename)
            data = upload.read(MAX_FILE_BYTES + 1)
            check_content(file_name, data)
            folder = folder_of(name)
            replaced = await trio.to_thread.run_sync(write_file, folder, file_name, data)
        except KnowledgeRefused as exc:
            return await _refused(name, str(exc))
        outcome, problem = "ok", None
        try:
            await _apply(name, folder)
        except (KnowledgeRefused, KnowledgeError, ConfigError, GatewayError) as exc:
            outcome, problem = "failed", str(exc)
        await security.audit_event(
            "agent.knowledge.add",
            target=f"agents:{name}",
            outcome=outcome,
            detail={"file": file_name, "bytes": len(data), "replaced": replaced},
        )
        if problem is not None:
            return await _refused(name, f"{file_name} was stored but not indexed: {problem}")
        return quart.redirect(quart.url_for("ui.agents_edit", name=name) + "#knowledge", 303)

    @bp.post("/agents/<name>/knowledge/remove")
    @require("agents.edit")
    async def knowledge_remove(name: str) -> Any:
        if (refusal := await _managed_agent(name)) is not None:
            return refusal
        form = await request.form
        wanted = str(form.get("file", ""))
        folder = folder_of(name)
        present = {f.name for f in await trio.to_thread.run_sync(list_files, folder)}
        if wanted not in present:  # only names listed from the folder are ever joined to it
            return await _refused(name, f"There is no knowledge file {wanted[:80]!r}", 404)
        await trio.to_thread.run_sync(lambda: (folder / wanted).unlink(missing_ok=True))
        outcome = "ok"
        try:
            await _apply(name, folder)
        except (KnowledgeRefused, KnowledgeError, GatewayError):
            outcome = "failed"
        await security.audit_event(
            "agent.knowledge.remove",
            target=f"agents:{name}",
            outcome=outcome,
            detail={"file": wanted},
        )
        return quart.redirect(quart.url_for("ui.agents_edit", name=name) + "#knowledge", 303)
