"""speech.audio: formats, resampling, framing, levels, G.711, WAV files."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from speech import audio

ALL_INT16 = np.arange(-32768, 32768, dtype="<i2")


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return audio.float_to_pcm(amplitude * np.sin(2 * np.pi * freq * t))


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.int64)


def test_frame_constants() -> None:
    assert (audio.SAMPLE_RATE, audio.FRAME_MS, audio.FRAME_SAMPLES, audio.FRAME_BYTES) == (8000, 20, 160, 320)
    assert audio.SILENCE_FRAME == bytes(320)


def test_float_pcm_round_trip_and_clipping() -> None:
    pcm = ALL_INT16.tobytes()
    assert audio.float_to_pcm(audio.pcm_to_float(pcm)) == pcm
    x = audio.pcm_to_float(pcm)
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() < 1.0
    assert samples(audio.float_to_pcm(np.array([2.0, -3.0, 0.5]))).tolist() == [32767, -32768, 16384]


def test_odd_byte_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="16-bit"):
        audio.pcm_to_float(b"\x00\x01\x02")


@pytest.mark.parametrize(("src", "dst"), [(8000, 16000), (16000, 8000), (22050, 8000)])
def test_resample_keeps_duration_and_pitch(src: int, dst: int) -> None:
    out = audio.resample(tone(440, 1.0, src), src, dst)
    y = samples(out).astype(np.float64)
    assert abs(len(y) - dst) <= 1
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert abs(np.argmax(spectrum) * dst / len(y) - 440) < 3
    assert audio.resample(b"", src, dst) == b""


def test_resample_removes_content_above_new_nyquist() -> None:
    # 6 kHz cannot exist at 8 kHz: a proper low-pass removes it instead of aliasing to 2 kHz.
    out = audio.resample(tone(6000, 0.5, 16000), 16000, 8000)
    assert audio.rms_dbfs(out[800:-800]) < -60  # away from the edge transients


def test_stream_resampler_matches_length_and_level_in_20ms_chunks() -> None:
    pcm = tone(300, 1.0, 8000)
    up = audio.StreamResampler(8000, 16000)
    chunks = [up.process(f) for f in audio.split_frames(pcm)]
    chunks.append(up.process(b"", last=True))
    out = b"".join(chunks)
    assert abs(len(out) // 2 - 16000) <= 2
    # Continuous filter state: no clicks at chunk edges, and the same signal as one-shot
    # resampling (up to the filter's ~1 ms delay).
    one_shot = samples(audio.resample(pcm, 8000, 16000)).astype(float)
    got = samples(out).astype(float)
    delay = 24  # the FIR's centre tap at 16 kHz (1.5 ms)
    a, b = got[2000 + delay:14000 + delay], one_shot[2000:14000]
    assert np.corrcoef(a, b)[0, 1] > 0.999
    assert np.max(np.abs(a - b)) < 0.02 * np.max(np.abs(b))


@pytest.mark.parametrize(("in_rate", "out_rate"), [(16000, 8000), (8000, 16000), (48000, 8000), (8000, 48000)])
def test_stream_resampler_releases_every_chunk_at_once(in_rate: int, out_rate: int) -> None:
    """A live call cannot wait for a 100 ms block: each 20 ms in gives exactly 20 ms out."""
    rs = audio.StreamResampler(in_rate, out_rate)
    frame = (np.sin(np.arange(in_rate // 50) * 2 * np.pi * 440 / in_rate) * 8000).astype("<i2").tobytes()
    sizes = [len(rs.process(frame)) for _ in range(10)]
    assert sizes == [out_rate // 50 * 2] * 10


def test_split_frames_pads_last_frame() -> None:
    frames = audio.split_frames(b"\x01" * 700)
    assert [len(f) for f in frames] == [320, 320, 320]
    assert frames[2] == b"\x01" * 60 + bytes(260)
    assert audio.split_frames(b"") == []
    assert audio.split_frames(b"\x02" * 10, frame_bytes=4) == [b"\x02" * 4, b"\x02" * 4, b"\x02\x02\x00\x00"]


def test_rms_and_dbfs() -> None:
    assert audio.rms(audio.SILENCE_FRAME) == 0.0
    assert audio.rms_dbfs(audio.SILENCE_FRAME) == float("-inf")
    assert audio.rms(np.full(160, -1000, dtype="<i2").tobytes()) == pytest.approx(1000)
    # A full-scale sine is -3 dBFS RMS.
    assert audio.rms_dbfs(tone(1000, 0.5, 8000, amplitude=1.0)) == pytest.approx(-3.01, abs=0.05)


# --- G.711 ----------------------------------------------------------------


def test_ulaw_known_code_points() -> None:
    assert samples(audio.ulaw_decode(bytes([0xFF, 0x7F, 0x00, 0x80]))).tolist() == [0, 0, -32124, 32124]
    extremes = np.array([0, -1, 32767, -32768], dtype="<i2").tobytes()
    assert list(audio.ulaw_encode(extremes)) == [0xFF, 0x7F, 0x80, 0x00]


def test_alaw_known_code_points() -> None:
    assert samples(audio.alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A]))).tolist() == [8, -8, 32256, -32256]
    extremes = np.array([0, -1, 32767, -32768], dtype="<i2").tobytes()
    assert list(audio.alaw_encode(extremes)) == [0xD5, 0x55, 0xAA, 0x2A]


@pytest.mark.parametrize(
    ("encode", "decode", "max_error", "max_relative"),
    [(audio.ulaw_encode, audio.ulaw_decode, 512, 0.043), (audio.alaw_encode, audio.alaw_decode, 512, 0.032)],
)
def test_g711_round_trip_error_is_within_one_half_step(encode, decode, max_error, max_relative) -> None:  # type: ignore[no-untyped-def]
    x = ALL_INT16.astype(np.int64)
    y = samples(decode(encode(ALL_INT16.tobytes())))
    err = np.abs(y - x)
    in_range = np.abs(x) <= 32000  # beyond, the codec's largest step clips
    assert err[in_range].max() <= max_error
    loud = np.abs(x) > 256
    assert (err[loud] / np.abs(x[loud])).max() <= max_relative
    assert np.all(np.diff(y) >= 0)  # monotonic: louder never decodes quieter


@pytest.mark.parametrize(("encode", "decode"), [(audio.ulaw_encode, audio.ulaw_decode), (audio.alaw_encode, audio.alaw_decode)])
def test_g711_codes_are_stable_and_speech_survives(encode, decode) -> None:  # type: ignore[no-untyped-def]
    codes = bytes(c for c in range(256) if c != 0x7F)  # u-law 0x7F is "negative zero"
    assert encode(decode(codes)) == codes  # every code word decodes to a value that re-encodes to itself
    pcm = tone(440, 0.2, 8000, amplitude=0.3)
    snr = audio.rms(pcm) / audio.rms((samples(decode(encode(pcm))) - samples(pcm)).astype("<i2").tobytes())
    assert 20 * np.log10(snr) > 30  # G.711 gives ~35-38 dB SNR on speech-level signals
    assert len(encode(pcm)) == len(pcm) // 2


# --- WAV ------------------------------------------------------------------


def test_wav_round_trip(tmp_path: Path) -> None:
    pcm = tone(440, 0.3, 16000)
    audio.write_wav(tmp_path / "a.wav", pcm, 16000)
    assert audio.read_wav(tmp_path / "a.wav") == (pcm, 16000)


def test_read_wav_downmixes_stereo(tmp_path: Path) -> None:
    left = np.full(100, 1000, dtype="<i2")
    right = np.full(100, 3000, dtype="<i2")
    with wave.open(str(tmp_path / "s.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.stack([left, right], axis=1).tobytes())
    pcm, rate = audio.read_wav(tmp_path / "s.wav")
    assert rate == 8000 and samples(pcm).tolist() == [2000] * 100


def test_read_wav_rejects_8_bit_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "eight.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes(100))
    with pytest.raises(ValueError, match=r"eight\.wav.*8-bit"):
        audio.read_wav(path)


def test_read_wav_rejects_non_wav_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("not audio")
    with pytest.raises(ValueError, match=r"notes\.wav"):
        audio.read_wav(path)
