"""Retention of personal contents: a store with old and new rows, swept with a clock of our own, loses
exactly the contents past their keep and keeps every row, timing and count for statistics. (Config
mistakes: tests/unit/test_http_parts.py.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.config import RetentionSettings
from gateway.daemon.retention import DAY_S, Sweeper
from models.store import Store

NOW = 1_900_000_000.0


def ago(days: float) -> float:
    return NOW - days * DAY_S


def fill(db: sqlite3.Connection) -> None:
    """Old and new of each kind; ids/names say which must be blanked ('old') and which kept."""
    for call_id, started, ended in (("old", 40, 39.9), ("new", 2, 1.9), ("crashed-old", 35, None),
                                    ("ending-edge", 31, 29)):
        db.execute("INSERT INTO calls (call_id, caller, site, transport, started_at, ended_at, end_reason)"
                   " VALUES (?, '+15550102030', 'clinic', 'audiosocket', ?, ?, 'hangup')",
                   [call_id, ago(started), ended and ago(ended)])
        for seq, speaker in enumerate(("assistant", "caller")):
            db.execute("INSERT INTO turns (call_id, seq, speaker, text, at, timings_ms, interrupted)"
                       " VALUES (?, ?, ?, 'my name is Ann', ?, '{\"stt\": 120.0}', 0)",
                       [call_id, seq, speaker, ago(started)])
    for question, status, created, answered in (("old answered", "answered", 60, 31),
                                                ("old unresolved", "unresolved", 31, None),
                                                ("recent answered", "answered", 60, 29),
                                                ("old but open", "open", 90, None)):
        db.execute("INSERT INTO help_requests (question, status, answer, created_at, answered_at, followup_note)"
                   " VALUES (?, ?, ?, ?, ?, 'note')",
                   [question, status, "an answer" if answered else None, ago(created), answered and ago(answered)])
    db.execute("INSERT INTO contacts (id, number, created_at) VALUES (1, '+15550102030', ?)", [ago(100)])
    db.execute("INSERT INTO threads (id, contact_id, created_at) VALUES (1, 1, ?)", [ago(100)])
    for body, status, at in (("old reply", "sent", 31), ("new reply", "sent", 1), ("old pending", "pending", 31),
                             ("old held", "held", 31)):
        db.execute("INSERT INTO messages (thread_id, channel, direction, body, subject, status, at)"
                   " VALUES (1, 'sms', 'in', ?, 'subj', ?, ?)", [body, status, ago(at)])
    for key, body, state, updated in (("a", "old sent", "delivered", 31), ("b", "old failed", "failed", 40),
                                      ("c", "old queued", "queued", 31), ("d", "new sent", "sent", 1)):
        db.execute("INSERT INTO outbox (idempotency_key, channel, recipient, subject, body, html, state,"
                   " next_attempt_at, created_at, updated_at) VALUES (?, 'sms', '+15550102030', 's', ?, '<p>',"
                   " ?, 0, ?, ?)", [key, body, state, ago(updated), ago(updated)])


async def test_sweep_blanks_exactly_the_expired_contents_and_keeps_the_aggregates(tmp_path: Path) -> None:
    path = tmp_path / "sb.db"
    await (await Store.open(path)).close()  # the schema
    with sqlite3.connect(path) as db:
        fill(db)
    with sqlite3.connect(path) as db:
        counts_before = [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                         for t in ("calls", "turns", "help_requests", "messages", "outbox", "outbox_events")]
    store = await Store.open(path)
    try:
        sweeper = Sweeper(store, RetentionSettings(), clock=lambda: NOW)  # the defaults: 30 days each
        swept = await sweeper.sweep()
        assert swept == {"audit_rows": 0, "otp_codes": 0, "turns": 4, "help_requests": 2, "messages": 1,
                         "outbox": 2}
        assert not any((await sweeper.sweep()).values())  # nothing left to do
        assert [t.text for t in await store.turns("old")] == ["", ""]
        assert [t.timings_ms for t in await store.turns("old")] == [{"stt": 120.0}] * 2  # timings stay
        assert [t.text for t in await store.turns("new")] == ["my name is Ann"] * 2
        assert [t.text for t in await store.turns("ending-edge")] == ["my name is Ann"] * 2  # ended 29 days ago
        assert [t.text for t in await store.turns("crashed-old")] == ["", ""]  # never ended: by its start
        call = await store.call("old")
        assert call is not None and call["end_reason"] == "hangup" and call["ended_at"] == ago(39.9)
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("calls", "turns", "help_requests", "messages", "outbox", "outbox_events")] == counts_before
        assert db.execute("SELECT question, status, answer, followup_note FROM help_requests ORDER BY id").fetchall() \
            == [("", "answered", None, None), ("", "unresolved", None, None),
                ("recent answered", "answered", "an answer", "note"), ("old but open", "open", None, "note")]
        assert db.execute("SELECT body, subject, status FROM messages ORDER BY id").fetchall() == [
            ("", None, "sent"), ("new reply", "subj", "sent"), ("old pending", "subj", "pending"),
            ("old held", "subj", "held")]
        assert db.execute("SELECT body, html, subject, state FROM outbox ORDER BY id").fetchall() == [
            ("", None, None, "delivered"), ("", None, None, "failed"), ("old queued", "<p>", "s", "queued"),
            ("new sent", "<p>", "s", "sent")]


async def test_sweep_changes_in_batches(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "sb.db")
    try:
        for i in range(9):
            await store.add_thread_message(await store.thread_for("+15550102030"), "sms", "in", f"text {i}", "sent")
        assert (await store.sweep_contents(0.0, 0.0, messages_before=NOW, batch=4))["messages"] == 9
        assert [m.body for m in await store.thread_messages(await store.thread_for("+15550102030"))] == [""] * 9
    finally:
        await store.close()

