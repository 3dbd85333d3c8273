"""Group commit (models/group_commit.py) through the real store: writes waiting for the writer thread
share one transaction, each caller returns only once its row is committed, and a failing write fails
only its own caller (unless the COMMIT itself fails: then nothing of the batch is on disk)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from models.store import Store

N = 20


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "sb.db")
    yield store
    await store.close()


def _committed_ids(path: Path) -> set[int]:
    """What another connection sees: only what is committed."""
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM outbox")}


async def _while_writer_held(store: Store, writes: list[Any]) -> list[Any]:
    """Start `writes` (coroutines) while the writer thread is busy, release it once all of them wait in
    the group, and return their outcomes (exceptions as values)."""
    release = threading.Event()
    blocker = asyncio.ensure_future(store._run(lambda: release.wait(30)))
    tasks = [asyncio.ensure_future(write) for write in writes]
    for _ in range(1000):  # bounded: each round lets every task run up to its wait
        if len(store._group._pending) == len(tasks):
            break
        await asyncio.sleep(0)
    assert len(store._group._pending) == len(tasks)
    release.set()
    await blocker
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


def _enqueue(store: Store, i: int) -> Any:
    return store.outbox_enqueue("email", f"p{i}@example.test", f"text {i}", None, None, f"key-{i}")


async def test_concurrent_enqueues_share_one_commit_and_return_once_committed(store: Store) -> None:
    seen_at_return: dict[int, bool] = {}

    async def enqueue(i: int) -> int:
        row_id, created = await _enqueue(store, i)
        assert created
        seen_at_return[row_id] = row_id in _committed_ids(store.path)  # checked the moment the caller resumes
        return row_id

    before = store._group.commits
    ids = await _while_writer_held(store, [enqueue(i) for i in range(N)])
    assert store._group.commits == before + 1
    assert len(set(ids)) == N
    assert seen_at_return == {row_id: True for row_id in ids}


async def test_a_failing_write_fails_only_its_caller(store: Store) -> None:
    def insert_then_fail() -> None:
        store._writer_db.execute("INSERT INTO outbox (idempotency_key, channel, recipient, body, next_attempt_at,"
                                 " created_at, updated_at) VALUES ('doomed', 'email', 'x@example.test', 'b', 0, 0, 0)")
        raise ValueError("this write fails after its insert")

    writes = [_enqueue(store, i) for i in range(5)] + [store._write(insert_then_fail)] + \
        [_enqueue(store, i) for i in range(5, 10)]
    before = store._group.commits
    outcomes = await _while_writer_held(store, writes)
    assert isinstance(outcomes[5], ValueError)
    good = [o[0] for o in outcomes[:5] + outcomes[6:]]
    assert _committed_ids(store.path) == set(good)  # the failed write's insert was undone, only it
    assert store._group.commits == before + 1


async def test_a_write_that_ends_the_transaction_fails_alone(store: Store) -> None:
    """An error can roll back the whole transaction (disk full, a RAISE(ROLLBACK) trigger): the writes
    before it were undone with it, so they run again in a new one and still succeed."""
    def roll_back_everything() -> None:
        store._writer_db.conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("as if the disk were full")

    writes = [_enqueue(store, i) for i in range(3)] + [store._write(roll_back_everything)] + \
        [_enqueue(store, i) for i in range(3, 6)]
    outcomes = await _while_writer_held(store, writes)
    assert isinstance(outcomes[3], sqlite3.OperationalError)
    good = [o[0] for o in outcomes[:3] + outcomes[4:]]
    assert len(set(good)) == 6
    assert _committed_ids(store.path) == set(good)


async def test_a_failed_commit_fails_every_caller_of_the_batch(store: Store) -> None:
    """A deferred foreign key is checked at COMMIT: that COMMIT fails, and so must every write in it."""
    def dangling_reference() -> None:
        store._writer_db.execute("PRAGMA defer_foreign_keys = ON")
        store._writer_db.execute("INSERT INTO outbox_events (outbox_id, state, attempts, at)"
                                 " VALUES (999999, 'queued', 0, 0)")

    writes = [_enqueue(store, i) for i in range(3)] + [store._write(dangling_reference)]
    outcomes = await _while_writer_held(store, writes)
    assert all(isinstance(o, sqlite3.IntegrityError) for o in outcomes), outcomes
    assert _committed_ids(store.path) == set()
    # The writer goes on: the next write commits.
    row_id, _ = await _enqueue(store, 99)
    assert _committed_ids(store.path) == {row_id}


async def test_reads_waiting_run_in_one_hop_and_fail_alone(store: Store) -> None:
    """Reads go to their own connection's thread, batched the same way: a bad query fails only its caller."""
    row_id, _ = await _enqueue(store, 1)
    release = threading.Event()
    blocker = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(store._reader, release.wait, 30))
    tasks = [asyncio.ensure_future(store.outbox_get(row_id)) for _ in range(5)]
    tasks.append(asyncio.ensure_future(store._read("SELECT * FROM no_such_table", [])))
    for _ in range(1000):
        if len(store._reads._pending) == len(tasks):
            break
        await asyncio.sleep(0)
    assert len(store._reads._pending) == len(tasks)  # all wait for the one drain queued behind the blocker
    release.set()
    await blocker
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    assert [o.id for o in outcomes[:5]] == [row_id] * 5
    assert isinstance(outcomes[5], sqlite3.OperationalError)
