"""Voice-to-voice latency and barge-in reaction, bundled models, gateway in its own process.

Plays synthesised caller questions into the AudioSocket port in real time and prints p50/p90 of
voice-to-voice latency (end of caller speech -> first non-silent reply frame) with its split, the
barge-in reaction time (caller speech onset -> our audio stops) and the gateway's peak RSS, for each
end-of-turn mode asked for (`vad.end_of_turn`; one gateway each, run one after the other).

    .venv/bin/python bench/latency.py [--calls 4] [--end-of-turn fixed,adaptive]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time

from common import gateway_process, peak_rss_mb, percentile, table

from gateway.media.caller import CallerClient
from gateway.cli.demo import speech_end_offset
from speech.audio import SAMPLE_RATE, rms, split_frames
from speech.models import bundled_piper_voice
from speech.tts import Synthesizer

QUESTIONS = [
    "Do you accept Delta Dental?",
    "How much does teeth whitening cost?",
    "Is there parking at the clinic?",
    "What's your address?",
    "Are you open on Saturday?",
    "Do you see children?",
    "What's your cancellation policy?",
    "Do you speak Spanish?",
    "How much is a check-up and cleaning?",
    "Can you fix my laptop?",
    "Is the office wheelchair accessible?",
    "What should I bring to my first visit?",
]
BARGE_IN = "Sorry, can I ask you something else?"


def speech_start_offset(pcm: bytes) -> float:
    frames = split_frames(pcm)
    first = next((i for i, f in enumerate(frames) if rms(f) > 300), 0)
    return first * 0.02


async def measure_latency(port: int, speech: dict[str, bytes], questions: list[str],
                          calls: int) -> list[tuple[str, float, str]]:
    results = []
    per_call = max(1, len(questions) // calls)
    for c in range(calls):
        client = await CallerClient("127.0.0.1", port).connect()
        try:
            await client.wait_reply(time.monotonic() - 1)  # the greeting
            for question in questions[c * per_call:(c + 1) * per_call]:
                if client.hung_up.is_set():  # handed to a person (over capacity on a loaded machine)
                    print(f"  call {c} handed off before: {question}")
                    break
                pcm = speech[question]
                sent = await client.say(pcm)
                speech_end = sent - (len(pcm) / 2 / SAMPLE_RATE - speech_end_offset(pcm))
                reply = await client.wait_reply(sent)
                results.append((question, (reply.first_voiced_at - speech_end) * 1000, client.call_id))
        finally:
            await client.close()
    return results


async def measure_barge_in(port: int, pcm: bytes, trials: int) -> list[float]:
    reactions = []
    onset_offset = speech_start_offset(pcm)
    for _ in range(trials):
        client = await CallerClient("127.0.0.1", port).connect()
        try:
            deadline = time.monotonic() + 10
            while not any(f.voiced for f in client.received) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)  # well into the greeting
            queued_at = time.monotonic()
            done = client.say(pcm)
            sent = await done
            onset = sent - len(pcm) / 2 / SAMPLE_RATE + onset_offset
            voiced_after = [f.at for f in client.received if onset <= f.at <= sent and f.voiced]
            stopped = max(voiced_after, default=onset)
            reactions.append((stopped - onset) * 1000 + 20)  # +20: the last voiced frame's own duration
            assert queued_at <= onset
        finally:
            await client.close()
    return reactions


def split_timings(db_path, call_ids: list[str]) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    split: dict[str, list[float]] = {}
    with sqlite3.connect(db_path) as db:
        marks = ",".join("?" * len(call_ids))
        for speaker, raw in db.execute(f"select speaker, timings_ms from turns where call_id in ({marks})", call_ids):
            for key, value in json.loads(raw or "{}").items():
                split.setdefault(f"{speaker}:{key}", []).append(float(value))
    return split


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--barge-in-trials", type=int, default=5)
    parser.add_argument("--end-of-turn", default="fixed,adaptive", help="vad.end_of_turn modes to measure")
    args = parser.parse_args()
    synth = Synthesizer(bundled_piper_voice())
    speech = {q: synth.synthesize(q) for q in [*QUESTIONS, BARGE_IN]}
    rows = []
    for mode in args.end_of_turn.split(","):
        async with gateway_process(vad={"end_of_turn": mode}) as (port, proc, data):
            latencies = await measure_latency(port, speech, QUESTIONS, args.calls)
            reactions = await measure_barge_in(port, speech[BARGE_IN], args.barge_in_trials)
            rss = peak_rss_mb(proc.pid)
            split = split_timings(data / "switchboard.db", sorted({c for _, _, c in latencies}))
        v2v = [ms for _, ms, _ in latencies]
        rows.append((mode, "voice-to-voice (client)", f"{percentile(v2v, 50):.0f}", f"{percentile(v2v, 90):.0f}",
                     str(len(v2v))))
        for key in ("caller:endpoint", "caller:stt_wait", "caller:stt", "assistant:retrieval", "assistant:dialog",
                    "assistant:tts_first", "assistant:voice_to_voice"):
            values = split.get(key, [])
            rows.append((mode, key.split(":")[1] if key != "assistant:voice_to_voice" else "voice-to-voice (server)",
                         f"{percentile(values, 50):.0f}", f"{percentile(values, 90):.0f}", str(len(values))))
        rows.append((mode, "barge-in reaction", f"{percentile(reactions, 50):.0f}", f"{percentile(reactions, 90):.0f}",
                     str(len(reactions))))
        print(f"{mode}: peak RSS of the gateway process: {rss:.0f} MB")
        for question, ms, _ in latencies:
            print(f"  {ms:6.0f} ms  {question}")
    print(table(rows, ("end of turn", "measure (ms)", "p50", "p90", "n")))


if __name__ == "__main__":
    asyncio.run(main())
