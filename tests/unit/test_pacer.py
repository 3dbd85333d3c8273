"""MediaClock / OutputStream on a real running event loop (no fake time)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.media.pacer import MediaClock, OutputStream
from speech.audio import FRAME_BYTES, SILENCE_FRAME

FRAME_S = 0.02
EARLY_TOLERANCE_S = 0.001  # timer granularity; a frame is never sent a whole tick early


class Recorder:
    """A sink that records (monotonic time, frame)."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, bytes]] = []

    def __call__(self, frame: bytes) -> None:
        self.sent.append((time.monotonic(), frame))

    @property
    def frames(self) -> list[bytes]:
        return [f for _, f in self.sent]

    def audio(self) -> list[bytes]:
        return [f for f in self.frames if f != SILENCE_FRAME]


def frame_of(value: int) -> bytes:
    return bytes([value]) * FRAME_BYTES


async def until(pred: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@pytest.fixture
async def clock() -> AsyncIterator[MediaClock]:
    c = MediaClock(FRAME_S)
    yield c
    await c.stop()


def assert_never_ahead(rec: Recorder) -> None:
    """Frame k of a stream is due at t0 + (k + skipped ticks) * frame_s: never earlier."""
    t0 = rec.sent[0][0]
    for k, (t, _) in enumerate(rec.sent):
        assert t - t0 >= k * FRAME_S - EARLY_TOLERANCE_S, f"frame {k} sent early (burst)"


async def test_three_streams_are_paced_in_order(clock: MediaClock) -> None:
    recs = [Recorder() for _ in range(3)]
    for i, rec in enumerate(recs):
        stream = OutputStream(rec, name=f"s{i}")
        stream.enqueue(b"".join(frame_of(i * 60 + k + 1) for k in range(50)))
        clock.register(stream)
    start = time.monotonic()
    clock.start()
    await asyncio.sleep(0.5)
    await clock.stop()
    elapsed = time.monotonic() - start

    ticks = clock.stats.ticks
    assert 10 <= ticks <= elapsed / FRAME_S + 1  # loose floor (loaded machine); hard ceiling
    for i, rec in enumerate(recs):
        assert len(rec.sent) == ticks  # one frame per tick per stream, no more
        assert rec.frames == [frame_of(i * 60 + k + 1) for k in range(ticks)]
        assert_never_ahead(rec)


async def test_silence_when_idle(clock: MediaClock) -> None:
    rec = Recorder()
    stream = OutputStream(rec)
    clock.register(stream)
    clock.start()
    await until(lambda: len(rec.sent) >= 5)
    assert set(rec.frames) == {SILENCE_FRAME}
    assert stream.silence_frames == stream.frames_sent >= 5
    assert not stream.playing
    assert stream.first_audio_sent_at is None


async def test_mark_resolves_after_its_audio_was_sent(clock: MediaClock) -> None:
    rec = Recorder()
    stream = OutputStream(rec)
    assert await asyncio.wait_for(stream.mark(), 1) is True  # nothing queued: already played

    stream.enqueue(frame_of(1) + frame_of(2) + frame_of(3))
    mark = stream.mark()
    done_at_send: list[bool] = []  # the mark's state as each frame goes out (callbacks would run late under load)

    def sink(frame: bytes) -> None:
        done_at_send.append(mark.done())
        rec(frame)

    stream.sink = sink
    assert stream.playing and not mark.done()
    clock.register(stream)
    clock.start()
    assert await asyncio.wait_for(mark, 3) is True
    await until(lambda: len(rec.sent) >= 4)
    assert done_at_send[:4] == [False, False, False, True]  # resolved right after its last frame
    assert rec.frames[:3] == [frame_of(1), frame_of(2), frame_of(3)]
    assert not stream.playing


async def test_clear_drops_queue_and_interrupts_marks(clock: MediaClock) -> None:
    rec = Recorder()
    stream = OutputStream(rec)
    stream.enqueue(b"".join(frame_of(k + 1) for k in range(100)))
    mark = stream.mark()
    clock.register(stream)
    clock.start()
    await until(lambda: len(rec.sent) >= 3)

    sent_before = len(rec.sent)
    dropped = stream.clear()
    assert dropped == 100 - sent_before
    assert mark.done() and mark.result() is False
    assert not stream.playing and stream.queued_frames == 0
    await until(lambda: len(rec.sent) >= sent_before + 3)
    assert set(rec.frames[sent_before:]) == {SILENCE_FRAME}  # stopped at once
    assert rec.frames[:sent_before] == [frame_of(k + 1) for k in range(sent_before)]


async def test_unaligned_chunks_are_joined_and_tail_padded(clock: MediaClock) -> None:
    rec = Recorder()
    stream = OutputStream(rec)
    pcm = bytes(range(1, 251)) * 3  # 750 bytes: two frames and a 110-byte tail
    stream.enqueue(pcm[:500])
    stream.enqueue(pcm[500:])
    assert stream.queued_frames == 2 and stream.playing
    done = stream.mark()  # a mark flushes the tail as a zero-padded frame
    assert stream.queued_frames == 3
    clock.register(stream)
    clock.start()
    assert await asyncio.wait_for(done, 3) is True
    assert rec.audio() == [pcm[:320], pcm[320:640], pcm[640:].ljust(FRAME_BYTES, b"\0")]


async def test_first_frame_of_each_reply_is_timestamped(clock: MediaClock) -> None:
    rec = Recorder()
    stream = OutputStream(rec)
    stamps: list[float] = []
    stream.on_first_frame(stamps.append)
    clock.register(stream)
    clock.start()
    await until(lambda: stream.silence_frames >= 2)
    assert stamps == []

    stream.enqueue(frame_of(7) * 3)
    first_reply = stream.mark()
    await until(lambda: len(stamps) == 1)
    stream.enqueue(frame_of(8))  # more audio while still playing: same reply
    assert await asyncio.wait_for(first_reply, 3) is True
    await until(lambda: not stream.playing)
    assert len(stamps) == 1 and stream.first_audio_sent_at == stamps[0]
    t_first = next(t for t, f in rec.sent if f == frame_of(7))
    assert stamps[0] == pytest.approx(t_first, abs=0.005)

    silence = stream.silence_frames
    await until(lambda: stream.silence_frames > silence)
    stream.enqueue(frame_of(9))
    await until(lambda: len(stamps) == 2)
    assert stamps[1] > stamps[0]


async def test_failing_sink_drops_only_its_stream(
    clock: MediaClock, caplog: pytest.LogCaptureFixture
) -> None:
    good = [Recorder(), Recorder()]
    calls = 0

    def bad_sink(frame: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionResetError("peer gone")

    bad = OutputStream(bad_sink, name="bad")
    bad.enqueue(frame_of(1) * 10)
    bad_mark = bad.mark()
    clock.register(OutputStream(good[0], name="g0"))
    clock.register(bad)
    clock.register(OutputStream(good[1], name="g1"))
    clock.start()
    with caplog.at_level(logging.ERROR, logger="gateway.media.pacer"):
        await until(lambda: calls == 3)
        assert await asyncio.wait_for(bad_mark, 1) is False
        at_failure = len(good[0].sent)
        await until(lambda: len(good[0].sent) >= at_failure + 5 and len(good[1].sent) >= at_failure + 5)
    assert calls == 3  # never called again
    assert clock.streams == 2
    assert any("stream=bad" in r.getMessage() for r in caplog.records)


async def test_falling_behind_resynchronises_instead_of_bursting(clock: MediaClock) -> None:
    rec = Recorder()
    clock.register(OutputStream(rec))
    clock.start()
    await until(lambda: len(rec.sent) >= 3)
    time.sleep(0.3)  # block the loop, as an overloaded process would
    stalled_at = len(rec.sent)
    await until(lambda: len(rec.sent) >= stalled_at + 5)
    await clock.stop()

    assert clock.stats.slips >= 10
    assert clock.stats.max_lateness_s >= 0.25
    # Without the resync the clock would owe ~15 frames and send them back to back.
    t_resumed = rec.sent[stalled_at][0]
    burst = sum(1 for t, _ in rec.sent[stalled_at:] if t - t_resumed < FRAME_S / 2)
    assert burst <= clock.max_lag_frames + 1
    assert len(rec.sent) + clock.stats.slips <= (rec.sent[-1][0] - rec.sent[0][0]) / FRAME_S + 2


async def test_unregister_stops_frames_and_releases_marks(clock: MediaClock) -> None:
    rec = Recorder()
    stream = OutputStream(rec)
    stream.enqueue(frame_of(3) * 50)
    mark = stream.mark()
    clock.register(stream)
    clock.start()
    await until(lambda: len(rec.sent) >= 2)
    clock.unregister(stream)
    count = len(rec.sent)
    assert mark.done() and mark.result() is False
    ticks = clock.stats.ticks
    await until(lambda: clock.stats.ticks >= ticks + 3)
    assert len(rec.sent) == count
