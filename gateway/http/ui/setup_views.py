"""Channels (status, webhook URL, test connection, register webhook), agents and providers, and
``/audit`` (a redirect to the privacy desk's audit viewer). Values come from the running config;
secrets show only where they are kept (``env:NAME``), never their value. Adding and editing
them is gateway.http.ui.config_views."""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import urlencode

import quart
import sqlite_utils
import trio
from pydantic import BaseModel
from quart import Blueprint, request
from quart_trio import QuartTrio

from gateway import doctor, managed
from gateway.errors import GatewayError
from gateway.http.ui import security
from gateway.http.ui.security import require, state
from gateway.secretref import Secret


def shown_value(value: Any) -> str:
    if isinstance(value, Secret):
        return f"(secret: {value.reference})"
    if isinstance(value, BaseModel):
        return ", ".join(f"{k} = {shown_value(v)}" for k, v in value if v not in (None, [], {}))
    if isinstance(value, dict):
        return ", ".join(f"{k} = {shown_value(v)}" for k, v in value.items()) or "{}"
    if isinstance(value, list | tuple):
        return ", ".join(shown_value(v) for v in value) or "[]"
    return "" if value is None else str(value)


def settings_of(model: BaseModel, skip: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(key, value, description) of every field of a config model, secrets as references."""
    fields = type(model).model_fields
    return [
        (name, shown_value(getattr(model, name)), info.description or "")
        for name, info in fields.items()
        if name not in skip
    ]


def public_paths(plugin: Any) -> list[str]:
    """The URL rules a running channel mounts on the public bind (its thin webhook routes and
    its own blueprint): its webhooks (``/webhooks/...``) when it has any, else its pages (the
    web chat)."""
    webhooks = getattr(plugin, "webhooks", None)
    found = {route.path for route in webhooks()} if webhooks is not None else set()
    blueprint = plugin.blueprint()
    if blueprint is not None:
        probe = QuartTrio("gateway.probe")
        probe.register_blueprint(blueprint)
        found.update(
            rule.rule
            for rule in probe.url_map.iter_rules()
            if rule.endpoint.startswith(f"{blueprint.name}.")
        )
    paths = sorted(found)
    hooks = [p for p in paths if p.startswith("/webhooks/")]
    return hooks or paths[:1]


@dataclasses.dataclass(frozen=True)
class ChannelStatus:
    name: str
    plugin: str
    enabled: bool
    agent: str
    running: bool
    restarts: int | None
    urls: list[str]
    failed_sends: int
    last_error: str | None
    last_error_at: str | None
    settings: list[tuple[str, str, str]]
    managed: bool
    """Made in the admin UI (editable here), not written in the config file."""
    can_register: bool
    """The running plugin offers ``register_webhook``, the channel is in webhook mode and
    ``[http] public_url`` is set."""


def send_failures_txn(
    db: sqlite_utils.Database, channel: str
) -> tuple[int, str | None, str | None]:
    conn = db.conn
    failed = conn.execute(
        "SELECT count(*) FROM outbox WHERE channel = ? AND state IN ('failed', 'unknown')",
        (channel,),
    ).fetchone()[0]
    last = conn.execute(
        "SELECT last_error, updated_at FROM outbox WHERE channel = ? AND last_error IS NOT NULL "
        "ORDER BY id DESC LIMIT 1",
        (channel,),
    ).fetchone()
    return int(failed), (last[0] if last else None), (last[1] if last else None)


async def channel_statuses() -> list[ChannelStatus]:
    services = state().services
    config = services.config
    restarts: dict[str, int] | None = getattr(services, "restarts", None)
    statuses = []
    for name, entry in config.channels.items():
        slot = services.pipeline.channels.get(name)
        plugin = slot.plugin if slot is not None else None
        polling = getattr(entry.config, "mode", None) == "polling"
        paths = public_paths(plugin) if plugin is not None and not polling else []
        base = config.http.public_url or "(set [http] public_url)"
        can_register = (
            hasattr(plugin, "register_webhook")
            and getattr(entry.config, "mode", None) == "webhook"
            and bool(config.http.public_url)
            and bool(paths)
        )
        failed, error, at = await services.store.read("channel failures", send_failures_txn, name)
        statuses.append(
            ChannelStatus(
                name,
                entry.plugin.name,
                entry.config.enabled,
                entry.config.agent,
                plugin is not None,
                restarts.get(f"channel {name}", 0) if restarts is not None else None,
                [base + path for path in paths],
                failed,
                error,
                at,
                settings_of(entry.config, skip=("plugin",)),
                managed.is_managed(config, "channels", name),
                can_register,
            )
        )
    return statuses


_DONE = re.compile(r"^(channel|agent|provider) [A-Za-z0-9_-]{1,64}$")


def done_notice() -> tuple[str, str] | None:
    """("saved" | "removed", "channel NAME") after a form of config_views redirected here."""
    for key in ("saved", "removed"):
        value = request.args.get(key, "")
        if _DONE.match(value):
            return key, value
    return None


async def register_webhook(name: str) -> tuple[bool, str]:
    """Have the running channel register its webhook URL with the platform (audited)."""
    services = state().services
    slot = services.pipeline.channels.get(name)
    plugin = slot.plugin if slot is not None else None
    status = next((c for c in await channel_statuses() if c.name == name), None)
    url = None
    if plugin is None or status is None or not status.can_register:
        ok, text = (
            False,
            (
                "this channel cannot register a webhook here: it must be running, in webhook mode, "
                "with [http] public_url set, and its plugin must offer it"
            ),
        )
    else:
        url = status.urls[0]
        try:
            with trio.fail_after(60):
                result: str = await plugin.register_webhook(url)  # type: ignore[attr-defined]
            ok, text = True, result
        except (GatewayError, trio.TooSlowError) as exc:
            ok = False
            text = str(exc) or "the platform did not answer within 60 seconds; try again"
    await security.audit_event(
        "channel.register_webhook",
        target=f"channel:{name}",
        outcome="ok" if ok else "failed",
        detail={"url": url, "result": text[:300]},
    )
    return ok, text


def register(bp: Blueprint) -> None:
    @bp.get("/channels")
    @require("channels.view")
    async def channels() -> Any:
        return await quart.render_template(
            "ui/channels.html", channels=await channel_statuses(), checked=None, done=done_notice()
        )

    @bp.post("/channels/<name>/check")
    @require("channels.test")
    async def check_channel(name: str) -> Any:
        services = state().services
        if name not in services.config.channels:
            return await security.error_page(
                f"There is no channel {name[:60]!r} in the running config.", 404, "No such channel"
            )
        result = await doctor.check_channel(services.config, name, services.http)
        await security.audit_event(
            "channel.check",
            target=f"channel:{name}",
            outcome="ok" if result.status == "OK" else "failed",
            detail={"status": result.status},
        )
        return await quart.render_template(
            "ui/channels.html", channels=await channel_statuses(), checked=(name, result)
        )

    @bp.post("/channels/<name>/register-webhook")
    @require("channels.edit")
    async def register_channel_webhook(name: str) -> Any:
        if name not in state().services.config.channels:
            return await security.error_page(
                f"There is no channel {name[:60]!r} in the running config.", 404, "No such channel"
            )
        ok, text = await register_webhook(name)
        return await quart.render_template(
            "ui/channels.html",
            channels=await channel_statuses(),
            checked=None,
            registered=(name, ok, text),
        )

    @bp.get("/agents")
    @require("agents.view")
    async def agents() -> Any:
        config = state().services.config
        return await quart.render_template(
            "ui/agents.html",
            agents=[
                (name, agent, [agent.provider, *agent.failover], settings_of(agent))
                for name, agent in config.agents.items()
            ],
            providers=[
                (name, entry.plugin.name, settings_of(entry.config, skip=("plugin",)))
                for name, entry in config.providers.items()
            ],
            local_only=config.local_only,
            editable={
                (kind, name)
                for kind in ("agents", "providers")
                for name in (config.agents if kind == "agents" else config.providers)
                if managed.is_managed(config, kind, name)
            },
            done=done_notice(),
        )

    @bp.get("/audit")
    @require("audit.view")
    async def audit_log() -> Any:
        # One audit viewer: the privacy desk's (filters, paging, verification, export).
        keep = {k: v for k, v in request.args.items() if k in ("actor", "action", "target")}
        target = quart.url_for("privacy.audit_log")
        return quart.redirect(target + ("?" + urlencode(keep) if keep else ""), 303)
