"""The shared STT queue: finished turns first, stale speculation skipped, a bound that hands off."""

from __future__ import annotations

import asyncio
import threading

import pytest

from speech.stt import SttBusy, SttJob, SttQueue, Transcript


class Worker:
    """A stand-in for the model: records what it transcribes; the first job blocks until released."""

    def __init__(self) -> None:
        self.ran: list[bytes] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, job: SttJob) -> Transcript:
        self.ran.append(job.pcm)
        self.started.set()
        assert self.release.wait(10)
        return Transcript(job.pcm.decode(), 0, 0.0)


async def busy_queue(max_queue: int = 8) -> tuple[SttQueue, Worker]:
    worker = Worker()
    queue = SttQueue(worker, workers=1, max_queue=max_queue)
    queue.submit(b"running", None, speculative=False)
    assert await asyncio.to_thread(worker.started.wait, 10)  # the one worker is now taken
    return queue, worker


async def test_final_turns_go_first_and_stale_speculation_is_skipped() -> None:
    queue, worker = await busy_queue()
    try:
        early = queue.submit(b"speculation a", None, speculative=True)
        stale = queue.submit(b"speculation b", None, speculative=True).result()
        final = queue.submit(b"final c", None, speculative=False)
        stale.cancel()  # caller b spoke on: its guess is stale before a worker gets to it
        await asyncio.sleep(0)
        worker.release.set()
        assert (await final.result()).text == "final c"
        assert (await early.result()).text == "speculation a"
        await asyncio.gather(stale, return_exceptions=True)
        assert worker.ran == [b"running", b"final c", b"speculation a"]
        assert stale.cancelled()
    finally:
        worker.release.set()
        queue.close()


async def test_a_promoted_speculation_goes_ahead_of_other_speculations() -> None:
    queue, worker = await busy_queue()
    try:
        other = queue.submit(b"someone's guess", None, speculative=True)
        mine = queue.submit(b"my whole turn", None, speculative=True)
        assert mine.promote()  # the pause was the end of the turn
        worker.release.set()
        await asyncio.gather(mine.result(), other.result())
        assert worker.ran == [b"running", b"my whole turn", b"someone's guess"]
    finally:
        worker.release.set()
        queue.close()


async def test_the_bound_refuses_speculation_then_evicts_it_for_a_final_turn_then_refuses() -> None:
    queue, worker = await busy_queue(max_queue=2)
    try:
        first = queue.submit(b"guess 1", None, speculative=True)
        evicted = queue.submit(b"guess 2", None, speculative=True)
        with pytest.raises(SttBusy):
            queue.submit(b"guess 3", None, speculative=True)
        kept = queue.submit(b"final 1", None, speculative=False)  # takes the newest guess's place
        assert evicted.future.cancelled() and not evicted.promote()  # its owner transcribes afresh
        queue.submit(b"final 2", None, speculative=False)  # takes the other guess's place
        assert first.future.cancelled()
        with pytest.raises(SttBusy):
            queue.submit(b"final 3", None, speculative=False)
        worker.release.set()
        assert (await kept.result()).text == "final 1"
    finally:
        worker.release.set()
        queue.close()
