"""Caller-side sounds that are not words, made with numpy: what must not be taken for a caller talking."""

from __future__ import annotations

import numpy as np

from speech import audio


def cough(ms: int = 160, seed: int = 0, dbfs: float = -12.0) -> bytes:
    """A cough-like burst: broadband noise with a fast attack and an exponential decay (8 kHz pcm)."""
    n = ms * 8
    x = np.random.default_rng(seed).normal(0.0, 1.0, n)
    attack = n // 10
    x *= np.concatenate([np.linspace(0, 1, attack), np.exp(-np.linspace(0, 4, n - attack))])
    return audio.float_to_pcm(x / np.sqrt(np.mean(x**2)) * 10 ** (dbfs / 20))


def far_away(pcm: bytes, peak_dbfs: float = -44.0) -> bytes:
    """Speech far from the phone (a TV, someone across the room): a voice to Silero, no words to Whisper."""
    x = audio.pcm_to_float(pcm)
    return audio.float_to_pcm(x / np.max(np.abs(x)) * 10 ** (peak_dbfs / 20))
