"""The site's time zone (`site.timezone`, default the server's) for everything the dashboard shows,
filters or groups by: every conversion between a stored time (Unix seconds) and a wall clock is here.

The zone is per request (set by the dashboard's middleware), so pages need not carry it as an argument;
outside a request it is the server's own zone.
"""

from __future__ import annotations

import datetime as dt
from contextvars import ContextVar
from zoneinfo import ZoneInfo

from llm.site import server_zone

ZONE: ContextVar[ZoneInfo | None] = ContextVar("dashboard_zone", default=None)


def zone() -> ZoneInfo:
    return ZONE.get() or server_zone()


def local(at: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, zone())


def minute(at: float | None) -> str:
    return local(at).strftime("%Y-%m-%d %H:%M") if at else "-"


def second(at: float) -> str:
    return local(at).strftime("%Y-%m-%d %H:%M:%S")


def day_start(day: dt.date) -> float:
    """The instant `day` starts in the zone."""
    return dt.datetime.combine(day, dt.time(), tzinfo=zone()).timestamp()


def hours(now: float, n: int) -> list[float]:
    """The starts of the last `n` local hours up to the current one, oldest first."""
    top = local(now).replace(minute=0, second=0, microsecond=0).timestamp()
    return [top - k * 3600 for k in range(n - 1, -1, -1)]


def days(now: float, n: int) -> list[dt.date]:
    """The last `n` local days up to today, oldest first."""
    today = local(now).date()
    return [today - dt.timedelta(days=k) for k in range(n - 1, -1, -1)]


def offsets(since: float, until: float) -> list[tuple[float, int]]:
    """The zone's UTC offset (seconds) at `since` and from each change (DST) up to `until`: [(from, offset)],
    for SQL to turn stored times into local ones (SQLite knows only the server's zone)."""
    def offset(at: float) -> int:
        return int(local(at).utcoffset().total_seconds())  # type: ignore[union-attr]  # an aware datetime

    found = [(since, offset(since))]
    at = since
    while at < until:  # zones change at most a few times a year, never twice within an hour
        step = min(at + 3600, until)
        if offset(step) != found[-1][1]:
            lo, hi = int(at), int(step)  # the change is in (lo, hi]: find its second
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == found[-1][1] else (lo, mid)
            found.append((hi, offset(hi)))
        at = step
    return found
