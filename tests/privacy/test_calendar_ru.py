"""The Russian working-day calendar against the Government's decrees for 2025-2027."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.privacy import calendar_ru
from gateway.privacy.calendar_ru import DECREES, add_working_days, is_working_day

D = dt.date


@pytest.mark.parametrize("year", sorted(DECREES))
def test_every_decreed_transfer_is_in_the_calendar(year):
    decree = DECREES[year]
    for moved, to in decree.moves:
        assert not is_working_day(to), f"{to} is a day off by {decree.title}"
        if moved in decree.working_weekends:
            assert is_working_day(moved), f"{moved} is a working Saturday by {decree.title}"
        else:
            assert not is_working_day(moved)  # a holiday that fell on a weekend
    assert "Постановление Правительства РФ" in decree.title and str(year) in decree.title


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (D(2025, 1, 8), False),  # New Year holidays
        (D(2025, 1, 9), True),
        (D(2025, 5, 2), False),  # moved from 4 January
        (D(2025, 11, 1), True),  # a working Saturday
        (D(2025, 11, 3), False),
        (D(2025, 12, 31), False),
        (D(2026, 1, 9), False),  # moved from 3 January
        (D(2026, 1, 12), True),
        (D(2026, 2, 23), False),
        (D(2026, 3, 9), False),  # 8 March on a Sunday moves to Monday
        (D(2026, 11, 4), False),
        (D(2026, 12, 31), False),  # moved from 4 January
        (D(2027, 2, 20), True),  # a working Saturday
        (D(2027, 2, 22), False),
        (D(2027, 5, 3), False),
        (D(2027, 11, 5), False),  # moved from 2 January
        (D(2027, 12, 31), False),
        (D(2027, 12, 30), True),
    ],
)
def test_known_days(day, working):
    assert is_working_day(day) is working


def test_ten_working_days_across_the_new_year_holidays():
    # Received Monday 28 December 2026: 29 and 30 December count, 31 December (moved from
    # 4 January 2026) and 1-8 January 2027 do not, nor the weekend of 9-10 January.
    assert add_working_days(D(2026, 12, 28), 10) == D(2027, 1, 20)
    assert add_working_days(D(2026, 12, 28), 15) == D(2027, 1, 27)
    assert add_working_days(D(2025, 10, 24), 10) == D(2025, 11, 10)  # 1 Nov worked, 3-4 off


def test_start_day_never_counts():
    saturday = D(2026, 6, 13)
    assert add_working_days(saturday, 1) == D(2026, 6, 15)
    assert add_working_days(D(2026, 6, 15), 1) == D(2026, 6, 16)
    with pytest.raises(ValueError):
        add_working_days(saturday, 0)


def test_undecreed_year_is_not_certain():
    assert calendar_ru.is_certain(2026) and calendar_ru.is_certain(2027)
    assert not calendar_ru.is_certain(2028)
    assert not is_working_day(D(2028, 1, 3))  # the Labour Code's holidays are still known


@given(st.dates(D(2025, 1, 1), D(2027, 11, 30)), st.integers(1, 40))
def test_working_days_between_inverts_add(start, n):
    end = add_working_days(start, n)
    assert is_working_day(end)
    assert calendar_ru.working_days_between(start, end) == n
    assert calendar_ru.working_days_between(end, start) == -n
