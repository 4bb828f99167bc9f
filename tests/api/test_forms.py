"""Website forms: CORS with exact origins (preflight included), honeypot, disposable-email
blocklist, per-client rate limit, stored in form_submissions, read back with a forms key."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.devapi.config import FormConfig
from gateway.devapi.forms import check_submission, disposable
from tests.api.conftest import ORIGIN, bearer

URL = "/api/v1/forms/contact"
GOOD = {
    "name": "Ann",
    "email": "Ann@Example.COM",
    "message": "Hello!\nTwo lines.",
    "newsletter": True,
}


def origin(value: str = ORIGIN, **more: str) -> dict[str, str]:
    return {"Origin": value, **more}


async def test_preflight_allows_exactly_the_configured_origins(api):
    ok = await api.client.options(URL, headers=origin(**{"Access-Control-Request-Method": "POST"}))
    assert ok.status_code == 204
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert ok.headers["Access-Control-Allow-Methods"] == "POST"
    assert "Content-Type" in ok.headers["Access-Control-Allow-Headers"]
    assert ok.headers["Vary"] == "Origin"
    for other in ("https://evil.example", "https://www.acme.example.evil.example", "null", ""):
        refused = await api.client.options(
            URL, headers=origin(other, **{"Access-Control-Request-Method": "POST"})
        )
        assert refused.status_code == 403, other
        assert "Access-Control-Allow-Origin" not in refused.headers
    missing = await api.client.options("/api/v1/forms/nope", headers=origin())
    assert missing.status_code == 404


async def test_a_submission_is_stored_with_its_origin_and_read_back(api):
    response = await api.client.post(URL, json=GOOD, headers=origin())
    assert response.status_code == 200
    assert await response.get_json() == {"status": "received"}
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    rows = await api.sql(
        "SELECT p.name, f.form, f.data, f.origin, f.archived_at FROM form_submissions f JOIN api_projects p ON p.id = f.project_id"
    )
    ((project, form, data, stored_origin, archived),) = rows
    assert (project, form, stored_origin, archived) == ("acme", "contact", ORIGIN, None)
    assert json.loads(data) == {**GOOD, "email": "Ann@example.com"}
    # A plain HTML form post (urlencoded) goes to the form's thank-you page.
    html = await api.client.post(
        "/api/v1/forms/signup",
        form={"email": "bob@example.org"},
        headers=origin("http://localhost:8000"),
    )
    assert html.status_code == 303 and html.headers["Location"] == "https://www.acme.example/thanks"
    key = await api.key(scopes=["forms"])
    page = await (await api.client.get(f"{URL}/submissions", headers=bearer(key))).get_json()
    assert [s["data"]["name"] for s in page["data"]] == ["Ann"] and page["next_cursor"] is None
    assert (
        await api.client.get(f"{URL}/submissions", headers=bearer(await api.key(scopes=["notify"])))
    ).status_code == 403
    await api.project("news", "Daily News")
    other = await api.key("news", scopes=["forms"])
    assert (await api.client.get(f"{URL}/submissions", headers=bearer(other))).status_code == 404


async def test_wrong_origin_is_refused_and_nothing_stored(api):
    for headers in (origin("https://evil.example"), {}):
        response = await api.client.post(URL, json=GOOD, headers=headers)
        assert response.status_code == 403
        assert (await response.get_json())["type"].endswith("#origin-not-allowed")
    assert await api.sql("SELECT count(*) FROM form_submissions") == [(0,)]


async def test_honeypot_is_answered_like_success_dropped_and_counted(api):
    response = await api.client.post(
        URL, json={**GOOD, "website": "http://spam.example"}, headers=origin()
    )
    assert response.status_code == 200 and await response.get_json() == {"status": "received"}
    assert await api.sql("SELECT count(*) FROM form_submissions") == [(0,)]
    assert await api.sql("SELECT form, count FROM form_spam") == [("contact", 1)]
    audit = await api.sql(
        "SELECT action, target, outcome FROM audit_log WHERE action = 'api.form.spam'"
    )
    assert audit == [("api.form.spam", "form:contact", "denied")]
    # An empty honeypot is a person.
    assert (
        await api.client.post(URL, json={**GOOD, "website": ""}, headers=origin())
    ).status_code == 200
    assert await api.sql("SELECT count(*) FROM form_submissions") == [(1,)]


async def test_invalid_fields_and_disposable_addresses_are_named(api):
    cases = [
        ({**GOOD, "email": "ann@mailinator.com"}, "email", "throwaway"),
        ({**GOOD, "email": "ann@sub.mailinator.com"}, "email", "throwaway"),
        ({**GOOD, "email": "not-an-address"}, "email", "not an email"),
        ({**GOOD, "name": "x" * 51}, "name", "at most 50"),
        ({**GOOD, "name": "two\nlines"}, "name", "one line"),
        ({"email": "ann@example.com"}, "name", "required"),
        ({**GOOD, "colour": "red"}, "colour", "unknown field"),
        ({**GOOD, "age": "forty"}, "age", "whole number"),
        ({**GOOD, "newsletter": "maybe"}, "newsletter", "true or false"),
    ]
    for n, (payload, field, words) in enumerate(cases):
        # Each from its own address: the form's rate (3/min) is per client.
        client = {"X-Forwarded-For": f"198.51.100.7, 10.0.0.{n}"}
        response = await api.client.post(URL, json=payload, headers=origin(**client))
        assert response.status_code == 422, payload
        body = await response.get_json()
        assert body["type"].endswith("#validation-failed")
        problems = {e["field"]: e["problem"] for e in body["errors"]}
        assert words in problems[field], (field, problems)
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert await api.sql("SELECT count(*) FROM form_submissions") == [(0,)]


async def test_rate_limit_per_client(api):
    statuses = []
    for n in range(4):
        response = await api.client.post(URL, json={**GOOD, "name": f"n{n}"}, headers=origin())
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429]
    assert 1 <= int(response.headers["Retry-After"]) <= 20
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert await api.sql("SELECT count(*) FROM form_submissions") == [(3,)]
    # Another client is not held back by the first one.
    other = await api.client.post(URL, json=GOOD, headers=origin(**{"X-Forwarded-For": "10.9.9.9"}))
    assert other.status_code == 200


def test_disposable_list_matches_domains_and_their_subdomains():
    assert disposable("mailinator.com") and disposable("a.b.mailinator.com")
    assert not disposable("example.com") and not disposable("com")


FORM = FormConfig.model_validate(
    {
        "project": "acme",
        "allowed_origins": [ORIGIN],
        "honeypot": "website",
        "fields": {
            "name": {"type": "string", "required": True},
            "email": {"type": "email"},
            "age": {"type": "integer"},
            "ok": {"type": "boolean"},
            "note": {"type": "text", "max_length": 20},
        },
    }
)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["name", "email", "age", "ok", "note", "website", "x"])
        | st.text(max_size=5),
        values,
    )
)
def test_check_submission_never_raises_and_keeps_only_configured_fields(raw):
    checked = check_submission(FORM, raw)
    assert set(checked.data) <= set(FORM.fields)
    if not checked.spam and not checked.errors:
        assert "name" in checked.data
        assert all(not isinstance(v, str) or len(v) <= 200 for v in checked.data.values())
        json.dumps(checked.data).encode()


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"allowed_origins": ["https://a.example/path"]}, "not an origin"),
        ({"rate": "fast"}, "not a rate"),
        ({"fields": {}}, "at least one field"),
        ({"honeypot": "name"}, "honeypot"),
    ],
)
def test_form_config_errors_say_what_to_write(table, problem):
    base = {"project": "acme", "allowed_origins": [ORIGIN], "fields": {"name": {}}}
    with pytest.raises(ValueError, match=problem):
        FormConfig.model_validate({**base, **table})


async def test_submissions_are_archived_then_deleted_by_the_retention_sweep(api):
    """The "forms" retention category (30 days active, then 180 in the archive by default)."""
    import datetime as dt

    from gateway.privacy.retention_sweep import sweep

    assert (await api.client.post(URL, json=GOOD, headers=origin())).status_code == 200
    only = ["form_submissions_active", "form_submissions_archive"]
    config, store = api.services.config, api.services.store
    now = dt.datetime.now(dt.UTC)
    await sweep(
        store,
        config,
        sealer=store.sealer,
        only=only,
        now=now + dt.timedelta(days=29),
        write_files=False,
    )
    assert await api.sql("SELECT archived_at FROM form_submissions") == [(None,)]
    await sweep(
        store,
        config,
        sealer=store.sealer,
        only=only,
        now=now + dt.timedelta(days=31),
        write_files=False,
    )
    ((archived,),) = await api.sql("SELECT archived_at FROM form_submissions")
    assert archived is not None
    key = await api.key(scopes=["forms"])
    page = await (await api.client.get(f"{URL}/submissions", headers=bearer(key))).get_json()
    assert page["data"][0]["archived_at"] == archived
    await sweep(
        store,
        config,
        sealer=store.sealer,
        only=only,
        now=now + dt.timedelta(days=31 + 181),
        write_files=False,
    )
    assert await api.sql("SELECT count(*) FROM form_submissions") == [(0,)]
