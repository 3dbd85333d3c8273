"""Natural phrasings end to end: real AudioSocket calls to the gateway as built from config, with
the real bundled models (speech in, speech out)."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from test_call_e2e import ask, connect, events, heard

pytestmark = pytest.mark.models


async def test_transfer_by_topic_without_a_name(gateway, services, speak) -> None:  # type: ignore[no-untyped-def]
    client, _ = await connect(gateway)
    try:
        reply = await ask(client, speak, "Hi there, who do I talk to about a bill I got?")
        text = await heard(services, reply)
        assert "through" in text or "tom" in text or "becker" in text, text  # tiny.en may miss the name
        await asyncio.wait_for(client.hung_up.wait(), 10)
        transfer = next(e for e in await events(services, client, "transfer") if e.kind == "transfer")
        assert transfer.data == {"source": "rule:transfer", "target": "Tom Becker", "extension": "204"}
    finally:
        await client.close()


async def test_callback_request_becomes_a_message_for_that_person(  # type: ignore[no-untyped-def]
        gateway, services, speak) -> None:
    client, _ = await connect(gateway)
    try:
        prompt = await ask(client, speak, "Could you have Doctor Lopez call me back?")
        assert "message" in await heard(services, prompt)
        offer = next(e for e in await events(services, client, "take_message") if e.kind == "take_message")
        assert offer.data["target"] == "Dr. Maria Lopez" and offer.data["source"] == "rule:message"
        thanks = await ask(client, speak, "My crown feels loose. My number is 555 0100.")
        assert "message" in await heard(services, thanks)
        with sqlite3.connect(services.config.database) as db:
            rows = db.execute("SELECT for_staff, body FROM messages WHERE call_id = ?", [client.call_id]).fetchall()
        assert len(rows) == 1 and rows[0][0] == "Dr. Maria Lopez" and "crown" in rows[0][1].lower()
    finally:
        await client.close()
