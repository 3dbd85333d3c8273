"""A second opinion on "is that a voice?": Silero VAD, the ONNX model faster-whisper ships.

webrtcvad (speech/vad.py) marks any loud broadband sound as voiced: a cough, a door, a burst of
line noise. Silero is a small LSTM trained to tell speech from noise; on our 8 kHz audio it gives
Piper's "Yes." 288 ms of speech and a 160-300 ms noise burst none (probabilities below 0.2).

It runs streamed, 32 ms windows (512 samples at 16 kHz) with the LSTM state carried between them,
the way faster-whisper's SileroVADModel batches them. One window costs ~0.1 ms on one core, so it
runs inline on the event loop, and only while an utterance is open (the Endpointer resets it at
each onset): silence costs nothing.
"""

from __future__ import annotations

import functools

import numpy as np

from .audio import pcm_to_float

_WINDOW = 512  # samples at 16 kHz: the only size the v6 model takes
_CONTEXT = 64  # samples of the previous window prepended, as faster-whisper does
WINDOW_MS = _WINDOW * 1000 // 16000  # 32


@functools.cache
def _session():  # type: ignore[no-untyped-def]
    from faster_whisper.vad import get_vad_model  # loads silero_vad_v6.onnx on onnxruntime, once

    return get_vad_model().session


def load_model() -> None:
    """Load the model now (~30 ms; call it from a worker thread at start, not on the event loop)."""
    _session()


class VoiceDetector:
    """Silero over one stream of 8 kHz s16le pcm: counts the ms of windows it calls speech."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self._session = _session()
        self.reset()

    def reset(self) -> None:
        self.speech_ms = 0
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._last = np.float32(0.0)  # last 8 kHz sample, for interpolation across chunks

    def feed(self, pcm: bytes) -> None:
        x = pcm_to_float(pcm)
        if not x.size:
            return
        # 8 -> 16 kHz by linear interpolation: Silero's input band above 4 kHz is empty on a phone
        # line anyway, and it scored our test speech and noise as soxr-resampled audio did.
        up = np.empty(2 * x.size, dtype=np.float32)
        up[1::2] = x
        up[0::2] = (np.concatenate(([self._last], x[:-1])) + x) / 2
        self._last = x[-1]
        self._pending = np.concatenate((self._pending, up))
        while self._pending.size >= _WINDOW:
            window = np.concatenate((self._context, self._pending[:_WINDOW]))
            self._pending = self._pending[_WINDOW:]
            self._context = window[-_CONTEXT:]
            prob, self._h, self._c = self._session.run(None, {"input": window[None], "h": self._h, "c": self._c})
            if float(prob[0]) >= self.threshold:
                self.speech_ms += WINDOW_MS
