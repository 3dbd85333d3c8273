"""Callers who do not sound like the gateway's own voice, end to end: a robotic espeak-ng voice, sent as
u-law (audiosocket.codec_0x10: ulaw) with line noise, over real AudioSocket with the real bundled models."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
from test_call_e2e import ask, connect, heard, transferred

from tests.support.gateway import running_gateway
from tests.support.hearing import ESPEAK
from tests.support.voices import VOICES, CallerVoice

pytestmark = [
    pytest.mark.models,
    pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed: it is the Debian package espeak-ng, "
                                              "which ./switchboard test installs"),
]

VOICE = CallerVoice("espeak-us-ulaw-noise", "en-us", 150, codec="ulaw", snr_db=25)
# tiny.en hears this voice's "bill" as "real", "meal" or "wheel" (bench/understanding.py --mode audio
# measures such misses); its "insurance" comes through.


@pytest.fixture(scope="module")
async def ulaw_gateway(services) -> AsyncIterator:  # type: ignore[no-untyped-def]
    """The gateway as configured for Dial(AudioSocket/...) without c(slin): kind 0x10 carries u-law."""
    ulaw = services.config.audiosocket.model_copy(update={"codec_0x10": "ulaw"})
    async with running_gateway(dataclasses.replace(services, config=dataclasses.replace(
            services.config, audiosocket=ulaw))) as gw:
        yield gw


@pytest.fixture(scope="module")
def robotic(services):  # type: ignore[no-untyped-def]
    async def _speak(text: str) -> bytes:
        return await asyncio.to_thread(VOICE.render, text, services.synthesizer.synthesize)

    return _speak


async def test_life_threatening_emergency_gets_911_then_a_transfer(  # type: ignore[no-untyped-def]
        ulaw_gateway, services, robotic) -> None:
    client, _ = await connect(ulaw_gateway, codec=VOICE.codec)
    try:
        reply = await ask(client, robotic, "Please help, my husband can't breathe and his throat is swelling up.")
        said = [t.text for t in await services.store.turns(client.call_id) if t.speaker == "assistant"]
        assert said[-1] == services.config.site.wording.emergency
        text = await heard(services, reply)
        assert "911" in text or "9 1 1" in text or "emergency" in text, text
        assert await transferred(services, client) == {"source": "rule:emergency", "target": "the front desk",
                                                       "extension": "200"}
    finally:
        await client.close()


async def test_a_question_for_billing_and_insurance_is_put_through_to_that_person(  # type: ignore[no-untyped-def]
        ulaw_gateway, services, robotic) -> None:
    client, _ = await connect(ulaw_gateway, codec=VOICE.codec)
    try:
        reply = await ask(client, robotic, "I have a question about my insurance, who can I talk to?")
        assert "through" in await heard(services, reply)
        assert await transferred(services, client) == {"source": "rule:transfer", "target": "Tom Becker",
                                                       "extension": "204"}
    finally:
        await client.close()


async def test_an_emergency_in_words_of_its_own_misheard_still_gets_911_then_a_transfer(  # type: ignore[no-untyped-def]
        ulaw_gateway, services, robotic) -> None:
    """No word list had this wording before (rules.LIFE_THREATENING now has "won't wake up").
    Transcribed alone, this voice's words come out of tiny.en as "My mad, Ellen, Mckitchen, Laura and
    T. Wong's wake up.", and decoded again primed for emergencies (rules.safety_prompt) as "... she
    won't wake up.": the caller is asked whether it is an emergency, and their yes gets the 911
    wording first. On main: "I don't know the answer"."""
    client, _ = await connect(ulaw_gateway, codec=VOICE.codec)
    try:
        await ask(client, robotic, "My dad fell on the kitchen floor and he won't wake up.")
        wording = services.config.site.wording

        async def said() -> list[str]:
            return [t.text for t in await services.store.turns(client.call_id) if t.speaker == "assistant"]

        if (await said())[-1] == wording.confirm_emergency:  # heard as one for sure: no question
            await ask(client, robotic, "Yes.")
        assert (await said())[-1] == wording.emergency
        assert await transferred(services, client) == {"source": "rule:emergency", "target": "the front desk",
                                                       "extension": "200"}
    finally:
        await client.close()


async def test_a_name_only_a_runner_up_hearing_has_is_asked_about_then_put_through(  # type: ignore[no-untyped-def]
        gateway, services) -> None:
    """espeak-ng's en+f3 over a noisy line: tiny.en hears "I need to talk to Mr. Baker" as "... Mr. Makers"
    (no one here: "I don't know" before); its beam search's runner-up "... Mr. Mecker" names Tom Becker,
    so the caller is asked "Did you mean Tom Becker?", and their yes puts them through."""
    voice = VOICES["espeak-f3-noise"]

    async def speak(text: str) -> bytes:
        return await asyncio.to_thread(voice.render, text, services.synthesizer.synthesize)

    client, _ = await connect(gateway, codec=voice.codec)
    try:
        await ask(client, speak, "I need to talk to mr baker")
        said = [t.text for t in await services.store.turns(client.call_id) if t.speaker == "assistant"]
        assert said[-1] == services.config.site.wording.clarify_name.format(names="Tom Becker"), said
        await ask(client, speak, "yes")
        assert await transferred(services, client) == {"source": "rule:clarified", "target": "Tom Becker",
                                                       "extension": "204"}
    finally:
        await client.close()
