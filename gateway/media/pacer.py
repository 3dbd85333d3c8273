"""Outbound media clock: one 20 ms frame per call per tick, for every call, from one task.

Asterisk buffers nothing on AudioSocket input (PROTOCOLS.md §1 "Pacing"), so the gateway is
the clock: too fast and the caller's jitter buffer overflows, too slow and they hear gaps.
One task ticks against an absolute monotonic schedule (``t0 + n * frame_s``) and pulls exactly
one frame from every registered stream; a timer per call would cost hundreds of wake-ups per
tick at 200 calls and spread their jitter. Idle streams get silence so RTP keeps flowing.

Everything here runs on the event loop thread; none of it is thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from speech.audio import FRAME_BYTES, FRAME_MS, SILENCE_FRAME

log = logging.getLogger(__name__)

FRAME_S = FRAME_MS / 1000
MAX_LAG_FRAMES = 5  # catch up (back-to-back frames) below this; skip ticks above it


class _Mark:
    """A position in a stream's queue; its future says whether playback reached it."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[bool]) -> None:
        self.future = future

    def resolve(self, played: bool) -> None:
        if not self.future.done():
            self.future.set_result(played)


class OutputStream:
    """The outbound audio queue of one call, drained one frame per clock tick into ``sink``.

    ``sink`` gets exactly one FRAME_BYTES frame per tick (e.g. AudioSocketCall.send_audio).
    A *reply* starts when audio is sent after the queue had run dry; its first frame fires
    the ``on_first_frame`` callbacks with the monotonic send time (latency measurements).
    """

    def __init__(self, sink: Callable[[bytes], None], name: str = "") -> None:
        self.sink = sink
        self.name = name
        self.frames_sent = 0
        self.silence_frames = 0
        self.first_audio_sent_at: float | None = None
        self._queue: deque[bytes | _Mark] = deque()
        self._queued_frames = 0
        self._partial = b""  # tail shorter than a frame, completed by the next enqueue
        self._in_reply = False
        self._first_frame_callbacks: list[Callable[[float], None]] = []

    @property
    def playing(self) -> bool:
        return self._queued_frames > 0 or bool(self._partial)

    @property
    def queued_frames(self) -> int:
        return self._queued_frames

    def enqueue(self, pcm: bytes) -> None:
        """Queue 8 kHz s16le audio. Chunks need not be frame-aligned: a short tail waits for
        the next chunk and is only zero-padded when a mark follows or the queue runs dry."""
        data = self._partial + pcm
        whole = len(data) - len(data) % FRAME_BYTES
        for i in range(0, whole, FRAME_BYTES):
            self._queue.append(data[i : i + FRAME_BYTES])
        self._queued_frames += whole // FRAME_BYTES
        self._partial = data[whole:]

    def mark(self) -> asyncio.Future[bool]:
        """A future resolved with True once everything enqueued so far has been sent, or with
        False if it was dropped first (clear(), or the stream left the clock)."""
        mark = _Mark(asyncio.get_running_loop().create_future())
        self._flush_partial()
        if self._queued_frames:
            self._queue.append(mark)
        else:
            mark.resolve(True)
        return mark.future

    def clear(self) -> int:
        """Barge-in: drop all queued audio now; pending marks resolve False. Returns the
        number of frames dropped."""
        self._flush_partial()
        dropped = self._queued_frames
        for item in self._queue:
            if isinstance(item, _Mark):
                item.resolve(False)
        self._queue.clear()
        self._queued_frames = 0
        self._in_reply = False
        return dropped

    def on_first_frame(self, callback: Callable[[float], None]) -> Callable[[], None]:
        """Call ``callback(monotonic_time)`` when the first frame of each reply is sent. Returns the
        function that removes it: a callback per reply must not outlive its reply."""
        self._first_frame_callbacks.append(callback)

        def remove() -> None:
            if callback in self._first_frame_callbacks:
                self._first_frame_callbacks.remove(callback)

        return remove

    @property
    def first_frame_callbacks(self) -> int:
        return len(self._first_frame_callbacks)

    def _flush_partial(self) -> None:
        if self._partial:
            self._queue.append(self._partial.ljust(FRAME_BYTES, b"\x00"))
            self._queued_frames += 1
            self._partial = b""

    def _tick(self) -> None:
        """Send exactly one frame (queued audio, else silence). Exceptions from the sink
        propagate to the clock, which drops the stream."""
        if not self._queued_frames:
            self._flush_partial()  # the reply's tail: better padded now than stuck forever
        if not self._queued_frames:
            self._in_reply = False
            self.sink(SILENCE_FRAME)
            self.frames_sent += 1
            self.silence_frames += 1
            return
        frame = self._queue.popleft()
        assert isinstance(frame, bytes)  # marks never lead: they are popped right after a send
        self._queued_frames -= 1
        self.sink(frame)
        self.frames_sent += 1
        if not self._in_reply:
            self._in_reply = True
            self.first_audio_sent_at = time.monotonic()
            for callback in self._first_frame_callbacks:
                callback(self.first_audio_sent_at)
        while self._queue and isinstance(self._queue[0], _Mark):
            self._queue.popleft().resolve(True)  # type: ignore[union-attr]


@dataclass
class ClockStats:
    ticks: int = 0
    slips: int = 0  # ticks skipped to resynchronise after the loop fell behind
    max_lateness_s: float = 0.0  # worst tick start after its due time


class MediaClock:
    """One asyncio task that ticks every ``frame_s`` and drives all registered streams."""

    def __init__(self, frame_s: float = FRAME_S, max_lag_frames: int = MAX_LAG_FRAMES) -> None:
        self.frame_s = frame_s
        self.max_lag_frames = max_lag_frames
        self.stats = ClockStats()
        self._streams: dict[OutputStream, None] = {}  # insertion-ordered set
        self._task: asyncio.Task[None] | None = None

    @property
    def streams(self) -> int:
        return len(self._streams)

    def register(self, stream: OutputStream) -> None:
        self._streams[stream] = None

    def unregister(self, stream: OutputStream) -> None:
        """Stop driving ``stream``; its queued audio is dropped so no mark waits forever."""
        if stream in self._streams:
            del self._streams[stream]
            stream.clear()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="media-clock")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        n = 0
        while True:
            due = t0 + n * self.frame_s
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lateness = loop.time() - due
            self.stats.max_lateness_s = max(self.stats.max_lateness_s, lateness)
            if lateness > self.max_lag_frames * self.frame_s:
                # A burst would overflow the far end's jitter buffer: skip the missed ticks.
                skipped = int(lateness / self.frame_s)
                n += skipped
                self.stats.slips += skipped
                log.warning("media clock slipped frames=%d late_ms=%.0f streams=%d",
                            skipped, lateness * 1000, len(self._streams))
            self._tick_all()
            self.stats.ticks += 1
            n += 1

    def _tick_all(self) -> None:
        for stream in list(self._streams):
            if stream not in self._streams:  # unregistered by an earlier sink this tick
                continue
            try:
                stream._tick()
            except Exception:
                log.exception("output stream failed, dropped stream=%s", stream.name)
                self.unregister(stream)
