"""The dashboard Overview's cost on a large store: its queries (Store.overview) and the page render.

Builds a synthetic store of N calls (default 20 000) spread over 60 days, 6 turns each (3 caller, 3
assistant with a voice-to-voice time), some transfers, messages and help requests, and inbound texts;
then times the Overview's queries and its page, several runs each.

    .venv/bin/python bench/overview.py [N]
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from common import percentile, table

from gateway.dashboard.overview import overview_page, windows
from models.records import StaffSession, StaffUser
from models.store import Store

DAYS = 60


def fill(path: Path, calls: int) -> None:
    rng, now = random.Random(7), time.time()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO contacts (id, number, created_at) VALUES (1, '+15550100000', 0)")
    db.execute("INSERT INTO threads (id, contact_id, created_at) VALUES (1, 1, 0)")
    rows, turns, events, helps, texts = [], [], [], [], []
    for i in range(calls):
        start = now - rng.random() * DAYS * 86400
        call_id = f"c{i}"
        rows.append((call_id, "+1555010" + f"{i:04d}"[-4:], "202", "clinic", "audiosocket", start, start + 90,
                     rng.choice(("goodbye", "hangup", "transferred"))))
        for seq in range(6):
            timings = {"stt": 120.0} if seq % 2 == 0 else {"voice_to_voice": rng.gauss(900, 200)}
            turns.append((call_id, seq, "caller" if seq % 2 == 0 else "assistant", "text", start + seq * 10,
                          json.dumps(timings), 0))
        if i % 7 == 0:
            events.append((call_id, "transfer_done", start + 30, "{}"))
        if i % 11 == 0:
            helps.append((call_id, "a question", "open", start + 20))
        if i % 3 == 0:
            texts.append((1, "sms", "in", "text", "answered", start, 0))
    db.executemany("INSERT INTO calls (call_id, caller, dialled, site, transport, started_at, ended_at, end_reason)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.executemany("INSERT INTO turns (call_id, seq, speaker, text, at, timings_ms, interrupted)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?)", turns)
    db.executemany("INSERT INTO call_events (call_id, kind, at, data) VALUES (?, ?, ?, ?)", events)
    db.executemany("INSERT INTO help_requests (call_id, question, status, created_at) VALUES (?, ?, ?, ?)", helps)
    db.executemany("INSERT INTO messages (thread_id, channel, direction, body, status, at, attempts)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?)", texts)
    db.commit()
    db.close()


async def main(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sb.db"
        await (await Store.open(path)).close()  # the schema
        fill(path, calls)
        store = await Store.open(path)
        session = StaffSession(StaffUser("sam", "supervisor", "", 0), "csrf", 0)
        queries, pages = [], []
        for _ in range(10):
            now = time.time()
            began = time.perf_counter()
            raw = await store.overview(*windows(now))
            queried = time.perf_counter()
            overview_page(session, raw, now)
            pages.append((time.perf_counter() - began) * 1000)
            queries.append((queried - began) * 1000)
        await store.close()
    print(table([(str(calls), f"{percentile(queries, 50):.0f}", f"{max(queries):.0f}",
                  f"{percentile(pages, 50):.0f}", f"{max(pages):.0f}")],
                ("calls", "queries p50 ms", "queries max ms", "page p50 ms", "page max ms")))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
