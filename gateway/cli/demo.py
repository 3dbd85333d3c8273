"""`switchboard demo CALLER.wav`: one call through a real AudioSocket connection to an in-process gateway."""

from __future__ import annotations

import argparse
import asyncio
import sys
import dataclasses
import tempfile
import time
from pathlib import Path

from gateway.cli.common import load, setup_logging
from gateway.daemon.app import Gateway
from gateway.media.caller import CallerClient
from gateway.config import Config
from gateway.services import load_services
from speech.audio import SAMPLE_RATE, read_wav, resample, rms, split_frames, write_wav

_VOICED = 300.0


def speech_end_offset(pcm: bytes) -> float:
    """Seconds from the start of `pcm` to the end of its last voiced 20 ms frame."""
    frames = split_frames(pcm)
    last = max((i for i, f in enumerate(frames) if rms(f) > _VOICED), default=len(frames) - 1)
    return (last + 1) * 0.02


async def run_demo(config: Config, out: Path, *, wav: Path | None = None, say: str | None = None) -> int:
    if wav is not None:
        try:
            pcm, rate = read_wav(wav)
        except (OSError, ValueError) as exc:
            print(f"switchboard demo: cannot read {wav}: {exc}")
            return 2
        caller_pcm = resample(pcm, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else pcm
    with tempfile.TemporaryDirectory(prefix="switchboard-demo-") as tmp:
        # A throw-away database: a demo call must not land in the site's records.
        config = dataclasses.replace(config, database=Path(tmp) / "demo.db")
        print("loading models ...", flush=True)
        services = await load_services(config)
        if say is not None:
            caller_pcm = bytes(3200) + await asyncio.to_thread(services.synthesizer.synthesize, say) + bytes(3200)
        gateway = Gateway(services, host="127.0.0.1", port=0)
        await gateway.start()
        client = await CallerClient("127.0.0.1", gateway.port).connect()
        try:
            connected = time.monotonic()
            greeting = await client.wait_reply(connected)
            heard = await services.transcriber.transcribe_async(greeting.pcm, prompt=config.site.speech_prompt)
            print(f"\nassistant: {heard.text}")
            print(f"           (greeting audio after {(greeting.first_voiced_at - connected) * 1000:.0f} ms)")
            sent_at = await client.say(caller_pcm)
            speech_end = sent_at - (len(caller_pcm) / 2 / SAMPLE_RATE - speech_end_offset(caller_pcm))
            reply = await client.wait_reply(sent_at)
            turns = await services.store.turns(client.call_id)
            said = next((t.text for t in turns if t.speaker == "caller"), "(nothing recognised)")
            print(f"caller:    {said}")
            answer = await services.transcriber.transcribe_async(reply.pcm, prompt=config.site.speech_prompt)
            print(f"assistant: {answer.text}")
            print(f"\nvoice-to-voice latency: {(reply.first_voiced_at - speech_end) * 1000:.0f} ms "
                  "(end of caller speech -> first reply audio)")
            for turn in turns:
                if turn.timings_ms:
                    shown = ", ".join(f"{k} {v:.0f}" for k, v in turn.timings_ms.items())
                    print(f"  {turn.speaker:9s} timings ms: {shown}")
            write_wav(out, client.audio_between(0, time.monotonic()), SAMPLE_RATE)
            print(f"\ngateway audio written to {out}")
        finally:
            await client.close()
            await gateway.stop(grace_s=1.0)
            await services.close()
    return 0


def command(args: argparse.Namespace) -> int:
    config = load(args)
    if config is None:
        return 2
    setup_logging("WARNING" if not args.verbose else "INFO", transcripts=config.log_transcripts)
    if (args.wav is None) == (args.say is None):
        print("switchboard demo: give either CALLER.wav or --say TEXT", file=sys.stderr)
        return 2
    return asyncio.run(run_demo(config, args.out, wav=args.wav, say=args.say))
