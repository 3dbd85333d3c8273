"""The outbox sending email to a real aiosmtpd server that is down at first, then comes up."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_email_peer import SmtpPeer

from channels.email import EmailChannel, EmailSettings, message_id
from channels.outbox import Outbox, RetryPolicy
from models.store import Store


async def nothing(*_: object) -> None:
    return None


async def test_messages_wait_out_an_smtp_outage(tmp_path: Path) -> None:
    peer = SmtpPeer()
    await peer.start()
    port = peer.port
    await peer.stop()  # the relay is down

    store = await Store.open(tmp_path / "sb.db")
    channel = EmailChannel(EmailSettings.model_validate(
        {"smtp": {"host": "127.0.0.1", "port": port, "security": "none", "from_address": "desk@clinic.test"}}))
    outbox = Outbox(store, {"email": channel}, retry=RetryPolicy(base_s=0.05, cap_s=0.2, max_attempts=100))
    await outbox.start(nothing)
    try:
        row_id = await outbox.enqueue("email", "dr.smith@clinic.test", "Call Jane back", subject="Message",
                                      idempotency_key="taken-7")

        async def until(ok) -> None:  # type: ignore[no-untyped-def]
            while not ok(await store.outbox_get(row_id)):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(until(lambda r: r.attempts >= 2 and r.state == "queued"), 20)
        row = await store.outbox_get(row_id)
        assert row is not None and "Connect" in (row.last_error or "")
        await peer.start()  # same port: the relay is back
        [mail] = await peer.wait_for(1)
        await asyncio.wait_for(until(lambda r: r.state == "sent"), 20)
        row = await store.outbox_get(row_id)
    finally:
        await outbox.stop()
        await store.close()
        await peer.stop()
    assert row is not None
    assert mail["Message-ID"] == message_id("taken-7", "clinic.test") == row.provider_ref
    assert row.attempts >= 3 and row.last_error is None
