"""Voice-to-voice latency on the direct SIP transport, bundled models, gateway in its own process.

The gateway registers with SIPp (tests/support/sipp/uas_register.xml), then SIPp delivers one call
(uac_call.xml) whose RTP is a UDP socket of this script (tests/support/rtp.py): it plays the same
synthesised questions as bench/latency.py in real time, as PCMU, and prints p50/p90 of voice-to-voice
(end of caller speech -> first voiced RTP packet back), measured here, at the caller's socket.

    .venv/bin/python bench/sip_latency.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import ROOT, free_port, gateway_process, percentile, table
from latency import QUESTIONS

from gateway.cli.demo import speech_end_offset
from speech.audio import SAMPLE_RATE
from speech.models import bundled_piper_voice
from speech.tts import Synthesizer
from tests.support.rtp import RtpPeer

SCENARIOS = ROOT / "tests" / "support" / "sipp"
PASSWORD_ENV = "SB_BENCH_SIP_PASSWORD"
CALLS = 4


def sipp(scenario: str, port: int, cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["sipp", *args, "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(port),
                             "-m", "1", "-nostdin", "-timeout", "600s", "-key", "user", "reception", "-key",
                             "password", "bench"], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def call(speech: dict[str, bytes], questions: list[str], pbx: int, sip_port: int, tmp: Path,
               latencies: list[float]) -> None:
    peer = RtpPeer.bind()
    (tmp / "call.csv").write_text(f"SEQUENTIAL\n+15550100000;{peer.port};\n")
    caller = sipp("uac_call.xml", pbx, tmp, f"127.0.0.1:{sip_port}", "-s", "reception", "-inf", str(tmp / "call.csv"))
    peer.start()
    try:
        await peer.wait_reply(time.monotonic() - 1)  # the greeting
        for question in questions:
            if caller.poll() is not None:  # transferred (REFER) or hung up: the next call asks the rest
                print(f"  call ended before: {question}")
                break
            pcm = speech[question]
            sent = await peer.say(pcm)
            speech_end = sent - (len(pcm) / 2 / SAMPLE_RATE - speech_end_offset(pcm))
            reply = await peer.wait_reply(sent)
            latencies.append((reply.first_voiced_at - speech_end) * 1000)
            print(f"  {latencies[-1]:6.0f} ms  {question}")
    finally:
        caller.terminate()
        caller.wait(10)
        await peer.close()


async def main() -> None:
    synth = Synthesizer(bundled_piper_voice())
    speech = {q: synth.synthesize(q) for q in QUESTIONS}
    os.environ[PASSWORD_ENV] = "bench"
    pbx, sip_port, rtp_low = free_port(), free_port(), 41000
    section = {"enabled": True, "server": "127.0.0.1", "port": pbx, "user": "reception", "password_env": PASSWORD_ENV,
               "my_ip": "127.0.0.1", "sip_port": sip_port, "rtp_port_low": rtp_low, "rtp_port_high": rtp_low + 9,
               "register_expires_s": 3600}  # the registrar exits once answered: no renewal meanwhile
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="switchboard-sip-bench-") as tmp:
        registrar = sipp("uas_register.xml", pbx, Path(tmp))
        async with gateway_process(sections={"sip": section}) as _:
            await asyncio.to_thread(registrar.wait, 60)
            for c in range(CALLS):  # as bench/latency.py: a few questions per call
                await call(speech, QUESTIONS[c::CALLS], pbx, sip_port, Path(tmp), latencies)
    print(table([("sip", "voice-to-voice (client)", f"{percentile(latencies, 50):.0f}",
                  f"{percentile(latencies, 90):.0f}", str(len(latencies)))],
                ("transport", "measure (ms)", "p50", "p90", "n")))


if __name__ == "__main__":
    asyncio.run(main())
