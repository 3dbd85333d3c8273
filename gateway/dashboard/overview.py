"""The Overview page (supervisor and above): calls per hour and day, the outcome mix, voice-to-voice
p50/p90 per day and the unanswered-question rate, as inline SVG bar and line charts drawn here (no
script, no CDN), each with a <title>, per-point <title>s and a visually hidden table of its data.
Buckets are the site's hours and days (clock), as every dashboard page shows times."""

from __future__ import annotations

import time
from typing import Any

from gateway.dashboard import clock
from gateway.dashboard.pages import e, layout
from models.records import StaffSession
from models.store import CALL_OUTCOMES

HOURS, DAYS = 24, 30
_W, _H, _PAD = 640, 180, 28  # the SVG's drawing area and its bottom margin for labels
Series = tuple[str, list[float | None], str]  # name, one value per label (None: no data), colour


def windows(now: float) -> tuple[float, float, list[tuple[float, int]]]:
    """Store.overview's arguments: the starts of the oldest hour and day shown, and the site zone's offsets."""
    hour, day = clock.hours(now, HOURS)[0], clock.day_start(clock.days(now, DAYS)[0])
    return hour, day, clock.offsets(min(hour, day), now)


def figures(raw: dict[str, list[dict[str, Any]]], now: float) -> dict[str, Any]:
    """The store's rows (Store.overview) as one value per hour/day bucket, oldest first."""
    hours = [clock.local(at).strftime("%Y-%m-%d %H") for at in clock.hours(now, HOURS)]
    days = [day.isoformat() for day in clock.days(now, DAYS)]

    def counts(name: str) -> dict[str, int]:
        return {row["bucket"]: row["n"] for row in raw[name]}

    v2v = {row["bucket"]: row for row in raw["v2v"]}
    asked, helped = counts("questions"), counts("help")
    outcomes = {row["outcome"]: row["n"] for row in raw["outcomes"]}
    return {
        "hours": hours, "days": days,
        "hourly": [counts("hourly").get(h, 0) for h in hours],
        "daily": [counts("daily").get(d, 0) for d in days],
        "outcomes": [(o, outcomes.get(o, 0)) for o in CALL_OUTCOMES],
        "p50": [v2v[d]["p50"] if d in v2v else None for d in days],
        "p90": [v2v[d]["p90"] if d in v2v else None for d in days],
        "asked": [asked.get(d, 0) for d in days], "helped": [helped.get(d, 0) for d in days],
        "rate": [100 * helped.get(d, 0) / asked[d] if asked.get(d) else None for d in days],
    }


def _number(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.1f}{unit}" if unit == " %" else f"{value:.0f}{unit}"


def chart(ident: str, title: str, labels: list[str], series: list[Series], *, unit: str = "",
          bars: bool = True) -> str:
    """One chart: bars (the first series) or lines (every series), with the data again as a hidden table."""
    top = max([v for _, values, _ in series for v in values if v is not None] + [1])
    step = _W / max(len(labels), 1)
    y = (lambda v: _H - _PAD - (_H - 2 * _PAD) * v / top)
    marks = []
    for name, values, colour in series[:1] if bars else series:
        points = [(i, v) for i, v in enumerate(values) if v is not None]
        if bars:
            marks += [f'<rect x="{i * step + 1:.1f}" y="{y(v):.1f}" width="{max(step - 2, 1):.1f}" '
                      f'height="{_H - _PAD - y(v):.1f}" fill="{colour}"><title>{e(labels[i])}: '
                      f'{e(_number(v, unit))}</title></rect>' for i, v in points]
            continue
        coords = " ".join(f"{(i + .5) * step:.1f},{y(v):.1f}" for i, v in points)
        marks.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        marks += [f'<circle cx="{(i + .5) * step:.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"><title>{e(name)} '
                  f'{e(labels[i])}: {e(_number(v, unit))}</title></circle>' for i, v in points]
    # Few labels (the outcomes) each under its bar; else the first and the last at the edges.
    shown = [((i + .5) * step, "middle", label) for i, label in enumerate(labels)] if len(labels) <= 8 else \
        [(0, "start", labels[0]), (_W, "end", labels[-1])]
    ends = "".join(f'<text x="{x:.1f}" y="{_H - 8}" font-size="11" text-anchor="{anchor}">{e(label)}</text>'
                   for x, anchor, label in shown)
    ends += f'<text x="0" y="12" font-size="11">max {e(_number(top, unit))}</text>'
    legend = ", ".join(f"{name} {colour}" for name, _, colour in series)
    head = "".join(f'<th scope="col">{e(name)}</th>' for name, _, _ in series)
    rows = "".join(f'<tr><th scope="row">{e(label)}</th>'
                   + "".join(f"<td>{e(_number(values[i], unit))}</td>" for _, values, _ in series) + "</tr>"
                   for i, label in enumerate(labels))
    return (f'<figure class="card"><figcaption id="{ident}">{e(title)}'
            f'{"" if bars else f" ({e(legend)})"}</figcaption>'
            f'<svg viewBox="0 0 {_W} {_H}" role="img" aria-labelledby="{ident}-t" class="chart">'
            f'<title id="{ident}-t">{e(title)}</title>{"".join(marks)}{ends}</svg>'
            f'<table class="sr-only"><caption>{e(title)}</caption><thead><tr><th scope="col">When</th>{head}'
            f'</tr></thead><tbody>{rows}</tbody></table></figure>')


def overview_page(session: StaffSession, raw: dict[str, list[dict[str, Any]]], now: float | None = None) -> str:
    f = figures(raw, time.time() if now is None else now)
    outcome_labels = [o for o, _ in f["outcomes"]]
    asked, helped = sum(f["asked"]), sum(f["helped"])
    total_rate = f"{100 * helped / asked:.1f} %" if asked else "-"
    body = (f'<p class="muted">Times in {e(clock.zone().key)}. Last {DAYS} days: {sum(f["daily"])} call(s), '
            f'{asked} question(s) asked, '
            f'{helped} help request(s) ({total_rate} unanswered).</p>'
            + chart("hourly", f"Calls per hour, last {HOURS} hours", f["hours"], [("calls", f["hourly"], "navy")])
            + chart("daily", f"Calls per day, last {DAYS} days", f["days"], [("calls", f["daily"], "navy")])
            + chart("outcomes", f"Outcome of calls, last {DAYS} days", outcome_labels,
                    [("calls", [n for _, n in f["outcomes"]], "steelblue")])
            + chart("v2v", "Voice-to-voice per day (ms)", f["days"],
                    [("p50", f["p50"], "teal"), ("p90", f["p90"], "orangered")], unit=" ms", bars=False)
            + chart("rate", "Unanswered-question rate per day (help requests / questions asked)", f["days"],
                    [("unanswered", f["rate"], "darkred")], unit=" %", bars=False))
    return layout("Overview", body, session)
