"""End-of-turn detection on 20 ms frames with webrtcvad.

Time is counted in frames, never by the wall clock, so the same audio always gives
the same events. Per utterance (`seq`, counting from 1 per Endpointer):

  SpeechStarted -> [TentativeEnd -> SpeechResumed]* -> [TentativeEnd] -> Utterance
                                                    or -> SpeechDropped (too little speech)

Audio kept for an utterance: `preroll_ms` before the first voiced frame, then
everything up to the end of the last voiced stretch plus at most
`tentative_silence_ms` of the silence after it. Hence when a TentativeEnd(seq) is
not followed by SpeechResumed(seq), the Utterance(seq).pcm is byte-identical to the
TentativeEnd(seq).pcm, and a transcript started on the TentativeEnd can be reused.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import webrtcvad

from .audio import FRAME_BYTES, FRAME_MS, SAMPLE_RATE

# A pause is only broken by this many consecutive voiced frames: lone voiced frames
# in a pause (clicks, breath, line noise) count as silence.
RESUME_FRAMES = 3


@dataclass
class EndpointerConfig:
    mode: int = 2  # webrtcvad aggressiveness 0-3
    start_ms: int = 120  # voiced speech needed before SpeechStarted
    tentative_silence_ms: int = 200
    end_silence_ms: int = 500
    max_utterance_ms: int = 15000
    preroll_ms: int = 300
    # Shorter blips are dropped. Measured on webrtcvad's flags, which hang on ~80-120 ms
    # after a sound stops: an 80 ms click counts as ~160 ms.
    min_speech_ms: int = 200


@dataclass(frozen=True)
class SpeechStarted:
    at_ms: int  # stream time of the first voiced frame (emitted start_ms or so later)
    seq: int = 0


@dataclass(frozen=True)
class TentativeEnd:
    pcm: bytes  # the utterance so far, trailing silence included
    seq: int


@dataclass(frozen=True)
class SpeechResumed:
    seq: int


@dataclass(frozen=True)
class Utterance:
    pcm: bytes
    speech_ms: int  # first voiced frame to end of the last voiced stretch
    seq: int
    reason: str  # "silence" | "max_length"


@dataclass(frozen=True)
class SpeechDropped:
    """The sound that raised SpeechStarted(seq) was shorter than min_speech_ms."""

    seq: int
    speech_ms: int


Event = SpeechStarted | TentativeEnd | SpeechResumed | Utterance | SpeechDropped


def _frames(ms: int) -> int:
    return max(1, -(-ms // FRAME_MS))


class Endpointer:
    """One per call: feed 320-byte frames, get events."""

    def __init__(self, config: EndpointerConfig | None = None) -> None:
        self.config = config or EndpointerConfig()
        c = self.config
        self._start = _frames(c.start_ms)
        # Onset needs start_ms voiced within a window half as long again: tolerates a
        # dropout or two inside the first syllables, not scattered noise.
        self._start_window = self._start + self._start // 2
        self._preroll = c.preroll_ms // FRAME_MS
        self._tentative = _frames(c.tentative_silence_ms)
        self._end = max(_frames(c.end_silence_ms), self._tentative)
        self._max = _frames(c.max_utterance_ms)
        self._min_speech = _frames(c.min_speech_ms)
        self._seq = 0
        self.reset()

    @property
    def in_speech(self) -> bool:
        return self._buffer is not None

    def reset(self) -> None:
        """Forget all state (e.g. after our own prompt played); seq keeps counting."""
        self._vad = webrtcvad.Vad(self.config.mode)
        self._frame_no = 0
        self._history: deque[tuple[bytes, bool]] = deque(maxlen=self._preroll + self._start_window)
        self._buffer: list[bytes] | None = None  # frames of the current utterance
        self._onset = 0  # index in _buffer of the first voiced frame
        self._voice_end = 0  # index in _buffer just after the last voiced stretch
        self._run = 0  # consecutive voiced frames at the buffer's end
        self._tentative_sent = False

    def feed(self, frame: bytes) -> list[Event]:
        if len(frame) != FRAME_BYTES:
            raise ValueError(f"endpointer frame is {len(frame)} bytes, expected {FRAME_BYTES}")
        voiced = self._vad.is_speech(frame, SAMPLE_RATE)
        self._frame_no += 1
        if self._buffer is None:
            return self._idle(frame, voiced)
        return self._speaking(frame, voiced)

    def _idle(self, frame: bytes, voiced: bool) -> list[Event]:
        self._history.append((frame, voiced))
        window = list(self._history)[-self._start_window :]
        if not voiced or sum(v for _, v in window) < self._start:
            return []
        first_voiced = next(i for i, (_, v) in enumerate(window) if v)
        onset = len(self._history) - len(window) + first_voiced
        keep_from = max(0, onset - self._preroll)
        self._buffer = [f for f, _ in list(self._history)[keep_from:]]
        self._onset = onset - keep_from
        self._voice_end = len(self._buffer)
        self._run = 1
        self._tentative_sent = False
        self._history.clear()
        self._seq += 1
        at_ms = (self._frame_no - (len(self._buffer) - self._onset)) * FRAME_MS
        return [SpeechStarted(at_ms=at_ms, seq=self._seq)]

    def _speaking(self, frame: bytes, voiced: bool) -> list[Event]:
        assert self._buffer is not None
        self._buffer.append(frame)
        self._run = self._run + 1 if voiced else 0
        events: list[Event] = []
        in_pause = self._voice_end < len(self._buffer) - self._run
        if not in_pause or self._run >= RESUME_FRAMES:
            self._voice_end = len(self._buffer)
            if self._tentative_sent:
                self._tentative_sent = False
                events.append(SpeechResumed(self._seq))
        # Voiced frames that may yet end the pause are not counted as silence meanwhile.
        silence = len(self._buffer) - self._voice_end - self._run
        long_enough = self._voice_end - self._onset >= self._min_speech
        if silence >= self._tentative and not self._tentative_sent and long_enough:
            self._tentative_sent = True
            events.append(TentativeEnd(self._kept_pcm(), self._seq))
        if silence >= self._end:
            events.append(self._finish("silence"))
        elif len(self._buffer) >= self._max:
            events.append(self._finish("max_length"))
        return events

    def _kept_pcm(self) -> bytes:
        assert self._buffer is not None
        return b"".join(self._buffer[: self._voice_end + self._tentative])

    def _finish(self, reason: str) -> Utterance | SpeechDropped:
        speech_frames = self._voice_end - self._onset
        pcm = self._kept_pcm()
        self._buffer = None
        self._history.clear()
        if speech_frames < self._min_speech:
            return SpeechDropped(self._seq, speech_frames * FRAME_MS)
        return Utterance(pcm, speech_frames * FRAME_MS, self._seq, reason)
