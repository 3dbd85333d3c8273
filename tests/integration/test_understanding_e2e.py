"""Natural phrasings end to end: real AudioSocket calls to the gateway as built from config, with
the real bundled models (speech in, speech out)."""

from __future__ import annotations

import sqlite3

import pytest
from test_call_e2e import ask, connect, events, heard, transferred

from tests.support import hearing

pytestmark = pytest.mark.models


def espeak(text: str, rate: int = 110) -> bytes:
    """A robotic caller voice that is not the assistant's own (Piper), as 8 kHz PCM."""
    if hearing.ESPEAK is None:
        pytest.skip("espeak-ng is not installed")
    return hearing.espeak(text, "en-us", rate)


async def said(services, client) -> list[str]:  # type: ignore[no-untyped-def]
    """What the assistant said on this call, as stored (not as tiny.en hears it back)."""
    return [t.text for t in await services.store.turns(client.call_id) if t.speaker == "assistant"]


async def test_transfer_by_topic_without_a_name(gateway, services, speak) -> None:  # type: ignore[no-untyped-def]
    client, _ = await connect(gateway)
    try:
        reply = await ask(client, speak, "Hi there, who do I talk to about a bill I got?")
        text = await heard(services, reply)
        assert "through" in text or "tom" in text or "becker" in text, text  # tiny.en may miss the name
        assert await transferred(services, client) == {"source": "rule:transfer", "target": "Tom Becker",
                                                       "extension": "204"}
    finally:
        await client.close()


async def test_an_appointment_change_is_put_through_to_the_front_desk(gateway, services) -> None:  # type: ignore[no-untyped-def]
    """Said in a voice that is not the assistant's own, without the word "appointment"."""
    client, _ = await connect(gateway)
    try:
        await client.wait_reply(await client.say(espeak("I need to push my cleaning back to next week.")),
                                timeout_s=30)
        assert await transferred(services, client) == {"source": "rule:appointment", "target": "the front desk",
                                                       "extension": "200"}
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
        await ask(client, speak, "This is Pat. My crown feels loose. My number is 555 0100.")
        assert (await said(services, client))[-1].startswith("I have 5 5 5, 0 1 0 0.")  # read back, then asked
        thanks = await ask(client, speak, "Yes, that's right.")
        assert "message" in await heard(services, thanks)
        with sqlite3.connect(services.config.database) as db:
            rows = db.execute("SELECT for_staff, body, caller_name FROM messages WHERE call_id = ?",
                              [client.call_id]).fetchall()
        assert len(rows) == 1 and rows[0][0] == "Dr. Maria Lopez" and "crown" in rows[0][1].lower()
        assert rows[0][2] == "Pat"
    finally:
        await client.close()


async def test_garbled_staff_name_is_clarified_then_transferred(gateway, services) -> None:  # type: ignore[no-untyped-def]
    client, _ = await connect(gateway)
    try:
        await client.wait_reply(await client.say(espeak("Can I talk to Doctor Ken?")))  # tiny.en: "Dr. Ken"
        assert (await said(services, client))[-1] == "Did you mean Dr. James Chen?"
        await client.say(espeak("Yes."))
        assert await transferred(services, client, 15) == {"source": "rule:clarified", "target": "Dr. James Chen",
                                                           "extension": "202"}
    finally:
        await client.close()


async def test_follow_up_question_is_answered_in_context(gateway, services, speak) -> None:  # type: ignore[no-untyped-def]
    client, _ = await connect(gateway)
    try:
        await ask(client, speak, "What time do you open on Tuesday?")
        assert "8 a.m." in (await said(services, client))[-1]
        # Piper says "And on Saturdays?" so that tiny.en writes "End on", "Satterbase" now and then; this
        # test is about the context, not that word: "What about Saturday?" was heard right 15 of 15 times.
        await ask(client, speak, "What about Saturday?")
        assert (await said(services, client))[-1].startswith("On Saturday we're open from 9 a.m. to 1 p.m.")
    finally:
        await client.close()
