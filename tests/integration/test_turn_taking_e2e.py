"""End of turn over real TCP AudioSocket with the real models: a caller pausing mid-sentence is not answered
into the pause (`vad.end_of_turn: adaptive`), while a complete short question still is.

The endpointer counts frames, not seconds: the caller stops sending (as Asterisk does in DTX) while the
words said before the pause are being transcribed, so the pause is the same 700 ms of audio however
slow the machine, and its words have been read before the pause is over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import pytest

from gateway.daemon.app import Gateway
from gateway.media.caller import CallerClient
from llm.rules import normalize
from tests.support.gateway import session_of

pytestmark = pytest.mark.models

BEFORE, AFTER = "I wanted to ask about", "your prices for a filling."
PAUSE_MS, SEEN_MS = 700, 300  # the pause; how much of it the gateway has when the words before it are read


def silence(ms: int) -> bytes:
    return bytes(ms * 16)


@pytest.fixture
async def gateway_with(services) -> AsyncIterator:  # type: ignore[no-untyped-def]
    """Start a gateway whose `vad.end_of_turn` is the one asked for."""
    started: list[Gateway] = []

    async def start(end_of_turn: str) -> Gateway:
        config = services.config
        vad = dataclasses.replace(config.vad, end_of_turn=end_of_turn)
        gateway = Gateway(dataclasses.replace(services, config=dataclasses.replace(config, vad=vad)),
                          host="127.0.0.1", port=0)
        await gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.stop(grace_s=1.0)


async def words_before_pause_read(session) -> None:  # type: ignore[no-untyped-def]
    """Wait (bounded) until the speculative transcript of the words before the pause is done, and
    the session has acted on it (its done-callbacks run before this coroutine resumes)."""
    deadline = time.monotonic() + 60
    while session._speculation is None or not session._speculation.task.done():
        assert time.monotonic() < deadline, "the words before the pause were never transcribed"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0)


async def pause_mid_sentence(gateway: Gateway, services, speak) -> tuple[CallerClient, list]:  # type: ignore[no-untyped-def]
    """Say BEFORE, pause PAUSE_MS, say AFTER; the caller turns stored once the gateway has answered."""
    client = await CallerClient("127.0.0.1", gateway.port).connect()
    await client.wait_reply(time.monotonic() - 1)  # the greeting
    session = await session_of(gateway, client.call_id)
    before, after = await speak(BEFORE), await speak(AFTER)
    await client.say(before + silence(SEEN_MS))
    client.send_nothing(60)
    await words_before_pause_read(session)
    client.send_again()
    sent = await client.say(silence(PAUSE_MS - SEEN_MS) + after)
    await client.wait_reply(sent, timeout_s=60)
    turns = await services.store.turns(client.call_id)
    return client, [t for t in turns if t.speaker == "caller"]


async def test_adaptive_waits_through_a_pause_mid_sentence(gateway_with, services, speak) -> None:  # type: ignore[no-untyped-def]
    gateway = await gateway_with("adaptive")
    client, callers = await pause_mid_sentence(gateway, services, speak)
    try:
        assert len(callers) == 1, [t.text for t in callers]
        words = normalize(callers[0].text)
        assert "ask" in words and "filling" in words, words
        assistant = [t for t in await services.store.turns(client.call_id) if t.speaker == "assistant"]
        assert len(assistant) == 2 and not assistant[-1].interrupted  # the greeting, then one answer
    finally:
        await client.close()


async def test_fixed_silence_cuts_the_same_pause(gateway_with, services, speak) -> None:  # type: ignore[no-untyped-def]
    """The control: the same call with the old fixed 500 ms ends the turn in the pause."""
    gateway = await gateway_with("fixed")
    client, callers = await pause_mid_sentence(gateway, services, speak)
    try:
        first = normalize(callers[0].text)
        assert "ask" in first and "filling" not in first, first
    finally:
        await client.close()


async def test_adaptive_answers_a_complete_question(gateway_with, services, speak) -> None:  # type: ignore[no-untyped-def]
    gateway = await gateway_with("adaptive")
    client = await CallerClient("127.0.0.1", gateway.port).connect()
    try:
        await client.wait_reply(time.monotonic() - 1)
        sent = await client.say(await speak("What's your address?"))
        await client.wait_reply(sent, timeout_s=60)
        turns = await services.store.turns(client.call_id)
        caller, answer = [t for t in turns if t.speaker == "caller"][-1], turns[-1]
        assert "address" in normalize(caller.text)
        assert "harbour street" in answer.text.lower()
        assert caller.timings_ms.get("stt_speculative") == 1.0  # the transcript that ended the turn, reused
    finally:
        await client.close()
