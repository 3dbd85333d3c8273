"""SQLite store: every query runs on one dedicated thread that owns the connection.

sqlite3 connections opened by sqlite-utils are bound to their creating thread, and a
single writer thread also serialises writes without any locking of our own.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from models.migrations import migrate
from models.records import (
    CallEvent, CallRecord, HelpRequest, KnowledgeEntry, TakenMessage, Turn,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Matches in the question and phrasings say more about what an entry is *about*
# than words that merely occur in its answer.
_BM25_WEIGHTS = "2.0, 1.5, 1.0"  # question, phrasings, answer
_NUMBER_SEPARATORS = re.compile(r"[\s\-().]")


class StoreClosedError(RuntimeError):
    pass


class NotFoundError(LookupError):
    pass


def normalize_number(number: str) -> str | None:
    """'+1 (555) 010-2030' and '+15550102030' are the same contact; None if there is no
    number to call back ("anonymous", "unknown", "" from a withheld caller ID)."""
    normalized = _NUMBER_SEPARATORS.sub("", number)
    return normalized if any(c.isdigit() for c in normalized) else None


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._db: Database | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        store = cls(Path(path))
        try:
            await store._run(store._connect)
        except BaseException:
            await store._run(store._disconnect, False)
            store._closed = True
            store._executor.shutdown(wait=False)
            raise
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Calls submitted before this point are queued ahead of the disconnect and finish first.
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=False)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreClosedError(f"store {self.path} is closed")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args))

    # --- connection lifecycle (writer thread) ---

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = Database(self.path)
        self._db = db
        db.execute("PRAGMA busy_timeout=5000")
        try:
            db.enable_wal()
        except sqlite3.DatabaseError as e:  # the first read of the file: "not a database" etc.
            raise sqlite3.DatabaseError(f"{self.path}: cannot open as SQLite: {e}") from e
        # NORMAL is durable across application crashes in WAL mode; only an OS crash
        # can lose the last transactions, which is acceptable for call logs.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        found = migrate(db, str(self.path))
        log.info("store open db=%s schema_found=%d", self.path, found)

    def _disconnect(self, checkpoint: bool = True) -> None:
        if self._db is None:
            return
        if checkpoint:
            # Fold the WAL back into the main file so the database is one self-contained file.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        self._db = None
        log.info("store closed db=%s", self.path)

    @property
    def _writer_db(self) -> Database:
        # Private on purpose: the connection may only be used on the writer thread.
        assert self._db is not None, "store used before open()"
        return self._db

    # --- contacts and threads ---

    async def contact_for(self, number: str, name: str | None = None) -> int:
        """Contact id for a phone number, created if new; `name` fills in a missing name."""
        return await self._run(self._contact_for, number, name)

    def _contact_for(self, number: str, name: str | None = None) -> int:
        normalized = normalize_number(number)
        if normalized is None:
            raise ValueError(f"not a phone number: {number!r}")
        number = normalized
        db = self._writer_db
        db.execute(
            "INSERT INTO contacts (number, name, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT(number) DO NOTHING",
            [number, name, time.time()],
        )
        if name:
            db.execute("UPDATE contacts SET name = ? WHERE number = ? AND name IS NULL",
                       [name, number])
        return db.execute("SELECT id FROM contacts WHERE number = ?", [number]).fetchone()[0]

    async def thread_for(self, number: str) -> int:
        return await self._run(self._thread_for, number)

    def _thread_for(self, number: str, name: str | None = None) -> int:
        contact_id = self._contact_for(number, name)
        db = self._writer_db
        db.execute(
            "INSERT INTO threads (contact_id, created_at) VALUES (?, ?)"
            " ON CONFLICT(contact_id) DO NOTHING",
            [contact_id, time.time()],
        )
        return db.execute("SELECT id FROM threads WHERE contact_id = ?",
                          [contact_id]).fetchone()[0]

    # --- calls, turns, events ---

    async def start_call(self, call: CallRecord) -> None:
        await self._run(self._start_call, call)

    def _start_call(self, call: CallRecord) -> None:
        with self._writer_db.atomic():
            contact_id = None
            if call.caller and normalize_number(call.caller):
                self._thread_for(call.caller)
                contact_id = self._contact_for(call.caller)
            self._writer_db["calls"].insert({**asdict(call), "contact_id": contact_id})

    async def end_call(self, call_id: str, reason: str, ended_at: float) -> None:
        await self._run(self._end_call, call_id, reason, ended_at)

    def _end_call(self, call_id: str, reason: str, ended_at: float) -> None:
        cursor = self._writer_db.execute(
            "UPDATE calls SET ended_at = ?, end_reason = ? WHERE call_id = ?",
            [ended_at, reason, call_id],
        )
        if cursor.rowcount == 0:
            raise NotFoundError(f"end_call: no call {call_id!r} in {self.path}")

    async def call(self, call_id: str) -> dict[str, Any] | None:
        rows = await self._run(self._select, "SELECT * FROM calls WHERE call_id = ?", [call_id])
        return rows[0] if rows else None

    async def add_turn(self, turn: Turn) -> None:
        row = {**asdict(turn), "timings_ms": json.dumps(turn.timings_ms),
               "interrupted": int(turn.interrupted)}
        await self._run(lambda: self._writer_db["turns"].insert(row))

    async def turns(self, call_id: str) -> list[Turn]:
        rows = await self._run(self._select, "SELECT * FROM turns WHERE call_id = ? ORDER BY seq",
                               [call_id])
        return [Turn(**{**r, "timings_ms": json.loads(r["timings_ms"]),
                        "interrupted": bool(r["interrupted"])}) for r in rows]

    async def add_event(self, event: CallEvent) -> None:
        row = {**asdict(event), "data": json.dumps(event.data)}
        await self._run(lambda: self._writer_db["call_events"].insert(row))

    async def events(self, call_id: str) -> list[CallEvent]:
        rows = await self._run(
            self._select,
            "SELECT call_id, kind, at, data FROM call_events WHERE call_id = ? ORDER BY at, id",
            [call_id])
        return [CallEvent(**{**r, "data": json.loads(r["data"])}) for r in rows]

    def _select(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        return list(self._writer_db.query(sql, params))

    # --- messages taken for staff ---

    async def take_message(self, message: TakenMessage) -> int:
        return await self._run(self._take_message, message)

    def _take_message(self, message: TakenMessage) -> int:
        with self._writer_db.atomic():
            thread_id = None
            if message.contact_number and normalize_number(message.contact_number):
                thread_id = self._thread_for(message.contact_number, message.caller_name)
            return self._writer_db["messages"].insert({
                "thread_id": thread_id, "channel": "voice", "direction": "in",
                "body": message.text, "status": "new", "at": message.at,
                "call_id": message.call_id, "for_staff": message.for_staff,
                "caller_name": message.caller_name,
            }).last_pk

    # --- help requests ---

    async def create_help_request(self, request: HelpRequest) -> int:
        row = {**asdict(request), "created_at": request.created_at or time.time()}
        del row["id"]
        return await self._run(lambda: self._writer_db["help_requests"].insert(row).last_pk)

    async def help_requests(self, status: str | None = None) -> list[HelpRequest]:
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        rows = await self._run(
            self._select,
            "SELECT id, call_id, contact_number, question, status, answer, created_at"
            f" FROM help_requests {where} ORDER BY created_at, id", params)
        return [HelpRequest(**r) for r in rows]

    async def answer_help_request(self, request_id: int, answer: str) -> KnowledgeEntry:
        """Record staff's answer and learn it, so the next caller asking is answered."""
        if not answer.strip():
            raise ValueError(f"help request {request_id}: empty answer")
        return await self._run(self._answer_help_request, request_id, answer.strip())

    def _answer_help_request(self, request_id: int, answer: str) -> KnowledgeEntry:
        db = self._writer_db
        with db.atomic():
            row = db.execute("SELECT question FROM help_requests WHERE id = ?",
                             [request_id]).fetchone()
            if row is None:
                raise NotFoundError(f"no help request {request_id} in {self.path}")
            db.execute(
                "UPDATE help_requests SET status = 'answered', answer = ?, answered_at = ?"
                " WHERE id = ?", [answer, time.time(), request_id])
            entry = KnowledgeEntry(id=f"learned-{request_id}", question=row[0],
                                   answer=answer, source="learned")
            # Answering again corrects the learned entry rather than adding a second one.
            self._write_knowledge(entry, overwrite=True)
        log.info("help request answered id=%d entry=%s", request_id, entry.id)
        return entry

    # --- knowledge ---

    async def replace_admin_knowledge(self, entries: list[KnowledgeEntry]) -> None:
        """Swap in the admin's entries (etc/knowledge.yaml); learned entries stay."""
        await self._run(self._replace_admin_knowledge, entries)

    def _replace_admin_knowledge(self, entries: list[KnowledgeEntry]) -> None:
        db = self._writer_db
        with db.atomic():
            db.execute("DELETE FROM knowledge WHERE source = 'admin'")
            for entry in entries:
                try:
                    self._write_knowledge(replace(entry, source="admin"))
                except sqlite3.IntegrityError as e:
                    raise ValueError(
                        f"knowledge id {entry.id!r} is duplicated or already used by a"
                        f" learned entry") from e
        log.info("admin knowledge replaced entries=%d", len(entries))

    def _write_knowledge(self, entry: KnowledgeEntry, overwrite: bool = False) -> None:
        row = {**asdict(entry), "phrasings": json.dumps(entry.phrasings),
               "tags": json.dumps(entry.tags), "updated_at": time.time()}
        if overwrite:
            # Delete then insert: both fire the triggers that keep knowledge_fts in sync.
            self._writer_db.execute("DELETE FROM knowledge WHERE id = ?", [entry.id])
        self._writer_db["knowledge"].insert(row)

    async def knowledge(self) -> list[KnowledgeEntry]:
        rows = await self._run(self._select, "SELECT * FROM knowledge ORDER BY pk", [])
        return [_entry(r) for r in rows]

    async def search_knowledge_raw(self, fts_query: str,
                                   limit: int) -> list[tuple[KnowledgeEntry, float]]:
        """Entries matching an FTS5 expression with their bm25 rank (lower is better).

        `fts_query` must be built by llm.knowledge, never raw caller text.
        """
        rows = await self._run(
            self._match,
            f"SELECT k.*, bm25(knowledge_fts, {_BM25_WEIGHTS}) AS rank"
            " FROM knowledge_fts JOIN knowledge k ON k.pk = knowledge_fts.rowid"
            " WHERE knowledge_fts MATCH ? ORDER BY rank LIMIT ?",
            fts_query, [limit])
        return [(_entry(r), r["rank"]) for r in rows]

    async def knowledge_matches(self, fts_queries: list[str]) -> list[set[str]]:
        """For each FTS5 expression, the ids of all entries it matches."""
        def run() -> list[set[str]]:
            return [{r["id"] for r in self._match(
                "SELECT k.id FROM knowledge_fts JOIN knowledge k ON k.pk = knowledge_fts.rowid"
                " WHERE knowledge_fts MATCH ?", q, [])} for q in fts_queries]
        return await self._run(run)

    async def knowledge_count(self) -> int:
        return await self._run(lambda: self._writer_db["knowledge"].count)

    def _match(self, sql: str, fts_query: str, params: list[Any]) -> list[dict[str, Any]]:
        try:
            return list(self._writer_db.query(sql, [fts_query, *params]))
        except sqlite3.OperationalError as e:
            raise ValueError(f"invalid FTS5 query {fts_query!r}: {e}") from e


def _entry(row: dict[str, Any]) -> KnowledgeEntry:
    return KnowledgeEntry(id=row["id"], question=row["question"], answer=row["answer"],
                          phrasings=json.loads(row["phrasings"]), tags=json.loads(row["tags"]),
                          source=row["source"])
