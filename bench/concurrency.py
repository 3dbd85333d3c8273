"""N simultaneous calls: outbound frame-interval jitter, and voice-to-voice latency under that load;
then N callers who all ask a question at the same moment.

Each media-only call connects, hears the greeting and then the gateway's idle silence; every
frame's arrival time is recorded and jitter is |interval - 20 ms|. Meanwhile one more call asks
questions so latency under load is measured too. Then, for each N of --talkers, N callers hear
their greeting and ask a knowledge question in the same 20 ms frame, --rounds times: voice-to-voice
(end of their speech -> first reply audio, answer or busy hand-off) and how many were handed off
(the call's `over_capacity` event). The gateway runs in its own process.

    .venv/bin/python bench/concurrency.py [--calls 200] [--seconds 10] [--talkers 1,2,4,8,16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import struct
import time
import uuid
from pathlib import Path

from common import gateway_process, peak_rss_mb, percentile, table
from latency import QUESTIONS, measure_latency

from gateway.media.caller import CallerClient
from gateway.cli.demo import speech_end_offset
from speech.audio import SAMPLE_RATE, SILENCE_FRAME
from speech.models import bundled_piper_voice
from speech.tts import Synthesizer

_HEADER = struct.Struct("!BH")


class MediaOnlyCall(asyncio.Protocol):
    """A lightweight listener: records arrival times of whole frames; sends the caller's silence."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.arrivals: list[float] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(_HEADER.pack(0x01, 16) + uuid.uuid4().bytes)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        while len(self.buffer) >= 3:
            kind, length = _HEADER.unpack_from(self.buffer)
            if len(self.buffer) < 3 + length:
                break
            del self.buffer[:3 + length]
            if kind == 0x10:
                self.arrivals.append(now)


async def caller_silence(calls: list[MediaOnlyCall], stop: asyncio.Event) -> None:
    """Asterisk sends the caller's audio continuously; one paced loop for all media-only calls."""
    frame = _HEADER.pack(0x10, len(SILENCE_FRAME)) + SILENCE_FRAME
    due = time.monotonic()
    while not stop.is_set():
        for call in calls:
            if call.transport and not call.transport.is_closing():
                call.transport.write(frame)
        due += 0.02
        await asyncio.sleep(max(0.0, due - time.monotonic()))


async def talk_at_once(port: int, speech: list[bytes]) -> list[tuple[str, float]]:
    """len(speech) callers, greeted, each say their question in the same frame: (call id, voice-to-voice ms)."""
    clients = [CallerClient("127.0.0.1", port) for _ in speech]
    try:
        await asyncio.gather(*(c.connect() for c in clients))
        await asyncio.gather(*(c.wait_reply(time.monotonic() - 1) for c in clients))  # greetings
        sent = await asyncio.gather(*(c.say(pcm) for c, pcm in zip(clients, speech)))
        replies = await asyncio.gather(*(c.wait_reply(at, quiet_s=0.5) for c, at in zip(clients, sent)))
        return [(c.call_id, (reply.first_voiced_at - (at - (len(pcm) / 2 / SAMPLE_RATE - speech_end_offset(pcm))))
                 * 1000) for c, pcm, at, reply in zip(clients, speech, sent, replies)]
    finally:
        await asyncio.gather(*(c.close() for c in clients if hasattr(c, "_writer")))


def handed_off(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("select call_id from call_events where kind = 'over_capacity'")}


async def talkers(counts: list[int], rounds: int, speech: dict[str, bytes]) -> None:
    questions = list(speech.values())
    rows = []
    async with gateway_process() as (port, _, data):
        for n in counts:
            results: list[tuple[str, float]] = []
            for r in range(rounds):
                results += await talk_at_once(port, [questions[(r + i) % len(questions)] for i in range(n)])
                await asyncio.sleep(1.0)
            overflow = handed_off(data / "switchboard.db") & {call_id for call_id, _ in results}
            v2v = [ms / 1000 for _, ms in results]
            answered = [ms / 1000 for call_id, ms in results if call_id not in overflow]
            rows.append((str(n), str(len(v2v)), f"{percentile(v2v, 50):.2f}", f"{percentile(v2v, 90):.2f}",
                         f"{percentile(answered, 90):.2f}", f"{max(v2v):.2f}", str(len(overflow))))
    print(table(rows, ("talkers", "turns", "v2v p50 (s)", "v2v p90 (s)", "answered p90 (s)", "max (s)",
                       "handed off")))


async def jitter(args: argparse.Namespace, speech: dict[str, bytes]) -> None:
    loop = asyncio.get_running_loop()
    # Listeners stay silent: keep the gateway from prompting and hanging up on them during the run.
    async with gateway_process(calls={"no_speech_timeout_s": 3600}) as (port, proc, _):
        calls: list[MediaOnlyCall] = []
        stop = asyncio.Event()
        sender = asyncio.create_task(caller_silence(calls, stop))
        for _ in range(args.calls):
            _, protocol = await loop.create_connection(MediaOnlyCall, "127.0.0.1", port)
            calls.append(protocol)
            await asyncio.sleep(0.005)
        window_start = time.monotonic()
        latencies = await measure_latency(port, speech, list(speech)[:4], calls=1)
        await asyncio.sleep(max(0.0, args.seconds - (time.monotonic() - window_start)))
        window_end = time.monotonic()  # the window spans the questions, so jitter is measured under STT/TTS load
        stop.set()
        await sender
        rss = peak_rss_mb(proc.pid)
        for call in calls:
            if call.transport:
                call.transport.close()
    jitter: list[float] = []
    received = expected = 0
    worst_gap = 0.0
    for call in calls:
        times = [t for t in call.arrivals if window_start <= t <= window_end]
        intervals = [(b - a) * 1000 for a, b in zip(times, times[1:])]
        jitter += [abs(i - 20) for i in intervals]
        worst_gap = max([worst_gap, *intervals])
        received += len(times)
        expected += int((window_end - window_start) / 0.02)
    v2v = [ms for _, ms, _ in latencies]
    rows = [
        (f"frame jitter, {args.calls} calls (ms)", f"{percentile(jitter, 50):.1f}", f"{percentile(jitter, 99):.1f}",
         str(len(jitter))),
        ("voice-to-voice under load (ms)", f"{percentile(v2v, 50):.0f}", f"{percentile(v2v, 90):.0f}", str(len(v2v))),
    ]
    print(table(rows, ("measure", "p50", "p99 (jitter) / p90 (latency)", "n")))
    print(f"\nconnected calls: {sum(1 for c in calls if c.arrivals)}/{args.calls}; frames received "
          f"{received}/{expected} expected over {window_end - window_start:.1f} s; longest gap {worst_gap:.0f} ms; "
          f"gateway peak RSS: {rss:.0f} MB\n")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="media-only calls for the jitter measure (0: skip)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--talkers", default="1,2,4,8,16", help="comma-separated N of simultaneous talkers ('': skip)")
    parser.add_argument("--rounds", type=int, default=3, help="times each N asks at once")
    args = parser.parse_args()
    synth = Synthesizer(bundled_piper_voice())
    # Knowledge questions (the unknown "fix my laptop" would create help requests).
    speech = {q: synth.synthesize(q) for q in QUESTIONS[:9]}
    if args.calls:
        await jitter(args, speech)
    if args.talkers:
        await talkers([int(n) for n in args.talkers.split(",")], args.rounds, speech)


if __name__ == "__main__":
    asyncio.run(main())
