"""Barge-in confirmation: the Endpointer with Silero (the real model faster-whisper ships) as second opinion."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from speech import audio
from speech.models import bundled_piper_voice
from speech.tts import Synthesizer
from speech.vad import Endpointer, EndpointerConfig, SpeechConfirmed, SpeechDropped, SpeechStarted, Utterance
from speech.voice import VoiceDetector
from tests.support.sounds import cough

ETC = Path(__file__).resolve().parents[2] / "etc"
INTERRUPTION = "Sorry to interrupt, where are you located?"


@pytest.fixture(scope="module")
def voice() -> dict[str, bytes]:
    synth = Synthesizer(bundled_piper_voice())
    try:
        return {text: synth.synthesize(text) for text in (INTERRUPTION, "Yes.")}
    finally:
        synth.close()


def silence(ms: int) -> bytes:
    return bytes(ms * 16)


def run(pcm: bytes, config: EndpointerConfig | None = None, second_opinion: bool = True) -> list[tuple[int, object]]:
    config = config or EndpointerConfig()
    ep = Endpointer(config, VoiceDetector(config.voice_threshold) if second_opinion else None)
    return [(i, e) for i, frame in enumerate(audio.split_frames(pcm)) for e in ep.feed(frame)]


@pytest.mark.parametrize("ms", [160, 300])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_cough_never_confirms_and_never_becomes_an_utterance(ms: int, seed: int) -> None:
    events = [e for _, e in run(silence(500) + cough(ms, seed) + silence(1500))]
    assert any(isinstance(e, SpeechStarted) for e in events)  # webrtcvad alone calls it voice
    assert not any(isinstance(e, (SpeechConfirmed, Utterance)) for e in events), events
    assert isinstance(events[-1], SpeechDropped)


def test_speech_confirms_after_confirm_ms_then_ends_as_an_utterance(voice: dict[str, bytes]) -> None:
    events = run(silence(500) + voice[INTERRUPTION] + silence(1500))
    started = next(i for i, e in events if isinstance(e, SpeechStarted))
    confirmed = [i for i, e in events if isinstance(e, SpeechConfirmed)]
    assert len(confirmed) == 1  # once per utterance
    # Not on the onset: at least confirm_ms of speech first, and well within the first second of it.
    assert 300 // 20 <= confirmed[0] - started + 120 // 20 <= 1000 // 20
    assert isinstance(events[-1][1], Utterance)


def test_a_short_word_is_still_an_utterance(voice: dict[str, bytes]) -> None:
    events = [e for _, e in run(silence(500) + voice["Yes."] + silence(1500))]
    assert isinstance(events[-1], Utterance)


def test_heard_is_the_utterance_so_far(voice: dict[str, bytes]) -> None:
    """What the session transcribes to tell a backchannel from an interruption."""
    ep = Endpointer(EndpointerConfig(), VoiceDetector(0.5))
    frames = audio.split_frames(silence(500) + voice[INTERRUPTION])
    at = next(i for i, frame in enumerate(frames) if any(isinstance(e, SpeechConfirmed) for e in ep.feed(frame)))
    heard = ep.heard()
    assert heard == b"".join(frames[at + 1 - len(heard) // audio.FRAME_BYTES: at + 1])
    assert 300 * 16 <= len(heard) <= 1000 * 16  # pre-roll and the confirmed speech
    lead = ep.heard(100)
    assert heard.endswith(lead) and len(heard) - len(lead) == (300 - 100) * 16  # 200 ms less of the pre-roll
    for frame in audio.split_frames(silence(1500)):
        ep.feed(frame)
    assert ep.heard() == b""


def test_without_a_second_opinion_webrtcvad_voiced_frames_confirm(voice: dict[str, bytes]) -> None:
    pcm = silence(500) + voice[INTERRUPTION] + silence(1500)
    late = run(pcm, EndpointerConfig(confirm_ms=600), second_opinion=False)
    early = run(pcm, EndpointerConfig(confirm_ms=300), second_opinion=False)
    at = [next(i for i, e in events if isinstance(e, SpeechConfirmed)) for events in (early, late)]
    assert at[1] - at[0] >= 300 // 20


def test_vad_thresholds_are_validated(tmp_path: Path) -> None:
    for name in ("switchboard.yaml", "directory.yaml", "knowledge.yaml"):
        shutil.copy(ETC / name, tmp_path / name)
    path = tmp_path / "switchboard.yaml"
    text = path.read_text()
    for line, key in (("confirm_ms: 0", "vad"), ("voice_threshold: 1.5", "vad"), ("min_voice_ms: -1", "vad"),
                      ("backchannel_ms: 200", "vad")):
        path.write_text(text.replace("  end_silence_ms: 500", f"  end_silence_ms: 500\n  {line}", 1))
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert err.value.key.startswith(key) and line.split(":")[0] in str(err.value), str(err.value)
