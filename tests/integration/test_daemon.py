"""`switchboard run` as systemd runs it: sd_notify READY/WATCHDOG/STOPPING, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.caller import KIND_HANGUP, CallerClient
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.models



async def _datagram(sock: socket.socket, wanted: str, seen: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not any(wanted in m for m in seen):
        assert time.monotonic() < deadline, f"no {wanted!r} from the daemon; got {seen}"
        try:
            seen.append(sock.recv(4096).decode())
        except BlockingIOError:
            await asyncio.sleep(0.05)


async def test_notify_protocol_and_graceful_sigterm(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    port = free_port()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "--data-dir", str(data), "run", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "NOTIFY_SOCKET": str(tmp_path / "notify"),
             "WATCHDOG_USEC": "1000000"})
    seen: list[str] = []
    try:
        await _datagram(notify, "READY=1", seen, timeout=180)
        client = await CallerClient("127.0.0.1", port).connect()
        deadline = time.monotonic() + 20
        while not any(f.voiced for f in client.received):  # the greeting is playing
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await _datagram(notify, "WATCHDOG=1", seen, timeout=10)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(client.hung_up.wait(), 30)
        await _datagram(notify, "STOPPING=1", seen, timeout=10)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        await client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
        notify.close()
    assert client.received[-1].kind == KIND_HANGUP  # ended by us, politely, not by a dropped socket
    assert "stopping signal received calls=1" in output and "stopped" in output
    with sqlite3.connect(data / "switchboard.db") as db:
        ((reason, ended),) = db.execute("select end_reason, ended_at from calls where call_id = ?", [client.call_id])
        spoken = [t for (t,) in db.execute("select text from turns where call_id = ? and speaker = 'assistant'",
                                           [client.call_id])]
    assert reason == "shutdown" and ended is not None
    assert any("end this call now" in t for t in spoken)
