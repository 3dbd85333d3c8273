"""SIGKILL a worker process at the worst moment, restart it, and show nothing was lost or doubled:
the outbox while it is sending to a real SMTP server, and a conversation after its SMTP listener
acknowledged an inbound mail but before the answer went out. Run as a script, this file is the worker."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
from test_email_peer import SmtpPeer

from channels.email import EmailChannel, EmailSettings, message_id
from channels.outbox import Outbox
from gateway.config import load_config
from gateway.config import ConversationSettings
from gateway.sessions.conversations import Conversations
from llm.knowledge import Retriever
from models.store import Store
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
COUNT, KILL_AT = 40, 15
CFG = load_config(ROOT / "etc" / "switchboard.yaml")


def email_channel(port: int, listen_port: int | None = None) -> EmailChannel:
    listener = {"enabled": True, "port": listen_port, "recipients": ["desk@clinic.test"]} if listen_port else {}
    return EmailChannel(EmailSettings.model_validate(
        {"smtp": {"host": "127.0.0.1", "port": port, "security": "none", "from_address": "desk@clinic.test",
                  "timeout_s": 10}, "listener": listener}))


async def worker(db: Path, port: int) -> None:
    store = await Store.open(db)
    outbox = Outbox(store, {"email": email_channel(port)})

    async def nothing(*_: object) -> None:
        return None

    await outbox.start(nothing)
    await asyncio.Event().wait()  # until killed


async def answering_worker(db: Path, port: int, listen_port: int, buffer_s: float) -> None:
    """Answers mail that arrives on `listen_port`, after `buffer_s` of quiet, through the relay on `port`."""
    store = await Store.open(db)
    outbox = Outbox(store, {"email": email_channel(port, listen_port)})
    talk = Conversations(CFG.site, Retriever(store), store, outbox, ConversationSettings(buffer_s=buffer_s))
    await outbox.start(talk.on_inbound)
    await talk.start()
    await asyncio.Event().wait()  # until killed


def spawn(db: Path, port: int, log: Path, *extra: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as err:
        return subprocess.Popen([sys.executable, __file__, str(db), str(port), *map(str, extra)],
                                env=env, stdout=err, stderr=err)


def reap(*procs: subprocess.Popen[bytes] | None) -> None:
    for proc in procs:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait(10)


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
        reap(first, second)
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


QUESTION = (b"From: Jane <jane@example.test>\r\nTo: desk@clinic.test\r\nSubject: Insurance\r\n"
            b"Message-ID: <q1@example.test>\r\n\r\nDo you take Cigna?\r\n")


async def deliver(port: int) -> None:
    """Send QUESTION as a relay would: retrying until the listener is up, returning at its 250."""
    for _ in range(300):
        try:
            await aiosmtplib.send(QUESTION, sender="jane@example.test", recipients=["desk@clinic.test"],
                                  hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
            return
        except (aiosmtplib.SMTPConnectError, OSError):
            await asyncio.sleep(0.1)
    raise AssertionError(f"no SMTP listener on port {port}")


async def test_sigkill_after_the_250_still_answers_the_mail_once(tmp_path: Path) -> None:
    db, log = tmp_path / "sb.db", tmp_path / "worker.log"
    store = await Store.open(db)
    await store.replace_admin_knowledge(CFG.knowledge)
    await store.close()
    relay = SmtpPeer()
    await relay.start()
    listen = free_port()
    # A long debounce window: the 250 has been given and the answer is still waiting when the kill comes.
    first = spawn(db, relay.port, log, listen, 60)
    second = None
    try:
        await deliver(listen)
        first.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(first.wait, 10) == -signal.SIGKILL
        assert relay.messages == []
        second = spawn(db, relay.port, log, listen, 0.2)
        [answer] = await relay.wait_for(1, timeout=60)
        await deliver(listen)  # the sender's relay delivers the same mail again
        await asyncio.sleep(1.0)  # five debounce windows: a second answer would be out by now
    finally:
        reap(first, second)
        await relay.stop()
    assert len(relay.messages) == 1, log.read_text()
    assert answer["To"] == "jane@example.test" and answer["Subject"] == "Re: Insurance"
    assert "Cigna" in answer.get_body(("plain",)).get_content()


if __name__ == "__main__":
    if len(sys.argv) > 3:
        asyncio.run(answering_worker(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
    else:
        asyncio.run(worker(Path(sys.argv[1]), int(sys.argv[2])))
