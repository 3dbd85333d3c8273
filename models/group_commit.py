"""Group commit: the writes waiting for the store's thread share one transaction, so one fsync; and
reads waiting for theirs run in one hop.

With synchronous=FULL every commit costs an fsync (milliseconds on a busy disk), and one commit per
write caps a busy API at a few hundred writes a second. Here a write waits in a list; the writer thread
takes all that wait when it is free and commits them together. Each write runs in its own savepoint,
so one that fails is undone alone and only its caller sees the error. A caller's future is resolved
only after the COMMIT of its batch returned: an awaited write is on disk, as before.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from sqlite_utils import Database

Write = Callable[[], Any]
Outcome = tuple[Any, BaseException | None]  # (result, None) or (None, the write's error)


class _Undone(Exception):
    """A write's error ended the whole transaction (e.g. disk full): the others must run again."""


class Batched:
    """Calls waiting for one thread, run there in one go when it is free: one hop to the thread and one
    wake-up of each caller's loop for many calls. Subclasses say how a batch runs (`_run_batch`)."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._lock = threading.Lock()  # the list is filled on the loop and emptied on the executor's thread
        self._pending: list[tuple[Write, asyncio.Future[Any]]] = []

    def submit(self, call: Write) -> asyncio.Future[Any]:
        """`call` runs on the executor's thread; the future has its result (or its exception) once its
        batch is done."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._pending.append((call, future))
            first = len(self._pending) == 1
        if first:  # else a drain is queued already and will take this one too
            self._executor.submit(self._drain)
        return future

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        try:
            outcomes = self._run_batch([call for call, _ in batch])
        except Exception as exc:  # e.g. the store closed under it: no caller may wait forever
            outcomes = [(None, exc)] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
        for (_, future), outcome in zip(batch, outcomes):
            by_loop.setdefault(future.get_loop(), []).append((future, outcome))
        for loop, settled in by_loop.items():  # one wake-up of each loop per batch
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, settled)

    def _run_batch(self, calls: list[Write]) -> list[Outcome]:
        """Each call on its own: one's error is its caller's only."""
        outcomes: list[Outcome] = []
        for call in calls:
            try:
                outcomes.append((call(), None))
            except Exception as exc:
                outcomes.append((None, exc))
        return outcomes


class GroupCommit(Batched):
    """Writes run in one transaction, each in its own savepoint; results are given after its COMMIT."""

    def __init__(self, executor: Executor, connection: Callable[[], Database]) -> None:
        super().__init__(executor)
        self._connection = connection
        self.commits = 0  # transactions committed (tests read it to see writes share one)

    def _run_batch(self, writes: list[Write]) -> list[Outcome]:
        db = self._connection()
        outcomes: list[Outcome] = [(None, None)] * len(writes)
        todo = list(range(len(writes)))
        while todo:
            again: list[int] = []
            try:
                with db.atomic():
                    for n, i in enumerate(todo):
                        try:
                            with db.atomic():  # a savepoint: a failing write undoes only itself
                                outcomes[i] = (writes[i](), None)
                        except Exception as exc:
                            outcomes[i] = (None, exc)
                            if not db.conn.in_transaction:
                                again = todo[:n] + todo[n + 1:]
                                raise _Undone from exc
                self.commits += 1
                todo = []
            except _Undone:
                todo = again  # each round drops the write that failed, so this ends
            except Exception as exc:  # the COMMIT itself failed: nothing of this batch is on disk
                for i in todo:
                    outcomes[i] = (None, exc)
                todo = []
        return outcomes


def _settle(settled: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for future, (value, exc) in settled:
        if future.done():  # its caller was cancelled meanwhile: the write stands all the same
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)
