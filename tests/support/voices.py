"""Caller voices for whole calls: a voice (Piper, or espeak-ng's from tests/support/hearing.py), a rate,
the codec on the AudioSocket wire and line noise. Shared by the end-to-end tests and
bench/understanding.py's audio mode. espeak-ng is a system package (`./switchboard test` installs
it); `hearing.ESPEAK` is None where it is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from speech import audio
from tests.support.hearing import espeak

NOISE_PAD_MS = 400  # line noise before and after the words, as a line hisses before anyone speaks


@dataclass(frozen=True)
class CallerVoice:
    name: str
    espeak: str | None = None  # an espeak-ng voice (-v); None: Piper, the gateway's own voice
    rate: int = 175  # espeak-ng words per minute (-s)
    codec: str = "slin"  # on the AudioSocket wire: "slin" or "ulaw" (audiosocket.codec_0x10)
    snr_db: float | None = None  # line noise this far below the speech; None: a clean line

    def render(self, text: str, piper: Callable[[str], bytes]) -> bytes:
        """8 kHz pcm of `text` in this voice, before the codec (CallerClient applies that)."""
        pcm = piper(text) if self.espeak is None else espeak(text, self.espeak, self.rate)
        return pcm if self.snr_db is None else line_noise(pcm, self.snr_db, seed=len(text))


VOICES = {v.name: v for v in [
    CallerVoice("piper-joe"),
    CallerVoice("espeak-us-ulaw", "en-us", 165, codec="ulaw"),
    CallerVoice("espeak-f3-noise", "en+f3", 150, snr_db=15),
    CallerVoice("espeak-gb-m4-fast-ulaw-noise", "en-gb+m4", 195, codec="ulaw", snr_db=20),
]}


def line_noise(pcm: bytes, snr_db: float, seed: int = 0) -> bytes:
    """White hiss and mains hum `snr_db` below the speech's level, over the words and a pad either
    side, on the full 8 kHz band (hearing.phone_line is band-limited pink hiss, always through u-law)."""
    speech = audio.pcm_to_float(pcm)
    frames = speech[: len(speech) // audio.FRAME_SAMPLES * audio.FRAME_SAMPLES].reshape(-1, audio.FRAME_SAMPLES)
    power = (frames**2).mean(axis=1)
    level = float(np.sqrt(power[power > 0.01 * power.max()].mean()))  # of the voiced frames, not the pauses
    pad = np.zeros(NOISE_PAD_MS * audio.SAMPLE_RATE // 1000, dtype=np.float32)
    x = np.concatenate([pad, speech, pad])
    t = np.arange(len(x)) / audio.SAMPLE_RATE
    hum = np.sin(2 * np.pi * 60 * t) + 0.5 * np.sin(2 * np.pi * 180 * t)
    noise = np.random.default_rng(seed).normal(0.0, 1.0, len(x)) + 0.5 * hum
    noise *= level * 10 ** (-snr_db / 20) / np.sqrt((noise**2).mean())
    return audio.float_to_pcm(x + noise)
