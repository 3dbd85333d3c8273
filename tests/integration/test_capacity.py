"""Past AI capacity a caller hears the busy wording and reaches a person (without AMI: the leg ends so the
dialplan rings one), never silence; the daemon goes on serving the others. Real models, real TCP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

import pytest

from gateway.daemon.app import Gateway
from gateway.media.caller import CallerClient
from llm.rules import normalize

pytestmark = pytest.mark.models


@contextlib.asynccontextmanager
async def gateway_with(services, speculate: bool = True, **capacity) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    """A gateway on the shared models whose `capacity:` config has `capacity` set; without `speculate`,
    STT starts only when the turn has ended (a speculation would often be done before then)."""
    config = services.config
    vad = config.vad if speculate else dataclasses.replace(config.vad, tentative_silence_ms=config.vad.end_silence_ms)
    config = dataclasses.replace(config, vad=vad, capacity=config.capacity.model_copy(update=capacity))
    gateway = Gateway(dataclasses.replace(services, config=config), host="127.0.0.1", port=0)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop(grace_s=1.0)


async def heard(services, pcm: bytes) -> str:  # type: ignore[no-untyped-def]
    text = (await services.transcriber.transcribe_async(pcm + bytes(8000), prompt=services.config.site.speech_prompt)).text
    return normalize(text)


async def ended(services, call_id: str) -> tuple[str, list]:  # type: ignore[no-untyped-def]
    """The call's stored end reason (the session records it just after hanging up) and its events."""
    for _ in range(100):
        call = await services.store.call(call_id)
        if call and call["end_reason"]:
            return call["end_reason"], await services.store.events(call_id)
        await asyncio.sleep(0.1)
    raise AssertionError(f"call {call_id} has no end reason")


async def assert_handed_off(services, client: CallerClient, after: float, stage: str) -> None:  # type: ignore[no-untyped-def]
    reply = await client.wait_reply(after, timeout_s=15)
    assert "busy" in await heard(services, reply.pcm)
    await asyncio.wait_for(client.hung_up.wait(), 10)  # the leg ends: the dialplan goes on to a person
    reason, events = await ended(services, client.call_id)
    assert reason == "transferred"
    kinds = {(e.kind, e.data.get("source"), e.data.get("stage")) for e in events}
    assert ("over_capacity", None, stage) in kinds
    assert ("transfer", "rule:busy", None) in kinds


async def test_stt_stage_timeout_hands_the_caller_to_a_person(services, speak) -> None:  # type: ignore[no-untyped-def]
    async with gateway_with(services, speculate=False, stt_timeout_s=0.001) as gateway:
        client = await CallerClient("127.0.0.1", gateway.port).connect()
        try:
            await client.wait_reply(time.monotonic() - 1)  # the greeting needs no AI turn
            sent = await client.say(await speak("How much does teeth whitening cost?"))
            await assert_handed_off(services, client, sent, "stt")
            turns = await services.store.turns(client.call_id)
            assert [t.text for t in turns if t.speaker == "caller"] == []  # no transcript was waited for
        finally:
            await client.close()


async def test_every_ai_turn_slot_taken_hands_off_then_the_next_caller_is_served(services, speak) -> None:  # type: ignore[no-untyped-def]
    async with gateway_with(services, max_turns=1) as gateway:
        with gateway.services.ai_turn():  # another caller's turn holds the only slot
            busy = await CallerClient("127.0.0.1", gateway.port).connect()
            try:
                await assert_handed_off(services, busy, time.monotonic() - 1, "admission")
            finally:
                await busy.close()
        client = await CallerClient("127.0.0.1", gateway.port).connect()
        try:
            greeting = await client.wait_reply(time.monotonic() - 1)
            assert "bright smile" in await heard(services, greeting.pcm)
            sent = await client.say(await speak("How much does teeth whitening cost?"))
            answer = await heard(services, (await client.wait_reply(sent)).pcm)
            assert "350" in answer or "three hundred" in answer
            assert not client.hung_up.is_set()
        finally:
            await client.close()
