"""What the barge-in second opinion costs on the event loop: the Endpointer per 20 ms frame, with and
without Silero (speech/voice.py), on the bundled Piper voice between stretches of silence.

Silero runs only while an utterance is open, so the figure per frame of speech is the one that
matters; the onset frame also runs the few windows already heard (the largest single cost).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import percentile, table  # noqa: E402
from speech import audio  # noqa: E402
from speech.models import bundled_piper_voice  # noqa: E402
from speech.tts import Synthesizer  # noqa: E402
from speech.vad import Endpointer, EndpointerConfig, SpeechStarted  # noqa: E402
from speech.voice import VoiceDetector, load_model  # noqa: E402

TEXT = "Sorry to interrupt, could you tell me where you are located and whether there is parking?"


def frame_costs(frames: list[bytes], voice: VoiceDetector | None) -> tuple[list[float], list[float]]:
    """(µs per frame while in speech, µs of each onset frame)."""
    ep = Endpointer(EndpointerConfig(), voice)
    speech, onsets = [], []
    for frame in frames:
        in_speech = ep.in_speech
        t0 = time.perf_counter()
        events = ep.feed(frame)
        us = (time.perf_counter() - t0) * 1e6
        if any(isinstance(e, SpeechStarted) for e in events):
            onsets.append(us)
        elif in_speech:
            speech.append(us)
    return speech, onsets


def main() -> None:
    synth = Synthesizer(bundled_piper_voice())
    pcm = (bytes(16000) + synth.synthesize(TEXT) + bytes(16000)) * 20
    synth.close()
    load_model()
    frames = audio.split_frames(pcm)
    rows = []
    for name, voice in (("webrtcvad only", None), ("webrtcvad + Silero", VoiceDetector())):
        frame_costs(frames[:200], voice)  # warm up
        speech, onsets = frame_costs(frames, voice)
        rows.append((name, f"{percentile(speech, 50):.0f}", f"{percentile(speech, 99):.0f}", f"{max(speech):.0f}",
                     f"{percentile(onsets, 50):.0f}", f"{max(onsets):.0f}"))
    print(table(rows, ("Endpointer.feed, µs", "speech p50", "p99", "max", "onset p50", "onset max")))


if __name__ == "__main__":
    main()
