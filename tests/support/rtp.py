"""The caller's media side of a direct SIP call, over real UDP: a socket named in the SIPp caller's SDP.

Like a phone it sends one 20 ms PCMU packet every 20 ms (the caller's speech, silence between) to where
the gateway's RTP comes from, and records every packet the gateway sends with its arrival time. It can
also send an RFC 4733 DTMF digit, and stray packets from the wrong address.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field

from gateway.media.caller import VOICED_RMS, Reply
from speech.audio import FRAME_BYTES, FRAME_SAMPLES, SILENCE_FRAME, rms, split_frames, ulaw_decode, ulaw_encode

RTP = struct.Struct("!BBHII")


@dataclass
class Packet:
    at: float
    pt: int
    ssrc: int
    pcm: bytes
    voiced: bool


@dataclass
class RtpPeer:
    sock: socket.socket
    received: list[Packet] = field(default_factory=list)
    target: tuple[str, int] | None = None  # the gateway's RTP address, from its first packet
    _outgoing: asyncio.Queue = field(default_factory=asyncio.Queue)
    _task: asyncio.Task | None = None
    _seq: int = 0
    _ts: int = 0

    @classmethod
    def bind(cls) -> "RtpPeer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        return cls(sock)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)
        self._task = asyncio.create_task(self._mic())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        while True:
            try:
                data, source = self.sock.recvfrom(2048)
            except BlockingIOError:
                return
            first, pt, _, _, ssrc = RTP.unpack_from(data)
            pcm = ulaw_decode(data[RTP.size:]) if pt & 0x7F == 0 else b""
            self.target = self.target or source
            self.received.append(Packet(time.monotonic(), pt & 0x7F, ssrc, pcm, bool(pcm) and rms(pcm) > VOICED_RMS))

    def _packet(self, pt: int, payload: bytes, marker: bool = False, advance: int = FRAME_SAMPLES) -> bytes:
        header = RTP.pack(0x80, pt | (0x80 if marker else 0), self._seq & 0xFFFF, self._ts & 0xFFFFFFFF, 0x5EED)
        self._seq += 1
        self._ts += advance
        return header + payload

    async def _mic(self) -> None:
        due = time.monotonic()
        while True:
            try:
                item, done = self._outgoing.get_nowait()
            except asyncio.QueueEmpty:
                item, done = self._packet(0, ulaw_encode(SILENCE_FRAME)), None
            if self.target is not None:  # the gateway's address: its RTP came from there
                self.sock.sendto(item, self.target)
            if done is not None and not done.done():
                done.set_result(time.monotonic())
            due += 0.02
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    def say(self, pcm: bytes) -> asyncio.Future:
        """Queue 8 kHz speech; the future gives the monotonic time its last frame was sent."""
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        frames = split_frames(pcm, FRAME_BYTES)
        for i, frame in enumerate(frames):
            self._outgoing.put_nowait((self._packet(0, ulaw_encode(frame)), done if i == len(frames) - 1 else None))
        return done

    def dtmf(self, digit: str) -> None:
        """An RFC 4733 event (PT 101): three packets with one timestamp, the last with the end bit."""
        event = "0123456789*#ABCD".index(digit)
        ts = self._ts
        for i, end in enumerate((False, False, True)):
            self._ts = ts
            payload = bytes([event, (0x80 if end else 0) | 10]) + struct.pack("!H", 160 * (i + 1))
            self._outgoing.put_nowait((self._packet(101, payload, marker=i == 0, advance=0), None))
        self._ts = ts + 480

    async def wait_reply(self, after: float, *, quiet_s: float = 1.2, timeout_s: float = 60.0) -> Reply:
        """The gateway's next utterance after `after`: voiced packets until `quiet_s` without voice."""
        deadline = time.monotonic() + timeout_s
        first = last = None
        while time.monotonic() < deadline:
            for p in self.received:
                if p.voiced and p.at > after:
                    first = first or p.at
                    last = p.at
            if last is not None and time.monotonic() - last >= quiet_s:
                pcm = b"".join(p.pcm for p in self.received if first - 0.001 <= p.at <= last + 0.001)
                return Reply(first, last, pcm)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no reply from the gateway within {timeout_s} s")
