"""TaskSet: what an owner started is awaited or cancelled, and a failure is logged, never lost."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.tasks import TaskSet


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
