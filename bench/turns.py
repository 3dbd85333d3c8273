"""When does the gateway decide a caller's turn is over? Premature cut-offs and waits, per end-of-turn mode.

The corpus (bench/turns.yaml) holds turns with mid-sentence pauses of 300-900 ms (a number given in
groups, lists, hesitations) and complete short turns, synthesised at run time in Piper joe and
espeak-ng en-us, at 8 kHz and through a phone line (300-3400 Hz, mu-law). Each clip is fed in 20 ms
frames through the call session's own endpointer (speech.vad.Endpointer with Silero, `vad:` from
etc/switchboard.yaml); at each TentativeEnd the bundled Whisper transcribes the turn so far, as the
session's speculative STT does, and in adaptive mode its words reach `Endpointer.decide` as many
frames later as the transcription took here (so a slow, loaded machine waits longer).

  cut off  a turn ended in a pause, before the caller finished (the answer would talk over them)
  late     the turn ended more than 1 s after the caller's last word
  wait     last word -> turn ended (includes webrtcvad's own hang-over)
  to text  last word -> turn ended AND its transcript ready (what the dialog waits for)
  dropped  the endpointer never made the turn an utterance (Silero heard too little voice in it)

Then, for every pause the adaptive endpointer saw, how the text verdict read it (a pause mid-sentence
read as finished would cut the caller off; the end of a turn read as unfinished waits too long), and
with --smart-turn the same for the Smart Turn v3.2 model (bench/smart_turn.py), with its cost.

    .venv/bin/python bench/turns.py [--quick] [--voices piper,espeak] [--channels 8k,ulaw] [--stt-ms N]
                                    [--smart-turn smart-turn-v3.2-cpu.onnx]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from common import ROOT, percentile, table

from gateway.config import load_config  # noqa: E402
from speech import audio  # noqa: E402
from speech.models import bundled_piper_voice, bundled_whisper_dir  # noqa: E402
from speech.stt import Transcriber  # noqa: E402
from speech.tts import Synthesizer  # noqa: E402
from speech.turn import completion  # noqa: E402
from speech.vad import Endpointer, EndpointerConfig, SpeechResumed, TentativeEnd, Utterance  # noqa: E402
from speech.voice import VoiceDetector  # noqa: E402
from tests.support.hearing import espeak, phone_line  # noqa: E402

FRAME_MS = audio.FRAME_MS
LEAD_MS, TAIL_MS = 400, 3000  # silence before the caller speaks, and after (the turn must end in it)
LATE_MS = 1000
CHANNELS: dict[str, Callable[[bytes], bytes]] = {"8k": lambda pcm: pcm, "ulaw": phone_line}


@dataclass
class Clip:
    name: str
    pcm: bytes
    speech_end_ms: int  # the caller's last word ends here
    paused: bool


@dataclass
class Outcome:
    end_ms: int | None  # when the endpointer ended the turn (None: never)
    text_ms: int | None  # when that turn's transcript was ready
    pauses: list[tuple[int, bytes, str]] = field(default_factory=list)  # (ms, audio, words) per TentativeEnd


def silence(ms: int) -> bytes:
    return bytes(ms // FRAME_MS * audio.FRAME_BYTES)


def trimmed(pcm: bytes) -> bytes:
    """The frames from the first to the last within 40 dB of the loudest: the synthesiser's own
    leading and trailing silence would lengthen the pauses we mean to set."""
    frames = audio.split_frames(pcm + bytes(-len(pcm) % audio.FRAME_BYTES))
    levels = np.array([audio.rms_dbfs(f) for f in frames])
    loud = np.flatnonzero(levels > levels.max() - 40)
    return b"".join(frames[loud[0]: loud[-1] + 1])


def render(item: dict, say: Callable[[str], bytes]) -> tuple[bytes, int]:
    """(pcm of the turn with its pauses, between silences; ms at which its last word ends)."""
    parts = [trimmed(say(p)) for p in item["parts"]]
    pcm = silence(LEAD_MS)
    for part, pause in zip(parts, [*item.get("pauses", []), 0]):
        pcm += part + silence(pause)
    end_ms = len(pcm) * 1000 // (2 * audio.SAMPLE_RATE)
    return pcm + silence(TAIL_MS), end_ms


class Stt:
    """The bundled Whisper with the site's prompt; each distinct audio transcribed once, so both modes
    see the same text and the same latency for the same pause."""

    def __init__(self, prompt: str, fixed_ms: float | None) -> None:
        self.transcriber = Transcriber(bundled_whisper_dir())
        self.prompt, self.fixed_ms = prompt, fixed_ms
        self.cache: dict[bytes, tuple[str, float]] = {}

    def __call__(self, pcm: bytes) -> tuple[str, float]:
        if pcm not in self.cache:
            t = self.transcriber.transcribe(pcm, prompt=self.prompt)
            self.cache[pcm] = (t.text, t.elapsed_ms if self.fixed_ms is None else self.fixed_ms)
        return self.cache[pcm]


def simulate(pcm: bytes, config: EndpointerConfig, stt: Stt, decisions_us: list[float]) -> Outcome:
    """Feed `pcm` frame by frame as the call session does; the first turn the endpointer ends."""
    ep = Endpointer(config, VoiceDetector(config.voice_threshold))
    adaptive = config.end_of_turn == "adaptive"
    pending: tuple[int, int, str] | None = None  # (frame at which the transcript is ready, seq, text)
    speculation: tuple[bytes, int] | None = None  # (audio, ms at which its transcript is ready)
    pauses: list[tuple[int, bytes, str]] = []
    for i, frame in enumerate(audio.split_frames(pcm)):
        timed: list[tuple[int, object]] = []
        if pending is not None and pending[0] <= i:
            t0 = time.perf_counter()
            timed += [(i * FRAME_MS, e) for e in ep.decide(pending[1], pending[2])]
            decisions_us.append((time.perf_counter() - t0) * 1e6)
            pending = None
        timed += [((i + 1) * FRAME_MS, e) for e in ep.feed(frame)]
        for now, event in timed:
            if isinstance(event, TentativeEnd):
                text, ms = stt(event.pcm)
                pauses.append((now, event.pcm, text))
                speculation = (event.pcm, now + math.ceil(ms))
                if adaptive:
                    pending = (i + 1 + math.ceil(ms / FRAME_MS), event.seq, text)
            elif isinstance(event, SpeechResumed):
                pending = speculation = None
            elif isinstance(event, Utterance):
                if speculation is not None and speculation[0] == event.pcm:
                    return Outcome(now, max(now, speculation[1]), pauses)
                return Outcome(now, now + math.ceil(stt(event.pcm)[1]), pauses)
    return Outcome(None, None, pauses)


def clips(items: list[dict], voices: list[str], channels: list[str]) -> dict[tuple[str, str], list[Clip]]:
    synth = Synthesizer(bundled_piper_voice())
    says: dict[str, Callable[[str], bytes]] = {"piper": synth.synthesize,
                                               "espeak": lambda text: espeak(text, "en-us", 165)}
    out: dict[tuple[str, str], list[Clip]] = {}
    try:
        for voice in voices:
            rendered = [(item, *render(item, says[voice])) for item in items]
            for channel in channels:
                out[voice, channel] = [Clip(" / ".join(item["parts"]), CHANNELS[channel](pcm), end,
                                            len(item["parts"]) > 1) for item, pcm, end in rendered]
    finally:
        synth.close()
    return out


def row(label: tuple[str, ...], results: list[tuple[Clip, Outcome]]) -> tuple[str, ...]:
    paused = [(c, o) for c, o in results if c.paused]
    cut = [c for c, o in paused if o.end_ms is not None and o.end_ms < c.speech_end_ms]
    waits = [o.end_ms - c.speech_end_ms for c, o in results if o.end_ms is not None and o.end_ms >= c.speech_end_ms]
    to_text = [o.text_ms - c.speech_end_ms for c, o in results
               if o.text_ms is not None and o.end_ms is not None and o.end_ms >= c.speech_end_ms]
    late = sum(1 for w in waits if w > LATE_MS)
    dropped = sum(1 for _, o in results if o.end_ms is None)
    return (*label, f"{len(cut)}/{len(paused)} ({100 * len(cut) / max(1, len(paused)):.0f} %)",
            f"{late}/{len(waits)} ({100 * late / max(1, len(waits)):.0f} %)", str(dropped),
            f"{np.mean(waits):.0f}", f"{percentile(waits, 90):.0f}", f"{np.mean(to_text):.0f}", f"{percentile(to_text, 90):.0f}")


def verdicts(results: list[tuple[Clip, Outcome]], model_path: Path | None) -> None:
    """How each verdict read the pauses of the adaptive runs: mid-sentence ones and turn ends."""
    pauses = [(now < clip.speech_end_ms, pcm, text) for clip, o in results for now, pcm, text in o.pauses]
    finished = {"text": [completion(text).value == "complete" for _, _, text in pauses]}
    costs: list[float] = []
    if model_path is not None:
        from smart_turn import SmartTurn

        model = SmartTurn(model_path)
        judged = [model.complete(pcm) for _, pcm, _ in pauses]
        costs = [ms for _, ms in judged]
        finished["smart turn v3.2"] = [p > 0.5 for p, _ in judged]
        finished["both read finished"] = [a and b for a, b in zip(finished["text"], finished["smart turn v3.2"])]
    rows = []
    for name, said in finished.items():
        mids = [f for (mid, _, _), f in zip(pauses, said) if mid]
        ends = [f for (mid, _, _), f in zip(pauses, said) if not mid]
        rows.append((name, f"{sum(mids)}/{len(mids)}", f"{len(ends) - sum(ends)}/{len(ends)}"))
    print(table(rows, ("verdict", "mid-sentence pauses read finished", "turn ends read unfinished")))
    if costs:
        print(f"smart turn cost per decision (1 thread, features included): p50 {percentile(costs, 50):.0f} ms, "
              f"p90 {percentile(costs, 90):.0f} ms, n={len(costs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every other turn of the corpus")
    parser.add_argument("--voices", default="piper,espeak")
    parser.add_argument("--channels", default="8k,ulaw")
    parser.add_argument("--stt-ms", type=float, help="take this STT latency instead of the measured one")
    parser.add_argument("--verbose", action="store_true", help="each clip's outcome")
    parser.add_argument("--smart-turn", type=Path, help="smart-turn-v3.2-cpu.onnx: also judge pauses with it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(ROOT / "etc" / "switchboard.yaml", data_dir=Path(tmp))
    items = yaml.safe_load((ROOT / "bench" / "turns.yaml").read_text())
    items = items[::2] if args.quick else items
    modes = {"fixed": dataclasses.replace(config.vad, end_of_turn="fixed"),
             "adaptive": dataclasses.replace(config.vad, end_of_turn="adaptive")}
    corpus = clips(items, args.voices.split(","), args.channels.split(","))
    stt = Stt(config.site.speech_prompt, args.stt_ms)
    rows, totals, decisions_us = [], {m: [] for m in modes}, []
    for (voice, channel), group in corpus.items():
        for mode, vad in modes.items():
            results = [(clip, simulate(clip.pcm, vad, stt, decisions_us)) for clip in group]
            totals[mode] += results
            rows.append(row((mode, voice, channel), results))
            for clip, o in results if args.verbose else []:
                print(f"{mode:8} {voice:6} {channel:4} end={o.end_ms} last_word={clip.speech_end_ms} {clip.name}")
    rows += [row((mode, "all", "all"), results) for mode, results in totals.items()]
    print(table(rows, ("mode", "voice", "channel", "cut off", "late (>1 s)", "dropped", "wait ms", "p90", "to text ms", "p90")))
    stt_ms = [ms for _, ms in stt.cache.values()]
    print(f"\n{len(stt.cache)} speculative/final transcripts, STT ms mean {np.mean(stt_ms):.0f} "
          f"p90 {percentile(stt_ms, 90):.0f}; end-of-turn decision (text verdict) us p90 "
          f"{percentile(decisions_us, 90):.0f}")
    for text, _ in stt.cache.values() if args.verbose else []:
        print(f"{completion(text).value:10} {text}")
    print()
    verdicts(totals["adaptive"], args.smart_turn)


if __name__ == "__main__":
    main()
