"""site.timezone on the dashboard: a zone far from the server's (Kiritimati, UTC+14, where the day starts
before anyone else's) decides the times every page shows, the history's date filter and the overview's
hour and day buckets, at the day boundary."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.dashboard import clock
from gateway.dashboard.overview import DAYS, HOURS, figures, windows
from models.records import CallEvent, CallRecord
from test_dashboard import Site, browser, open_site, sign_in

ZONE = ZoneInfo("Pacific/Kiritimati")
UTC = dt.timezone.utc
# 00:30 on 11 March in Kiritimati is 10:30 UTC on the 10th: the two calls are one day apart there only.
AFTER_MIDNIGHT = dt.datetime(2026, 3, 10, 10, 30, tzinfo=UTC).timestamp()
BEFORE_MIDNIGHT = AFTER_MIDNIGHT - 3600  # 23:30 on the 10th there


@pytest.fixture
async def far(tmp_path: Path) -> AsyncIterator[Site]:
    async with open_site(tmp_path, ZONE) as opened:
        for call_id, at in (("after", AFTER_MIDNIGHT), ("before", BEFORE_MIDNIGHT)):
            await opened.store.start_call(CallRecord(call_id, "+15550102030", "202", "clinic", "audiosocket", at))
        await opened.store.add_event(CallEvent("after", "dtmf", AFTER_MIDNIGHT + 5, {"digit": "1"}))
        yield opened


async def test_history_shows_and_filters_stored_times_in_the_site_zone(far: Site) -> None:
    assert dt.datetime.fromtimestamp(AFTER_MIDNIGHT, ZONE).date() == dt.date(2026, 3, 11)
    async with browser() as http:
        await sign_in(http, far.url, "sam")
        for day, shown, hidden in (("2026-03-11", "2026-03-11 00:30", "2026-03-10 23:30"),
                                   ("2026-03-10", "2026-03-10 23:30", "2026-03-11 00:30")):
            async with http.get(f"{far.url}/history", params={"from": day, "to": day}) as page:
                text = await page.text()
            assert page.status == 200 and shown in text and hidden not in text, day
        async with http.get(f"{far.url}/history/calls/after") as page:
            text = await page.text()
        assert "2026-03-11 00:30" in text and "2026-03-11 00:30:05" in text  # the start and the event


async def test_overview_buckets_are_the_site_zone_hours_and_days(far: Site) -> None:
    now = time.time()
    midnight = dt.datetime.combine(dt.datetime.now(ZONE).date(), dt.time(), tzinfo=ZONE).timestamp()
    for call_id, at in (("today", midnight), ("yesterday", midnight - 1)):
        await far.store.start_call(CallRecord(call_id, "+15550102030", "202", "clinic", "audiosocket", at))
    token = clock.ZONE.set(ZONE)  # as the dashboard's middleware does for a request
    try:
        f = figures(await far.store.overview(*windows(now)), now)
    finally:
        clock.ZONE.reset(token)
    assert f["days"][-1] == dt.datetime.now(ZONE).date().isoformat()
    assert f["hours"][-1] == dt.datetime.fromtimestamp(now, ZONE).strftime("%Y-%m-%d %H")
    assert (f["daily"][-1], f["daily"][-2]) == (1, 1) and len(f["daily"]) == DAYS
    hour_of = dict(zip(f["hours"], f["hourly"]))
    assert len(f["hours"]) == HOURS and hour_of[dt.datetime.fromtimestamp(midnight, ZONE).strftime("%Y-%m-%d %H")] == 1
    late = dt.datetime.fromtimestamp(now, ZONE).hour == 23  # then yesterday's 23:00 is 24 hours ago: not shown
    assert hour_of.get(dt.datetime.fromtimestamp(midnight - 1, ZONE).strftime("%Y-%m-%d %H")) == (None if late else 1)
    async with browser() as http:
        await sign_in(http, far.url, "sam")
        async with http.get(f"{far.url}/overview") as page:
            text = await page.text()
        assert "Times in Pacific/Kiritimati" in text
        assert f'<th scope="row">{f["days"][-1]}</th><td>1</td>' in text


def test_offsets_find_the_second_a_zone_changes_to_daylight_time() -> None:
    token = clock.ZONE.set(ZoneInfo("America/New_York"))  # 2 a.m. EST on 8 March 2026 became 3 a.m. EDT
    try:
        change = dt.datetime(2026, 3, 8, 7, tzinfo=UTC).timestamp()
        assert clock.offsets(change - 86400, change + 86400) == [(change - 86400, -5 * 3600), (change, -4 * 3600)]
        assert clock.offsets(change, change + 3600) == [(change, -4 * 3600)]
        assert clock.day_start(dt.date(2026, 3, 8)) == dt.datetime(2026, 3, 8, 5, tzinfo=UTC).timestamp()
    finally:
        clock.ZONE.reset(token)


async def test_overview_buckets_follow_a_dst_change(tmp_path: Path) -> None:
    """A day with the change is 23 hours long: 01:59:59 EST and 03:00 EDT are one second apart."""
    async with open_site(tmp_path) as site:
        change = dt.datetime(2026, 3, 8, 7, tzinfo=UTC).timestamp()
        for call_id, at in (("est", change - 1), ("edt", change), ("next-day", change + 21 * 3600)):
            await site.store.start_call(CallRecord(call_id, "+15550102030", "202", "clinic", "audiosocket", at))
        token = clock.ZONE.set(ZoneInfo("America/New_York"))
        try:
            now = change + 22 * 3600  # 1 a.m. EDT on 9 March (the "next-day" call: midnight)
            raw = await site.store.overview(*windows(now))
        finally:
            clock.ZONE.reset(token)
        hourly = {row["bucket"]: row["n"] for row in raw["hourly"]}
        daily = {row["bucket"]: row["n"] for row in raw["daily"]}
        assert hourly == {"2026-03-08 01": 1, "2026-03-08 03": 1, "2026-03-09 00": 1}
        assert daily == {"2026-03-08": 2, "2026-03-09": 1}
