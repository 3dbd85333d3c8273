"""The HTTP API under load while a call is served: POST /v1/messages enqueues and POST /v1/otp/verify
checks per second with p50/p99 latency, and the served call's outbound frame jitter meanwhile.

The daemon is `switchboard run` in its own process, with email to a local aiosmtpd (messages go out
while more come in); the key is made with `switchboard keys create`. Targets on 2 cores (issue 10):
>= 1000 enqueues/s, p99 < 50 ms, the call's frame jitter p99 < 10 ms.

    .venv/bin/python bench/api.py [--messages 3000] [--verifies 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiosmtpd.controller import Controller
from common import ROOT, free_port, gateway_process, percentile, table
from concurrency import MediaOnlyCall, caller_silence


class Sink:
    """A local mail relay that takes every message."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]  # aiosmtpd hook
        self.count += 1
        return "250 OK"


async def load(http: aiohttp.ClientSession, url: str, bodies: list[dict], concurrency: int,
               ok: int) -> tuple[float, list[float]]:
    """POST every body with `concurrency` in flight: (requests per second, latencies in ms)."""
    latencies: list[float] = []
    pending = iter(bodies)

    async def worker() -> None:
        for body in pending:
            t0 = time.perf_counter()
            async with http.post(url, json=body) as resp:
                await resp.read()
                assert resp.status == ok, (resp.status, await resp.text())
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(bodies) / (time.perf_counter() - t0), latencies


def make_key(data: Path) -> str:
    etc = next(data.parent.glob("etc/switchboard.yaml"))
    done = subprocess.run([sys.executable, "-m", "gateway.cli.main", "--config", str(etc), "--data-dir", str(data),
                           "keys", "create", "--name", "bench", "--scope", "messages:send", "--scope", "otp:send",
                           "--scope", "otp:verify", "--rate", "100000/s"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--verifies", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    sink, smtp_port, http_port = Sink(), free_port(), free_port()
    smtp = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    sections = {
        "messaging": {"email": {"smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none",
                                         "from_address": "bench@clinic.test"}}},
        # Limits that protect a real site would stop the load: lifted here, the work per request is the same.
        "http": {"port": http_port, "messages_per_destination_hourly": 1_000_000,
                 "otp": {"max_attempts": 1_000_000, "per_destination_hourly": 1000, "resend_cooldown_s": 0}},
    }
    loop = asyncio.get_running_loop()
    try:
        async with gateway_process(calls={"no_speech_timeout_s": 3600}, sections=sections,
                                   http_port=http_port) as (port, _, data):
            key = await asyncio.to_thread(make_key, data)
            base = f"http://127.0.0.1:{http_port}"
            call: MediaOnlyCall = (await loop.create_connection(MediaOnlyCall, "127.0.0.1", port))[1]
            stop = asyncio.Event()
            sender = asyncio.create_task(caller_silence([call], stop))
            await asyncio.sleep(2.0)  # past the greeting: the call hears the gateway's steady silence
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"},
                                             connector=aiohttp.TCPConnector(limit=args.concurrency)) as http:
                ids = await _codes(http, base, 20)
                idle_start = time.monotonic()
                await asyncio.sleep(5.0)  # the same call with the API idle: what the machine itself gives
                window_start = time.monotonic()
                send_rate, send_ms = await load(http, f"{base}/v1/messages", [
                    {"channel": "email", "to": f"patient{i % 500}@example.test", "text": f"Reminder {i}"}
                    for i in range(args.messages)], args.concurrency, 202)
                # Every guess is wrong: each one is a counted attempt, i.e. a commit, as for a real client.
                verify_rate, verify_ms = await load(http, f"{base}/v1/otp/verify", [
                    {"id": ids[i % len(ids)], "code": f"{i % 10 ** 6:06d}"} for i in range(args.verifies)],
                    args.concurrency, 200)
                window_end = time.monotonic()
            stop.set()
            await sender
            assert call.transport is not None
            call.transport.close()
    finally:
        smtp.stop()
    jitter, idle = _jitter(call, window_start, window_end), _jitter(call, idle_start, window_start)
    print(table([
        ("POST /v1/messages", f"{send_rate:.0f}/s", f"{percentile(send_ms, 50):.1f}", f"{percentile(send_ms, 99):.1f}",
         str(len(send_ms))),
        ("POST /v1/otp/verify", f"{verify_rate:.0f}/s", f"{percentile(verify_ms, 50):.1f}",
         f"{percentile(verify_ms, 99):.1f}", str(len(verify_ms))),
        ("the served call's frame jitter", "", f"{percentile(jitter, 50):.1f}", f"{percentile(jitter, 99):.1f}",
         str(len(jitter))),
        ("the same call, API idle", "", f"{percentile(idle, 50):.1f}", f"{percentile(idle, 99):.1f}", str(len(idle))),
    ], ("measure", "rate", "p50 (ms)", "p99 (ms)", "n")))
    print(f"\n{args.concurrency} requests in flight; {sink.count} mails delivered by the end")


def _jitter(call: MediaOnlyCall, start: float, end: float) -> list[float]:
    times = [t for t in call.arrivals if start <= t <= end]
    return [abs((b - a) * 1000 - 20) for a, b in zip(times, times[1:])]


async def _codes(http: aiohttp.ClientSession, base: str, n: int) -> list[str]:
    """Ids of `n` codes sent by email (before the measured window)."""
    ids = []
    for i in range(n):
        async with http.post(f"{base}/v1/otp", json={"to": f"verify{i}@example.test", "channel": "email"}) as resp:
            assert resp.status == 202, await resp.text()
            ids.append((await resp.json())["id"])
    return ids


if __name__ == "__main__":
    asyncio.run(main())
