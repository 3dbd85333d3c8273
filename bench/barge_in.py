"""Barge-in: how soon a caller's interruption stops our reply, and whether a backchannel does, per `vad.backchannel_ms`.

One gateway process per setting, one after the other (0: any speech Silero confirms stops the reply,
the behaviour before backchannels were told apart; 1000: the default). Each trial is a call: 1 s
into the greeting the caller says one thing, in Piper's voice or espeak-ng en-us. For a question:
reaction time, caller speech onset -> our last voiced frame (as bench/latency.py measures it). For
a backchannel ("mm-hm", "okay", ...): whether the greeting was stopped (its stored turn reads
interrupted) and whether the backchannel was answered as a turn.

    .venv/bin/python bench/barge_in.py [--settings 0,1000] [--trials 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time

from common import gateway_process, percentile, table
from latency import measure_barge_in

from gateway.media.caller import CallerClient
from speech.models import bundled_piper_voice
from speech.tts import Synthesizer
from tests.support.hearing import espeak

QUESTIONS = ["Sorry, can I ask you something else?", "How much is a filling?", "Wait, are you open on Saturday?"]
BACKCHANNELS = ["Mm-hm.", "Uh-huh.", "Okay.", "Right.", "Yeah.", "I see."]


async def backchannel_over_greeting(port: int, pcm: bytes) -> str:
    """Say `pcm` 1 s into the greeting, wait until the call is quiet; its call id."""
    client = await CallerClient("127.0.0.1", port).connect()
    try:
        deadline = time.monotonic() + 10
        while not any(f.voiced for f in client.received) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)
        await client.say(pcm)
        await client.wait_reply(time.monotonic() - 5, quiet_s=2.5)  # the greeting, and an answer if any
        return client.call_id
    finally:
        await client.close()


def outcome(db, call_id: str) -> tuple[bool, bool]:  # type: ignore[no-untyped-def]
    """(the greeting was stopped, the caller's words became a turn)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select speaker, interrupted from turns where call_id = ? order by seq",
                            (call_id,)).fetchall()
    return bool(rows and rows[0][1]), any(speaker == "caller" for speaker, _ in rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="0,1000", help="vad.backchannel_ms values to measure")
    parser.add_argument("--trials", type=int, default=3, help="calls per question")
    args = parser.parse_args()
    synth = Synthesizer(bundled_piper_voice())
    # espeak-ng starts speaking in its first sample: give it Piper's ~200 ms of lead-in, so the caller's
    # speech onset falls after the first frame sent (measure_barge_in times from it).
    voices = {"piper": synth.synthesize, "espeak": lambda text: bytes(3200) + espeak(text, "en-us", 160)}
    rows, detail = [], []
    for setting in args.settings.split(","):
        async with gateway_process(vad={"backchannel_ms": int(setting)}) as (port, _, data):
            for voice, render in voices.items():
                reactions = []
                for question in QUESTIONS:
                    reactions += await measure_barge_in(port, render(question), args.trials)
                stopped = answered = 0
                for word in BACKCHANNELS:
                    was_stopped, was_answered = outcome(data / "switchboard.db",
                                                        await backchannel_over_greeting(port, render(word)))
                    stopped += was_stopped
                    answered += was_answered
                    detail.append(f"  {setting:>5} {voice:6} {word:8} stopped={was_stopped} answered={was_answered}")
                rows.append((setting, voice, f"{percentile(reactions, 50):.0f}", f"{percentile(reactions, 90):.0f}",
                             f"{max(reactions):.0f}", str(len(reactions)), f"{stopped}/{len(BACKCHANNELS)}",
                             f"{answered}/{len(BACKCHANNELS)}"))
    print("\n".join(detail))
    print(table(rows, ("backchannel_ms", "voice", "reaction p50 ms", "p90", "max", "n",
                       "backchannels that stopped", "answered")))


if __name__ == "__main__":
    asyncio.run(main())
