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

import aiohttp
import pytest
import yaml
from test_email_peer import SmtpPeer

from channels.email import message_id
from gateway.http.keys import new_key
from gateway.media.caller import KIND_HANGUP, CallerClient
from models.store import Store
from tests.support.ami_server import AmiTestServer
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.models


def site_config(tmp_path: Path, **sections: object) -> Path:
    """etc/switchboard.yaml as an admin would edit it, with `sections` added or replaced."""
    etc = ROOT / "etc"
    data = yaml.safe_load((etc / "switchboard.yaml").read_text())
    data.update(directory=str(etc / "directory.yaml"), knowledge=str(etc / "knowledge.yaml"),
                data_dir=str(tmp_path / "data"), **sections)
    path = tmp_path / "switchboard.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_daemon(config: Path, port: int, http_port: int = 0, **env: str) -> subprocess.Popen[str]:
    """`switchboard -c CONFIG run`, as systemd starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", "-c", str(config), "run", "--port", str(port),
         "--http-port", str(http_port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


async def _logged(proc: subprocess.Popen[str], wanted: str, lines: list[str], timeout: float) -> None:
    """Read the daemon's log (in a thread: the pipe blocks) until a line contains `wanted`."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while not any(wanted in line for line in lines):
        assert time.monotonic() < deadline and proc.poll() is None, f"no {wanted!r} in the log:\n{''.join(lines)}"
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), deadline - time.monotonic())
        lines.append(line)


async def test_switchboard_run_with_ami_transfers_the_caller(tmp_path: Path) -> None:
    """The wiring of `switchboard run` with `ami:` enabled: DTMF 0 sends the Redirect to the front desk."""
    server = await AmiTestServer(secret="Tz9-q7-never-logged").start()
    config = site_config(tmp_path, ami={"enabled": True, "port": server.port, "username": "gateway",
                                        "secret_env": "TEST_AMI_SECRET"})
    port = free_port()
    proc = start_daemon(config, port, TEST_AMI_SECRET=server.secret)
    lines: list[str] = []
    client = CallerClient("127.0.0.1", port)
    try:
        await _logged(proc, "ready audiosocket", lines, timeout=180)
        await server.wait_logins(1, timeout=10)
        await server.call_events(channel="PJSIP/caller-00000077", uniqueid="1795259999.77", caller="0612345678",
                                 exten="100", variables={"AS_UUID": client.call_id})
        await client.connect()
        client.dtmf("0")
        (redirect,) = await server.wait_for("Redirect", timeout=20)
        assert (redirect["Channel"], redirect["Context"], redirect["Exten"]) == (
            "PJSIP/caller-00000077", "switchboard-transfer", "200")
        await asyncio.wait_for(client.hung_up.wait(), 10)
    finally:
        await client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        finally:
            if proc.poll() is None:
                proc.kill()
            await server.stop()
    assert server.secret not in "".join(lines) + proc.stdout.read()  # type: ignore[union-attr]



def _drain(sock: socket.socket, seen: list[str]) -> None:
    """Read every datagram queued so far."""
    while True:
        try:
            seen.append(sock.recv(4096).decode())
        except BlockingIOError:
            return


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
        [sys.executable, "-m", "gateway.cli.main", "--data-dir", str(data), "run", "--port", str(port),
         "--http-port", "0"],
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
        # Not reading the notify socket for a while fills its queue (max_dgram_qlen is 10): pings must
        # then be dropped, not block the daemon (they once froze it mid-goodbye, 1 CI run in 2).
        # The fixed-phrase warm-up of this fresh data directory is still running.
        await asyncio.sleep(7)
        assert time.monotonic() - client.received[-1].at < 0.5, "the daemon froze while its notify socket was full"
        _drain(notify, seen)  # systemd reads again: room for STOPPING=1
        proc.send_signal(signal.SIGTERM)
        await _datagram(notify, "STOPPING=1", seen, timeout=10)
        await asyncio.wait_for(client.hung_up.wait(), 30)
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


async def test_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    """An admin's second Ctrl-C (or systemd's SIGTERM repeated) does not wait for the goodbyes."""
    port = free_port()
    proc = start_daemon(site_config(tmp_path), port)
    lines: list[str] = []
    client = CallerClient("127.0.0.1", port)
    try:
        await _logged(proc, "ready audiosocket", lines, timeout=180)
        await client.connect()
        proc.send_signal(signal.SIGTERM)
        await _logged(proc, "ending calls count=1", lines, timeout=10)  # the goodbye is being said
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 3) == 1
        assert any("second SIGTERM while stopping" in line for line in lines + proc.stdout.readlines())  # type: ignore[union-attr]
    finally:
        await client.close()
        if proc.poll() is None:
            proc.kill()


async def test_a_message_accepted_before_sigkill_is_sent_after_restart(tmp_path: Path) -> None:
    """202 means kept: the daemon is killed (-9) at once while its SMTP relay is down; started again with the
    relay up, it sends the message, under the Message-ID its idempotency key names."""
    smtp = SmtpPeer()
    smtp.port = free_port()  # down until the restart
    config = site_config(tmp_path, messaging={
        "email": {"smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none",
                           "from_address": "desk@clinic.test"}},
        "outbox": {"retry": {"base_s": 0.05, "cap_s": 0.2}}})
    (tmp_path / "data").mkdir()
    store = await Store.open(tmp_path / "data" / "switchboard.db")
    key, record = new_key("crash", ["messages:send"], "10/s", None)
    await store.api_key_create(record)
    await store.close()
    port, http_port = free_port(), free_port()
    first = start_daemon(config, port, http_port)
    second = None
    lines: list[str] = []
    try:
        await _logged(first, "ready audiosocket", lines, timeout=180)
        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{http_port}/v1/messages", headers={"Authorization": f"Bearer {key}"},
                json={"channel": "email", "to": "kill9@example.test", "text": "Your crown is ready.",
                      "idempotency_key": "kill9-1"}) as resp:
            assert resp.status == 202, await resp.text()
        first.kill()
        assert await asyncio.to_thread(first.wait, 10) == -signal.SIGKILL
        await smtp.start()
        second = start_daemon(config, port, http_port)
        (mail,) = await smtp.wait_for(1, timeout=180)  # the restart loads the models again
        assert mail["To"] == "kill9@example.test" and "crown" in mail.get_body(("plain",)).get_content()
        assert mail["Message-ID"] == message_id("api:crash:kill9-1", "clinic.test")
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, 30) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        await smtp.stop()
