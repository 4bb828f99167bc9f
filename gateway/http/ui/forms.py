"""HTML forms generated from pydantic config models (a plugin's ``Config``, ``AgentConfig``), and
the submitted form parsed back into the table a TOML file would hold.

:func:`fields_of` turns each model field into a :class:`FormField` (its widget from the type,
label and help from the field's metadata); :func:`form_values` gives the strings a form shows
for a stored table; :func:`parse_form` converts what came back, field by field, and
:func:`check_model` validates the result against the model so every problem is shown next to
its field with what to do about it.

Widgets by type. A blank input means "not set" (the default) except for text, where it is
``""`` unless the field may be None; a required field must be filled in:

- ``Secret``: a password input, never filled in; typed values go to ``Parsed.secrets`` (the
  caller stores them in the vault), a blank one keeps the stored value.
- ``bool``: a checkbox. ``Literal[...]``: a select. ``int``/``float``: a number (blank: default).
- ``str``/``Path``: a text input, a textarea for prompts and reply texts (blank is ``""``).
- ``list[str]``: a textarea, one item per line. ``dict[str, str]``: ``KEY = value`` lines.
- anything else (nested models, unions, ``dict[str, list[str]]``): a TOML fragment written as in
  the config file, ``name = value`` or a ``[name]`` table, parsed with tomli.

Values equal to a field's default are left out of the table, so a default that changes in a
later version applies to tables saved before.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import annotated_types
import tomli
import tomli_w
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from gateway.secretref import Secret

Widget = Literal[
    "secret", "checkbox", "select", "number", "text", "textarea", "lines", "pairs", "toml", "order"
]
FORM_ERROR = ""
"""The key of :attr:`Parsed.errors` for a problem that belongs to no single field."""

_LONG_TEXT = re.compile(r"(_prompt|_text|_reply|_notice)$")


@dataclasses.dataclass(frozen=True)
class FormField:
    name: str
    widget: Widget
    label: str
    help: str
    required: bool
    optional: bool
    """``None`` is a valid value (a blank input means "not set")."""
    default: Any
    """The default as a plain value (None when there is none)."""
    choices: tuple[str, ...] = ()
    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None
    slots: int = 0
    """How many selects an ordered choice (``order``) shows."""
    example: str = ""
    """A TOML fragment showing the shape of a nested table (the placeholder of ``toml``)."""

    @property
    def placeholder(self) -> str:
        if self.widget == "toml":
            return self.example or f"{self.name} = ..."
        if self.widget in ("number", "text") and self.default not in (None, ""):
            return str(self.default)
        return ""

    @property
    def fix(self) -> str:
        """What to do about a bad value, by widget."""
        if self.widget == "number":
            kind = "a whole number" if self.integer else "a number"
            bounds = []
            if self.minimum is not None:
                bounds.append(f"at least {self.minimum:g}")
            if self.maximum is not None:
                bounds.append(f"at most {self.maximum:g}")
            tail = f" ({', '.join(bounds)})" if bounds else ""
            return f"enter {kind}{tail}, or leave it blank for the default"
        if self.widget in ("select", "order"):
            return "choose one of: " + ", ".join(self.choices)
        if self.widget == "secret":
            return "type or paste the value again"
        if self.widget == "pairs":
            return "one KEY = value per line"
        if self.widget == "toml":
            return (
                f"write it as in the config file: {self.name} = value (TOML: strings in quotes, "
                "lists in [ ], tables in { })"
            )
        if self.widget == "lines":
            return "one item per line"
        return self.help or "correct the value"


@dataclasses.dataclass(frozen=True)
class FieldError:
    problem: str
    fix: str


@dataclasses.dataclass
class Parsed:
    table: dict[str, Any]
    """The TOML-style table: what differs from the defaults, secrets left out."""
    secrets: dict[str, str]
    """New secret values by field (typed into the form)."""
    values: dict[str, str]
    """What the form shows again after a refusal (secrets always blank)."""
    errors: dict[str, FieldError]
    """By field name; :data:`FORM_ERROR` for the form as a whole."""
    clear: list[str] = dataclasses.field(default_factory=list)
    """Optional secret fields whose stored value is to be removed (the "remove" box)."""


# -- fields ----------------------------------------------------------------------------------


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` is allowed)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            return args[0], optional
        return annotation, optional
    return annotation, False


def _widget(annotation: Any, name: str, default: Any) -> tuple[Widget, tuple[str, ...]]:
    inner, _optional = _unwrap(annotation)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if inner is Secret:
        return "secret", ()
    if inner is bool:
        return "checkbox", ()
    if origin is Literal:
        return "select", tuple(str(a) for a in args)
    if inner in (int, float):
        return "number", ()
    if inner in (str, Path):
        long = _LONG_TEXT.search(name) or (isinstance(default, str) and len(default) > 60)
        return ("textarea" if long else "text"), ()
    if origin is list and args == (str,):
        return "lines", ()
    if origin is dict and args == (str, str):
        return "pairs", ()
    return "toml", ()


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, Path):
        return str(value)
    return value


def _bounds(info: FieldInfo) -> tuple[float | None, float | None]:
    low = high = None
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge | annotated_types.Gt):
            low = float(getattr(item, "ge", getattr(item, "gt", 0)))
        if isinstance(item, annotated_types.Le | annotated_types.Lt):
            high = float(getattr(item, "le", getattr(item, "lt", 0)))
    return low, high


_ACRONYMS = {"api", "url", "id", "sid", "imap", "smtp", "tls", "ca", "http", "mms", "sms"}


def label_of(name: str) -> str:
    words = [w.upper() if w in _ACRONYMS else w for w in name.split("_")]
    return " ".join(words)[:1].upper() + " ".join(words)[1:]


def _nested(name: str, model: type[BaseModel]) -> tuple[str, str]:
    """(an example fragment, a description of the keys) of a nested table."""
    lines = [f"[{name}]"]
    keys = []
    for key, info in model.model_fields.items():
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        default = _plain(default)
        if isinstance(default, list) and all(isinstance(v, str) for v in default):
            shown = f"{key} = {json.dumps(default, ensure_ascii=False)}"  # an inline array
        else:
            shown = tomli_w.dumps({key: default}).strip() if default is not None else ""
        lines.append(shown if "\n" not in shown and shown else f"{key} = ...")
        about = (info.description or "").rstrip(".")
        keys.append(f"{key}: {about}" if about else key)
    return "\n".join(lines), "Keys: " + "; ".join(keys) + "."


def fields_of(
    model: type[BaseModel],
    *,
    skip: Collection[str] = (),
    choices: Mapping[str, Iterable[str]] | None = None,
    ordered: Mapping[str, Iterable[str]] | None = None,
) -> list[FormField]:
    """The form fields of ``model`` in declaration order, without ``skip``. ``choices`` turns
    a text field into a select of those values (a channel's agent); ``ordered`` turns a list
    field into an ordered choice among those values (an agent's failover chain)."""
    choices = choices or {}
    ordered = ordered or {}
    found = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        default = (
            None if info.is_required() else _plain(info.get_default(call_default_factory=True))
        )
        widget, options = _widget(info.annotation, name, default)
        _inner, optional = _unwrap(info.annotation)
        slots = 0
        if name in choices:
            widget, options = "select", tuple(choices[name])
        elif name in ordered:
            options = tuple(ordered[name])
            widget, slots = "order", max(1, min(len(options), 6))
        low, high = _bounds(info)
        help_text = (info.description or "").replace("``", "")
        example = ""
        inner = _unwrap(info.annotation)[0]
        if widget == "toml" and isinstance(inner, type) and issubclass(inner, BaseModel):
            example, keys = _nested(name, inner)
            help_text = f"{help_text} {keys}".strip()
        found.append(
            FormField(
                name=name,
                widget=widget,
                label=label_of(name),
                help=help_text,
                required=info.is_required(),
                optional=optional,
                default=default,
                choices=options,
                integer=_unwrap(info.annotation)[0] is int,
                minimum=low,
                maximum=high,
                slots=slots,
                example=example,
            )
        )
    return found


# -- table -> form -----------------------------------------------------------------------------


def _toml_clean(value: Any) -> Any:
    """TOML has no null: drop None values inside tables and lists."""
    if isinstance(value, dict):
        return {str(k): _toml_clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_toml_clean(v) for v in value if v is not None]
    return value


def to_text(field: FormField, value: Any) -> str:
    """How ``value`` (as a TOML file holds it) shows in ``field``'s input."""
    value = _plain(value)
    if field.widget == "secret" or value is None:
        return ""
    if field.widget == "checkbox":
        return "on" if value else ""
    if field.widget == "lines":
        return "\n".join(str(v) for v in value)
    if field.widget == "pairs":
        return "\n".join(f"{k} = {_pair_value(str(v))}" for k, v in value.items())
    if field.widget == "order":
        return "\n".join(str(v) for v in value)
    if field.widget == "toml":
        if value in ([], {}, ""):
            return ""
        return tomli_w.dumps({field.name: _toml_clean(value)}).strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _pair_value(value: str) -> str:
    """Bare, unless the bare form would read back differently (quotes, outer spaces)."""
    if value != value.strip() or value[:1] in "\"'" or not value:
        return tomli_w.dumps({"v": value})[4:].strip()
    return value


def form_values(fields: Iterable[FormField], table: Mapping[str, Any] | None) -> dict[str, str]:
    """What each input shows for a stored ``table`` (None: a new one, the defaults)."""
    table = table or {}
    return {f.name: to_text(f, table[f.name] if f.name in table else f.default) for f in fields}


# -- form -> table -----------------------------------------------------------------------------


class _Bad(ValueError):
    pass


def _number(field: FormField, text: str) -> int | float:
    try:
        return int(text) if field.integer else float(text)
    except ValueError:
        kind = "a whole number" if field.integer else "a number"
        raise _Bad(f"{text[:40]!r} is not {kind}") from None


def _pairs(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise _Bad(f"line {number} is not KEY = value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            try:  # written as in the config file: a quoted TOML string
                value = tomli.loads(f"v = {value}")["v"]
            except tomli.TOMLDecodeError:
                raise _Bad(f"line {number}: the quoted value is not a TOML string") from None
        if key in found:
            raise _Bad(f"line {number}: {key} is given twice")
        found[key] = value
    return found


def _toml(field: FormField, text: str) -> Any:
    try:
        document = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        raise _Bad(f"not valid TOML at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if set(document) != {field.name}:
        others = ", ".join(sorted(set(document) - {field.name})) or "nothing"
        raise _Bad(f"expected {field.name} = ..., found {others}")
    return document[field.name]


def _one(field: FormField, form: Any) -> Any:
    """The value of ``field`` in the submitted ``form``, or _Bad; ``...`` for "not set"
    (the default applies)."""
    text = str(form.get(field.name, "")).replace("\r\n", "\n")
    if field.widget == "checkbox":
        return field.name in form
    if field.widget == "order":
        picked = [str(v) for v in form.getlist(field.name) if str(v)]
        unknown = [p for p in picked if p not in field.choices]
        if unknown:
            raise _Bad(f"{unknown[0]!r} is not one of the choices")
        if len(set(picked)) != len(picked):
            raise _Bad("the same entry is picked twice")
        return picked
    if field.widget == "lines":
        return [line.strip() for line in text.splitlines() if line.strip()]
    if field.widget == "pairs":
        return _pairs(text)
    stripped = text.strip()
    if not stripped and field.widget not in ("text", "textarea"):
        if field.required:
            raise _Bad("required")
        return ...  # TOML has no null: blank is the default (None where that is the default)
    if field.widget == "select":
        if stripped not in field.choices:
            raise _Bad(f"{stripped[:40]!r} is not one of the choices")
        return stripped
    if field.widget == "number":
        return _number(field, stripped)
    if field.widget == "toml":
        return _toml(field, text)
    # text, textarea
    if not stripped and field.required:
        raise _Bad("required")
    if not stripped and field.optional:
        return ...
    return text if field.widget == "textarea" else stripped


def parse_form(
    fields: Iterable[FormField], form: Any, *, stored_secrets: Collection[str] = ()
) -> Parsed:
    """Convert a submitted ``form`` (a MultiDict) field by field. ``stored_secrets`` are the
    secret fields that have a value in the vault already (a blank input keeps it)."""
    parsed = Parsed({}, {}, {}, {})
    for field in fields:
        if field.widget == "secret":
            value = str(form.get(field.name, "")).strip()
            parsed.values[field.name] = ""
            if value:
                parsed.secrets[field.name] = value
            elif f"{field.name}.clear" in form and not field.required:
                parsed.clear.append(field.name)
            elif field.required and field.name not in stored_secrets:
                parsed.errors[field.name] = FieldError("required", "type or paste the value")
            continue
        if field.widget == "order":
            parsed.values[field.name] = "\n".join(str(v) for v in form.getlist(field.name))
        elif field.widget == "checkbox":
            parsed.values[field.name] = "on" if field.name in form else ""
        else:
            parsed.values[field.name] = str(form.get(field.name, "")).replace("\r\n", "\n")
        if field.name not in form and field.widget != "checkbox":
            continue  # not sent at all: not set (a browser sends every input but checkboxes)
        try:
            value = _one(field, form)
        except _Bad as exc:
            parsed.errors[field.name] = FieldError(str(exc), field.fix)
            continue
        if value is ... or (not field.required and value == field.default):
            continue
        parsed.table[field.name] = value
    return parsed


def check_model(
    model: type[BaseModel],
    fields: Iterable[FormField],
    parsed: Parsed,
    *,
    fixed: Mapping[str, Any] | None = None,
    stored_secrets: Collection[str] = (),
) -> None:
    """Validate ``parsed`` against ``model`` (with the ``fixed`` keys, e.g. ``plugin``) and add
    every problem to ``parsed.errors``: by field where pydantic names one, else the form's.
    New secrets are checked as typed; stored ones are not opened (they passed before)."""
    by_name = {f.name: f for f in fields}
    candidate: dict[str, Any] = {**(fixed or {}), **parsed.table}
    for name, value in parsed.secrets.items():
        candidate[name] = Secret(value, "<typed into the form>")
    for name in stored_secrets:
        if name not in parsed.secrets and name in by_name:
            candidate[name] = Secret("", "<stored>", deferred=True)
    try:
        model.model_validate(candidate)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            top = str(err["loc"][0]) if err["loc"] else FORM_ERROR
            if top in parsed.errors:
                continue  # the conversion already said what is wrong
            field = by_name.get(top)
            problem = err["msg"].removeprefix("Value error, ")
            if len(err["loc"]) > 1:
                problem = f"{'.'.join(str(p) for p in err['loc'][1:])}: {problem}"
            if field is None:
                where = "" if top == FORM_ERROR else f"{top}: "
                parsed.errors.setdefault(FORM_ERROR, FieldError(where + problem, ""))
            else:
                parsed.errors[top] = FieldError(problem, field.fix)
