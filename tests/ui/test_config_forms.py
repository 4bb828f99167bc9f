"""Forms generated from config models: widgets by type, values back and forth, problems by field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict

from gateway.config import AgentConfig
from gateway.http.ui import forms
from gateway.http.ui.forms import FORM_ERROR
from gateway.plugin import load_registry
from plugins.max.config import MaxConfig
from plugins.telegram.channel import TelegramConfig

TOKEN = "123456:ABC-def_ghi"


def agent_fields() -> list[forms.FormField]:
    return forms.fields_of(
        AgentConfig,
        skip=("knowledge_dir",),
        choices={"provider": ["main", "backup"]},
        ordered={"failover": ["main", "backup", "local"]},
    )


def by_name(fields: list[forms.FormField]) -> dict[str, forms.FormField]:
    return {f.name: f for f in fields}


def submitted(fields: list[forms.FormField], values: dict[str, str]) -> MultiDict[str, str]:
    """What a browser sends for a form showing ``values``."""
    form: MultiDict[str, str] = MultiDict()
    for f in fields:
        value = values.get(f.name, "")
        if f.widget == "checkbox":
            if value:
                form.add(f.name, "on")
        elif f.widget == "order":
            picks = value.split("\n") if value else []
            for slot in range(f.slots):
                form.add(f.name, picks[slot] if slot < len(picks) else "")
        else:
            form.add(f.name, value)
    return form


def test_widgets_follow_the_types() -> None:
    widgets = {f.name: f.widget for f in agent_fields()}
    assert widgets["provider"] == "select"
    assert widgets["failover"] == "order"
    assert widgets["system_prompt"] == "textarea"
    assert widgets["history_turns"] == "number"
    assert widgets["handoff_when_angry"] == "checkbox"
    assert widgets["redact_patterns"] == "pairs"
    assert widgets["redact_names"] == "lines"
    assert widgets["residency"] == "toml"
    assert widgets["business_hours"] == "toml"
    assert widgets["categories"] == "toml"
    assert widgets["handoff_phrases"] == "toml"  # list[str] | dict[str, list[str]]
    assert "knowledge_dir" not in widgets
    telegram = by_name(forms.fields_of(TelegramConfig, skip=("plugin",)))
    assert telegram["token"].widget == "secret" and telegram["token"].required
    assert telegram["webhook_secret"].widget == "secret" and telegram["webhook_secret"].optional
    assert telegram["mode"].widget == "select" and telegram["mode"].choices == (
        "polling",
        "webhook",
    )
    timeout = telegram["poll_timeout"]
    assert (timeout.minimum, timeout.maximum, timeout.integer) == (1, 50, True)
    assert timeout.help == "Seconds one long poll waits for updates."


@pytest.mark.parametrize("kind", ["channel", "llm"])
def test_every_built_in_plugin_round_trips_its_defaults(kind: str) -> None:
    registry = load_registry()
    plugins = registry.channels if kind == "channel" else registry.providers
    assert plugins and not registry.failures
    for name, info in plugins.items():
        fields = forms.fields_of(info.cls.Config, skip=("plugin",))
        defaults = forms.form_values(fields, None)
        parsed = forms.parse_form(fields, submitted(fields, defaults))
        assert parsed.table == {}, name  # defaults are never written
        missing = {n for n, e in parsed.errors.items() if e.problem == "required"}
        required = {f.name for f in fields if f.required}
        assert missing == required and set(parsed.errors) == required, name


def test_a_changed_agent_becomes_its_toml_table() -> None:
    fields = agent_fields()
    values = forms.form_values(fields, None)
    values |= {
        "provider": "main",
        "failover": "backup\nlocal",
        "system_prompt": "You answer for Example Ltd.\r\nBe brief.",
        "history_turns": "12",
        "handoff_when_angry": "on",
        "redact_patterns": 'ORDER_REF = ORD-[0-9]{6}\n\n TICKET=T-\\d+ \nQUOTED = "Q-\\\\d"',
        "redact_names": "Kari Nordmann\n  \nOla",
        "residency": '[residency]\ncontact_details = ["local"]',
        "business_hours": 'business_hours = { timezone = "Europe/Moscow", open = "10:00" }',
        "language": "",
    }
    parsed = forms.parse_form(fields, submitted(fields, values))
    assert parsed.errors == {}
    assert parsed.table == {
        "provider": "main",
        "failover": ["backup", "local"],
        "system_prompt": "You answer for Example Ltd.\nBe brief.",
        "history_turns": 12,
        "handoff_when_angry": True,
        "redact_patterns": {"ORDER_REF": "ORD-[0-9]{6}", "TICKET": "T-\\d+", "QUOTED": "Q-\\d"},
        "redact_names": ["Kari Nordmann", "Ola"],
        "residency": {"contact_details": ["local"]},
        "business_hours": {"timezone": "Europe/Moscow", "open": "10:00"},
    }
    forms.check_model(AgentConfig, fields, parsed)
    assert parsed.errors == {}
    # ... and shows the same values when opened again.
    again = forms.form_values(fields, parsed.table)
    assert forms.parse_form(fields, submitted(fields, again)).table == parsed.table


def test_problems_name_the_field_and_the_fix() -> None:
    fields = agent_fields()
    values = forms.form_values(fields, None) | {
        "provider": "elsewhere",
        "failover": "backup\nbackup",
        "history_turns": "many",
        "redact_patterns": "ORDER_REF ORD-1",
        "residency": "residency = { contact_details = [local] }",
        "categories": 'billing = ["invoice"]',
    }
    parsed = forms.parse_form(fields, submitted(fields, values))
    problems = {name: error.problem for name, error in parsed.errors.items()}
    assert problems == {
        "provider": "'elsewhere' is not one of the choices",
        "failover": "the same entry is picked twice",
        "history_turns": "'many' is not a whole number",
        "redact_patterns": "line 1 is not KEY = value",
        "residency": problems["residency"],
        "categories": "expected categories = ..., found billing",
    }
    assert problems["residency"] == ("not valid TOML at line 1, column 34: Invalid value")
    assert parsed.errors["provider"].fix == "choose one of: main, backup"
    assert parsed.errors["history_turns"].fix == (
        "enter a whole number (at least 0, at most 500), or leave it blank for the default"
    )
    assert parsed.errors["categories"].fix.startswith("write it as in the config file")


def test_the_model_checks_what_the_conversion_let_through() -> None:
    fields = agent_fields()
    values = forms.form_values(fields, None) | {
        "provider": "main",
        "history_turns": "900",
        "business_hours": '[business_hours]\ntimezone = "Mars/Olympus"',
        "fallback_text": "",
    }
    parsed = forms.parse_form(fields, submitted(fields, values))
    forms.check_model(AgentConfig, fields, parsed)
    problems = {name: error.problem for name, error in parsed.errors.items()}
    assert problems == {
        "history_turns": "Input should be less than or equal to 500",
        "business_hours": "timezone: unknown time zone 'Mars/Olympus' (use an IANA name like "
        '"Europe/Berlin")',
        "fallback_text": "String should have at least 1 character",
    }


def test_secrets_are_never_shown_and_a_blank_one_keeps_the_stored_value() -> None:
    fields = forms.fields_of(TelegramConfig, skip=("plugin",))
    stored = {"plugin": "telegram", "token": "store:channels.tg.token", "mode": "webhook"}
    shown = forms.form_values(fields, stored)
    assert shown["token"] == "" and shown["webhook_secret"] == "" and shown["mode"] == "webhook"
    # Edit: the token is kept (blank), a webhook secret is typed in.
    form = submitted(fields, shown | {"webhook_secret": "s3cret_value"})
    parsed = forms.parse_form(fields, form, stored_secrets={"token"})
    assert parsed.errors == {}
    assert parsed.secrets == {"webhook_secret": "s3cret_value"}
    assert parsed.table == {"mode": "webhook"}
    assert parsed.values["webhook_secret"] == ""  # not echoed back
    forms.check_model(
        TelegramConfig, fields, parsed, fixed={"plugin": "telegram"}, stored_secrets={"token"}
    )
    assert parsed.errors == {}
    # A bad typed secret is refused by the plugin's own validator, without its value.
    form = submitted(fields, shown | {"webhook_secret": "has spaces in it"})
    parsed = forms.parse_form(fields, form, stored_secrets={"token"})
    forms.check_model(
        TelegramConfig, fields, parsed, fixed={"plugin": "telegram"}, stored_secrets={"token"}
    )
    assert "only 1-256 characters" in parsed.errors["webhook_secret"].problem
    assert "has spaces" not in repr(parsed.errors) and "has spaces" not in repr(parsed.values)
    # New: webhook mode without a secret is the model's own rule, for the whole form.
    new = forms.parse_form(fields, submitted(fields, shown | {"token": TOKEN}))
    forms.check_model(TelegramConfig, fields, new, fixed={"plugin": "telegram"})
    assert 'mode = "webhook" requires webhook_secret' in new.errors[FORM_ERROR].problem


def test_a_required_secret_must_be_typed_when_new() -> None:
    fields = forms.fields_of(MaxConfig, skip=("plugin",))
    parsed = forms.parse_form(fields, submitted(fields, forms.form_values(fields, None)))
    assert parsed.errors["token"] == forms.FieldError("required", "type or paste the value")


# -- Hypothesis: what the form shows parses back to the same value ------------------------------

_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\x85"),
    min_size=1,
    max_size=30,
)
_words = _text.map(str.strip).filter(bool)
_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)


def _round_trip(field_name: str, value: Any) -> Any:
    field = by_name(agent_fields())[field_name]
    text = forms.to_text(field, value)
    form = MultiDict([(field_name, text)])
    parsed = forms.parse_form([field], form)
    assert parsed.errors == {}, (text, parsed.errors)
    return parsed.table.get(field_name, field.default)


@given(st.lists(_words.filter(lambda w: "\n" not in w and "\r" not in w), max_size=8))
def test_lines_round_trip(names: list[str]) -> None:
    assert _round_trip("redact_names", names) == names


@given(st.dictionaries(_keys, _text.filter(lambda w: "\n" not in w and "\r" not in w), max_size=6))
def test_pairs_round_trip(patterns: dict[str, str]) -> None:
    assert _round_trip("redact_patterns", patterns) == patterns


@given(
    st.one_of(
        st.lists(_text, max_size=5),
        st.dictionaries(_keys, st.lists(_text, max_size=4), min_size=1, max_size=4),
    )
)
def test_toml_fragments_round_trip(phrases: list[str] | dict[str, list[str]]) -> None:
    assert _round_trip("handoff_phrases", phrases) == phrases


@given(st.integers(min_value=0, max_value=500))
def test_numbers_round_trip(turns: int) -> None:
    assert _round_trip("history_turns", turns) == turns


@given(st.text(max_size=200))
def test_any_text_in_a_toml_field_is_parsed_or_refused_by_name(text: str) -> None:
    field = by_name(agent_fields())["categories"]
    parsed = forms.parse_form([field], MultiDict([("categories", text)]))
    if parsed.errors:
        error = parsed.errors["categories"]
        assert error.problem and error.fix.startswith("write it as in the config file")
    else:
        assert set(parsed.table) <= {"categories"}
