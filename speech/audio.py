"""PCM helpers for the pipeline's one internal format: 8 kHz s16le mono, 20 ms frames.

Resampling uses soxr (band-limited, streaming-capable); G.711 follows ITU-T G.711
with lookup tables built once at import (64 KiB encode, 256-entry decode tables).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 160
FRAME_BYTES = FRAME_SAMPLES * 2  # 320
SILENCE_FRAME = bytes(FRAME_BYTES)

_INT16 = np.dtype("<i2")


def _samples(pcm: bytes) -> np.ndarray:
    if len(pcm) % 2:
        raise ValueError(f"pcm length {len(pcm)} is not a whole number of 16-bit samples")
    return np.frombuffer(pcm, dtype=_INT16)


def pcm_to_float(pcm: bytes) -> np.ndarray:
    """s16le bytes -> float32 in [-1, 1)."""
    return _samples(pcm).astype(np.float32) / 32768.0


def float_to_pcm(x: np.ndarray) -> bytes:
    """float in [-1, 1] -> s16le bytes; out-of-range values are clipped, not wrapped."""
    scaled = np.clip(np.rint(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767)
    return scaled.astype(_INT16).tobytes()


def resample(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """One-shot resampling of a whole buffer (soxr HQ)."""
    if in_rate == out_rate or not pcm:
        return pcm
    out = soxr.resample(_samples(pcm), in_rate, out_rate, quality="HQ")
    return out.astype(_INT16).tobytes()


class StreamResampler:
    """Chunked resampling for a live call that keeps filter state across chunks.

    soxr's streaming mode releases audio in ~100 ms blocks (0,0,0,0,0,1660,0... bytes per
    20 ms frame), which would add 100 ms each way and burst frames at a real-time call. For the
    integer ratios telephony uses (8 <-> 16/24/32/48 kHz) a windowed-sinc FIR is applied here
    instead: one output chunk per input chunk, ~1 ms of delay. Other ratios (12, 44.1 kHz) use
    soxr's low-latency quick mode.
    """

    TAPS_PER_PHASE = 24

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._up, self._down = out_rate // in_rate, in_rate // out_rate
        if out_rate % in_rate == 0 or in_rate % out_rate == 0:
            factor = max(self._up, self._down)
            # Odd length with a centre a whole number of low-rate samples in: the delay is an exact
            # 12 samples at 8 kHz (1.5 ms), so the output lines up sample for sample with the input.
            n = self.TAPS_PER_PHASE * factor + 1
            t = np.arange(n) - (n - 1) / 2
            cutoff = 0.92 / factor  # of the high rate's Nyquist: a little below the low rate's band edge
            h = cutoff * np.sinc(cutoff * t) * np.kaiser(n, 8.0)
            self._taps = (h * (max(self._up, 1) / h.sum())).astype(np.float64)
            self._history = np.zeros(n - 1)
            self._phase = 0
            self._stream = None
        else:
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="QQ")

    def process(self, pcm: bytes, last: bool = False) -> bytes:
        if self._stream is not None:
            return self._stream.resample_chunk(_samples(pcm), last=last).astype(_INT16).tobytes()
        x = _samples(pcm).astype(np.float64)
        if self._up > 1:
            stuffed = np.zeros(len(x) * self._up)
            stuffed[:: self._up] = x
            x = stuffed
        buf = np.concatenate([self._history, x])
        y = np.convolve(buf, self._taps, mode="valid")
        self._history = buf[len(buf) - len(self._history):]
        if self._down > 1:
            y = y[self._phase :: self._down]
            self._phase = (self._phase - len(x)) % self._down
        return np.clip(np.rint(y), -32768, 32767).astype(_INT16).tobytes()


def split_frames(pcm: bytes, frame_bytes: int = FRAME_BYTES) -> list[bytes]:
    """Cut pcm into fixed-size frames; the last one is zero-padded to full size."""
    frames = [pcm[i : i + frame_bytes] for i in range(0, len(pcm), frame_bytes)]
    if frames and len(frames[-1]) < frame_bytes:
        frames[-1] = frames[-1].ljust(frame_bytes, b"\x00")
    return frames


def rms(pcm: bytes) -> float:
    """Root mean square in int16 units (0 for empty input)."""
    x = _samples(pcm).astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def rms_dbfs(pcm: bytes) -> float:
    """RMS relative to int16 full scale; digital silence gives -inf."""
    level = rms(pcm)
    return 20.0 * np.log10(level / 32768.0) if level > 0 else float("-inf")


# --- G.711 -----------------------------------------------------------------

_ULAW_BIAS = 0x84


def _exponent(v: np.ndarray) -> np.ndarray:
    """Position of the highest set bit of v (0..7) for v in 0..255; 0 for v == 0."""
    return np.where(v > 0, np.floor(np.log2(np.maximum(v, 1))), 0).astype(np.int32)


def _build_ulaw_encode() -> np.ndarray:
    # ITU-T G.191 reference: 14-bit magnitude, one's complement for negatives.
    x = np.arange(-32768, 32768, dtype=np.int32)
    absno = np.minimum((np.where(x >= 0, x, ~x) >> 2) + 33, 0x1FFF)
    high = absno >> 6
    segno = 1 + np.where(high > 0, _exponent(high) + 1, 0)
    code = ((8 - segno) << 4) | (0x0F - ((absno >> segno) & 0x0F))
    return (code | np.where(x >= 0, 0x80, 0)).astype(np.uint8)


def _build_ulaw_decode() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(_INT16)


def _build_alaw_encode() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32) >> 3
    mask = np.where(x >= 0, 0xD5, 0x55)
    mag = np.where(x >= 0, x, -x - 1)  # 0..4095
    seg = _exponent(mag >> 4)  # segment 0..7; segments 0 and 1 share one step size
    quant = np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0x0F
    return (((seg << 4) | quant) ^ mask).astype(np.uint8)


def _build_alaw_decode() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = ((a & 0x0F) << 4) + np.where(seg == 0, 8, 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(_INT16)


_ULAW_ENC = _build_ulaw_encode()
_ULAW_DEC = _build_ulaw_decode()
_ALAW_ENC = _build_alaw_encode()
_ALAW_DEC = _build_alaw_decode()


def _encode(table: np.ndarray, pcm: bytes) -> bytes:
    return table[_samples(pcm).astype(np.int32) + 32768].tobytes()


def _decode(table: np.ndarray, data: bytes) -> bytes:
    return table[np.frombuffer(data, dtype=np.uint8)].tobytes()


def ulaw_encode(pcm: bytes) -> bytes:
    return _encode(_ULAW_ENC, pcm)


def ulaw_decode(data: bytes) -> bytes:
    return _decode(_ULAW_DEC, data)


def alaw_encode(pcm: bytes) -> bytes:
    return _encode(_ALAW_ENC, pcm)


def alaw_decode(data: bytes) -> bytes:
    return _decode(_ALAW_DEC, data)


# --- WAV files -------------------------------------------------------------


def read_wav(path: str | Path) -> tuple[bytes, int]:
    """Read a 16-bit PCM WAV as mono s16le (channels averaged) and its sample rate."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            data = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise ValueError(f"wav file {path}: not a readable PCM WAV ({e})") from e
    if width != 2:
        raise ValueError(f"wav file {path}: {8 * width}-bit samples, only 16-bit PCM is supported")
    if channels > 1:
        x = _samples(data).reshape(-1, channels).astype(np.int32)
        data = np.rint(x.mean(axis=1)).astype(_INT16).tobytes()
    return data, rate


def write_wav(path: str | Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
