"""The "forms" retention categories: a website form submission is archived after
``[retention] form_submissions_active_days`` (default 30) and deleted
``form_submissions_archive_days`` (default 180) after that (gateway.privacy.retention sweeps).

Submissions belong to no contact (a form is no chat), so no per-contact legal hold applies;
their fields may still hold personal data, which is why they are deleted whole."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import sqlite_utils

from gateway.privacy.retention_categories import (
    Category,
    Rows,
    Scope,
    Subjects,
    delete_rows,
    marks,
    register_category,
)


def _active(scope: Scope) -> tuple[str, list[Any]]:
    sql, params = scope.older("f.created_at")
    return f"f.archived_at IS NULL AND {sql}", params


def _archived(scope: Scope) -> tuple[str, list[Any]]:
    sql, params = scope.older("f.archived_at")
    return f"f.archived_at IS NOT NULL AND {sql}", params


def _archive(db: sqlite_utils.Database, scope: Scope, ids: Sequence[int]) -> Subjects:
    db.conn.execute(
        f"UPDATE form_submissions SET archived_at = ? WHERE id IN ({marks(ids)})",
        [scope.now, *ids],
    )
    return collections.Counter({"": len(ids)})


FORMS_ACTIVE = register_category(
    Category(
        name="form_submissions_active",
        key="form_submissions_active_days",
        title="Form submissions (active)",
        action="archived",
        what="website form submissions: marked archived, kept whole until the archive period ends",
        rows=Rows("form_submissions f", "f.id", _active),
        apply=_archive,
        per_channel=False,
    )
)
FORMS_ARCHIVE = register_category(
    Category(
        name="form_submissions_archive",
        key="form_submissions_archive_days",
        title="Form submissions (archive)",
        action="deleted",
        what="archived website form submissions: every field",
        rows=Rows("form_submissions f", "f.id", _archived),
        apply=delete_rows("form_submissions"),
        per_channel=False,
    )
)
