"""CSV import of contacts: the checker on its own (cases and Hypothesis), then the preview and
the import through the admin app into a real store, with the consent ledger and the audit."""

from __future__ import annotations

import csv
import io

from hypothesis import given
from hypothesis import strategies as st

from gateway.http.ui.contacts_import import BASES, COLUMNS, parse_csv
from tests.ui.conftest import UI, page, post
from tests.ui.test_privacy_requests import a_contact, desk

CHANNELS = ("support", "sms")
GOOD = (
    "channel,external_id,display_name,language,basis,evidence\n"
    "support,tg-1,Ann Example,en,consent,web form v3 2026-01-12\n"
    "support,tg-2,Bo,,contract,\n"
    "sms,+4790000000,,nb,withdrawn,\n"
)


def test_a_good_file_is_read_with_its_bases() -> None:
    checked = parse_csv(GOOD.encode(), CHANNELS)
    assert checked.file_error is None and checked.errors == []
    assert [(r.line, r.channel, r.external_id, r.basis) for r in checked.rows] == [
        (2, "support", "tg-1", "consent"),
        (3, "support", "tg-2", "contract"),
        (4, "sms", "+4790000000", "withdrawn"),
    ]
    assert checked.rows[0].display_name == "Ann Example" and checked.rows[2].language == "nb"
    assert checked.bases() == {"consent": 1, "contract": 1, "withdrawn": 1}


def test_every_bad_line_is_named_with_its_problem() -> None:
    text = (
        "Channel;External ID;Basis;Evidence;Language\n"  # semicolons, spaced header, any order
        ";tg-1;consent;form;en\n"
        "support;;contract;;\n"
        "support;tg-3;maybe;;\n"
        "support;tg-4;consent;;\n"
        "support;tg-5;contract;;english\n"
        "whatsapp;tg-6;contract;;\n"
        "support;tg-7;CONTRACT;;\n"
        "\n"
        "support;tg-7;contract;;\n"
    )
    checked = parse_csv(("\ufeff" + text).encode(), CHANNELS)  # with a BOM, as Excel saves it
    problems = [(e.line, e.column, e.problem.split(":")[0].split(" (")[0]) for e in checked.errors]
    assert problems == [
        (2, "channel", "missing channel"),
        (3, "external_id", "missing external id"),
        (4, "basis", "bad basis 'maybe'"),
        (5, "evidence", "consent needs its evidence"),
        (6, "language", "'english' is not a language code"),
        (7, "channel", "no channel 'whatsapp' is configured"),
        (10, "external_id", "duplicate of line 8"),
    ]
    assert [r.line for r in checked.rows] == [8] and checked.lines == 8 and checked.bad_lines == 7


def test_a_file_that_is_not_the_format_says_what_is() -> None:
    assert "not UTF-8" in str(
        parse_csv(b"channel,external_id,basis\nsupport,\xff,consent", CHANNELS).file_error
    )
    missing = parse_csv(b"channel,id\nsupport,1\n", CHANNELS).file_error
    assert missing is not None and "unknown column(s) 'id'" in missing
    assert "missing column(s) external_id, basis" in missing
    assert "empty" in str(parse_csv(b"", CHANNELS).file_error)


@given(st.binary(max_size=400))
def test_any_bytes_give_rows_errors_or_a_file_error_never_an_exception(data: bytes) -> None:
    checked = parse_csv(data, CHANNELS)
    if checked.file_error:
        assert checked.rows == [] and checked.errors == []
    for row in checked.rows:
        assert row.channel in CHANNELS and row.external_id and row.basis in BASES


rows = st.lists(
    st.tuples(
        st.sampled_from(["support", "sms", "", "fax"]),
        st.text(max_size=8),
        st.sampled_from([*BASES, "", "nope"]),
        st.sampled_from(["", "form v1"]),
    ),
    max_size=12,
)


@given(rows)
def test_every_written_line_is_imported_or_has_an_error(lines: list[tuple[str, ...]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["channel", "external_id", "basis", "evidence"])
    writer.writerows(lines)
    checked = parse_csv(out.getvalue().encode(), CHANNELS)
    assert checked.file_error is None
    ok = {r.line for r in checked.rows}
    bad = {e.line for e in checked.errors}
    assert not ok & bad
    written = {n for n, line in enumerate(lines, start=2) if any(c.strip() for c in line)}
    assert ok | bad == written
    keys = [(r.channel, r.external_id) for r in checked.rows]
    assert len(keys) == len(set(keys))  # never two rows for one identity


async def test_preview_writes_nothing_and_the_import_is_one_audited_transaction(ui: UI) -> None:
    existing = await a_contact(ui, sender="tg-2")
    client = await desk(ui)
    before = await ui.sql("SELECT count(*) FROM contacts")
    _s, form_page = await page(client, "/contacts/import")
    assert 'enctype="multipart/form-data"' in form_page and ",".join(COLUMNS) in form_page
    text = GOOD.replace("sms,", "support,") + "support,tg-9,,xx-,consent,\n"
    preview = await post(
        client, "/contacts/import/preview", {"csv": text, "filename": "crm.csv"},
        from_page="/contacts/import",
    )  # fmt: skip
    html = await preview.get_data(as_text=True)
    assert preview.status_code == 200 and 'id="import-errors"' in html
    assert f"duplicate: contact {existing}" in html and "consent needs its evidence" in html
    assert "&#39;xx-&#39; is not a language code" in html
    assert (
        "<strong>2</strong> ready to import" in html and "<strong>2</strong> with problems" in html
    )
    assert await ui.sql("SELECT count(*) FROM contacts") == before  # nothing written
    # Importing a file with problems is refused unless the problem lines are skipped.
    refused = await post(client, "/contacts/import", {"csv": text, "filename": "crm.csv"},
                         from_page="/contacts/import")  # fmt: skip
    assert refused.status_code == 409
    assert "nothing was imported" in await refused.get_data(as_text=True)
    assert await ui.sql("SELECT count(*) FROM contacts") == before
    done = await post(
        client, "/contacts/import", {"csv": text, "filename": "crm.csv", "skip_errors": "1"},
        from_page="/contacts/import",
    )  # fmt: skip
    html = await done.get_data(as_text=True)
    assert done.status_code == 200 and "Imported 2 contact(s) from crm.csv" in html
    assert await ui.sql(
        "SELECT i.channel, i.external_id, k.display_name, k.language FROM identities i "
        "JOIN contacts k ON k.id = i.contact_id WHERE k.id != ? ORDER BY i.external_id",
        existing,
    ) == [("support", "+4790000000", None, "nb"), ("support", "tg-1", "Ann Example", "en")]
    ledger = await ui.sql(
        "SELECT i.external_id, s.purpose, s.state, s.source, s.detail FROM consents s "
        "JOIN identities i ON i.id = s.identity_id ORDER BY s.id"
    )
    assert [row[:4] for row in ledger] == [
        ("tg-1", "service", "granted", "admin:owner@example.com"),
        ("tg-1", "marketing", "granted", "admin:owner@example.com"),
        ("tg-1", "messages", "granted", "admin:owner@example.com"),
        ("+4790000000", "marketing", "withdrawn", "admin:owner@example.com"),
        ("+4790000000", "messages", "withdrawn", "admin:owner@example.com"),
    ]
    assert ledger[0][4] == "CSV import crm.csv line 2 (basis consent): web form v3 2026-01-12"
    [entry] = await ui.audit("contacts.import")
    assert entry.actor == "admin:owner@example.com" and entry.detail == {
        "file": "crm.csv", "lines": 4, "imported": 2, "skipped": 2,
        "bases": {"consent": 1, "withdrawn": 1},
    }  # fmt: skip
    assert len(await ui.audit("consent.")) == 3  # one per purpose and contact


async def test_an_uploaded_file_is_previewed(ui: UI) -> None:
    client = await desk(ui)
    _s, html = await page(client, "/contacts/import")
    from quart.datastructures import FileStorage

    from tests.ui.conftest import csrf_of

    data = GOOD.replace("sms,", "support,").encode()
    upload = FileStorage(io.BytesIO(data), filename="../../etc/crm list.csv")
    response = await client.post(
        "/contacts/import/preview", form={"csrf": csrf_of(html)}, files={"file": upload}
    )
    body = await response.get_data(as_text=True)
    assert response.status_code == 200 and "<strong>3</strong> ready to import" in body
    assert 'name="filename" value="....etccrm list.csv"' in body
    bad = FileStorage(io.BytesIO(b"name,phone\nAnn,123\n"), filename="x.csv")
    response = await client.post(
        "/contacts/import/preview", form={"csrf": csrf_of(html)}, files={"file": bad}
    )
    assert response.status_code == 400
    assert "unknown column(s) &#39;name&#39;, &#39;phone&#39;" in await response.get_data(
        as_text=True
    )
