"""A stand-in for Asterisk's side of an AudioSocket call, over real TCP.

Like the real channel it sends one 20 ms frame every 20 ms (the caller's speech, silence between)
and records every frame the gateway sends back with its arrival time. `switchboard demo`, the
benchmarks and the end-to-end tests all drive the gateway through this one client.
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from dataclasses import dataclass, field

from speech.audio import FRAME_BYTES, SILENCE_FRAME, rms, split_frames, ulaw_encode

_HEADER = struct.Struct("!BH")
KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_AUDIO = 0x00, 0x01, 0x03, 0x10
VOICED_RMS = 200.0  # int16 units; the gateway's silence is exact zeros


@dataclass
class ReceivedFrame:
    at: float  # time.monotonic() on arrival
    kind: int
    payload: bytes
    voiced: bool = False  # computed once on arrival: many calls share this event loop


@dataclass
class Reply:
    first_voiced_at: float
    last_voiced_at: float
    pcm: bytes


@dataclass
class CallerClient:
    host: str
    port: int
    # What the caller sends as kind 0x10: slin, or u-law as Dial(AudioSocket/...) without c(slin) does
    # (the gateway then needs audiosocket.codec_0x10: ulaw). Replies are read as slin either way.
    codec: str = "slin"
    call_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    received: list[ReceivedFrame] = field(default_factory=list)
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)
    _outgoing: asyncio.Queue = field(default_factory=asyncio.Queue)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _silent_until: float = 0.0

    async def connect(self) -> "CallerClient":
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.write(_HEADER.pack(KIND_UUID, 16) + uuid.UUID(self.call_id).bytes)
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._mic())]
        return self

    async def _read(self) -> None:
        try:
            while True:
                kind, length = _HEADER.unpack(await self._reader.readexactly(3))
                payload = await self._reader.readexactly(length) if length else b""
                voiced = kind == KIND_AUDIO and any(payload) and rms(payload) > VOICED_RMS
                self.received.append(ReceivedFrame(time.monotonic(), kind, payload, voiced))
                if kind == KIND_HANGUP:  # Asterisk leaves the app and closes the socket
                    self._writer.close()
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.hung_up.set()

    async def _mic(self) -> None:
        """One frame per 20 ms against a monotonic schedule, as Asterisk's RTP stream would."""
        silence = self._audio_message(SILENCE_FRAME)
        due = time.monotonic()
        while not self.hung_up.is_set():
            if time.monotonic() < self._silent_until:  # DTX / hold: Asterisk sends nothing at all
                due += 0.02
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                continue
            try:
                frame, done = self._outgoing.get_nowait()
            except asyncio.QueueEmpty:
                frame, done = silence, None
            try:
                self._writer.write(frame)
            except (ConnectionError, RuntimeError):
                break
            if done is not None and not done.done():
                done.set_result(time.monotonic())
            due += 0.02
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    def say(self, pcm: bytes) -> asyncio.Future:
        """Queue 8 kHz speech; the future gives the monotonic time its last frame was sent."""
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        frames = split_frames(pcm, FRAME_BYTES)
        for i, frame in enumerate(frames):
            self._outgoing.put_nowait((self._audio_message(frame), done if i == len(frames) - 1 else None))
        return done

    def _audio_message(self, frame: bytes) -> bytes:
        payload = ulaw_encode(frame) if self.codec == "ulaw" else frame
        return _HEADER.pack(KIND_AUDIO, len(payload)) + payload

    def send_nothing(self, seconds: float) -> None:
        """Send no frames for a while, as Asterisk does during DTX, hold or silence suppression."""
        self._silent_until = time.monotonic() + seconds

    def send_again(self) -> None:
        """End a send_nothing() early: the gateway's frame-counted clock stood still meanwhile."""
        self._silent_until = 0.0

    def dtmf(self, digit: str) -> None:
        self._outgoing.put_nowait((_HEADER.pack(KIND_DTMF, 1) + digit.encode(), None))

    async def wait_reply(self, after: float, *, quiet_s: float = 1.2, timeout_s: float = 30.0) -> Reply:
        """The gateway's next utterance after `after`: voiced frames until `quiet_s` without voice."""
        deadline = time.monotonic() + timeout_s
        first = last = None
        scanned = 0
        while time.monotonic() < deadline:
            ended = self.hung_up.is_set()  # read before scanning: frames that came before it are all seen
            for frame in self.received[scanned:]:
                if frame.voiced and frame.at > after:
                    first = first or frame.at
                    last = frame.at
            scanned = len(self.received)
            if last is not None and (time.monotonic() - last >= quiet_s or ended):
                return Reply(first, last, self.audio_between(first - 0.001, last + 0.001))
            if last is None and ended:
                break
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no reply from the gateway within {timeout_s} s (call {self.call_id})")

    def audio_between(self, start: float, end: float) -> bytes:
        return b"".join(f.payload for f in self.received if f.kind == KIND_AUDIO and start <= f.at <= end)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self._writer.is_closing():
            self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass
