"""TaskSet: what an owner started is awaited or cancelled, and a failure is logged, never lost."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.tasks import TaskSet, every


async def test_finish_lets_quick_tasks_end_then_cancels_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("test")
    quick = tasks.spawn(asyncio.sleep(0.01, "done"))
    stuck = tasks.spawn(asyncio.sleep(60))

    async def fail() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="gateway.tasks"):
        tasks.spawn(fail())
        await tasks.finish(timeout_s=0.5)
    assert quick.result() == "done" and stuck.cancelled() and tasks.running == 0
    assert "task failed owner=test error=RuntimeError('boom')" in caplog.text


async def test_every_runs_at_once_then_again_after_a_failed_pass(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    third = asyncio.Event()

    async def work() -> None:
        runs.append(len(runs))
        if len(runs) == 3:
            third.set()
        if len(runs) == 1:
            raise RuntimeError("store busy")

    with caplog.at_level(logging.ERROR, logger="gateway.tasks"):
        job = asyncio.ensure_future(every(0.01, work, "test sweep"))
        await asyncio.wait_for(third.wait(), 10)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
    assert runs[:3] == [0, 1, 2]
    assert "test sweep failed error=store busy" in caplog.text
