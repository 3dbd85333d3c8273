"""For measuring the STT: caller voices other than the gateway's own, a telephone line to pass them
through (8 kHz pcm), and word edit distance.

espeak-ng (a Debian package) gives robotic, formant-synthesised voices that tiny.en finds much harder
than Piper's; the line adds what a real call adds: G.711 mu-law and band-limited hiss.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np

from speech import audio

ESPEAK = shutil.which("espeak-ng")


def espeak(text: str, voice: str = "en-us", wpm: int = 160) -> bytes:
    """`text` spoken by espeak-ng (`voice` such as "en-us", "en-us+f3", "en-gb+m4"), as 8 kHz pcm."""
    if ESPEAK is None:
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
    wav = subprocess.run([ESPEAK, "-v", voice, "-s", str(wpm), "--stdout", text],
                         check=True, capture_output=True, timeout=30).stdout
    with wave.open(io.BytesIO(wav), "rb") as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    return audio.resample(pcm, rate, audio.SAMPLE_RATE)


def _band_limit(x: np.ndarray, low: float = 300.0, high: float = 3400.0) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / audio.SAMPLE_RATE)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, len(x))


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.normal(0.0, 1.0, n))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n)


def phone_line(pcm: bytes, *, snr_db: float | None = None, seed: int = 0) -> bytes:
    """`pcm` as heard over a phone line: 300-3400 Hz, optional pink hiss `snr_db` below the speech,
    then through mu-law and back."""
    x = audio.pcm_to_float(pcm).astype(np.float64)
    if snr_db is not None and x.size:
        voiced = x[np.abs(x) > 0.01 * np.max(np.abs(x))]  # speech level, not the pauses
        noise = _pink(len(x), np.random.default_rng(seed))
        x = x + noise / np.sqrt(np.mean(noise**2)) * np.sqrt(np.mean(voiced**2)) * 10 ** (-snr_db / 20)
    x = _band_limit(x)
    return audio.ulaw_decode(audio.ulaw_encode(audio.float_to_pcm(x)))


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, insertions, deletions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]
