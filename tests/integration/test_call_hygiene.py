"""Hundreds of calls ending at random points leave nothing behind: tasks, threads, descriptors, callbacks."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time

import pytest

from gateway.media.caller import CallerClient

pytestmark = pytest.mark.models

CALLS, AT_ONCE = 500, 25


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def own_threads() -> set[str]:
    """Threads other than asyncio's default executor (to_thread), which grows on its own up to a bound."""
    return {t.name for t in threading.enumerate() if not t.name.startswith("asyncio_")}


async def one_call(port: int, rng: random.Random, speech: bytes) -> None:
    client = await CallerClient("127.0.0.1", port).connect()
    try:
        if rng.random() < 0.4:
            client.say(speech[: rng.randrange(3200, len(speech))])  # a question, maybe cut off
        if rng.random() < 0.2:
            client.dtmf(rng.choice("05#"))
        await asyncio.sleep(rng.uniform(0, 1.5))  # hang up anywhere: greeting, STT, reply, transfer
    finally:
        if rng.random() < 0.3:
            client._writer.transport.abort()  # a reset instead of a clean close
        await client.close()


async def settle(gateway, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while gateway.sessions or gateway.server.active_calls:
        assert time.monotonic() < deadline, f"calls never ended: {len(gateway.sessions)}"
        await asyncio.sleep(0.1)


async def test_random_hangups_leak_no_tasks_threads_or_descriptors(gateway, speak) -> None:  # type: ignore[no-untyped-def]
    speech = await speak("Hi, what time do you open on Saturday, and do you take Delta Dental?")
    rng = random.Random(7)
    client = await CallerClient("127.0.0.1", gateway.port).connect()  # worker pools start their threads
    await client.wait_reply(await client.say(speech))
    await client.close()
    await settle(gateway)
    await asyncio.sleep(1.5)
    tasks, threads, fds = set(asyncio.all_tasks()), own_threads(), open_fds()

    for start in range(0, CALLS, AT_ONCE):
        await asyncio.gather(*(one_call(gateway.port, rng, speech) for _ in range(start, start + AT_ONCE)))
    await settle(gateway)
    await asyncio.sleep(1.5)  # sockets finish closing

    leaked = {t for t in asyncio.all_tasks() - tasks if t is not asyncio.current_task() and not t.done()}
    assert not leaked, [t.get_coro() for t in list(leaked)[:5]]
    assert own_threads() <= threads
    assert open_fds() <= fds
    assert gateway.clock.streams == 0


async def test_a_reply_leaves_no_callback_in_the_media_clock(gateway, speak) -> None:  # type: ignore[no-untyped-def]
    client = await CallerClient("127.0.0.1", gateway.port).connect()
    try:
        for question in ("What is your address?", "Do you take Delta Dental?", "What is your address?"):
            sent = await client.say(await speak(question))
            await client.wait_reply(sent)
        (session,) = [s for s in gateway.sessions if s.call.call_id == client.call_id]
        assert session.out.first_frame_callbacks == 0
    finally:
        await client.close()
