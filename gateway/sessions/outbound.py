"""The spoken part of an outbound call (gateway.asterisk.originate placed it): say the text, repeat on '1'."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.asterisk.originate import OutboundJob
from gateway.media.audiosocket import AudioSocketCall, Dtmf, Hangup
from gateway.media.pacer import MediaClock, OutputStream
from gateway.services import Services

log = logging.getLogger(__name__)

MAX_REPEATS = 3


class OutboundMessageSession:
    """The spoken part of an outbound call: say the text, repeat on '1', then hang up."""

    def __init__(self, call: AudioSocketCall, services: Services, clock: MediaClock, job: OutboundJob) -> None:
        self.call, self.services, self.clock, self.job = call, services, clock, job
        self.out = OutputStream(call.send_audio, name=call.call_id)
        self._digits: asyncio.Queue[str] = asyncio.Queue()
        self._gone = asyncio.Event()

    async def run(self) -> None:
        self.clock.register(self.out)
        reader = asyncio.create_task(self._read())
        repeats = 0
        try:
            while not self._gone.is_set():
                await self._speak()
                if not self.job.repeat_wait_s or not await self._pressed_one() or repeats >= MAX_REPEATS:
                    break
                repeats += 1
            await self.call.hangup()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.clock.unregister(self.out)
            if not self.job.played.done():
                self.job.played.set_result(repeats)
            log.info("outbound message done call=%s repeats=%d", self.call.call_id, repeats)

    async def _read(self) -> None:
        async for event in self.call.events():
            if isinstance(event, Dtmf):
                self._digits.put_nowait(event.digit)
            elif isinstance(event, Hangup):
                break
        self._gone.set()

    async def _speak(self) -> None:
        async for pcm in self.services.synthesizer.stream(self.job.text):
            self.out.enqueue(pcm)
        gone = asyncio.ensure_future(self._gone.wait())
        await asyncio.wait([self.out.mark(), gone], return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()

    async def _pressed_one(self) -> bool:
        """True if '1' was pressed during the message or within repeat_wait_s after it."""
        deadline = time.monotonic() + self.job.repeat_wait_s
        while not self._gone.is_set():
            try:
                digit = await asyncio.wait_for(self._digits.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
            if digit == "1":
                return True
        return False
