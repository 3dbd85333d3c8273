"""SIGKILL an outbox worker process while it is sending to a real SMTP server, restart it, and show
every queued message arrived. Run as a script, this file is the worker process."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

from test_email_peer import SmtpPeer

from channels.email import EmailChannel, EmailSettings, message_id
from channels.outbox import Outbox
from models.store import Store

ROOT = Path(__file__).resolve().parents[2]
COUNT, KILL_AT = 40, 15


def email_channel(port: int) -> EmailChannel:
    return EmailChannel(EmailSettings.model_validate(
        {"smtp": {"host": "127.0.0.1", "port": port, "security": "none", "from_address": "desk@clinic.test",
                  "timeout_s": 10}}))


async def worker(db: Path, port: int) -> None:
    store = await Store.open(db)
    outbox = Outbox(store, {"email": email_channel(port)})

    async def nothing(*_: object) -> None:
        return None

    await outbox.start(nothing)
    await asyncio.Event().wait()  # until killed


def spawn(db: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as err:
        return subprocess.Popen([sys.executable, __file__, str(db), str(port)], env=env, stdout=err, stderr=err)


async def test_sigkill_mid_send_loses_nothing(tmp_path: Path) -> None:
    db, log = tmp_path / "sb.db", tmp_path / "worker.log"
    store = await Store.open(db)
    outbox = Outbox(store, {"email": email_channel(1)})
    for i in range(COUNT):
        await outbox.enqueue("email", f"staff{i}@clinic.test", f"message {i}", idempotency_key=f"crash-{i}")
    await store.close()

    peer = SmtpPeer()
    await peer.start()
    first = spawn(db, peer.port, log)
    killed = asyncio.Event()

    async def kill_mid_send(mail: EmailMessage) -> None:
        # The server holds this mail but has not said 250: the worker is exactly mid-send.
        if len(peer.messages) == KILL_AT and not killed.is_set():
            first.send_signal(signal.SIGKILL)
            killed.set()

    peer.on_message = kill_mid_send
    second = None
    try:
        await asyncio.wait_for(killed.wait(), 60)
        assert await asyncio.to_thread(first.wait, 10) == -signal.SIGKILL
        second = spawn(db, peer.port, log)
        # Every message by id, whatever the duplicates.
        async with peer.arrived:
            await asyncio.wait_for(peer.arrived.wait_for(
                lambda: len({m["Message-ID"] for m in peer.messages}) == COUNT), 60)
        rows = await asyncio.wait_for(all_sent(db), 30)  # the worker records the last 250s
    finally:
        for proc in (first, second):
            if proc and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        await peer.stop()
    counts = collections.Counter(m["Message-ID"] for m in peer.messages)
    assert set(counts) == {message_id(f"crash-{i}", "clinic.test") for i in range(COUNT)}, log.read_text()
    # The message in flight at the kill (received, never confirmed) arrives twice with the same
    # Message-ID, so the recipient can drop it; every other message arrives exactly once.
    in_flight = message_id(f"crash-{KILL_AT - 1}", "clinic.test")
    assert counts[in_flight] == 2
    assert all(n == 1 for mid, n in counts.items() if mid != in_flight)
    assert len(rows) == COUNT
    assert max(r.attempts for r in rows) == 2  # only the interrupted row was tried twice


async def all_sent(db: Path) -> list:
    store = await Store.open(db)
    try:
        while True:
            rows = await store.outbox_rows()
            if {r.state for r in rows} == {"sent"}:
                return rows
            await asyncio.sleep(0.05)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(worker(Path(sys.argv[1]), int(sys.argv[2])))
