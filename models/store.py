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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from models.group_commit import Batched, GroupCommit
from models.migrations import LATEST_VERSION, SchemaVersionError, migrate, schema_version
from models.records import (
    ApiKey, CallEvent, CallRecord, HelpRequest, KnowledgeEntry, OtpCode, OutboxRecord, StaffSession, StaffUser,
    TakenMessage, ThreadMessage, Turn,
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


def normalize_address(address: str) -> str | None:
    """The contact key for any channel's sender: a phone number (a SIP URI's user part when it
    is a number) or a lower-cased email address; None if there is nothing to reply to."""
    text = address.strip().strip("<>")
    lowered = text.lower()
    if lowered.startswith(("sip:", "sips:")):
        user = text.split(":", 1)[1].split("@", 1)[0].split(";", 1)[0]
        number = normalize_number(user)
        return number if number else lowered
    if lowered.startswith("mailto:"):
        lowered = lowered[len("mailto:"):]
    if "@" in lowered:
        return lowered
    return normalize_number(text)


# A call's outcome, from what the store records (first that applies): overflow (turned away over
# capacity), transferred (a transfer done, or handed back to the dialplan for a person), message (a
# message taken), escalated (a help request or an escalation), answered (the caller spoke), abandoned
# (hung up without a word); a call not ended yet is "in progress". Each IN list is built once per query.
CALL_OUTCOMES = ("answered", "transferred", "message", "escalated", "abandoned", "overflow", "in progress")
CALL_OUTCOME_SQL = """CASE
    WHEN c.ended_at IS NULL THEN 'in progress'
    WHEN c.call_id IN (SELECT call_id FROM call_events WHERE kind = 'over_capacity') THEN 'overflow'
    WHEN c.end_reason IN ('transferred', 'handed to dialplan')
        OR c.call_id IN (SELECT call_id FROM call_events WHERE kind = 'transfer_done') THEN 'transferred'
    WHEN c.call_id IN (SELECT call_id FROM messages WHERE call_id IS NOT NULL) THEN 'message'
    WHEN c.call_id IN (SELECT call_id FROM help_requests WHERE call_id IS NOT NULL)
        OR c.call_id IN (SELECT call_id FROM call_events WHERE kind = 'escalate') THEN 'escalated'
    WHEN c.call_id IN (SELECT call_id FROM turns WHERE speaker = 'caller') THEN 'answered'
    ELSE 'abandoned' END"""


def _history_filters(number_column: str, at_column: str, number: str, since: float | None,
                     until: float | None) -> tuple[list[str], list[Any]]:
    """WHERE terms for a history search: any part of a number's digits (or of an email address, when the
    search has no digits), and a time range [since, until)."""
    where: list[str] = []
    params: list[Any] = []
    digits = "".join(ch for ch in number if ch.isdigit())
    needle = digits or re.sub(r"[%_\\]", lambda m: "\\" + m.group(), number.strip().lower())
    if needle:
        where.append(f"{number_column} LIKE ? ESCAPE '\\'")
        params.append(f"%{needle}%")
    for term, value in ((f"{at_column} >= ?", since), (f"{at_column} < ?", until)):
        if value is not None:
            where.append(term)
            params.append(value)
    return where, params


class Store:
    def __init__(self, path: Path, *, client: bool = False) -> None:
        self.path = path
        self.client = client
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._db: Database | None = None
        # Hot writes (the outbox, the API's codes and audit) are committed in groups: one fsync for many.
        self._group = GroupCommit(self._executor, lambda: self._writer_db)
        # Reads on their own connection and thread (WAL lets them run beside the writer), so a request's
        # lookups do not queue behind the writer's fsyncs. They see what is committed, as before.
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
        self._reader_db: Database | None = None
        self._reads = Batched(self._reader)
        self._closed = False
        # Told each call turn, call event and help request after its commit (the daemon's metrics and webhooks).
        self._watchers: list[Callable[[Turn | CallEvent | HelpRequest], None]] = []

    @classmethod
    async def open(cls, path: str | Path, *, client: bool = False) -> Store:
        """client=True: a CLI command next to a daemon that may have the file open. It then neither
        migrates a schema the daemon still uses nor checkpoints the daemon's WAL on close."""
        store = cls(Path(path), client=client)
        try:
            await store._run(store._connect)
            await asyncio.get_running_loop().run_in_executor(store._reader, store._connect_reader)
        except BaseException:
            await asyncio.get_running_loop().run_in_executor(store._reader, store._disconnect_reader)
            await store._run(store._disconnect, False)
            store._closed = True
            store._executor.shutdown(wait=False)
            store._reader.shutdown(wait=False)
            raise
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Calls submitted before this point are queued ahead of the disconnect and finish first.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._reader, self._disconnect_reader)
        self._reader.shutdown(wait=False)
        await loop.run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=False)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreClosedError(f"store {self.path} is closed")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args))

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Like _run, for a write that may share its commit with others waiting (see GroupCommit); `fn`
        must not commit itself. Returns once the commit holding it is on disk."""
        if self._closed:
            raise StoreClosedError(f"store {self.path} is closed")
        return await self._group.submit(functools.partial(fn, *args))

    async def _read(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        if self._closed:
            raise StoreClosedError(f"store {self.path} is closed")
        return await self._reads.submit(functools.partial(self._select_committed, sql, params))

    def _select_committed(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        assert self._reader_db is not None, "store used before open()"
        return list(self._reader_db.query(sql, params))

    # --- connection lifecycle (writer thread) ---

    def _connect_reader(self) -> None:
        """On the reader thread, after _connect made and migrated the file."""
        db = Database(self.path)
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA query_only=ON")
        self._reader_db = db

    def _disconnect_reader(self) -> None:
        if self._reader_db is not None:
            self._reader_db.close()
            self._reader_db = None

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = Database(self.path)
        self._db = db
        db.execute("PRAGMA busy_timeout=5000")
        try:
            db.enable_wal()
        except sqlite3.DatabaseError as e:  # the first read of the file: "not a database" etc.
            raise sqlite3.DatabaseError(f"{self.path}: cannot open as SQLite: {e}") from e
        # FULL: a commit is on disk before it returns, also across power loss (NORMAL in WAL mode may lose
        # the last commits then), so a message accepted or marked sent stays so.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        if self.client and 0 < (found := schema_version(db)) < LATEST_VERSION:
            raise SchemaVersionError(
                f"{self.path}: database schema version {found} is older than this Switchboard's ({LATEST_VERSION});"
                " the running service is older than this command: restart it (it migrates the database), then retry")
        found = migrate(db, str(self.path))
        log.info("store open db=%s schema_found=%d", self.path, found)

    def _disconnect(self, checkpoint: bool = True) -> None:
        if self._db is None:
            return
        # A client must not: TRUNCATE blocks the daemon's writers until every reader is done.
        if checkpoint and not self.client:
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

    async def thread_for_address(self, address: str, name: str | None = None) -> int:
        """Thread for a sender on any channel: phone number, SIP URI or email address."""
        return await self._run(self._thread_for_address, address, name)

    def _thread_for_address(self, address: str, name: str | None = None) -> int:
        key = normalize_address(address)
        if key is None:
            raise ValueError(f"not a phone number, SIP URI or email address: {address!r}")
        if "@" not in key:
            return self._thread_for(key, name)
        return self._thread_for_key(key, name)

    async def chat_thread(self, key: str, *, create: bool) -> int | None:
        """The thread of a chat contact keyed by `key` (e.g. "api:KEYNAME:EXTERNALID": no number or
        address); None if it has none and `create` is false."""
        if create:
            return await self._run(self._thread_for_key, key, None)
        rows = await self._read("SELECT threads.id AS id FROM threads JOIN contacts"
                                " ON contacts.id = threads.contact_id WHERE contacts.number = ?", [key])
        return rows[0]["id"] if rows else None

    def _thread_for_key(self, key: str, name: str | None) -> int:
        db = self._writer_db
        with db.atomic():
            db.execute("INSERT INTO contacts (number, name, created_at) VALUES (?, ?, ?)"
                       " ON CONFLICT(number) DO NOTHING", [key, name, time.time()])
            contact_id = db.execute("SELECT id FROM contacts WHERE number = ?", [key]).fetchone()[0]
            db.execute("INSERT INTO threads (contact_id, created_at) VALUES (?, ?)"
                       " ON CONFLICT(contact_id) DO NOTHING", [contact_id, time.time()])
            return db.execute("SELECT id FROM threads WHERE contact_id = ?", [contact_id]).fetchone()[0]

    async def set_opted_out(self, address: str, opted_out: bool) -> None:
        """STOP / START from a sender; the contact is created if new so the opt-out sticks."""
        await self._run(self._set_opted_out, address, opted_out)

    def _set_opted_out(self, address: str, opted_out: bool) -> None:
        thread_id = self._thread_for_address(address)
        self._writer_db.execute(
            "UPDATE contacts SET opted_out_at = ? WHERE id = (SELECT contact_id FROM threads WHERE id = ?)",
            [time.time() if opted_out else None, thread_id])

    async def is_opted_out(self, address: str) -> bool:
        key = normalize_address(address)
        if key is None:
            return False
        rows = await self._read("SELECT opted_out_at FROM contacts WHERE number = ?", [key])
        return bool(rows) and rows[0]["opted_out_at"] is not None

    async def add_thread_message(self, thread_id: int, channel: str, direction: str, body: str, status: str,
                                 outbox_id: int | None = None, at: float | None = None) -> int:
        row = {"thread_id": thread_id, "channel": channel, "direction": direction, "body": body,
               "status": status, "at": time.time() if at is None else at, "outbox_id": outbox_id}
        return await self._run(lambda: self._writer_db["messages"].insert(row).last_pk)

    async def thread_messages(self, thread_id: int) -> list[ThreadMessage]:
        rows = await self._read(
            "SELECT id, thread_id, channel, direction, body, status, at, outbox_id FROM messages"
            " WHERE thread_id = ? ORDER BY at, id", [thread_id])
        return [ThreadMessage(**r) for r in rows]

    async def thread_page(self, thread_id: int, limit: int,
                          before: int | None = None) -> tuple[list[ThreadMessage], bool]:
        """The newest `limit` messages of a thread older than the message id `before` (all if None), oldest
        first, and whether there are older ones still. By id: a thread's ids grow as its messages are added."""
        rows = await self._read(
            "SELECT id, thread_id, channel, direction, body, status, at, outbox_id, sent_by FROM messages"
            " WHERE thread_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            [thread_id, before if before is not None else 2 ** 63 - 1, limit + 1])
        return [ThreadMessage(**r) for r in reversed(rows[:limit])], len(rows) > limit

    async def record_inbound(self, channel: str, sender: str, body: str, at: float, subject: str | None,
                             provider_ref: str | None) -> tuple[int, int] | None:
        """Commit an inbound text as `pending` in its sender's thread: (message id, thread id), or None
        when this channel already recorded `provider_ref` (a retransmission or re-delivery)."""
        def run() -> tuple[int, int] | None:
            db = self._writer_db
            with db.atomic():
                thread_id = self._thread_for_address(sender)
                cursor = db.execute(
                    "INSERT INTO messages (thread_id, channel, direction, body, status, at, sender, subject,"
                    " provider_ref) VALUES (?, ?, 'in', ?, 'pending', ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [thread_id, channel, body, at, sender, subject, provider_ref])
                return (cursor.lastrowid, thread_id) if cursor.rowcount == 1 else None
        return await self._run(run)

    async def pending_inbound(self, thread_id: int | None = None) -> list[ThreadMessage]:
        """Inbound texts not yet answered (or otherwise settled), oldest first; all threads by default."""
        where, params = ("AND thread_id = ?", [thread_id]) if thread_id is not None else ("", [])
        rows = await self._read(
            "SELECT id, thread_id, channel, direction, body, status, at, outbox_id, sender, subject FROM messages"
            f" WHERE status = 'pending' AND direction = 'in' {where} ORDER BY id", params)
        return [ThreadMessage(**r) for r in rows]

    async def settle_inbound(self, message_ids: list[int], status: str,
                             reply: tuple[str, str, int] | None = None) -> None:
        """Pending inbound texts -> `status`; with `reply` (channel, text, outbox id) the answer joins
        their thread in the same commit."""
        def run() -> None:
            db = self._writer_db
            with db.atomic():
                marks = ", ".join("?" * len(message_ids))
                thread = db.execute(f"SELECT thread_id FROM messages WHERE id IN ({marks}) LIMIT 1",
                                    message_ids).fetchone()
                db.execute(f"UPDATE messages SET status = ? WHERE status = 'pending' AND id IN ({marks})",
                           [status, *message_ids])
                if reply is not None and thread is not None:
                    channel, text, outbox_id = reply
                    db["messages"].insert({"thread_id": thread[0], "channel": channel, "direction": "out",
                                           "body": text, "status": "queued", "at": time.time(),
                                           "outbox_id": outbox_id})
        await self._run(run)

    async def replies_since(self, thread_id: int, since: float) -> int:
        rows = await self._read("SELECT COUNT(*) AS n FROM messages WHERE thread_id = ?"
                                " AND direction = 'out' AND at >= ?", [thread_id, since])
        return rows[0]["n"]

    # --- takeover: an operator answers a text thread instead of the assistant ---

    async def thread_hold(self, thread_id: int, user_name: str) -> str | None:
        """Take the thread for `user_name` (again, if they hold it); the holder afterwards (another user if
        they held it first), None if there is no such thread. Its pending texts become `held`."""
        def run() -> str | None:
            db = self._writer_db
            with db.atomic():
                taken = db.execute("UPDATE threads SET held_by = ?, held_since = ? WHERE id = ? AND held_by IS NULL",
                                   [user_name, time.time(), thread_id]).rowcount == 1
                if taken:  # texts still waiting for the assistant's debounce are the operator's now
                    db.execute("UPDATE messages SET status = 'held' WHERE thread_id = ? AND status = 'pending'"
                               " AND direction = 'in'", [thread_id])
                row = db.execute("SELECT held_by FROM threads WHERE id = ?", [thread_id]).fetchone()
                return row[0] if row else None
        return await self._run(run)

    async def thread_release(self, thread_id: int) -> bool:
        """Hand the thread back to the assistant. Texts that came while it was held are settled `staff`:
        the operator saw them, the assistant does not answer them late. False if it was not held."""
        def run() -> bool:
            db = self._writer_db
            with db.atomic():
                released = db.execute("UPDATE threads SET held_by = NULL, held_since = NULL"
                                      " WHERE id = ? AND held_by IS NOT NULL", [thread_id]).rowcount == 1
                db.execute("UPDATE messages SET status = 'staff' WHERE thread_id = ? AND status = 'held'",
                           [thread_id])
                return released
        return await self._run(run)

    async def last_inbound(self, thread_id: int) -> ThreadMessage | None:
        """The thread's latest inbound text with a reply address: where an operator's reply goes."""
        rows = await self._read(
            "SELECT id, thread_id, channel, direction, body, status, at, outbox_id, sender, subject FROM messages"
            " WHERE thread_id = ? AND direction = 'in' AND sender IS NOT NULL ORDER BY id DESC LIMIT 1", [thread_id])
        return ThreadMessage(**rows[0]) if rows else None

    async def thread_holder(self, thread_id: int) -> tuple[str, float] | None:
        rows = await self._read("SELECT held_by, held_since FROM threads WHERE id = ?"
                                " AND held_by IS NOT NULL", [thread_id])
        return (rows[0]["held_by"], rows[0]["held_since"]) if rows else None

    async def staff_reply(self, thread_id: int, channel: str, text: str, outbox_id: int | None,
                          user_name: str) -> float:
        """An operator's reply joins the thread (marked as theirs; `queued` in the outbox, or `sent` with no
        outbox row: an API chat's reply is read from the thread); the texts it answers are settled. Its time."""
        def run() -> float:
            db, at = self._writer_db, time.time()
            with db.atomic():
                db.execute("UPDATE messages SET status = 'staff' WHERE thread_id = ? AND status = 'held'",
                           [thread_id])
                db["messages"].insert({"thread_id": thread_id, "channel": channel, "direction": "out",
                                       "body": text, "status": "queued" if outbox_id is not None else "sent",
                                       "at": at, "outbox_id": outbox_id, "sent_by": user_name})
            return at
        return await self._run(run)

    async def release_idle_holds(self, idle_since: float) -> list[tuple[int, str]]:
        """Hand back every thread whose holder has not acted (taken it, replied in it) since `idle_since`,
        as `thread_release` does; the (thread id, holder) released. Checked and released in one transaction,
        so a reply that lands meanwhile keeps its hold."""
        def run() -> list[tuple[int, str]]:
            db = self._writer_db
            with db.atomic():
                idle = db.execute(
                    "SELECT t.id, t.held_by FROM threads t WHERE t.held_by IS NOT NULL AND MAX(t.held_since,"
                    " COALESCE((SELECT MAX(m.at) FROM messages m WHERE m.thread_id = t.id"
                    " AND m.sent_by = t.held_by), 0)) < ?", [idle_since]).fetchall()
                for thread_id, _ in idle:
                    db.execute("UPDATE threads SET held_by = NULL, held_since = NULL WHERE id = ?", [thread_id])
                    db.execute("UPDATE messages SET status = 'staff' WHERE thread_id = ? AND status = 'held'",
                               [thread_id])
                return [(thread_id, holder) for thread_id, holder in idle]
        return await self._run(run)

    async def thread_contact(self, thread_id: int) -> str | None:
        """The contact key of a thread: a number, an address, or a chat's key ("api:KEY:EXTERNALID")."""
        rows = await self._read("SELECT c.number AS contact FROM threads t JOIN contacts c ON c.id = t.contact_id"
                                " WHERE t.id = ?", [thread_id])
        return rows[0]["contact"] if rows else None

    async def text_threads(self, channels: list[str], limit: int = 200) -> list[dict[str, Any]]:
        """Threads with texts on `channels`, newest activity first: id, contact, last channel and time,
        holder, and how many texts wait for the holder (`held`)."""
        marks = ", ".join("?" * len(channels))
        return await self._read(
            "SELECT t.id AS id, c.number AS contact, t.held_by AS held_by, t.held_since AS held_since,"
            " MAX(m.at) AS last_at, COUNT(*) AS messages,"
            " SUM(m.status = 'held') AS waiting,"
            " (SELECT channel FROM messages WHERE thread_id = t.id AND channel IN"
            f" ({marks}) ORDER BY id DESC LIMIT 1) AS channel"
            " FROM threads t JOIN contacts c ON c.id = t.contact_id JOIN messages m ON m.thread_id = t.id"
            f" WHERE m.channel IN ({marks}) GROUP BY t.id ORDER BY last_at DESC LIMIT ?",
            [*channels, *channels, limit])

    async def thread_view(self, thread_id: int, limit: int = 200) -> list[dict[str, Any]]:
        """A thread's newest `limit` messages, oldest first, with who sent each reply and its outbox state."""
        rows = await self._read(
            "SELECT m.id AS id, m.channel AS channel, m.direction AS direction, m.body AS body,"
            " m.status AS status, m.at AS at, m.sender AS sender, m.sent_by AS sent_by, m.outbox_id AS outbox_id,"
            " o.state AS outbox_state, o.last_error AS outbox_error"
            " FROM messages m LEFT JOIN outbox o ON o.id = m.outbox_id WHERE m.thread_id = ?"
            " ORDER BY m.id DESC LIMIT ?", [thread_id, limit])
        return rows[::-1]

    async def sms_part(self, channel: str, sender: str, ref: int, total: int, part: int, sent_at: str,
                       wire: bytes) -> None:
        """Keep one part of a long SMS (a part read again is ignored)."""
        def run() -> None:
            now = time.time()
            db = self._writer_db
            with db.atomic():
                db.execute("INSERT INTO sms_parts (channel, sender, ref, total, part, sent_at, wire, received_at)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                           [channel, sender, ref, total, part, sent_at, wire, now])
                # Assembled parts are kept a day, to recognise one read again after a crash.
                db.execute("DELETE FROM sms_parts WHERE assembled_at < ?", [now - 86400])
        await self._run(run)

    async def sms_parts_open(self, channel: str) -> list[dict[str, Any]]:
        """Parts of long SMS not yet assembled, with (sender, ref, total) identifying their message."""
        return await self._read("SELECT sender, ref, total, part, sent_at, wire, received_at"
                                " FROM sms_parts WHERE channel = ? AND assembled_at IS NULL ORDER BY received_at",
                                [channel])

    async def sms_parts_assembled(self, channel: str, sender: str, ref: int, total: int) -> None:
        await self._run(lambda: self._writer_db.execute(
            "UPDATE sms_parts SET assembled_at = ? WHERE channel = ? AND sender = ? AND ref = ? AND total = ?"
            " AND assembled_at IS NULL", [time.time(), channel, sender, ref, total]))

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

    def watch(self, watcher: Callable[[Turn | CallEvent | HelpRequest], None]) -> Callable[[], None]:
        """Have `watcher` called with each turn, call event and help request once committed (in the event
        loop, by the writing task); returns the function that stops it."""
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher)

    def _recorded(self, record: Turn | CallEvent | HelpRequest) -> None:
        for watcher in list(self._watchers):
            try:
                watcher(record)
            except Exception as exc:  # a watcher's failure must not fail the write it watched
                log.error("store watcher failed record=%s error=%s", type(record).__name__, exc)

    async def call(self, call_id: str) -> dict[str, Any] | None:
        rows = await self._read("SELECT * FROM calls WHERE call_id = ?", [call_id])
        return rows[0] if rows else None

    async def add_turn(self, turn: Turn) -> None:
        row = {**asdict(turn), "timings_ms": json.dumps(turn.timings_ms),
               "interrupted": int(turn.interrupted)}
        await self._run(lambda: self._writer_db["turns"].insert(row))
        self._recorded(turn)

    async def turns(self, call_id: str) -> list[Turn]:
        rows = await self._read("SELECT * FROM turns WHERE call_id = ? ORDER BY seq",
                                [call_id])
        return [Turn(**{**r, "timings_ms": json.loads(r["timings_ms"]),
                        "interrupted": bool(r["interrupted"])}) for r in rows]

    async def add_event(self, event: CallEvent) -> None:
        row = {**asdict(event), "data": json.dumps(event.data)}
        await self._run(lambda: self._writer_db["call_events"].insert(row))
        self._recorded(event)

    async def events(self, call_id: str) -> list[CallEvent]:
        rows = await self._read(
            "SELECT call_id, kind, at, data FROM call_events WHERE call_id = ? ORDER BY at, id",
            [call_id])
        return [CallEvent(**{**r, "data": json.loads(r["data"])}) for r in rows]

    async def call_history(self, *, number: str = "", since: float | None = None, until: float | None = None,
                           outcome: str | None = None, call_id: str | None = None, limit: int = 25,
                           offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Finished and current calls, newest first, with their outcome (CALL_OUTCOME_SQL): one page of
        (rows, total matching). `number` matches any part of the caller's digits."""
        where, params = _history_filters("caller", "started_at", number, since, until)
        for column, value in (("call_id", call_id), ("outcome", outcome)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        return await self._history_page(f"SELECT c.*, {CALL_OUTCOME_SQL} AS outcome FROM calls c", where, params,
                                        "started_at DESC, call_id", limit, offset)

    async def overview(self, hours_since: float, days_since: float,
                       offsets: Sequence[tuple[float, int]]) -> dict[str, list[dict[str, Any]]]:
        """The Overview page's figures, bucketed in the site's time (as every page shows times): calls per
        hour since `hours_since`; since `days_since`, calls per day, outcomes (CALL_OUTCOME_SQL), the
        voice-to-voice p50 and p90 of turns (ms, per day), questions asked (caller turns and
        inbound texts) and help requests created per day. Calls are found by their indexed start.
        `offsets`: the zone's UTC offset in seconds from the start and from each change (DST) after it,
        as (from, seconds), oldest first; the caller computes them (SQLite knows only the server's zone)."""
        def local(column: str) -> str:
            shift = " ".join(f"WHEN {column} < {int(at)} THEN {int(before)}"
                             for (_, before), (at, _) in zip(offsets, offsets[1:]))
            return f"{column} + {f'CASE {shift} ELSE {int(offsets[-1][1])} END' if shift else int(offsets[0][1])}"

        def hour(column: str) -> str:
            return f"strftime('%Y-%m-%d %H', {local(column)}, 'unixepoch')"

        def day(column: str) -> str:
            return f"strftime('%Y-%m-%d', {local(column)}, 'unixepoch')"

        since_days = "FROM calls c JOIN turns t ON t.call_id = c.call_id WHERE c.started_at >= ?"
        queries = {
            "hourly": (f"SELECT {hour('started_at')} AS bucket, COUNT(*) AS n FROM calls"
                       " WHERE started_at >= ? GROUP BY bucket", [hours_since]),
            "daily": (f"SELECT {day('started_at')} AS bucket, COUNT(*) AS n FROM calls"
                      " WHERE started_at >= ? GROUP BY bucket", [days_since]),
            "outcomes": (f"SELECT outcome, COUNT(*) AS n FROM (SELECT {CALL_OUTCOME_SQL} AS outcome FROM calls c"
                         " WHERE c.started_at >= ?) GROUP BY outcome", [days_since]),
            # Nearest-rank percentiles per day: the smallest value whose rank k has k/n >= p.
            "v2v": (f"SELECT bucket, MIN(CASE WHEN k * 100 >= 50 * n THEN ms END) AS p50,"
                    " MIN(CASE WHEN k * 100 >= 90 * n THEN ms END) AS p90 FROM (SELECT bucket, ms,"
                    " ROW_NUMBER() OVER (PARTITION BY bucket ORDER BY ms) AS k, COUNT(*) OVER (PARTITION BY bucket)"
                    f" AS n FROM (SELECT {day('t.at')} AS bucket, json_extract(t.timings_ms,"
                    f" '$.voice_to_voice') AS ms {since_days} AND t.at >= ? AND ms IS NOT NULL)) GROUP BY bucket",
                    [days_since, days_since]),
            "questions": (f"SELECT bucket, COUNT(*) AS n FROM (SELECT {day('t.at')} AS bucket {since_days}"
                          " AND t.at >= ? AND t.speaker = 'caller' UNION ALL SELECT"
                          f" {day('at')} FROM messages WHERE direction = 'in' AND at >= ?)"
                          " GROUP BY bucket", [days_since, days_since, days_since]),
            "help": (f"SELECT {day('created_at')} AS bucket, COUNT(*) AS n FROM help_requests"
                     " WHERE created_at >= ? GROUP BY bucket", [days_since]),
        }
        return {name: await self._read(sql, params) for name, (sql, params) in queries.items()}

    async def thread_history(self, *, number: str = "", since: float | None = None, until: float | None = None,
                             limit: int = 25, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Text threads by their last message, newest first (dates filter that last message): one page of
        (rows with thread_id, number, last_at, messages; total matching)."""
        where, params = _history_filters("number", "last_at", number, since, until)
        return await self._history_page(
            "SELECT t.id AS thread_id, c.number, MAX(m.at) AS last_at, COUNT(m.id) AS messages FROM threads t"
            " JOIN contacts c ON c.id = t.contact_id JOIN messages m ON m.thread_id = t.id GROUP BY t.id",
            where, params, "last_at DESC, thread_id", limit, offset)

    async def _history_page(self, rows_sql: str, where: list[str], params: list[Any], order: str, limit: int,
                            offset: int) -> tuple[list[dict[str, Any]], int]:
        sql = f"SELECT * FROM ({rows_sql}) {'WHERE ' + ' AND '.join(where) if where else ''}"
        total = (await self._read(f"SELECT COUNT(*) AS n FROM ({sql})", params))[0]["n"]
        return await self._read(f"{sql} ORDER BY {order} LIMIT ? OFFSET ?", [*params, limit, offset]), total

    async def call_notes(self, call_id: str) -> tuple[list[dict[str, Any]], list[HelpRequest]]:
        """What a call left for staff: (messages taken, help requests)."""
        messages = await self._read("SELECT id, body, for_staff, caller_name, status, at FROM messages"
                                    " WHERE call_id = ? ORDER BY at, id", [call_id])
        helps = await self._read("SELECT * FROM help_requests WHERE call_id = ? ORDER BY created_at, id", [call_id])
        return messages, [HelpRequest(**r) for r in helps]

    # --- messages taken for staff ---

    async def take_message(self, message: TakenMessage) -> int:
        return await self._run(self._take_message, message)

    def _take_message(self, message: TakenMessage) -> int:
        with self._writer_db.atomic():
            thread_id = None
            if message.contact_number and normalize_address(message.contact_number):
                thread_id = self._thread_for_address(message.contact_number, message.caller_name)
            return self._writer_db["messages"].insert({
                "thread_id": thread_id, "channel": "voice", "direction": "in",
                "body": message.text, "status": "new", "at": message.at,
                "call_id": message.call_id, "for_staff": message.for_staff,
                "caller_name": message.caller_name,
            }).last_pk

    # --- outbox (channels.outbox drives the state machine; each step is one commit) ---

    async def outbox_enqueue(self, channel: str, recipient: str, body: str, subject: str | None,
                             html: str | None, idempotency_key: str, opt_notice: bool = False, *,
                             send_at: float | None = None, owner: str | None = None) -> tuple[int, bool]:
        """(row id, created): an existing key returns its row untouched. `send_at`: not before then."""
        return await self._write(self._outbox_enqueue, channel, recipient, body, subject, html, idempotency_key,
                               opt_notice, send_at, owner)

    def _outbox_enqueue(self, channel: str, recipient: str, body: str, subject: str | None,
                        html: str | None, key: str, opt_notice: bool, send_at: float | None,
                        owner: str | None) -> tuple[int, bool]:
        now = time.time()
        cursor = self._writer_db.execute(
            "INSERT INTO outbox (idempotency_key, channel, recipient, subject, body, html, next_attempt_at,"
            " created_at, updated_at, opt_notice, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(idempotency_key) DO NOTHING",
            [key, channel, recipient, subject, body, html, max(now, send_at or now), now, now, int(opt_notice),
             owner])
        row = self._writer_db.execute("SELECT id FROM outbox WHERE idempotency_key = ?", [key]).fetchone()
        return row[0], cursor.rowcount == 1

    async def outbox_claim(self, channel: str) -> OutboxRecord | None:
        """Move the next due queued row of `channel` to sending (attempts + 1) and return it."""
        return await self._write(self._outbox_claim, channel)

    def _outbox_claim(self, channel: str) -> OutboxRecord | None:
        now = time.time()
        db = self._writer_db
        # RETURNING gives the statement a result set, so sqlite-utils would not commit it itself.
        with db.atomic():
            cursor = db.execute(
                "UPDATE outbox SET state = 'sending', attempts = attempts + 1, updated_at = ?"
                " WHERE id = (SELECT id FROM outbox WHERE channel = ? AND state = 'queued'"
                " AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT 1) RETURNING *",
                [now, channel, now])
            row = cursor.fetchone()
            names = [d[0] for d in cursor.description]
        return OutboxRecord(**dict(zip(names, row))) if row else None

    async def outbox_sent(self, outbox_id: int, provider_ref: str | None, delivered: bool) -> None:
        await self._write(self._outbox_update, outbox_id, "sending",
                          {"state": "delivered" if delivered else "sent", "provider_ref": provider_ref,
                           "sent_at": time.time(), "last_error": None})

    async def outbox_retry(self, outbox_id: int, error: str, next_attempt_at: float) -> None:
        await self._write(self._outbox_update, outbox_id, "sending",
                          {"state": "queued", "last_error": error, "next_attempt_at": next_attempt_at})

    async def outbox_failed(self, outbox_id: int, error: str) -> None:
        await self._write(self._outbox_update, outbox_id, "sending", {"state": "failed", "last_error": error})

    def _outbox_update(self, outbox_id: int, from_state: str, values: dict[str, Any]) -> None:
        values = {**values, "updated_at": time.time()}
        assignments = ", ".join(f"{k} = ?" for k in values)
        cursor = self._writer_db.execute(
            f"UPDATE outbox SET {assignments} WHERE id = ? AND state = ?",
            [*values.values(), outbox_id, from_state])
        if cursor.rowcount == 0:
            raise NotFoundError(f"outbox row {outbox_id} is not {from_state!r} in {self.path}")

    async def outbox_delivery(self, channel: str, provider_ref: str, ok: bool) -> int | None:
        """A later delivery report: sent -> delivered / failed. The row id, or None if no sent row
        of `channel` carries `provider_ref` (yet)."""
        def run() -> int | None:
            with self._writer_db.atomic():
                # Only the newest: modem references wrap at 256, so an old row may carry the same one.
                row = self._writer_db.execute(
                    "UPDATE outbox SET state = ?, last_error = ?, updated_at = ?"
                    " WHERE id = (SELECT id FROM outbox WHERE channel = ? AND provider_ref = ? AND state = 'sent'"
                    " ORDER BY sent_at DESC, id DESC LIMIT 1) RETURNING id",
                    ["delivered" if ok else "failed", None if ok else "delivery report: not delivered",
                     time.time(), channel, provider_ref]).fetchone()
            return row[0] if row else None
        return await self._write(run)

    async def outbox_recover(self, channels: list[str]) -> int:
        """After a crash: rows of these channels left in sending were maybe sent, maybe not; queue them
        again now. Only these: another outbox on the same store (the daemon's voice calls) may be sending."""
        def run() -> int:
            marks = ", ".join("?" * len(channels))
            return self._writer_db.execute(
                "UPDATE outbox SET state = 'queued', next_attempt_at = ?, updated_at = ?,"
                f" last_error = 'interrupted while sending' WHERE state = 'sending' AND channel IN ({marks})",
                [time.time(), time.time(), *channels]).rowcount
        return await self._run(run)

    async def outbox_next_due(self, channel: str) -> float | None:
        rows = await self._read("SELECT MIN(next_attempt_at) AS due FROM outbox"
                                " WHERE channel = ? AND state = 'queued'", [channel])
        return rows[0]["due"]

    async def outbox_get(self, outbox_id: int) -> OutboxRecord | None:
        rows = await self._read("SELECT * FROM outbox WHERE id = ?", [outbox_id])
        return OutboxRecord(**rows[0]) if rows else None

    async def outbox_rows(self, state: str | None = None) -> list[OutboxRecord]:
        where, params = ("WHERE state = ?", [state]) if state else ("", [])
        rows = await self._read(f"SELECT * FROM outbox {where} ORDER BY id", params)
        return [OutboxRecord(**r) for r in rows]

    async def outbox_latest(self, states: list[str], limit: int = 100) -> list[OutboxRecord]:
        """The newest `limit` rows in `states` that staff did not dismiss, newest first."""
        marks = ", ".join("?" * len(states))
        rows = await self._read(f"SELECT * FROM outbox WHERE state IN ({marks}) AND dismissed_by IS NULL"
                                " ORDER BY updated_at DESC, id DESC LIMIT ?", [*states, limit])
        return [OutboxRecord(**r) for r in rows]

    async def outbox_requeue(self, outbox_id: int) -> OutboxRecord:
        """A failed row, retried by staff: queued again now with a fresh count of attempts (the last
        error stays until the next attempt). NotFoundError if it is not failed."""
        await self._write(self._outbox_update, outbox_id, "failed", {"state": "queued", "attempts": 0,
                                                                  "next_attempt_at": time.time()})
        row = await self.outbox_get(outbox_id)
        assert row is not None
        return row

    async def outbox_cancel(self, outbox_id: int, reason: str) -> None:
        """A queued row (e.g. waiting to retry), cancelled by staff: failed with `reason`. NotFoundError if
        it is not queued (a row being sent cannot be called back)."""
        await self._write(self._outbox_update, outbox_id, "queued", {"state": "failed", "last_error": reason})

    async def outbox_dismiss(self, outbox_id: int, user_name: str) -> None:
        """A failed row off the dashboard's list (it stays failed). NotFoundError if it is not failed or
        was dismissed already."""
        def run() -> None:
            if self._writer_db.execute("UPDATE outbox SET dismissed_by = ? WHERE id = ? AND state = 'failed'"
                                       " AND dismissed_by IS NULL", [user_name, outbox_id]).rowcount != 1:
                raise NotFoundError(f"outbox row {outbox_id} is not a failed row on the list")
        await self._write(run)

    async def outbox_events(self, outbox_id: int) -> list[dict[str, Any]]:
        """The row's state changes, oldest first (recorded by triggers since schema version 4)."""
        return await self._read("SELECT state, attempts, error, at FROM outbox_events"
                                " WHERE outbox_id = ? ORDER BY id", [outbox_id])

    async def outbox_depth(self) -> list[dict[str, Any]]:
        """Rows per channel and state."""
        return await self._read("SELECT channel, state, COUNT(*) AS n FROM outbox"
                                " GROUP BY channel, state", [])

    async def outbox_count_to(self, recipient: str, since: float) -> tuple[int, float]:
        """(count, oldest created_at) of rows queued through the HTTP API for `recipient` since then;
        one-time codes are counted by their own table."""
        rows = await self._read("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox"
                                " WHERE recipient = ? AND created_at >= ? AND owner IS NOT NULL"
                                " AND idempotency_key NOT LIKE 'otp:%'", [recipient, since])
        return rows[0]["n"], rows[0]["oldest"] or since

    # --- HTTP API keys, audit, one-time codes ---

    async def api_key_create(self, key: ApiKey) -> None:
        """Raises ValueError if the name is taken."""
        def run() -> None:
            try:
                self._writer_db.execute(
                    "INSERT INTO api_keys (name, key_hash, prefix, scopes, rate_per_s, burst, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [key.name, key.key_hash, key.prefix, json.dumps(list(key.scopes)), key.rate_per_s, key.burst,
                     key.created_at, key.expires_at])
            except sqlite3.IntegrityError:
                raise ValueError(f"a key named {key.name!r} exists already") from None
        await self._run(run)

    async def api_keys(self) -> list[ApiKey]:
        return [_api_key(r) for r in await self._read("SELECT * FROM api_keys ORDER BY name", [])]

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        rows = await self._read("SELECT * FROM api_keys WHERE key_hash = ?", [key_hash])
        return _api_key(rows[0]) if rows else None

    async def api_key_revoke(self, name: str) -> bool:
        """False if there is no such unrevoked key."""
        def run() -> bool:
            return self._writer_db.execute("UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                                           [time.time(), name]).rowcount == 1
        return await self._run(run)

    async def api_audit_write(self, rows: list[tuple[str, str, str, int, float]]) -> None:
        """(key name, method, route, status, at) rows, and each key's last use, in one commit."""
        def run() -> None:
            db = self._writer_db
            with db.atomic():
                db.conn.executemany("INSERT INTO api_audit (key_name, method, route, status, at)"
                                    " VALUES (?, ?, ?, ?, ?)", rows)
                last: dict[str, float] = {}
                for name, *_, at in rows:
                    last[name] = max(at, last.get(name, 0.0))
                db.conn.executemany("UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?)"
                                    " WHERE name = ?", [(at, name) for name, at in last.items()])
        await self._write(run)

    async def api_audit(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._read("SELECT key_name, method, route, status, at FROM api_audit"
                                " ORDER BY id DESC LIMIT ?", [limit])

    async def otp_create(self, code: OtpCode) -> None:
        def run() -> None:
            self._writer_db.execute(
                "INSERT INTO otp_codes (id, key_name, channel, destination, purpose, code_hmac, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [code.id, code.key_name, code.channel, code.destination, code.purpose, code.code_hmac,
                 code.created_at, code.expires_at])
        await self._write(run)

    async def sweep_api_rows(self, audit_before: float, otp_before: float, batch: int = 5000) -> tuple[int, int]:
        """Delete audit rows written before `audit_before` and one-time codes that expired before
        `otp_before`: (audit rows, codes) deleted."""
        return (await self._run(self._in_batches, "DELETE FROM api_audit", "api_audit", "at < ?",
                                [audit_before], batch),
                await self._run(self._in_batches, "DELETE FROM otp_codes", "otp_codes", "expires_at < ?",
                                [otp_before], batch))

    async def sweep_contents(self, transcripts_before: float, help_before: float, messages_before: float,
                             batch: int = 5000) -> dict[str, int]:
        """Blank what people said or wrote once it is past its keep, leaving the rows (calls, turns with
        their timings, threads, help requests, outbox states) for statistics: rows blanked per kind.
        Turns go by their call's end, a closed help request by its answer (or creation, if it timed out),
        a text by its time; an inbound text still waiting (pending, or held for an operator) or an unsettled
        outbox row is never touched."""
        sweeps = {
            "turns": ("UPDATE turns SET text = ''", "turns",
                      "text != '' AND call_id IN (SELECT call_id FROM calls"
                      " WHERE COALESCE(ended_at, started_at) < ?)", [transcripts_before]),
            "help_requests": ("UPDATE help_requests SET question = '', answer = NULL, followup_note = NULL",
                              "help_requests", "question != '' AND status != 'open'"
                              " AND COALESCE(answered_at, created_at) < ?", [help_before]),
            "messages": ("UPDATE messages SET body = '', subject = NULL", "messages",
                         "body != '' AND status NOT IN ('pending', 'held') AND at < ?", [messages_before]),
            "outbox": ("UPDATE outbox SET body = '', html = NULL, subject = NULL", "outbox",
                       "body != '' AND state IN ('sent', 'delivered', 'failed') AND updated_at < ?",
                       [messages_before]),
        }
        return {kind: await self._run(self._in_batches, *sweep, batch) for kind, sweep in sweeps.items()}

    def _in_batches(self, statement: str, table: str, where: str, params: list[Any], batch: int) -> int:
        """`statement` (a DELETE or UPDATE of `table`) on the rows matching `where`, `batch` rows per commit
        so that a first sweep of a large table does not hold the writer for long: rows changed."""
        total = 0
        while True:
            with self._writer_db.atomic():
                count = self._writer_db.execute(
                    f"{statement} WHERE rowid IN (SELECT rowid FROM {table} WHERE {where} LIMIT ?)",
                    [*params, batch]).rowcount
            total += count
            if count < batch:
                return total

    async def otp_sent_via(self, otp_id: str, outbox_id: int) -> None:
        await self._write(lambda: self._writer_db.execute("UPDATE otp_codes SET outbox_id = ? WHERE id = ?",
                                                          [outbox_id, otp_id]))

    async def otp_created_since(self, destination: str, since: float) -> list[float]:
        """When codes went to `destination` since then, newest first."""
        rows = await self._read("SELECT created_at FROM otp_codes WHERE destination = ?"
                                " AND created_at >= ? ORDER BY created_at DESC", [destination, since])
        return [r["created_at"] for r in rows]

    async def otp_attempt(self, otp_id: str, matches: Callable[[str], bool], max_attempts: int,
                          now: float) -> tuple[str, int]:
        """One verification attempt, counted before it is judged: (outcome, attempts left), outcome one of
        valid, invalid, expired, used, exhausted, unknown. A valid code is consumed."""
        def run() -> tuple[str, int]:
            db = self._writer_db
            with db.atomic():
                row = db.execute("SELECT code_hmac, expires_at, attempts, verified_at FROM otp_codes WHERE id = ?",
                                 [otp_id]).fetchone()
                if row is None:
                    return "unknown", 0
                code_hmac, expires_at, attempts, verified_at = row
                if verified_at is not None:
                    return "used", 0
                if now >= expires_at:
                    return "expired", 0
                if attempts >= max_attempts:
                    return "exhausted", 0
                attempts += 1
                valid = matches(code_hmac)
                db.execute("UPDATE otp_codes SET attempts = ?, verified_at = ? WHERE id = ?",
                           [attempts, now if valid else None, otp_id])
            return ("valid" if valid else "invalid"), (0 if valid else max_attempts - attempts)
        return await self._write(run)

    # --- dashboard staff, sessions, audit ---

    async def staff_add(self, user: StaffUser) -> None:
        """Raises ValueError if the name is taken."""
        def run() -> None:
            try:
                self._writer_db.execute("INSERT INTO staff_users (name, role, password_hash, created_at)"
                                        " VALUES (?, ?, ?, ?)", [user.name, user.role, user.password_hash,
                                                                 user.created_at])
            except sqlite3.IntegrityError:
                raise ValueError(f"a user named {user.name!r} exists already") from None
        await self._run(run)

    async def staff_users(self) -> list[StaffUser]:
        return [StaffUser(**r) for r in await self._read("SELECT * FROM staff_users ORDER BY name", [])]

    async def staff_user(self, name: str) -> StaffUser | None:
        rows = await self._read("SELECT * FROM staff_users WHERE name = ?", [name])
        return StaffUser(**rows[0]) if rows else None

    async def staff_remove(self, name: str) -> bool:
        """False if there is no such user; their sessions go with them (ON DELETE CASCADE). Raises
        ValueError for the last admin (nobody could manage users any more)."""
        return await self._staff_change(name, "DELETE FROM staff_users WHERE name = ?", [name], demotes=True)

    async def staff_set_role(self, name: str, role: str) -> bool:
        """False if there is no such user; raises ValueError when it would leave no admin."""
        return await self._staff_change(name, "UPDATE staff_users SET role = ? WHERE name = ?", [role, name],
                                        demotes=role != "admin")

    async def staff_set_password(self, name: str, password_hash: str) -> bool:
        """False if there is no such user; their sessions end (whoever knew the old password is out)."""
        def run() -> bool:
            db = self._writer_db
            with db.atomic():
                if db.execute("UPDATE staff_users SET password_hash = ? WHERE name = ?",
                              [password_hash, name]).rowcount != 1:
                    return False
                db.execute("DELETE FROM staff_sessions WHERE user_name = ?", [name])
                return True
        return await self._run(run)

    async def _staff_change(self, name: str, sql: str, params: list[Any], *, demotes: bool) -> bool:
        def run() -> bool:
            db = self._writer_db
            with db.atomic():  # checked and changed in one transaction: two admins demoting each other
                rows = list(db.query("SELECT role, (SELECT COUNT(*) FROM staff_users WHERE role = 'admin')"
                                     " AS admins FROM staff_users WHERE name = ?", [name]))
                if not rows:
                    return False
                if demotes and rows[0]["role"] == "admin" and rows[0]["admins"] == 1:
                    raise ValueError(f"{name} is the last admin: add another admin first")
                db.execute(sql, params)
                return True
        return await self._run(run)

    async def staff_session_create(self, token_hash: str, user_name: str, csrf: str, expires_at: float) -> None:
        await self._run(lambda: self._writer_db.execute(
            "INSERT INTO staff_sessions (token_hash, user_name, csrf, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            [token_hash, user_name, csrf, time.time(), expires_at]))

    async def staff_session(self, token_hash: str, now: float) -> StaffSession | None:
        """The unexpired session with this token hash, and its user."""
        rows = await self._read("SELECT u.*, s.csrf, s.expires_at FROM staff_sessions s JOIN staff_users u"
                                " ON u.name = s.user_name WHERE s.token_hash = ? AND s.expires_at > ?",
                                [token_hash, now])
        if not rows:
            return None
        row = rows[0]
        csrf, expires_at = row.pop("csrf"), row.pop("expires_at")
        return StaffSession(StaffUser(**row), csrf, expires_at)

    async def staff_session_end(self, token_hash: str) -> None:
        """Also drops every expired session, so the table stays small."""
        def run() -> None:
            db = self._writer_db
            with db.atomic():
                db.execute("DELETE FROM staff_sessions WHERE token_hash = ? OR expires_at <= ?",
                           [token_hash, time.time()])
        await self._run(run)

    async def staff_audit_write(self, user_name: str, action: str, target: str | None, outcome: str,
                                remote: str | None) -> None:
        await self._run(lambda: self._writer_db.execute(
            "INSERT INTO staff_audit (user_name, action, target, outcome, remote, at) VALUES (?, ?, ?, ?, ?, ?)",
            [user_name, action, target, outcome, remote, time.time()]))

    async def staff_audit(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._read("SELECT user_name, action, target, outcome, remote, at FROM staff_audit"
                                " ORDER BY id DESC LIMIT ?", [limit])

    # --- help requests ---

    async def create_help_request(self, request: HelpRequest) -> int:
        row = {**asdict(request), "created_at": request.created_at or time.time()}
        del row["id"]
        request_id = await self._run(lambda: self._writer_db["help_requests"].insert(row).last_pk)
        self._recorded(replace(request, id=request_id, created_at=row["created_at"]))
        return request_id

    async def help_requests(self, status: str | None = None) -> list[HelpRequest]:
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        rows = await self._read(f"SELECT * FROM help_requests {where} ORDER BY created_at, id", params)
        return [HelpRequest(**r) for r in rows]

    async def help_request(self, request_id: int) -> HelpRequest | None:
        rows = await self._read("SELECT * FROM help_requests WHERE id = ?", [request_id])
        return HelpRequest(**rows[0]) if rows else None

    async def help_request_followup(self, request_id: int, channel: str | None, outbox_id: int | None,
                                    note: str | None) -> None:
        """How the answer went back to the customer who asked (or, in `note`, why it did not)."""
        await self._run(lambda: self._writer_db.execute(
            "UPDATE help_requests SET followup_channel = ?, followup_outbox_id = ?, followup_note = ? WHERE id = ?",
            [channel, outbox_id, note, request_id]))

    async def expire_help_requests(self, created_before: float) -> int:
        """Open requests asked before then become unresolved; how many did."""
        return await self._run(lambda: self._writer_db.execute(
            "UPDATE help_requests SET status = 'unresolved' WHERE status = 'open' AND created_at < ?",
            [created_before]).rowcount)

    async def answer_help_request(self, request_id: int, answer: str, by: str | None = None) -> KnowledgeEntry:
        """Record staff's answer and learn it, so the next caller asking is answered."""
        if not answer.strip():
            raise ValueError(f"help request {request_id}: empty answer")
        return await self._run(self._answer_help_request, request_id, answer.strip(), by)

    def _answer_help_request(self, request_id: int, answer: str, by: str | None) -> KnowledgeEntry:
        db = self._writer_db
        with db.atomic():
            row = db.execute("SELECT question FROM help_requests WHERE id = ?",
                             [request_id]).fetchone()
            if row is None:
                raise NotFoundError(f"no help request {request_id} in {self.path}")
            db.execute(
                "UPDATE help_requests SET status = 'answered', answer = ?, answered_at = ?, answered_by = ?,"
                " answered_entry = NULL WHERE id = ?", [answer, time.time(), by, request_id])
            entry = KnowledgeEntry(id=f"learned-{request_id}", question=row[0],
                                   answer=answer, source="learned")
            # Answering again corrects the learned entry rather than adding a second one (and enables it).
            db.execute("DELETE FROM knowledge_disabled WHERE id = ?", [entry.id])
            self._write_knowledge(entry, overwrite=True)
        log.info("help request answered id=%d entry=%s", request_id, entry.id)
        return entry

    async def add_phrasing(self, request_id: int, entry_id: str, by: str | None = None,
                           max_length: int = 300) -> KnowledgeEntry:
        """Close an open or unresolved help request with an existing entry: its question becomes a phrasing
        of that entry (live at once) and the entry's answer its answer. A learned entry keeps the phrasing
        itself; an entry of knowledge.yaml gets it in knowledge_phrasings, merged in at every reload.
        Raises NotFoundError (request or entry), ValueError (closed, empty, too long, duplicate)."""
        def run() -> KnowledgeEntry:
            db = self._writer_db
            with db.atomic():
                rows = list(db.query("SELECT question, status FROM help_requests WHERE id = ?", [request_id]))
                if not rows:
                    raise NotFoundError(f"no help request {request_id}")
                if rows[0]["status"] == "answered":
                    raise ValueError(f"help request {request_id} is already answered")
                found = list(db.query("SELECT * FROM knowledge WHERE id = ?", [entry_id]))
                if not found:
                    raise NotFoundError(f"no enabled knowledge entry {entry_id!r}")
                entry, phrasing = _entry(found[0]), " ".join(rows[0]["question"].split())
                if not phrasing or len(phrasing) > max_length:
                    raise ValueError(f"the question must have 1 to {max_length} characters")
                if phrasing.casefold() in {t.casefold() for t in [entry.question, *entry.phrasings]}:
                    raise ValueError(f"{entry_id!r} already has the phrasing {phrasing!r}")
                if entry.source != "learned":
                    db["knowledge_phrasings"].insert({"entry_id": entry_id, "phrasing": phrasing, "added_by": by,
                                                      "help_request_id": request_id, "added_at": time.time()})
                entry = replace(entry, phrasings=[*entry.phrasings, phrasing])
                self._write_knowledge(entry, overwrite=True)
                db.execute("UPDATE help_requests SET status = 'answered', answer = ?, answered_at = ?,"
                           " answered_by = ?, answered_entry = ? WHERE id = ?",
                           [entry.answer, time.time(), by, entry_id, request_id])
            log.info("help request answered id=%d entry=%s phrasing added", request_id, entry_id)
            return entry
        return await self._run(run)

    async def added_phrasings(self) -> dict[str, list[str]]:
        """The phrasings staff added to entries of knowledge.yaml, by entry id, oldest first."""
        return _by_entry(await self._read(_ADDED_PHRASINGS, []))

    # --- knowledge ---

    async def replace_admin_knowledge(self, entries: list[KnowledgeEntry]) -> None:
        """Swap in the admin's entries (etc/knowledge.yaml); learned entries stay."""
        await self._run(self._replace_admin_knowledge, entries)

    def _replace_admin_knowledge(self, entries: list[KnowledgeEntry]) -> None:
        db = self._writer_db
        with db.atomic():
            db.execute("DELETE FROM knowledge WHERE source = 'admin'")
            added = _by_entry(db.query(_ADDED_PHRASINGS))
            for entry in entries:
                # Phrasings added on the dashboard join the file's (once: the file may hold an export of them).
                known = {p.casefold() for p in [entry.question, *entry.phrasings]}
                extra = [p for p in added.get(entry.id, []) if p.casefold() not in known]
                try:
                    self._write_knowledge(replace(entry, phrasings=[*entry.phrasings, *extra], source="admin"))
                    if entry.id.startswith("learned_"):  # the file took over an exported learned entry
                        taken = "learned-" + entry.id.removeprefix("learned_")
                        db.execute("INSERT OR REPLACE INTO knowledge_disabled SELECT * FROM knowledge"
                                   " WHERE id = ? AND source = 'learned'", [taken])
                        db.execute("DELETE FROM knowledge WHERE id = ? AND source = 'learned'", [taken])
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
        rows = await self._read("SELECT * FROM knowledge ORDER BY pk", [])
        return [_entry(r) for r in rows]

    async def knowledge_disabled(self) -> list[KnowledgeEntry]:
        rows = await self._read("SELECT * FROM knowledge_disabled ORDER BY updated_at", [])
        return [_entry(r) for r in rows]

    async def edit_learned(self, entry: KnowledgeEntry) -> bool:
        """Replace a learned entry's question, answer and phrasings; False if there is no such learned entry."""
        def run() -> bool:
            db = self._writer_db
            with db.atomic():
                if db.execute("SELECT 1 FROM knowledge WHERE id = ? AND source = 'learned'",
                              [entry.id]).fetchone() is None:
                    return False
                self._write_knowledge(replace(entry, source="learned"), overwrite=True)
            return True
        return await self._run(run)

    async def set_learned_enabled(self, entry_id: str, enabled: bool) -> bool:
        """Move a learned entry out of retrieval or back; False if it is not there to move; ValueError if
        its id has been taken by an entry of knowledge.yaml while it was disabled."""
        source, target = ("knowledge_disabled", "knowledge") if enabled else ("knowledge", "knowledge_disabled")

        def run() -> bool:
            db = self._writer_db
            with db.atomic():
                rows = list(db.query(f"SELECT * FROM {source} WHERE id = ? AND source = 'learned'", [entry_id]))
                if not rows:
                    return False
                db.execute(f"DELETE FROM {source} WHERE id = ?", [entry_id])  # knowledge's triggers update FTS
                row = {**rows[0], "updated_at": time.time()}
                if enabled:
                    del row["pk"]  # a new rowid in knowledge and its FTS index
                try:
                    db[target].insert(row)
                except sqlite3.IntegrityError:  # knowledge.yaml took the id meanwhile (rolled back)
                    raise ValueError(f"the id {entry_id!r} is now used by another entry") from None
            return True
        return await self._run(run)

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


def _api_key(row: dict[str, Any]) -> ApiKey:
    return ApiKey(**{**row, "scopes": tuple(json.loads(row["scopes"]))})


_ADDED_PHRASINGS = "SELECT entry_id, phrasing FROM knowledge_phrasings ORDER BY added_at"


def _by_entry(rows: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    added: dict[str, list[str]] = {}
    for row in rows:
        added.setdefault(row["entry_id"], []).append(row["phrasing"])
    return added


def _entry(row: dict[str, Any]) -> KnowledgeEntry:
    return KnowledgeEntry(id=row["id"], question=row["question"], answer=row["answer"],
                          phrasings=json.loads(row["phrasings"]), tags=json.loads(row["tags"]),
                          source=row["source"])
