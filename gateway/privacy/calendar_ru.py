"""The Russian working-day calendar: what "ten working days" (152-FZ art. 14, 20) means.

Non-working days are Saturdays and Sundays, the public holidays of the Labour Code (art. 112:
1-6 and 8 January New Year holidays, 7 January Christmas, 23 February, 8 March, 1 May, 9 May,
12 June, 4 November; a holiday on a weekend moves to the next working day, except the January
ones), and the days the Government moves each year by decree (a weekend that coincides with a
January holiday goes to another date; a Saturday may become a working day). The decrees:

- 2025: Постановление Правительства РФ от 04.10.2024 № 1335 «О переносе выходных дней в 2025
  году»: 4 Jan (Sat) -> 2 May, 5 Jan (Sun) -> 31 Dec, 23 Feb (Sun) -> 8 May, 8 Mar (Sat)
  -> 13 Jun, 1 Nov (Sat, a working day) -> 3 Nov.
- 2026: Постановление Правительства РФ от 24.09.2025 № 1466 «О переносе выходных дней в 2026
  году»: 3 Jan (Sat) -> 9 Jan, 4 Jan (Sun) -> 31 Dec.
- 2027: Постановление Правительства РФ от 17.09.2026 № 1187 «О переносе выходных дней в 2027
  году»: 2 Jan (Sat) -> 5 Nov, 3 Jan (Sun) -> 31 Dec, 20 Feb (Sat, a working day) -> 22 Feb.

The days themselves come from the ``holidays`` package (python-holidays, which encodes the
Labour Code and each year's decree); :data:`DECREES` restates the transfers above and a test
checks the package against them, so an update that disagrees with a decree fails the suite.
For a year with no decree yet (the Government publishes it in the autumn before), the calendar
still knows the Labour Code's holidays but not the transfers: :func:`is_certain` says so and the
request register shows such a deadline as provisional.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import holidays


@dataclasses.dataclass(frozen=True)
class Decree:
    year: int
    title: str
    moves: tuple[tuple[dt.date, dt.date], ...]
    """(day off moved, the day it moved to)."""
    working_weekends: tuple[dt.date, ...] = ()
    """Saturdays or Sundays that became working days."""


D = dt.date
DECREES: dict[int, Decree] = {
    2025: Decree(
        2025,
        "Постановление Правительства РФ от 04.10.2024 № 1335 «О переносе выходных дней в 2025 году»",
        (
            (D(2025, 1, 4), D(2025, 5, 2)),
            (D(2025, 1, 5), D(2025, 12, 31)),
            (D(2025, 2, 23), D(2025, 5, 8)),
            (D(2025, 3, 8), D(2025, 6, 13)),
            (D(2025, 11, 1), D(2025, 11, 3)),
        ),
        (D(2025, 11, 1),),
    ),
    2026: Decree(
        2026,
        "Постановление Правительства РФ от 24.09.2025 № 1466 «О переносе выходных дней в 2026 году»",
        ((D(2026, 1, 3), D(2026, 1, 9)), (D(2026, 1, 4), D(2026, 12, 31))),
    ),
    2027: Decree(
        2027,
        "Постановление Правительства РФ от 17.09.2026 № 1187 «О переносе выходных дней в 2027 году»",
        (
            (D(2027, 1, 2), D(2027, 11, 5)),
            (D(2027, 1, 3), D(2027, 12, 31)),
            (D(2027, 2, 20), D(2027, 2, 22)),
        ),
        (D(2027, 2, 20),),
    ),
}
FIRST_YEAR = 2025


@functools.lru_cache(maxsize=16)
def _year(year: int) -> holidays.HolidayBase:
    import holidays  # here, not at the top: ~3 MiB a daemon pays only once a deadline is due

    return holidays.country_holidays("RU", years=year)


def is_certain(year: int) -> bool:
    """True when the Government's transfers for ``year`` are known (a decree is encoded)."""
    return year in DECREES or year < FIRST_YEAR


def is_working_day(day: dt.date) -> bool:
    """A working day in Russia: not a weekend, holiday or moved day off; a decreed working
    Saturday counts."""
    calendar = _year(day.year)
    if day in calendar:
        return False
    if day.weekday() >= 5:
        return day in calendar.weekend_workdays
    return True


def add_working_days(start: dt.date, count: int) -> dt.date:
    """The ``count``-th working day after ``start`` (``start`` itself never counts: a period
    begins the day after the event it runs from, Civil Code art. 191)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    day, left = start, count
    while left:
        day += dt.timedelta(days=1)
        if is_working_day(day):
            left -= 1
    return day


def working_days_between(start: dt.date, end: dt.date) -> int:
    """Working days after ``start`` up to and including ``end`` (negative if ``end`` is
    earlier): how many of a request's working days have run."""
    if end < start:
        return -working_days_between(end, start)
    return sum(
        1 for n in range(1, (end - start).days + 1) if is_working_day(start + dt.timedelta(days=n))
    )
