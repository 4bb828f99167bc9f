"""TOML config → typed, validated config, with errors that name file, table, key, line and fix.

tomli rather than stdlib tomllib: it reads TOML 1.1 too and is ~2.5x faster (ARCHITECTURE.md);
its TOMLDecodeError carries line and column. Secrets are resolved here, while validating, so a
missing one stops start-up with the key that names it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import importlib.resources
import logging
import os
import re
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import tomli
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.analysis import AnalysisConfig, Analyzer
from gateway.errors import ConfigError, GatewayError, PluginError
from gateway.plugin import ChannelConfig, PluginConfig, PluginInfo, ProviderConfig, Registry
from gateway.privacy.redaction import RedactionRule, Redactor
from gateway.privacy.residency import LOCAL, ResidencyPolicy

if TYPE_CHECKING:
    from gateway.managed import Overlay

EMBEDDED = "<embedded default>"
log = logging.getLogger("gateway.config")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_bind(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'{value!r} is not HOST:PORT (e.g. "127.0.0.1:8080")')
    return value


class GatewaySection(_Section):
    data_dir: Path = Field(Path("gateway-data"), description="Database, key file and attachments.")
    master_key: str | None = Field(
        None,
        description="Where the master key lives: credential:NAME, env:NAME, file:PATH or "
        "keyring:NAME. Default: the 0600 file master.key in data_dir.",
    )
    shutdown_grace: float = Field(10.0, ge=0, description="Seconds to drain work on SIGTERM.")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description='"text" lines for a terminal or journalctl, or "json": one object per line '
        "(ts, level, logger, msg, channel, conversation, correlation_id...) for log shippers.",
    )
    log_levels: dict[str, str] = Field(
        default_factory=dict,
        description="Levels per logger, over log_level: "
        '{ "gateway.channel.support_bot" = "DEBUG", "gateway.agent" = "WARNING" }.',
    )
    workers: int = Field(64, ge=1, description="Conversations answered at the same time.")
    outbound_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts the daemon may connect to besides those named by URLs in this config "
        '(e.g. ["proxy.internal", "*.example.com"]); any other name is refused.',
    )

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return value.upper()

    @field_validator("log_levels")
    @classmethod
    def _levels(cls, value: dict[str, str]) -> dict[str, str]:
        for name, level in value.items():
            if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise ValueError(f"{name!r}: must be one of DEBUG, INFO, WARNING, ERROR")
        return {name: level.upper() for name, level in value.items()}


class HttpSection(_Section):
    public_bind: str = Field("127.0.0.1:8080", description="Webhooks, web chat, developer API.")
    admin_bind: str = Field("127.0.0.1:8081", description="Admin UI and health checks.")
    public_url: str | None = Field(
        None, description="External base URL, used to register webhooks."
    )

    _binds = field_validator("public_bind", "admin_bind")(_check_bind)

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f'{value!r} is not an http(s) URL such as "https://gw.example.com"')
        return value.rstrip("/") if value else value


class BusinessHours(_Section):
    """When people are at work to take over conversations."""

    timezone: str = Field("UTC", description='IANA time zone, e.g. "Europe/Moscow".')
    days: list[str] = Field(
        ["mon", "tue", "wed", "thu", "fri"], description="Working days (mon..sun)."
    )
    open: str = Field("09:00", description="Opening time, HH:MM.")
    close: str = Field("18:00", description="Closing time, HH:MM.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f'unknown time zone {value!r} (use an IANA name like "Europe/Berlin")'
            ) from None
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: list[str]) -> list[str]:
        bad = [d for d in value if d.lower()[:3] not in WEEKDAYS]
        if bad:
            raise ValueError(f"unknown day(s) {bad}; use mon, tue, wed, thu, fri, sat, sun")
        return [d.lower()[:3] for d in value]

    @field_validator("open", "close")
    @classmethod
    def _time(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"{value!r} is not HH:MM (24-hour)")
        return value

    def is_open(self, moment: dt.datetime) -> bool:
        local = moment.astimezone(zoneinfo.ZoneInfo(self.timezone))
        return (
            WEEKDAYS[local.weekday()] in self.days
            and self.open <= local.strftime("%H:%M") < self.close
        )

    def describe(self) -> str:
        return f"{self.days[0]}-{self.days[-1]} {self.open}-{self.close} ({self.timezone})"


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def redactor_for(agent: AgentConfig) -> Redactor:
    """The agent's redactor: built-in detectors plus its own patterns and names."""
    rules = [
        RedactionRule(name=label.lower(), pattern=pattern, placeholder=label)
        for label, pattern in agent.redact_patterns.items()
    ]
    return Redactor(rules=rules, names=agent.redact_names)


def analysis_config(agent: AgentConfig) -> AnalysisConfig:
    """The analyzer's settings for an agent: its categories and its own handoff phrases."""
    return AnalysisConfig(categories=agent.categories, human_phrases=agent.phrases_by_language())


class AgentConfig(_Section):
    def phrases_by_language(self) -> dict[str, list[str]]:
        phrases = self.handoff_phrases
        return dict(phrases) if isinstance(phrases, dict) else {"any": list(phrases)}

    provider: str = Field(description="The [providers.NAME] table this agent asks first.")
    failover: list[str] = Field(
        default_factory=list,
        description="Providers to ask, in order, when the one before fails or is not allowed.",
    )
    cooldown: float = Field(
        60.0, ge=0, description="Seconds a provider that failed every attempt is skipped."
    )
    residency: ResidencyPolicy | None = Field(
        None, description="Which provider regions may receive which data categories."
    )
    system_prompt: str = Field("You are a helpful, concise support assistant.")
    history_turns: int = Field(
        20, ge=0, le=500, description="Earlier messages sent with each request."
    )
    history_tokens: int | None = Field(
        None,
        ge=1,
        description="Also cap the history at about this many tokens (4 characters a token); "
        "the newest message is always sent.",
    )
    max_attempts: int = Field(3, ge=1, le=10, description="Model calls before the fallback text.")
    retry_backoff: float = Field(1.0, ge=0, description="First retry delay in seconds; doubles.")
    retry_backoff_max: float = Field(20.0, ge=0, description="Longest retry delay in seconds.")
    fallback_text: str = Field(
        "Sorry, I can't answer right now. Please try again in a few minutes.",
        min_length=1,
        description="Sent when the model fails after every attempt: never silence.",
    )
    max_reply_chars: int = Field(4000, ge=1, description="Longer model replies are cut here.")
    knowledge_dir: Path | None = Field(
        None,
        description="A folder of .md/.txt/.html documents; the best matching snippets are added "
        "to the prompt. Relative to the config file.",
    )
    knowledge_snippets: int = Field(3, ge=1, le=20, description="Snippets added per message.")
    knowledge_max_chars: int = Field(
        2000, ge=100, description="Most characters of snippets added per message."
    )
    language: str | None = Field(
        None,
        description='Language of the replies ("en", "ru", ...), or "auto" for the user\'s own; '
        "unset: whatever the model does.",
    )
    disclosure: str | None = Field(
        None, description='A line added under every AI reply, e.g. "(automatic reply by AI)".'
    )
    handoff_phrases: list[str] | dict[str, list[str]] = Field(
        default_factory=list,
        description='More phrases that mean "I want a person" (built-in: en, ru, es, pt): a '
        'list, or per language { ru = ["дайте менеджера"], en = ["manager please"] }.',
    )
    handoff_when_angry: bool = Field(
        False, description="Hand over when a message is negative and urgent (the analysis)."
    )
    handoff_below_confidence: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Hand over when the analysis is less sure than this of what the user "
        "wants (0: never).",
    )
    redact_patterns: dict[str, str] = Field(
        default_factory=dict,
        description="More personal data to redact before providers that may not see it: "
        'PLACEHOLDER = "regex" (e.g. { ORDER_REF = "ORD-[0-9]{6}" }).',
    )
    redact_names: list[str] = Field(
        default_factory=list,
        description="Names to redact (names are only found from this list, never guessed).",
    )
    categories: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Ticket categories and their keywords, for the analysis of each message "
        '(e.g. { billing = ["invoice", "refund", "счёт"] }).',
    )
    handoff_categories: list[str] = Field(
        default_factory=list,
        description='Categories that go straight to a person (e.g. ["billing"]).',
    )
    handoff_text: str = Field(
        "I'm passing you to a person from our team. They will answer here shortly.",
        min_length=1,
        description="Sent once when the conversation goes to a person; then the AI is silent.",
    )
    business_hours: BusinessHours | None = Field(
        None, description="When people can take over; outside them after_hours_text is sent."
    )
    after_hours_text: str = Field(
        "I'm passing you to a person from our team. We are at work {hours}; we will answer then.",
        min_length=1,
        description="The handoff text outside business hours; {hours} is replaced by them.",
    )
    non_text_reply: str = Field(
        "Sorry, I can only read text messages for now. Could you describe it in words?",
        min_length=1,
        description="Sent for a message with no text (a photo or voice note without caption).",
    )


@dataclasses.dataclass(frozen=True)
class ChannelEntry:
    name: str
    plugin: PluginInfo
    config: ChannelConfig


@dataclasses.dataclass(frozen=True)
class ProviderEntry:
    name: str
    plugin: PluginInfo
    config: ProviderConfig


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    source: str
    """The file it came from, or "<embedded default>"."""
    config_dir: Path
    gateway: GatewaySection
    http: HttpSection
    channels: dict[str, ChannelEntry]
    agents: dict[str, AgentConfig]
    providers: dict[str, ProviderEntry]
    local_only: bool = False
    """Top-level ``local_only = true``: no request may leave for a non-local provider."""
    managed: frozenset[str] = frozenset()
    """"KIND.NAME" of the channels, agents and providers made in the admin UI (gateway.managed)
    rather than written in the config file."""
    sections: Mapping[str, BaseModel] = dataclasses.field(default_factory=dict)
    """Every top-level table of TOP_LEVEL (defaults filled in), by name. A feature reads its own
    with a typed accessor in its module, e.g. ``gateway.privacy.retention.retention_config``."""

    @property
    def data_dir(self) -> Path:
        return self.gateway.data_dir

    def outbound_hosts(self) -> set[str]:
        """Every host the config names by URL (defaults included), plus ``outbound_hosts``."""
        from gateway.outbound import hosts_in

        models: list[PluginConfig] = [c.config for c in self.channels.values()]
        models += [p.config for p in self.providers.values()]
        hosts = hosts_in(m.model_dump() for m in models)
        return hosts | set(self.gateway.outbound_hosts)


# Top-level tables: a feature adds its section model here (one entry; the model lives in the
# feature's module, every key with a default so existing files still load).
from gateway.devapi.config import ApiSection  # noqa: E402
from gateway.http.ui.settings import AdminUIConfig  # noqa: E402
from gateway.privacy.backup import BackupSection  # noqa: E402
from gateway.privacy.dsr_schema import PrivacyConfig  # noqa: E402
from gateway.privacy.processing import PrivacyRecordSection  # noqa: E402
from gateway.privacy.retention import RetentionSection  # noqa: E402

TOP_LEVEL: dict[str, type[BaseModel]] = {
    "gateway": GatewaySection,
    "http": HttpSection,
    "privacy": PrivacyConfig,
    "retention": RetentionSection,
    "backup": BackupSection,
    "privacy_record": PrivacyRecordSection,
    "admin_ui": AdminUIConfig,
    "api": ApiSection,
}
TABLES = ("channels", "agents", "providers")


def embedded_default_text() -> str:
    return importlib.resources.files("gateway").joinpath("defaults/default.toml").read_text()


def load_config(
    path: str | os.PathLike[str] | None,
    registry: Registry,
    *,
    environ: Mapping[str, str] | None = None,
    defer_secrets: bool = False,
    managed: Overlay | Literal["auto", "try", "skip"] = "auto",
) -> GatewayConfig:
    """Read, parse and validate a config file (or the embedded default when ``path`` is None),
    with the channels, agents and providers made in the admin UI merged in (gateway.managed).

    ``defer_secrets`` checks that secrets are references without resolving them (their value
    is then empty): for ``gateway init``, which writes a config before its secrets exist.

    ``managed`` says where the admin UI's tables come from: ``"auto"`` reads them from the
    database in data_dir (none if there is none yet; an unreadable one is an error), ``"try"``
    warns and goes on without them when the database cannot be opened (commands that must work
    without the master key: check-config, key rotation), ``"skip"`` ignores them, and an
    :class:`~gateway.managed.Overlay` is used as given (the admin UI checking a change).

    With the embedded default, ``OPENAI_API_KEY`` in the environment switches the default agent
    from the offline FAQ provider to OpenAI (``OPENAI_BASE_URL`` and ``OPENAI_MODEL`` override
    its endpoint and model), and ``GATEWAY_DATA_DIR``, ``GATEWAY_PUBLIC_BIND`` and
    ``GATEWAY_ADMIN_BIND`` move its data directory and binds.
    """
    env = dict(os.environ if environ is None else environ)
    if path is None:
        source, text, base = EMBEDDED, embedded_default_text(), Path.cwd()
    else:
        file = Path(path)
        source = str(file)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                "config file not found",
                file=source,
                fix="check the path, or run without --config for the embedded default",
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file: {exc}", file=source) from None
        base = file.resolve().parent
    try:
        raw = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        raise ConfigError(
            f"not valid TOML: {exc.msg} (column {exc.colno})",
            file=source,
            line=exc.lineno,
            fix="see https://toml.io for the syntax; strings need quotes",
        ) from None
    if path is None:
        # The embedded default can be moved without writing a config file.
        for var, section, key in (
            ("GATEWAY_DATA_DIR", "gateway", "data_dir"),
            ("GATEWAY_PUBLIC_BIND", "http", "public_bind"),
            ("GATEWAY_ADMIN_BIND", "http", "admin_bind"),
        ):
            if env.get(var):
                raw.setdefault(section, {})[key] = env[var]
    if path is None and env.get("OPENAI_API_KEY"):
        raw.setdefault("providers", {})["openai"] = {
            "plugin": "openai",
            "api_key": "env:OPENAI_API_KEY",
            "base_url": env.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
            "model": env.get("OPENAI_MODEL", "gpt-4o-mini"),
        }
        raw["agents"]["default"]["provider"] = "openai"
    return _Validator(source, text, base, registry, env, defer_secrets, managed).validate(raw)


class _Validator:
    def __init__(
        self,
        source: str,
        text: str,
        base: Path,
        registry: Registry,
        env: dict[str, str],
        defer_secrets: bool = False,
        managed: Overlay | Literal["auto", "try", "skip"] = "auto",
    ) -> None:
        self.defer_secrets = defer_secrets
        self.managed_source = managed
        self.overlay: Overlay | None = None
        self.managed: set[str] = set()
        """"KIND.NAME" of the tables that came from the database."""
        self.database = ""
        self.channel_names: set[str] = set()
        self.source = source
        self.lines = text.splitlines()
        self.base = base
        self.registry = registry
        self.env = env

    def error(
        self, problem: str, table: str | None, key: str | None = None, fix: str | None = None
    ) -> ConfigError:
        if table is not None and ".".join(table.split(".")[:2]) in self.managed:
            return ConfigError(problem, file=self.database, table=table, key=key, fix=fix)
        return ConfigError(
            problem,
            file=self.source,
            table=table,
            key=key,
            line=self.find_line(table, key),
            fix=fix,
        )

    def merge_managed(self, raw: dict[str, Any], gateway: GatewaySection) -> None:
        """Add the admin UI's tables (gateway.managed) to ``raw``; a name in both is an error."""
        from gateway.managed import Overlay, read_overlay, where

        self.database = where(gateway.data_dir)
        source = self.managed_source
        if isinstance(source, Overlay):
            overlay = source
        elif source == "skip":
            overlay = Overlay(readable=False)
        else:
            try:
                overlay = read_overlay(gateway.data_dir, gateway.master_key, self.env)
            except GatewayError as exc:
                if source == "auto":
                    raise ConfigError(
                        f"cannot read the channels, agents and providers made in the admin UI: "
                        f"{exc}",
                        file=self.database,
                    ) from None
                log.warning(
                    "the admin UI's channels, agents and providers are not checked: %s", exc
                )
                overlay = Overlay(readable=False)
        self.overlay = overlay
        for kind in TABLES:
            tables = overlay.tables.get(kind, {})
            if not tables:
                continue
            present = raw.setdefault(kind, {})
            if not isinstance(present, dict):
                continue  # reported by validate
            for name, table in tables.items():
                if name in present:
                    raise self.error(
                        f"{kind}.{name} is defined both here and in the admin UI ({self.database})",
                        f"{kind}.{name}",
                        fix="rename or delete this table, or remove the one in the admin UI",
                    )
                present[name] = dict(table)
                self.managed.add(f"{kind}.{name}")

    def validate(self, raw: dict[str, Any]) -> GatewayConfig:
        local_only = raw.pop("local_only", False)
        if not isinstance(local_only, bool):
            raise self.error(
                f"local_only must be true or false (got {local_only!r})", None, "local_only"
            )
        for key in raw:
            if key not in TOP_LEVEL and key not in TABLES:
                known = sorted([*TOP_LEVEL, *TABLES])
                raise self.error(f"unknown table [{key}]", key, fix=self._did_you_mean(key, known))
        for key in TOP_LEVEL:
            if not isinstance(raw.get(key, {}), dict):
                raise self.error(f"[{key}] must be a table", None, key)
        gateway_section: GatewaySection = self.model(
            GatewaySection, raw.get("gateway", {}), "gateway"
        )
        data_dir = gateway_section.data_dir.expanduser()
        if not data_dir.is_absolute():
            data_dir = self.base / data_dir
        gateway_section = gateway_section.model_copy(update={"data_dir": data_dir})
        self.merge_managed(raw, gateway_section)
        channels_raw = raw.get("channels")
        self.channel_names = set(channels_raw) if isinstance(channels_raw, dict) else set()
        sections: dict[str, Any] = {"gateway": gateway_section}
        for key, model in TOP_LEVEL.items():
            if key != "gateway":
                sections[key] = self.model(model, raw.get(key, {}), key)

        for key in TABLES:
            value = raw.get(key, {})
            if not isinstance(value, dict) or any(not isinstance(v, dict) for v in value.values()):
                raise self.error(f"[{key}] must hold named tables such as [{key}.NAME]", None, key)
        providers = {
            name: ProviderEntry(name, *self.plugin("llm", f"providers.{name}", table))
            for name, table in raw.get("providers", {}).items()
        }
        agents = {
            name: self.model(AgentConfig, table, f"agents.{name}")
            for name, table in raw.get("agents", {}).items()
        }
        for name, agent in agents.items():
            unknown = sorted(set(agent.handoff_categories) - set(agent.categories))
            if unknown:
                raise self.error(
                    f"handoff_categories names categories that are not defined: {unknown}",
                    f"agents.{name}",
                    "handoff_categories",
                    fix="define them in categories = { NAME = [keywords] }",
                )
            try:
                Analyzer(analysis_config(agent))
            except ValueError as exc:
                raise self.error(str(exc), f"agents.{name}", "categories") from None
            try:
                redactor_for(agent)
            except ValueError as exc:
                raise self.error(str(exc), f"agents.{name}", "redact_patterns") from None
            folder = agent.knowledge_dir
            if folder is not None:
                folder = folder.expanduser()
                folder = folder if folder.is_absolute() else self.base / folder
                if not folder.is_dir():
                    raise self.error(
                        f"knowledge folder {folder} does not exist",
                        f"agents.{name}",
                        "knowledge_dir",
                        fix="create it, or fix the path (relative paths start at the config file)",
                    )
                agents[name] = agent.model_copy(update={"knowledge_dir": folder})
        for name, agent in agents.items():
            wanted = [("provider", agent.provider)] + [("failover", f) for f in agent.failover]
            for key, provider in wanted:
                if provider not in providers:
                    raise self.error(
                        f"provider {provider!r} is not defined",
                        f"agents.{name}",
                        key,
                        fix=f"add a [providers.{provider}] table or use one of: "
                        + (", ".join(sorted(providers)) or "(no providers defined)"),
                    )
            chain = [agent.provider, *agent.failover]
            if local_only and not any(providers[p].config.region == LOCAL for p in chain):
                raise self.error(
                    "local_only = true but no provider of this agent is local, so it could only "
                    "ever send its fallback text",
                    f"agents.{name}",
                    "provider",
                    fix='add a provider with region = "local" (a local server, or plugin = "faq") '
                    "to provider or failover",
                )
        channels = {
            name: ChannelEntry(name, *self.plugin("channel", f"channels.{name}", table))
            for name, table in raw.get("channels", {}).items()
        }
        for name, channel in channels.items():
            if channel.config.enabled and channel.config.agent not in agents:
                raise self.error(
                    f"agent {channel.config.agent!r} is not defined",
                    f"channels.{name}",
                    "agent",
                    fix=f"add an [agents.{channel.config.agent}] table or use one of: "
                    + (", ".join(sorted(agents)) or "(no agents defined)"),
                )
        if not any(c.config.enabled for c in channels.values()):
            raise self.error(
                "no channel is enabled",
                "channels",
                fix='add a [channels.NAME] table with plugin = "webchat" or "telegram"',
            )
        return GatewayConfig(
            source=self.source,
            config_dir=self.base,
            gateway=gateway_section,
            http=sections["http"],
            channels=channels,
            agents=agents,
            providers=providers,
            local_only=local_only,
            sections=sections,
            managed=frozenset(self.managed),
        )

    def plugin(self, kind: str, table: str, raw: dict[str, Any]) -> tuple[PluginInfo, Any]:
        name = raw.get("plugin")
        if not isinstance(name, str) or not name:
            names = self.registry.channels if kind == "channel" else self.registry.providers
            raise self.error(
                "missing key 'plugin'",
                table,
                fix='add plugin = "NAME" with one of: ' + ", ".join(sorted(names)),
            )
        try:
            info = self.registry.lookup(kind, name)  # type: ignore[arg-type]
        except PluginError as exc:
            raise self.error(str(exc), table, "plugin") from None
        return info, self.model(info.cls.Config, raw, table)

    def model(self, model: type[BaseModel], raw: dict[str, Any], table: str) -> Any:
        try:
            return model.model_validate(
                raw,
                context={
                    "environ": self.env,
                    "defer_secrets": self.defer_secrets,
                    # Sections that name channels (e.g. [retention.channels.NAME]) check them.
                    "channels": self.channel_names,
                    # store: secrets (gateway.vault); checked for form only if unreadable.
                    "vault": self.overlay.secrets if self.overlay is not None else None,
                    "defer_store": self.overlay is not None and not self.overlay.readable,
                },
            )
        except ValidationError as exc:
            raise self._from_validation(exc, model, table) from None

    def _from_validation(
        self, exc: ValidationError, model: type[BaseModel], table: str
    ) -> ConfigError:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"]) if err["loc"] else None
        top = str(err["loc"][0]) if err["loc"] else None
        fields = model.model_fields
        if err["type"] == "extra_forbidden":
            return self.error(
                "unknown key",
                table,
                key,
                fix=self._did_you_mean(top or "", sorted(fields)),
            )
        if err["type"] == "missing":
            info = fields.get(top or "")
            hint = f" ({info.description})" if info is not None and info.description else ""
            return self.error(f"required key is missing{hint}", table, key, fix=f"add {key} = ...")
        message = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        if err["type"].endswith("_type") or err["type"].endswith("_parsing"):
            message += f" (got {type(got).__name__} {got!r})"
        fix = None
        if "environment variable" in message:
            fix = (
                "export the variable before starting (or put it in the systemd unit's Environment=)"
            )
        elif "must not be written into the config file" in message:
            fix = (
                f'store it elsewhere and write {key} = "env:NAME" (or file:, credential:, keyring:)'
            )
        return self.error(message, table, key, fix=fix)

    def _did_you_mean(self, word: str, choices: list[str]) -> str:
        close = difflib.get_close_matches(word, choices, n=1)
        allowed = "allowed: " + ", ".join(choices)
        return (f"did you mean {close[0]!r}? " if close else "remove it; ") + allowed

    def find_line(self, table: str | None, key: str | None) -> int | None:
        """Best-effort line of ``key`` in ``[table]`` (or of the table header)."""
        current: str | None = None
        header_line = None
        first_key = key.split(".")[0] if key else None
        for number, line in enumerate(self.lines, start=1):
            stripped = line.strip()
            match = re.match(r"^\[\s*([^\[\]]+?)\s*\]", stripped)
            if match:
                current = ".".join(p.strip().strip("\"'") for p in match.group(1).split("."))
                if current == table:
                    header_line = number
                continue
            if (
                first_key
                and current == (table or None)
                and re.match(rf"^[\"']?{re.escape(first_key)}[\"']?\s*=", stripped)
            ):
                return number
            if (
                table is None
                and first_key
                and current is None
                and stripped.startswith(f"[{first_key}")
            ):
                return number
        if table is None and first_key:
            for number, line in enumerate(self.lines, start=1):
                if re.match(rf"^\[\s*{re.escape(first_key)}\b", line.strip()):
                    return number
        return header_line
