"""Add, edit and remove channels, providers and agents from the admin UI (gateway.managed).

Each form is generated from the model the config loader validates the table with: the
plugin's ``Config`` for ``[channels.NAME]`` and ``[providers.NAME]``, ``AgentConfig`` for
``[agents.NAME]`` (gateway.http.ui.forms). A save is checked field by field here, then with
the whole config by :func:`gateway.managed.save`, which stores the table (its secrets in the
vault, never shown again), audits it and applies it live. The form carries the version it was
opened at: a save over someone else's newer one is refused with what changed.

Tables written in the config file are shown, not edited: they change in the file, followed
by ``systemctl reload sovereign-gateway``. Only owners and admins reach these pages
(``channels.edit``, ``providers.edit``, ``agents.edit``); every refusal is audited.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import quart
from pydantic import BaseModel
from quart import Blueprint, request
from werkzeug.sansio.response import Response as AnyResponse

from gateway import managed
from gateway.config import AgentConfig, GatewayConfig
from gateway.errors import ConfigError, GatewayError
from gateway.http.ui import forms, knowledge_files, security
from gateway.http.ui.forms import FieldError, FormField
from gateway.http.ui.security import require, state
from gateway.plugin import ChannelConfig, PluginInfo, ProviderConfig, Registry, load_registry

log = logging.getLogger("gateway.admin_ui")

EDIT = {"channels": "channels.edit", "providers": "providers.edit", "agents": "agents.edit"}
NOUN = {"channels": "channel", "providers": "provider", "agents": "agent"}
LIST_PAGE = {"channels": "ui.channels", "providers": "ui.agents", "agents": "ui.agents"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SKIP = {"channels": ("plugin",), "providers": ("plugin",), "agents": ("knowledge_dir",)}
"""Fields not in the form: ``plugin`` is chosen first; an agent's knowledge folder is the one
its uploads go to (knowledge_files)."""

AGENT_GROUPS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("Model and failover", ("provider", "failover", "cooldown", "max_attempts"), True),
    ("Prompt", ("system_prompt", "language", "disclosure"), True),
    ("Residency and redaction", ("residency", "redact_patterns", "redact_names"), True),
    (
        "Handoff to a person",
        (
            "handoff_phrases",
            "handoff_when_angry",
            "handoff_below_confidence",
            "categories",
            "handoff_categories",
            "handoff_text",
            "business_hours",
            "after_hours_text",
        ),
        False,
    ),
)


@dataclasses.dataclass(frozen=True)
class FormSpec:
    kind: str
    plugin: str | None
    model: type[BaseModel]
    fields: list[FormField]
    groups: list[tuple[str, list[FormField], bool]]
    """(legend, fields, shown open)"""
    intro: str


def registry() -> Registry:
    """The plugins the daemon loads its config with."""
    found = state().services.registry
    return found if found is not None else _installed()


@functools.cache
def _installed() -> Registry:
    # Services built without a registry (route tests): the installed plugins.
    return load_registry()


def names_of(config: GatewayConfig, kind: str) -> Mapping[str, Any]:
    tables: dict[str, Mapping[str, Any]] = {
        "channels": config.channels,
        "agents": config.agents,
        "providers": config.providers,
    }
    return tables[kind]


def _doc(docstring: str) -> str:
    """The first paragraph of a docstring, without reST markup or cross-references."""
    text = " ".join(docstring.strip().split("\n\n")[0].split())
    sentences = [
        s for s in re.split(r"(?<=\.) ", text) if ":class:" not in s and "docstring" not in s
    ]
    return " ".join(sentences).replace("``", "")


def plugin_doc(info: PluginInfo) -> str:
    """What the plugin says about itself: its Config's doc, unless that only names the table.
    Read from the source while the plugin is not imported, so the chooser does not load every
    plugin into the daemon."""
    docs = info.docstrings()
    if docs is None:
        return ""
    class_doc, config_doc = _doc(docs[0]), _doc(docs[1])
    return class_doc if not config_doc or config_doc.startswith("[") else config_doc


def spec_for(kind: str, plugin: str | None, config: GatewayConfig) -> FormSpec:
    """The form of a ``kind`` table served by ``plugin`` (None for agents). KeyError if the
    plugin is not installed or cannot be imported."""
    if kind == "agents":
        providers = sorted(config.providers)
        fields = forms.fields_of(
            AgentConfig,
            skip=SKIP[kind],
            choices={"provider": providers},
            ordered={"failover": providers},
        )
        by_name = {f.name: f for f in fields}
        groups = [
            (legend, [by_name[n] for n in names if n in by_name], opened)
            for legend, names, opened in AGENT_GROUPS
        ]
        grouped = {f.name for _legend, group, _open in groups for f in group}
        rest = [f for f in fields if f.name not in grouped]
        groups.insert(3, ("Replies, history and knowledge", rest, False))
        intro = "An agent answers the channels that name it, with its providers in order."
        return FormSpec(kind, None, AgentConfig, fields, groups, intro)
    table = registry().channels if kind == "channels" else registry().providers
    info = table[plugin or ""]
    try:
        model: type[BaseModel] = info.cls.Config
    except Exception as exc:  # a broken third-party plugin: say so rather than fail the page
        raise KeyError(plugin) from exc
    base = ChannelConfig if kind == "channels" else ProviderConfig
    choices = {"agent": sorted(config.agents)} if kind == "channels" else {}
    fields = forms.fields_of(model, skip=SKIP[kind], choices=choices)
    own = [f for f in fields if f.name not in base.model_fields]
    common = [f for f in fields if f.name in base.model_fields]
    if kind == "channels":
        top = [f for f in common if f.name in ("agent", "enabled")]
        rest = [f for f in common if f.name not in ("agent", "enabled")]
        groups = [
            ("Agent and state", top, True),
            (f"{plugin} settings", own, True),
            ("Settings every channel has (send rates, opt-out words, residency)", rest, False),
        ]
    else:
        groups = [(f"{plugin} settings", own, True), ("Residency and limits", common, True)]
    return FormSpec(kind, plugin, model, fields, groups, plugin_doc(info))


def stored_secrets(spec: FormSpec, table: Mapping[str, Any] | None) -> set[str]:
    return {f.name for f in spec.fields if f.widget == "secret" and f.name in (table or {})}


# -- pages -------------------------------------------------------------------------------------


async def render_form(
    spec: FormSpec,
    *,
    name: str | None,
    version: int | None,
    values: Mapping[str, str],
    errors: Mapping[str, FieldError] | None = None,
    stored: set[str] | None = None,
    conflict: str | None = None,
    new_name: str = "",
    status: int = 200,
    extra: Mapping[str, Any] | None = None,
) -> quart.Response:
    kind = spec.kind
    noun = NOUN[kind]
    if name:
        heading = f"Edit {noun} {name}"
        action = quart.url_for(f"ui.{kind}_edit", name=name)
    else:
        heading = f"Add {'an' if noun == 'agent' else 'a'} {noun}" + (
            f" ({spec.plugin})" if spec.plugin else ""
        )
        action = quart.url_for(f"ui.{kind}_new")
    remove_note = {
        "channels": "The channel stops; its conversations stay.",
        "providers": "Agents that use it must be changed first.",
        "agents": "Its knowledge files are deleted too; channels that use it must be changed "
        "first.",
    }[kind]
    body = await quart.render_template(
        "ui/agent_form.html" if kind == "agents" else "ui/config_form.html",
        kind=kind,
        noun=noun,
        heading=heading,
        intro=spec.intro,
        plugin=spec.plugin,
        name=name,
        new_name=new_name,
        version=version,
        groups=spec.groups,
        values=values,
        errors=dict(errors or {}),
        stored=stored or set(),
        conflict=conflict,
        secrets_cleared=any(f.widget == "secret" for f in spec.fields),
        action=action,
        back=quart.url_for(LIST_PAGE[kind]),
        back_label="Channels" if kind == "channels" else "Agents and providers",
        reopen=quart.url_for(f"ui.{kind}_edit", name=name) if name else action,
        removable=True,
        remove_action=quart.url_for(f"ui.{kind}_remove", name=name) if name else "",
        remove_note=remove_note,
        **(extra or {}),
    )
    return quart.Response(body, status=status)


async def in_file_page(kind: str, name: str) -> quart.Response:
    config = state().services.config
    return await security.error_page(
        f"{kind}.{name} is written in the config file {config.source}, so it is edited there: "
        "change the file, then run `systemctl reload sovereign-gateway` (or send SIGHUP). "
        "Only what is added here can be changed here.",
        409,
        "Defined in the config file",
    )


async def not_found(kind: str, name: str) -> quart.Response:
    return await security.error_page(
        f"There is no {NOUN[kind]} {name[:60]!r}.", 404, f"No such {NOUN[kind]}"
    )


async def choose_plugin(kind: str) -> quart.Response:
    table = registry().channels if kind == "channels" else registry().providers
    # Described from the source, not imported: a plugin is loaded once a form is opened for it.
    plugins = sorted((name, plugin_doc(table.unloaded(name))) for name in table.names())
    return quart.Response(
        await quart.render_template(
            "ui/config_choose.html",
            kind=kind,
            noun=NOUN[kind],
            plugins=plugins,
            back=quart.url_for(LIST_PAGE[kind]),
        )
    )


def _version(form: Any) -> int | None:
    text = str(form.get("version", "")).strip()
    return int(text) if text.isdigit() else None


def config_error(exc: ConfigError, kind: str, name: str, spec: FormSpec) -> dict[str, FieldError]:
    """A refusal of the whole config, by field where it names one of this form's."""
    top = (exc.key or "").split(".")[0]
    fix = exc.fix or ""
    if exc.table == f"{kind}.{name}" and top in {f.name for f in spec.fields}:
        return {top: FieldError(exc.problem, fix)}
    where = f"[{exc.table}] " if exc.table else ""
    where += f"{exc.key}: " if exc.key else ""
    return {forms.FORM_ERROR: FieldError(where + exc.problem, fix)}


async def show_new(kind: str) -> quart.Response:
    config = state().services.config
    plugin = request.args.get("plugin") if kind != "agents" else None
    try:
        spec = spec_for(kind, plugin, config)
    except KeyError:
        return await choose_plugin(kind)
    return await render_form(
        spec, name=None, version=None, values=forms.form_values(spec.fields, None)
    )


async def show_edit(kind: str, name: str) -> quart.Response:
    services = state().services
    if name not in names_of(services.config, kind):
        return await not_found(kind, name)
    if not managed.is_managed(services.config, kind, name):
        return await in_file_page(kind, name)
    row = await managed.get(services, kind, name)
    if row is None:
        return await not_found(kind, name)
    try:
        spec = spec_for(kind, row.table.get("plugin"), services.config)
    except KeyError:
        return await security.error_page(
            f"{kind}.{name} names plugin {row.table.get('plugin')!r}, which is not installed "
            "(or failed to load: `gateway plugins` says why). Install it, or remove the table.",
            409,
            "Plugin missing",
        )
    return await render_form(
        spec,
        name=name,
        version=row.version,
        values=forms.form_values(spec.fields, row.table),
        stored=stored_secrets(spec, row.table),
        extra=await knowledge_files.page_extra(kind, name),
    )


async def submit(kind: str, name: str | None) -> AnyResponse:
    """Create (``name`` None: it comes from the form) or change a table."""
    services = state().services
    config = services.config
    form = await request.form
    version = _version(form)
    new = name is None
    row = None
    if name is None:
        name = str(form.get("name", "")).strip()
        plugin = None if kind == "agents" else (str(form.get("plugin", "")) or None)
    else:
        if name not in names_of(config, kind):
            return await not_found(kind, name)
        if not managed.is_managed(config, kind, name):
            return await in_file_page(kind, name)
        row = await managed.get(services, kind, name)
        plugin = row.table.get("plugin") if row is not None else form.get("plugin")
    try:
        spec = spec_for(kind, plugin, config)
    except KeyError:
        return await security.error_page(
            f"There is no {NOUN[kind]} plugin {str(plugin)[:40]!r} installed.", 400, "No plugin"
        )
    stored = stored_secrets(spec, row.table if row is not None else None)
    parsed = forms.parse_form(spec.fields, form, stored_secrets=stored)
    if new:
        if not NAME_RE.match(name):
            parsed.errors["name"] = FieldError(
                "not a valid name" if name else "required",
                "use 1-64 letters, digits, _ and -, starting with a letter or digit "
                "(e.g. support_bot)",
            )
        elif name in names_of(config, kind):
            where = "made here" if managed.is_managed(config, kind, name) else "in the config file"
            parsed.errors["name"] = FieldError(
                f"a {NOUN[kind]} named {name} exists already ({where})", "choose another name"
            )
    # Also after a conversion error: every problem at once (a field already refused is skipped).
    forms.check_model(
        spec.model,
        spec.fields,
        parsed,
        fixed={"plugin": plugin} if plugin else None,
        stored_secrets=stored,
    )
    table = ({"plugin": plugin} if plugin else {}) | parsed.table
    if row is not None:  # keys the form does not show (an agent's knowledge folder) stay
        shown = {f.name for f in spec.fields}
        for key, value in row.table.items():
            if key not in shown and key not in table:
                table[key] = value

    async def again(errors: Mapping[str, FieldError], status: int, **more: Any) -> quart.Response:
        return await render_form(
            spec,
            name=None if new else name,
            version=version,
            values=parsed.values,
            errors=errors,
            stored=stored,
            new_name=name if new else "",
            status=status,
            extra=None if new else await knowledge_files.page_extra(kind, name),
            **more,
        )

    if parsed.errors:
        return await again(parsed.errors, 400)
    actor = security.current().actor
    try:
        changes = await managed.save(
            services,
            kind,
            name,
            {k: v for k, v in table.items() if k not in parsed.secrets},
            parsed.secrets,
            actor=actor,
            expect_version=None if new else version,
            clear=parsed.clear,
        )
    except managed.Conflict as exc:
        return await again({}, 409, conflict=str(exc))
    except ConfigError as exc:
        return await again(config_error(exc, kind, name, spec), 400)
    except GatewayError as exc:
        problem = FieldError(f"the gateway could not apply it, so nothing changed: {exc}", "")
        return await again({forms.FORM_ERROR: problem}, 400)
    log.info("admin UI: %s saved %s.%s (%s)", actor, kind, name, changes.describe())
    target = quart.url_for(LIST_PAGE[kind], saved=f"{NOUN[kind]} {name}")
    return quart.redirect(f"{target}#{NOUN[kind]}-{name}", 303)


async def remove(kind: str, name: str) -> AnyResponse:
    services = state().services
    config = services.config
    if name not in names_of(config, kind):
        return await not_found(kind, name)
    if not managed.is_managed(config, kind, name):
        return await in_file_page(kind, name)
    form = await request.form
    actor = security.current().actor
    try:
        changes = await managed.remove(
            services, kind, name, actor=actor, expect_version=_version(form)
        )
    except managed.Conflict as exc:
        return await security.error_page(
            f"Not removed: {exc}.", 409, f"{NOUN[kind].capitalize()} changed"
        )
    except ConfigError as exc:
        fix = f" Fix: {exc.fix}." if exc.fix else ""
        where = f"[{exc.table}] {exc.key or ''}".strip()
        return await security.error_page(
            f"Not removed: without it the config is not valid ({where}: {exc.problem}).{fix}",
            400,
            "Still in use",
        )
    except GatewayError as exc:
        return await security.error_page(f"Not removed: {exc}", 400, "Not removed")
    if kind == "agents":
        await knowledge_files.remove_folder(name)
    log.info("admin UI: %s removed %s.%s (%s)", actor, kind, name, changes.describe())
    return quart.redirect(quart.url_for(LIST_PAGE[kind], removed=f"{NOUN[kind]} {name}"), 303)


# -- routes ------------------------------------------------------------------------------------


def register(bp: Blueprint) -> None:
    def add(rule: str, endpoint: str, view: Callable[..., Awaitable[Any]], method: str) -> None:
        bp.add_url_rule(rule, endpoint, view, methods=[method])

    for kind in managed.KINDS:
        gate = require(EDIT[kind])
        add(f"/{kind}/new", f"{kind}_new", gate(functools.partial(show_new, kind)), "GET")
        add(
            f"/{kind}/new",
            f"{kind}_create",
            gate(functools.partial(submit, kind, None)),
            "POST",
        )
        add(
            f"/{kind}/<name>/edit",
            f"{kind}_edit",
            gate(functools.partial(show_edit, kind)),
            "GET",
        )
        add(
            f"/{kind}/<name>/edit",
            f"{kind}_save",
            gate(functools.partial(submit, kind)),
            "POST",
        )
        add(
            f"/{kind}/<name>/remove",
            f"{kind}_remove",
            gate(functools.partial(remove, kind)),
            "POST",
        )
    knowledge_files.register(bp)
