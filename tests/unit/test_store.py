"""The SQLite store on real files: schema migrations, WAL, serialised access, records round-trip."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from models.migrations import LATEST_VERSION, SchemaVersionError
from models.records import (
    CallEvent, CallRecord, HelpRequest, KnowledgeEntry, TakenMessage, Turn,
)
from models.store import NotFoundError, Store, StoreClosedError


@pytest_asyncio.fixture(loop_scope="function")
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "data" / "switchboard.db")
    yield s
    await s.close()


@contextlib.contextmanager
def raw(store: Store) -> Iterator[sqlite3.Connection]:
    """A second, independent connection: what another process would see on disk."""
    conn = sqlite3.connect(store.path)
    conn.row_factory = sqlite3.Row
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def call(call_id: str = "c1", caller: str | None = "+1 (555) 010-2030") -> CallRecord:
    return CallRecord(call_id=call_id, caller=caller, dialled="100", site="main",
                      transport="audiosocket", started_at=1000.0)


async def test_open_migrates_an_empty_file_to_the_latest_schema(store: Store) -> None:
    with raw(store) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == LATEST_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert journal_mode(conn) == "wal"
    assert {"contacts", "threads", "messages", "calls", "turns", "call_events",
            "help_requests", "knowledge", "knowledge_fts"} <= tables
    assert (store.path.parent / "switchboard.db-wal").exists()  # WAL in use while open


def journal_mode(conn: sqlite3.Connection) -> str:
    return conn.execute("PRAGMA journal_mode").fetchone()[0]


async def test_reopen_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "sb.db"
    s = await Store.open(path)
    await s.start_call(call())
    await s.add_turn(Turn("c1", 0, "caller", "hello there", 1001.0, {"stt": 210.5}))
    await s.replace_admin_knowledge([KnowledgeEntry("hours", "When are you open?", "9 to 5")])
    await s.close()
    assert not (tmp_path / "sb.db-wal").exists() or (tmp_path / "sb.db-wal").stat().st_size == 0

    s = await Store.open(path)
    try:
        assert (await s.call("c1"))["caller"] == "+1 (555) 010-2030"
        assert [t.text for t in await s.turns("c1")] == ["hello there"]
        assert [e.id for e in await s.knowledge()] == ["hours"]
    finally:
        await s.close()


async def test_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sb.db"
    await (await Store.open(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", [LATEST_VERSION + 1])
    with pytest.raises(SchemaVersionError,
                       match=rf"sb\.db: database schema version {LATEST_VERSION + 1} is newer"):
        await Store.open(path)
    with sqlite3.connect(path) as conn:  # refused without touching anything
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == LATEST_VERSION + 1


async def test_a_file_that_is_not_a_database_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(sqlite3.DatabaseError, match="notes.db: cannot open as SQLite"):
        await Store.open(path)


async def test_concurrent_tasks_are_serialised_on_one_connection(store: Store) -> None:
    await store.start_call(call(caller=None))
    contact_ids = await asyncio.gather(*(store.contact_for("+15550009999") for _ in range(30)))
    await asyncio.gather(*(store.add_turn(Turn("c1", seq, "caller", f"turn {seq}", 1000.0 + seq))
                           for seq in reversed(range(40))))
    request_ids = await asyncio.gather(*(
        store.create_help_request(HelpRequest(None, "c1", None, f"question {i}", created_at=i + 1))
        for i in range(25)))

    assert len(set(contact_ids)) == 1  # get-or-create did not race
    assert [t.seq for t in await store.turns("c1")] == list(range(40))
    assert sorted(request_ids) == list(range(1, 26))
    assert len(await store.help_requests(status="open")) == 25


async def test_call_turns_and_events_round_trip(store: Store) -> None:
    await store.start_call(call())
    await store.add_turn(Turn("c1", 1, "assistant", "How can I help?", 1002.0,
                              {"tts_first_audio": 180.0}, action="answer", interrupted=True))
    await store.add_turn(Turn("c1", 0, "caller", "hi", 1001.0))
    await store.add_event(CallEvent("c1", "transfer", 1003.0, {"extension": "200"}))
    await store.add_event(CallEvent("c1", "hangup", 1004.0, {}))
    await store.end_call("c1", reason="caller hung up", ended_at=1005.0)

    turns = await store.turns("c1")
    assert turns[1] == Turn("c1", 1, "assistant", "How can I help?", 1002.0,
                            {"tts_first_audio": 180.0}, "answer", True)
    assert turns[0].interrupted is False and turns[0].timings_ms == {}
    assert [(e.kind, e.data) for e in await store.events("c1")] == [
        ("transfer", {"extension": "200"}), ("hangup", {})]
    row = await store.call("c1")
    assert row is not None and row["ended_at"] == 1005.0 and row["end_reason"] == "caller hung up"
    assert row["contact_id"] == await store.contact_for("+15550102030")
    assert await store.call("nope") is None


async def test_unknown_calls_are_errors(store: Store) -> None:
    with pytest.raises(NotFoundError, match="no call 'ghost'"):
        await store.end_call("ghost", "hangup", 1.0)
    with pytest.raises(sqlite3.IntegrityError):  # a turn must belong to a started call
        await store.add_turn(Turn("ghost", 0, "caller", "hi", 1.0))


async def test_contacts_and_threads_are_one_per_number(store: Store) -> None:
    a = await store.contact_for("+1 (555) 010-2030")
    assert await store.contact_for("+15550102030") == a
    assert await store.contact_for("+15550102031") != a
    assert await store.thread_for("+1 555 010 2030") == await store.thread_for("+15550102030")
    with pytest.raises(ValueError, match="not a phone number: 'anonymous'"):
        await store.contact_for("anonymous")
    await store.start_call(call(caller="anonymous"))  # withheld caller ID: no contact, no error
    assert (await store.call("c1"))["contact_id"] is None


async def test_taken_message_lands_on_the_callers_thread(store: Store) -> None:
    await store.start_call(call())
    message_id = await store.take_message(TakenMessage(
        "c1", "+15550102030", "Dr. Maria Lopez", "Ann Smith", "Please call me back about my crown.",
        1010.0))
    anonymous_id = await store.take_message(TakenMessage(None, None, None, None, "No number left.", 1011.0))

    with raw(store) as conn:
        rows = {r["id"]: r for r in conn.execute("SELECT * FROM messages")}
        contact = conn.execute("SELECT name FROM contacts WHERE number = '+15550102030'").fetchone()
    mine = rows[message_id]
    assert (mine["channel"], mine["direction"], mine["status"], mine["for_staff"]) == (
        "voice", "in", "new", "Dr. Maria Lopez")
    assert mine["thread_id"] == await store.thread_for("+15550102030")
    assert contact["name"] == "Ann Smith"  # the caller's name fills in the contact
    assert rows[anonymous_id]["thread_id"] is None


async def test_answered_help_request_becomes_searchable_learned_knowledge(store: Store) -> None:
    await store.replace_admin_knowledge([KnowledgeEntry("hours", "When are you open?", "9 to 5")])
    request_id = await store.create_help_request(
        HelpRequest(None, None, "+15550102030", "Do you do Invisalign?"))
    assert await store.search_knowledge_raw('"invisalign"', 5) == []

    entry = await store.answer_help_request(request_id, "Yes, Invisalign starts at 3000 dollars.")
    assert (entry.id, entry.source, entry.question) == (
        f"learned-{request_id}", "learned", "Do you do Invisalign?")
    [(found, rank)] = await store.search_knowledge_raw('"invisalign"', 5)
    assert found == entry and rank < 0
    [answered] = await store.help_requests(status="answered")
    assert answered.answer == "Yes, Invisalign starts at 3000 dollars."
    assert await store.help_requests(status="open") == []

    # Answering again corrects the entry instead of adding a second one.
    await store.answer_help_request(request_id, "Yes, from 3500 dollars.")
    [(found, _)] = await store.search_knowledge_raw('"invisalign"', 5)
    assert found.answer == "Yes, from 3500 dollars."
    with pytest.raises(NotFoundError):
        await store.answer_help_request(999, "whatever")


async def test_replacing_admin_knowledge_keeps_learned_entries_and_the_index_in_sync(
        store: Store) -> None:
    await store.replace_admin_knowledge([
        KnowledgeEntry("parking", "Is there parking?", "Behind the building.", ["where to park"]),
        KnowledgeEntry("hours", "When are you open?", "9 to 5"),
    ])
    request_id = await store.create_help_request(HelpRequest(None, None, None, "Do you sell floss?"))
    await store.answer_help_request(request_id, "Yes, at the front desk.")

    await store.replace_admin_knowledge([
        KnowledgeEntry("hours", "What are your hours?", "8 to 4", ["when do you close"], ["hours"]),
    ])
    assert [(e.id, e.source) for e in await store.knowledge()] == [
        (f"learned-{request_id}", "learned"), ("hours", "admin")]
    assert await store.search_knowledge_raw('"park"', 5) == []  # the removed entry left the index
    assert [e.id for e, _ in await store.search_knowledge_raw('"closing"', 5)] == ["hours"]  # porter
    assert [e.id for e, _ in await store.search_knowledge_raw('"floss"', 5)] == [f"learned-{request_id}"]
    with raw(store) as conn:
        conn.execute("INSERT INTO knowledge_fts(knowledge_fts) VALUES('integrity-check')")

    with pytest.raises(ValueError, match="'learned-1' is duplicated or already used"):
        await store.replace_admin_knowledge([KnowledgeEntry("learned-1", "q", "a")])
    assert len(await store.knowledge()) == 2  # the failed replacement rolled back


async def test_invalid_fts_expression_is_a_clear_error(store: Store) -> None:
    with pytest.raises(ValueError, match="invalid FTS5 query"):
        await store.search_knowledge_raw('"unbalanced', 3)


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "sb.db")
    pending = s.contact_for("+15550001")  # queued before close: still completes
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0)
    await s.close()
    assert await task > 0
    with pytest.raises(StoreClosedError, match="sb.db is closed"):
        await s.knowledge()


async def test_a_version_2_database_gains_durable_inbound_and_keeps_its_texts(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from models.migrations import MIGRATIONS

    path = tmp_path / "v2.db"
    db = Database(path)
    for migration in MIGRATIONS[:2]:
        migration(db)
    db.execute("CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1, 2)")
    db.execute("INSERT INTO messages (channel, direction, body, status, at) VALUES ('sms', 'in', 'old', 'received', 1)")
    db.conn.commit()
    db.close()
    s = await Store.open(path)
    try:
        assert await s.pending_inbound() == []  # a text an older version answered is not answered again
        first = await s.record_inbound("sip", "+15550102030", "hi", 2.0, None, "abc@gw;1 MESSAGE")
        assert first is not None
        assert await s.record_inbound("sip", "+15550102030", "hi", 3.0, None, "abc@gw;1 MESSAGE") is None
        assert await s.record_inbound("email", "+15550102030", "hi", 3.0, None, "abc@gw;1 MESSAGE") is not None
        assert await s.record_inbound("sms", "+15550102030", "no ref", 4.0, None, None) is not None
        assert await s.record_inbound("sms", "+15550102030", "no ref", 4.0, None, None) is not None
        assert [m.body for m in await s.pending_inbound(first[1])] == ["hi", "hi", "no ref", "no ref"]
    finally:
        await s.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == LATEST_VERSION
