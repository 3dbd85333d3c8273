"""Tasks with an owner: each one is awaited or cancelled by that owner, and its failure is logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class TaskSet:
    """The background tasks of one owner (a call, the AMI client, the ARI controller)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Awaitable[T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def finish(self, timeout_s: float = 0.0) -> None:
        """Let the tasks end by themselves for up to `timeout_s`, then cancel the rest; await all."""
        tasks = list(self._tasks)
        if tasks and timeout_s > 0:
            await asyncio.wait(tasks, timeout=timeout_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed owner=%s error=%r", self.owner, task.exception())


async def every(interval_s: float, work: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `work` now, then every `interval_s`, until cancelled. A failed run (a busy or closing store)
    is logged and tried again next time: a periodic job must outlive one bad pass."""
    while True:
        try:
            await work()
        except Exception as exc:
            log.error("%s failed error=%s", what, exc)
        await asyncio.sleep(interval_s)
