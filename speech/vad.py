"""End-of-turn detection on 20 ms frames with webrtcvad.

Time is counted in frames, never by the wall clock, so the same audio always gives
the same events. Per utterance (`seq`, counting from 1 per Endpointer):

  SpeechStarted -> [SpeechConfirmed] -> [TentativeEnd -> SpeechResumed]* -> [TentativeEnd] -> Utterance
                                                                         or -> SpeechDropped

With a VoiceDetector (Silero, speech/voice.py) as second opinion, webrtcvad only opens an
utterance: SpeechConfirmed(seq) comes once Silero has heard `confirm_ms` of speech in it (what
may stop our reply: a cough never gets there), and an utterance in which Silero heard less than
`min_voice_ms` ends as SpeechDropped, so noise never reaches speech recognition. Without one,
webrtcvad's voiced frames count for both.

Audio kept for an utterance: `preroll_ms` before the first voiced frame, then
everything up to the end of the last voiced stretch plus at most
`tentative_silence_ms` of the silence after it. Hence when a TentativeEnd(seq) is
not followed by SpeechResumed(seq), the Utterance(seq).pcm is byte-identical to the
TentativeEnd(seq).pcm, and a transcript started on the TentativeEnd can be reused.

When the turn ends (`end_of_turn`): "fixed", after `end_silence_ms` of silence. "adaptive", on what
the caller said so far: the transcript started on the TentativeEnd is handed to `decide()`, and the
turn ends after `complete_silence_ms` of silence if it reads finished (speech/turn.py),
`incomplete_silence_ms` if not, `digits_silence_ms` while a number is being given. Until then (and
if no transcript comes) the endpointer waits as for an unfinished turn.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import webrtcvad

from .audio import FRAME_BYTES, FRAME_MS, SAMPLE_RATE
from .turn import Completion, completion
from .voice import VoiceDetector

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
    # Speech (by the second opinion) that confirms the caller is talking over us: ~300 ms is a
    # syllable or two, longer than a cough or a click; a backchannel ("mm-hm") may get there.
    confirm_ms: int = 300
    # While we speak, confirmed speech stops us only once its words are more than a backchannel
    # ("mm-hm", "okay": speech/turn.py) or it has lasted this long (Silero speech); 0: at confirmation.
    backchannel_ms: int = 1000
    min_voice_ms: int = 100  # speech (by the second opinion) an utterance needs; less is noise
    voice_threshold: float = 0.5  # Silero speech probability of a 32 ms window
    end_of_turn: Literal["fixed", "adaptive"] = "fixed"  # "fixed": end_silence_ms; "adaptive": the silence the words call for
    complete_silence_ms: int = 200  # adaptive: the words so far read as a finished turn
    incomplete_silence_ms: int = 1500  # adaptive: they do not (or no verdict yet)
    digits_silence_ms: int = 2000  # adaptive: a number or code is being given

    def __post_init__(self) -> None:
        if self.mode not in (0, 1, 2, 3):
            raise ValueError("mode must be 0, 1, 2 or 3")
        if self.end_of_turn not in ("fixed", "adaptive"):
            raise ValueError("end_of_turn must be fixed or adaptive")
        # Adaptive: the verdict comes from the transcript started at tentative_silence_ms, so no wait is shorter.
        if self.end_of_turn == "adaptive" and not (
                self.tentative_silence_ms <= self.complete_silence_ms <= min(self.incomplete_silence_ms,
                                                                             self.digits_silence_ms)):
            raise ValueError("end_of_turn adaptive needs tentative_silence_ms <= complete_silence_ms <= "
                             "incomplete_silence_ms and digits_silence_ms")
        if not 0 < self.voice_threshold < 1:
            raise ValueError("voice_threshold must be between 0 and 1")
        for name in ("start_ms", "tentative_silence_ms", "end_silence_ms", "max_utterance_ms", "confirm_ms",
                     "complete_silence_ms", "incomplete_silence_ms", "digits_silence_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.backchannel_ms and self.backchannel_ms < self.confirm_ms:
            raise ValueError("backchannel_ms must be 0 or at least confirm_ms")
        for name in ("preroll_ms", "min_speech_ms", "min_voice_ms", "backchannel_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True)
class SpeechStarted:
    at_ms: int  # stream time of the first voiced frame (emitted start_ms or so later)
    seq: int = 0


@dataclass(frozen=True)
class SpeechConfirmed:
    """Utterance `seq` has `confirm_ms` of speech: a caller talking, not a noise."""

    seq: int


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
    silence_ms: int = 0  # of trailing silence waited before the turn was ended


@dataclass(frozen=True)
class SpeechDropped:
    """The sound that raised SpeechStarted(seq) was shorter than min_speech_ms ("short"), or had
    less than min_voice_ms of speech in it by the second opinion ("no voice")."""

    seq: int
    speech_ms: int
    reason: str = "short"


Event = SpeechStarted | SpeechConfirmed | TentativeEnd | SpeechResumed | Utterance | SpeechDropped


def _frames(ms: int) -> int:
    return max(1, -(-ms // FRAME_MS))


class Endpointer:
    """One per call: feed 320-byte frames, get events."""

    def __init__(self, config: EndpointerConfig | None = None, voice: VoiceDetector | None = None) -> None:
        self.config = config or EndpointerConfig()
        self.voice = voice
        c = self.config
        self._start = _frames(c.start_ms)
        # Onset needs start_ms voiced within a window half as long again: tolerates a
        # dropout or two inside the first syllables, not scattered noise.
        self._start_window = self._start + self._start // 2
        self._preroll = c.preroll_ms // FRAME_MS
        self._tentative = _frames(c.tentative_silence_ms)
        self._end = max(_frames(c.end_silence_ms), self._tentative)
        self._adaptive = c.end_of_turn == "adaptive"
        self._waits = {Completion.COMPLETE: _frames(c.complete_silence_ms),
                       Completion.INCOMPLETE: _frames(c.incomplete_silence_ms),
                       Completion.DIGITS: _frames(c.digits_silence_ms)}
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
        self._verdict: Completion | None = None  # adaptive: how the words at this pause read
        self._voiced = 0  # webrtcvad voiced frames since the onset
        self._confirmed = False

    @property
    def voice_ms(self) -> int:
        """Speech heard in the current utterance: by the second opinion if there is one."""
        return self.voice.speech_ms if self.voice is not None else self._voiced * FRAME_MS

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
        self._verdict = None  # each utterance is read on its own words
        self._confirmed = False
        self._voiced = sum(v for _, v in window[first_voiced:])
        self._history.clear()
        self._seq += 1
        at_ms = (self._frame_no - (len(self._buffer) - self._onset)) * FRAME_MS
        events: list[Event] = [SpeechStarted(at_ms=at_ms, seq=self._seq)]
        if self.voice is not None:
            self.voice.reset()
            self.voice.feed(b"".join(self._buffer[self._onset :]))  # ~0.5 ms: a few windows
        return self._check_confirmed(events)

    def _check_confirmed(self, events: list[Event]) -> list[Event]:
        if not self._confirmed and self.voice_ms >= self.config.confirm_ms:
            self._confirmed = True
            events.append(SpeechConfirmed(self._seq))
        return events

    def _speaking(self, frame: bytes, voiced: bool) -> list[Event]:
        assert self._buffer is not None
        self._buffer.append(frame)
        self._run = self._run + 1 if voiced else 0
        self._voiced += voiced
        if self.voice is not None:
            self.voice.feed(frame)
        events = self._check_confirmed([])
        in_pause = self._voice_end < len(self._buffer) - self._run
        if not in_pause or self._run >= RESUME_FRAMES:
            self._voice_end = len(self._buffer)
            if self._tentative_sent:
                self._tentative_sent = False
                self._verdict = None
                events.append(SpeechResumed(self._seq))
        silence = self._silence()
        long_enough = self._voice_end - self._onset >= self._min_speech and self._has_voice()
        if silence >= self._tentative and not self._tentative_sent and long_enough:
            self._tentative_sent = True
            events.append(TentativeEnd(self._kept_pcm(), self._seq))
        if silence >= self._end_frames():
            events.append(self._finish("silence"))
        elif len(self._buffer) >= self._max:
            events.append(self._finish("max_length"))
        return events

    def _silence(self) -> int:
        """Frames of the current pause; voiced frames that may yet end it are not counted meanwhile."""
        assert self._buffer is not None
        return len(self._buffer) - self._voice_end - self._run

    def _end_frames(self) -> int:
        if not self._adaptive:
            return self._end
        return self._waits[self._verdict or Completion.INCOMPLETE]

    def decide(self, seq: int, text: str | None, *, expecting_number: bool = False) -> list[Event]:
        """Adaptive: the words of utterance `seq` up to its current pause (the transcript of its
        TentativeEnd; None: none came, the turn is waited on as unfinished). Ends the turn now if its
        pause is already long enough for them. Ignored if the caller spoke on (SpeechResumed) meanwhile."""
        if not self._adaptive or self._buffer is None or seq != self._seq or not self._tentative_sent:
            return []
        self._verdict = Completion.INCOMPLETE if text is None else completion(text, expecting_number=expecting_number)
        return [self._finish("silence")] if self._silence() >= self._end_frames() else []

    def heard(self, lead_ms: int | None = None) -> bytes:
        """The current utterance so far, from `lead_ms` before its first voiced frame (None: all the
        pre-roll kept); empty between utterances."""
        if self._buffer is None:
            return b""
        start = 0 if lead_ms is None else max(0, self._onset - lead_ms // FRAME_MS)
        return b"".join(self._buffer[start:])

    def _kept_pcm(self) -> bytes:
        assert self._buffer is not None
        return b"".join(self._buffer[: self._voice_end + self._tentative])

    def _has_voice(self) -> bool:
        return self.voice is None or self.voice.speech_ms >= self.config.min_voice_ms

    def _finish(self, reason: str) -> Utterance | SpeechDropped:
        speech_frames = self._voice_end - self._onset
        pcm = self._kept_pcm()
        silence_ms = self._silence() * FRAME_MS
        self._buffer = None
        self._history.clear()
        if speech_frames < self._min_speech:
            return SpeechDropped(self._seq, speech_frames * FRAME_MS)
        if not self._has_voice():
            return SpeechDropped(self._seq, speech_frames * FRAME_MS, "no voice")
        return Utterance(pcm, speech_frames * FRAME_MS, self._seq, reason, silence_ms)
