"""Transfers to staff over AMI (a gateway.sessions.call.Transferer), with outcomes and timings stored.

By the time `transfer` runs the caller has heard "putting you through to X". Then:
- a call inside the `AudioSocket()` app is moved with `Redirect` to the transfer context
  (etc/asterisk/extensions.conf) at the staff extension; the app sees the async goto, closes the
  socket and the channel continues there;
- a call bridged to a `Dial(AudioSocket/...)` channel is moved with `BlindTransfer` on that
  AudioSocket channel, which transfers its bridged peer (the caller); Redirect would only pull one
  leg out of the bridge.
The transfer context rings the extension for `transfer_ring_s` (set on the channel with Setvar
first) and, on BUSY / NOANSWER / CHANUNAVAIL / CONGESTION, sends the caller back to AudioSocket
with SB_TRANSFER_RESULT / SB_TRANSFER_TARGET set: the gateway then offers to take a message.
`DialEnd` for the transferred channel records how the staff phone answered.

Warm transfer (`ami.warm_transfer`): the staff phone is originated into `warm_context` first and
hears a summary (who calls, for whom, their last words) on its own AudioSocket leg; that context
then `Bridge()`s the staff phone with the caller, which takes the caller out of our AudioSocket
app. If the staff phone does not answer, the caller is sent through `return_context` with the same
SB_TRANSFER_RESULT / SB_TRANSFER_TARGET variables as the cold path, and is offered a message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from panoramisk.message import Message

from gateway.asterisk.ami import AmiClient, AmiError
from gateway.asterisk.correlation import CallDirectory, CallInfo
from gateway.asterisk.originate import OutboundCalls
from gateway.config import AmiSettings
from llm.site import Site, StaffMember
from models.records import CallEvent
from models.store import Store

log = logging.getLogger(__name__)

# DIALSTATUS values for which the transfer context returns the caller to the assistant.
RETURN_STATUSES = ("BUSY", "NOANSWER", "CHANUNAVAIL", "CONGESTION")
_END_MARK_TIMEOUT_S = 1.0  # the caller has heard goodbye: do not keep them waiting for AMI
_WARM_STATUS = {"busy": "BUSY", "no answer": "NOANSWER"}  # outbound result -> DIALSTATUS-like value


class CallLeg(Protocol):
    """Our side of a call, as PBX control sees it (an AudioSocket connection is one): control never
    touches media, it only ends our leg once Asterisk has the call."""

    call_id: str

    @property
    def closed(self) -> bool: ...

    async def hangup(self, reason: str = ...) -> None: ...


class AmiTransferer:
    def __init__(self, ami: AmiClient, calls: CallDirectory, store: Store, settings: AmiSettings, *,
                 site: Site | None = None, outbound: OutboundCalls | None = None) -> None:
        self.ami, self.calls, self.store, self.settings = ami, calls, store, settings
        self.site, self.outbound = site, outbound  # both needed for warm transfers
        self._pending: dict[str, tuple[str, str, float]] = {}  # Uniqueid -> (call_id, extension, started)
        ami.on_event("DialEnd", self._on_dial_end)
        # A staff channel that cannot be created (CHANUNAVAIL) sends no DialEnd; the transfer context's
        # Set(SB_TRANSFER_RESULT=${DIALSTATUS}) still tells the outcome.
        ami.on_event("VarSet", self._on_result_set)

    async def transfer(self, call: CallLeg, member: StaffMember) -> bool:
        info = self.calls.get(call.call_id)
        if info is None:
            log.warning("transfer impossible call=%s reason=no AMI channel for this call (see AS_UUID in the README)",
                        call.call_id)
            await self._event(call.call_id, "transfer_error", {"extension": member.extension,
                                                               "error": "call not correlated"})
            return False
        s, channel = self.settings, info.channel
        bridged = channel.audiosocket_channel or (channel.channel if channel.channel.startswith("AudioSocket/")
                                                   else None)
        if s.warm_transfer and bridged is None and self.outbound is not None and self.site is not None:
            return await self._warm(call, info, member)
        t0 = time.perf_counter()
        try:
            if not channel.channel.startswith("AudioSocket/"):
                await self.ami.checked({"Action": "Setvar", "Channel": channel.channel,
                                        "Variable": "SB_TRANSFER_RING", "Value": str(s.transfer_ring_s)})
            if bridged is not None:
                action = {"Action": "BlindTransfer", "Channel": bridged, "Context": s.transfer_context,
                          "Exten": member.extension}
            else:
                action = {"Action": "Redirect", "Channel": channel.channel, "Context": s.transfer_context,
                          "Exten": member.extension, "Priority": "1"}
            await self.ami.checked(action)
        except (AmiError, TimeoutError) as exc:
            log.warning("transfer failed call=%s channel=%s extension=%s error=%s", call.call_id, channel.channel,
                        member.extension, exc or "timeout")
            await self._event(call.call_id, "transfer_error", {"extension": member.extension,
                                                               "error": str(exc) or "timeout"})
            return False
        ms = (time.perf_counter() - t0) * 1000
        self._pending[channel.uniqueid] = (call.call_id, member.extension, time.monotonic())
        await self._event(call.call_id, "ami_transfer", {"action": action["Action"], "channel": channel.channel,
                                                         "extension": member.extension, "ms": round(ms)})
        log.info("transfer sent call=%s action=%s channel=%s extension=%s ms=%.0f", call.call_id, action["Action"],
                 channel.channel, member.extension, ms)
        await call.hangup("transferred")  # the app has already left via the async goto; this only ends our side
        return True

    async def end_call(self, call: CallLeg) -> None:
        """A normal end (goodbye): SWITCHBOARD_END=ended tells the dialplan after AudioSocket() to hang up
        rather than ring a person. Without AMI the mark is missing and a person takes the call."""
        info = self.calls.get(call.call_id)
        if info is not None and self.ami.connected:
            try:
                await self.ami.checked({"Action": "Setvar", "Channel": info.channel.channel,
                                        "Variable": "SWITCHBOARD_END", "Value": "ended"}, timeout=_END_MARK_TIMEOUT_S)
            except (AmiError, TimeoutError) as exc:
                log.warning("end not marked call=%s error=%s", call.call_id, exc or "timeout")
        await call.hangup()

    async def _warm(self, call: CallLeg, info: CallInfo, member: StaffMember) -> bool:
        assert self.outbound is not None and self.site is not None
        s, channel = self.settings, info.channel
        t0 = time.perf_counter()
        turns = await self.store.turns(call.call_id)
        reason = next((t.text for t in reversed(turns) if t.speaker == "caller"), "nothing yet").rstrip(".?! ")
        summary = self.site.wording.warm_summary.format(
            caller=channel.caller_name or channel.caller or "an unknown caller", name=member.name, reason=reason)
        result = await self.outbound.announce(member.extension, summary, {"SB_CALLER": channel.channel})
        bridged = result == "answered" and await self._left(call, s.action_timeout_s)
        data = {"extension": member.extension, "result": result, "bridged": bridged,
                "ms": round((time.perf_counter() - t0) * 1000)}
        log.info("warm transfer call=%s extension=%s result=%s bridged=%s", call.call_id, member.extension, result,
                 bridged)
        if not bridged:  # staff did not take it (or hung up during the summary): back to the assistant
            status = _WARM_STATUS.get(result, "CHANUNAVAIL") if result != "answered" else "NOANSWER"
            try:
                for name, value in (("SB_TRANSFER_TARGET", member.extension), ("SB_TRANSFER_RESULT", status)):
                    await self.ami.checked({"Action": "Setvar", "Channel": channel.channel, "Variable": name,
                                            "Value": value})
                await self.ami.checked({"Action": "Redirect", "Channel": channel.channel,
                                        "Context": s.return_context, "Exten": "s", "Priority": "1"})
            except (AmiError, TimeoutError) as exc:
                await self._event(call.call_id, "transfer_error", {**data, "error": str(exc) or "timeout"})
                return False
            data["returned"] = status
        await self._event(call.call_id, "warm_transfer", data)
        await call.hangup("transferred")
        return True

    @staticmethod
    async def _left(call: CallLeg, timeout: float) -> bool:
        """True once Asterisk closed the caller's socket (Bridge() took the channel), within `timeout`."""
        deadline = time.monotonic() + timeout
        while not call.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return call.closed

    async def _on_dial_end(self, event: Message) -> None:
        await self._outcome(event.get("Uniqueid", ""), event.get("DialStatus", ""))

    async def _on_result_set(self, event: Message) -> None:
        if event.get("Variable") == "SB_TRANSFER_RESULT":
            await self._outcome(event.get("Uniqueid", ""), event.get("Value", ""))

    async def _outcome(self, uniqueid: str, status: str) -> None:
        pending = self._pending.pop(uniqueid, None)
        if pending is None:
            return
        call_id, extension, started = pending
        log.info("transfer outcome call=%s extension=%s status=%s", call_id, extension, status)
        await self._event(call_id, "transfer_outcome", {"extension": extension, "dial_status": status,
                                                        "after_ms": round((time.monotonic() - started) * 1000),
                                                        "returned": status in RETURN_STATUSES})

    async def _event(self, call_id: str, kind: str, data: dict) -> None:
        await self.store.add_event(CallEvent(call_id, kind, time.time(), data))
