"""What a call session sees of its transport (AudioSocket, direct SIP): events in, frames out, hang-up.

Every transport delivers 20 ms 8 kHz s16le frames (speech.audio.FRAME_BYTES) and takes the same
back, so sessions never know which one carries the call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class AudioIn:
    pcm: bytes  # one 20 ms frame, 8 kHz s16le mono (FRAME_BYTES)


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Hangup:
    reason: str  # eof | timeout | peer hangup | protocol: ... | local | slow consumer | ...


Event = AudioIn | Dtmf | Hangup


class MediaLeg(Protocol):
    """One live call on some transport. Single consumer of events(); send_audio() from the media clock."""

    call_id: str
    transport: str  # stored with the call record: audiosocket | sip

    @property
    def closed(self) -> bool: ...

    def events(self) -> AsyncIterator[Event]:
        """AudioIn / Dtmf events, ending with exactly one Hangup."""
        ...

    def send_audio(self, frame: bytes) -> None:
        """One 20 ms frame out; ignored once closed."""
        ...

    async def hangup(self, reason: str = "local") -> None: ...
