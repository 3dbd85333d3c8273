"""Originate outbound calls that speak a message: a notification, or a one-time code read digit by digit.

`OutboundCalls.call()` originates (always Async, with our own ActionID) a channel to the number;
once answered, the dialplan context `outbound_context` (etc/asterisk/extensions.conf) connects it
to AudioSocket with the UUID we passed as `SB_UUID`, at the listener named in `SB_AUDIOSOCKET`.
The daemon hands that connection to a spoken-message session (gateway.sessions.outbound) instead of
a call session: it speaks the text, offers "press 1 to hear it again", then hangs up. The result comes from the
`OriginateResponse` event's Reason code; busy / no answer / failure are retried as configured.
One-time codes never reach a log or the database whole (all but the last 2 digits masked).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from panoramisk.message import Message

from gateway.asterisk.ami import AmiClient, AmiError
from gateway.config import AmiSettings
from llm.site import Site
from models.privacy import masked
from models.records import CallEvent, CallRecord
from models.store import Store

log = logging.getLogger(__name__)

# OriginateResponse Reason: the AST_CONTROL code the dial ended with (main/manager.c).
REASONS = {4: "answered", 5: "busy", 3: "no answer", 1: "no answer", 8: "failed", 0: "failed"}
_NUMBER = re.compile(r"^[0-9A-Za-z+*#_.-]{1,40}$")  # nothing that could break the channel string


def mask_code(code: str) -> str:
    return "*" * max(0, len(code) - 2) + code[-2:]


@dataclass
class OutboundJob:
    uuid: str
    number: str
    text: str  # what is spoken (may contain the code: never logged)
    repeat_wait_s: float  # 0: say it once, no "press 1"
    played: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class OutboundResult:
    number: str
    result: str  # answered | busy | no answer | failed
    attempts: int
    call_ids: list[str]
    repeats: int = 0  # times the callee pressed 1
    error: str | None = None


class OutboundCalls:
    """Originate message calls and hand their AudioSocket connections to the right session."""

    def __init__(self, ami: AmiClient, store: Store, settings: AmiSettings, *, site: Site,
                 audiosocket: str, repeat_wait_s: float = 5.0) -> None:
        self.ami, self.store, self.settings, self.site = ami, store, settings, site
        self.audiosocket = audiosocket  # host:port Asterisk connects to for the spoken part
        self.repeat_wait_s = repeat_wait_s
        self._jobs: dict[str, OutboundJob] = {}
        self._responses: dict[str, asyncio.Future[Message]] = {}
        ami.on_event("OriginateResponse", self._on_response)

    def claim(self, call_id: str) -> OutboundJob | None:
        """The job for an AudioSocket connection carrying one of our UUIDs."""
        return self._jobs.get(call_id)

    def _on_response(self, event: Message) -> None:
        future = self._responses.pop(event.get("ActionID", ""), None)
        if future is not None and not future.done():
            future.set_result(event)

    async def call(self, number: str, text: str = "", *, code: str | None = None) -> OutboundResult:
        """Call `number` and speak `text` and/or `code`; retried on busy / no answer / failure."""
        if not _NUMBER.match(number):
            raise ValueError(f"not a dialable number or extension: {number!r}")
        if code is not None and not code.isdigit():
            raise ValueError("the code must be digits only")
        if not text and code is None:
            raise ValueError("nothing to say: give a text, a code or both")
        wording = self.site.wording
        spoken = " ".join(part for part in (
            text, code and wording.code_message.format(digits=", ".join(code)), wording.press_to_repeat) if part)
        shown = {"number": number, "code": mask_code(code) if code else None, "chars": len(text)}
        s = self.settings
        ids: list[str] = []
        result, error = "failed", None
        for attempt in range(1, s.outbound_retries + 2):
            if attempt > 1:
                await asyncio.sleep(s.outbound_retry_delay_s)
            job = OutboundJob(str(uuid.uuid4()), number, spoken, self.repeat_wait_s)
            ids.append(job.uuid)
            result, error, repeats = await self._attempt(
                job, attempt, shown, s.outbound_channel.format(number=number), s.outbound_context, s.outbound_ring_s)
            if result == "answered":
                return OutboundResult(number, result, attempt, ids, repeats)
        return OutboundResult(number, result, len(ids), ids, error=error)

    async def announce(self, extension: str, text: str, variables: dict[str, str]) -> str:
        """Warm transfer: call a staff phone into warm_context, say `text` once; the result as in `call`."""
        s = self.settings
        job = OutboundJob(str(uuid.uuid4()), extension, text, 0.0)
        result, _, _ = await self._attempt(job, 1, {"number": extension, "code": None, "chars": len(text)},
                                          s.staff_channel.format(extension=extension), s.warm_context,
                                          s.transfer_ring_s, variables)
        return result

    async def _attempt(self, job: OutboundJob, attempt: int, shown: dict, channel: str, context: str, ring_s: int,
                       variables: dict[str, str] | None = None) -> tuple[str, str | None, int]:
        s = self.settings
        await self.store.start_call(CallRecord(call_id=job.uuid, caller=None, dialled=job.number, site=self.site.name,
                                               transport="ami-outbound", started_at=time.time()))
        action_id = f"sb-originate-{job.uuid}"
        response: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._responses[action_id] = response
        self._jobs[job.uuid] = job
        t0 = time.perf_counter()
        result, error, repeats = "failed", None, 0
        try:
            await self.ami.checked({
                "Action": "Originate", "ActionID": action_id, "Channel": channel, "Context": context, "Exten": "s",
                "Priority": "1", "CallerID": s.outbound_caller_id, "Timeout": str(ring_s * 1000), "Async": "true",
                "ChannelId": job.uuid,
                # One Variable header each: values in a single header would be split on commas.
                "Variable": [f"SB_UUID={job.uuid}", f"SB_AUDIOSOCKET={self.audiosocket}",
                             *(f"{k}={v}" for k, v in (variables or {}).items())]})
            event = await asyncio.wait_for(response, ring_s + s.action_timeout_s)
            reason = int(event.get("Reason", "0") or 0)
            result = REASONS.get(reason, "failed")
            if result == "answered":
                repeats = await asyncio.wait_for(job.played, 120)
        except (AmiError, TimeoutError, ValueError) as exc:
            error = str(exc) or "timeout"
        finally:
            self._responses.pop(action_id, None)
            self._jobs.pop(job.uuid, None)
        ms = (time.perf_counter() - t0) * 1000
        log.info("outbound call number=%s code=%s attempt=%d result=%s repeats=%d ms=%.0f error=%s",
                 masked(shown["number"]), shown["code"] or "-", attempt, result, repeats, ms, error or "-")
        await self.store.add_event(CallEvent(job.uuid, "outbound_result", time.time(), {
            **shown, "attempt": attempt, "result": result, "repeats": repeats, "ms": round(ms), "error": error}))
        await self.store.end_call(job.uuid, result, time.time())
        return result, error, repeats
