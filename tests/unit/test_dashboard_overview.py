"""The Overview page: its figures from a store with known calls, turns, texts and help requests across
hours and days (exact counts, nearest-rank percentiles, the unanswered rate), the empty store, escaping
in the SVG charts, and the supervisor-only route over real HTTP."""

from __future__ import annotations

import datetime as dt
import time

from gateway.dashboard.overview import DAYS, HOURS, chart, figures, windows
from models.records import CallRecord, HelpRequest, Turn
from models.store import Store
from test_dashboard import Site, browser, sign_in, site  # noqa: F401  # site: the dashboard on a real store


async def a_call(store: Store, call_id: str, start: float, *, asked: int = 0, v2v: tuple[float, ...] = (),
                 ended: bool = True) -> None:
    """A call with `asked` caller turns and an assistant turn for each voice-to-voice time."""
    await store.start_call(CallRecord(call_id, "+15550102030", "202", "clinic", "audiosocket", start))
    seq = 0
    for seq in range(asked):
        await store.add_turn(Turn(call_id, seq, "caller", "a question", start + 1, {"stt": 90.0}))
    for seq, ms in enumerate(v2v, start=seq + 1):
        await store.add_turn(Turn(call_id, seq, "assistant", "an answer", start + 1, {"voice_to_voice": ms}))
    if ended:
        await store.end_call(call_id, "goodbye", start + 60)


async def test_figures_count_calls_per_hour_and_day_outcomes_percentiles_and_the_unanswered_rate(site: Site) -> None:
    store, now = site.store, time.time()
    hour = dt.datetime.fromtimestamp(now).replace(minute=0, second=0, microsecond=0).timestamp()
    today = dt.date.fromtimestamp(now)

    def day(days_ago: int, seconds: float = 0) -> float:
        return dt.datetime.combine(today - dt.timedelta(days=days_ago), dt.time()).timestamp() + seconds

    await a_call(store, "now", hour, ended=False)  # this hour, in progress
    await a_call(store, "hour-1", hour - 3600 + 1)  # the hour before; abandoned (not a word)
    await a_call(store, "hour-23", hour - 23 * 3600)  # the oldest hour shown
    await a_call(store, "hour-24", hour - 23 * 3600 - 1)  # before the hours shown
    await a_call(store, "day-1", day(1, 60), asked=4, v2v=(400, 100, 1000, 200, 300))  # answered
    await a_call(store, "day-3", day(3, 3600), asked=2, v2v=(500,))  # escalated
    await store.create_help_request(HelpRequest(None, "day-3", None, "sundays?", created_at=day(3, 3700)))
    await a_call(store, "day-29", day(DAYS - 1))  # the oldest day shown
    await a_call(store, "day-30", day(DAYS - 1, -1))  # before the days shown: counted nowhere
    await store.create_help_request(HelpRequest(None, None, "+15550109999", "parking?", created_at=day(0)))
    await store.create_help_request(HelpRequest(None, None, "+15550109999", "old", created_at=day(DAYS, 1)))
    thread = await store.thread_for_address("+15550109999")
    await store.add_thread_message(thread, "sms", "in", "a text question", "answered", at=day(0))
    await store.add_thread_message(thread, "sms", "out", "a reply", "sent", at=day(0))

    f = figures(await store.overview(*windows(now)), now)
    assert len(f["hourly"]) == HOURS and (f["hourly"][0], f["hourly"][-2], f["hourly"][-1]) == (1, 1, 1)
    assert sum(f["hourly"]) == 3
    assert len(f["daily"]) == DAYS and (f["daily"][0], f["daily"][-4]) == (1, 1)
    assert f["daily"][-2] + f["daily"][-1] == 5  # day-1 and the hourly ones (today or yesterday)
    assert sum(f["daily"]) == 7 and f["days"][-1] == today.isoformat()
    assert dict(f["outcomes"]) == {"answered": 1, "transferred": 0, "message": 0, "escalated": 1, "abandoned": 4,
                                   "overflow": 0, "in progress": 1}
    assert (f["p50"][-2], f["p90"][-2]) == (300, 1000)  # nearest rank: the 3rd and the 5th of 5
    assert (f["p50"][-4], f["p90"][-4]) == (500, 500)
    assert f["p50"][-1] is None and f["p90"].count(None) == DAYS - 2
    assert (f["asked"][-1], f["asked"][-2], f["asked"][-4], sum(f["asked"])) == (1, 4, 2, 7)
    assert (f["helped"][-1], f["helped"][-4], sum(f["helped"])) == (1, 1, 2)
    assert (f["rate"][-1], f["rate"][-2], f["rate"][-4]) == (100, 0, 50) and f["rate"].count(None) == DAYS - 3
    await store.sweep_contents(now, now, now)  # retention blanks the texts, the figures stay
    assert figures(await store.overview(*windows(now)), now) == f


def test_charts_escape_their_labels_and_carry_the_data_as_text() -> None:
    svg = chart("c", "Calls <b>", ["<i>x</i>", "y"], [("calls & co", [2, None], "navy")], bars=False)
    assert "<b>" not in svg and "<i>" not in svg and "Calls &lt;b&gt;" in svg and "calls &amp; co" in svg
    assert '<svg viewBox="0 0 640 180" role="img" aria-labelledby="c-t"' in svg and "<title id=\"c-t\">" in svg
    assert '<td>2</td><td>-</td>' not in svg and "<td>2</td>" in svg and "<td>-</td>" in svg  # the hidden table


async def test_the_overview_is_for_supervisors_and_renders_an_empty_store(site: Site) -> None:
    async with browser() as http:
        await sign_in(http, site.url, "oli")
        async with http.get(f"{site.url}/overview") as page:
            assert page.status == 403
    async with browser() as http:
        await sign_in(http, site.url, "sam")
        async with http.get(f"{site.url}/overview") as page:
            text = await page.text()
        assert page.status == 200 and "0 call(s), 0 question(s) asked, 0 help request(s) (- unanswered)" in text
        assert text.count("<svg") == 5 and 'href="/dashboard/overview"' in text
        await a_call(site.store, "call-1", time.time() - 5, asked=1, v2v=(812,))
        async with http.get(f"{site.url}/overview") as page:
            text = await page.text()
        assert "1 call(s), 1 question(s) asked" in text and "812 ms" in text
