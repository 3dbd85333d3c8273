"""Smart Turn v3.2 (pipecat-ai, BSD-2) for bench/turns.py: does the audio of a turn so far sound finished?

A Whisper-tiny encoder with a classification head, as ONNX (8.7 MB, int8 for CPUs). Its input is the
last 8 s of the turn at 16 kHz (zeros before a shorter turn), normalised to zero mean and unit
variance, as Whisper's 80-bin log-mel spectrogram (800 frames); its output is the probability that
the turn is complete. Features come from faster-whisper's own extractor (the same log-mel), so
pipecat is never imported. Not used by the gateway yet (see README "Turn-taking"): measured here only.
The model file is in the pipecat-ai 1.14.0 wheel (pip download --no-deps pipecat-ai==1.14.0, then
unzip pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx; sha256 2bb02631...e4f, see SHA256).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from faster_whisper.feature_extractor import FeatureExtractor

from speech.audio import SAMPLE_RATE, pcm_to_float, resample

SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
MODEL_RATE = 16000
WINDOW_S = 8


class SmartTurn:
    def __init__(self, path: Path, threads: int = 1) -> None:
        if hashlib.sha256(path.read_bytes()).hexdigest() != SHA256:
            raise ValueError(f"{path}: not smart-turn-v3.2-cpu.onnx of pipecat-ai 1.14.0 (sha256 differs)")
        options = ort.SessionOptions()
        options.inter_op_num_threads, options.intra_op_num_threads = 1, threads
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._features = FeatureExtractor(feature_size=80, sampling_rate=MODEL_RATE, chunk_length=WINDOW_S)

    def features(self, pcm8k: bytes) -> np.ndarray:
        """(1, 80, 800) log-mel of the last 8 s of `pcm8k`."""
        x = pcm_to_float(resample(pcm8k, SAMPLE_RATE, MODEL_RATE))[-WINDOW_S * MODEL_RATE:]
        x = np.pad(x, (WINDOW_S * MODEL_RATE - len(x), 0)).astype(np.float32)
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        return self._features(x, padding=0)[np.newaxis].astype(np.float32)

    def complete(self, pcm8k: bytes) -> tuple[float, float]:
        """(probability that the turn in `pcm8k` is complete, ms it took)."""
        started = time.perf_counter()
        features = self.features(pcm8k)
        out = self._session.run(None, {"input_features": features})[0]
        return float(np.ravel(out)[0]), (time.perf_counter() - started) * 1000
