"""Which Asterisk channel an AudioSocket call is, learnt from AMI events.

The dialplan sets `AS_UUID=${UUID()}` on the caller's channel before `AudioSocket()` (or before
`Dial(AudioSocket/...)`, whose own channel then also gets `AUDIOSOCKET_UUID`). Each set variable is
a `VarSet` event carrying the channel snapshot: Channel, Uniqueid, CallerIDNum and Exten. Other
variables we care about (the transfer context's SB_TRANSFER_RESULT / SB_TRANSFER_TARGET) arrive
the same way and are kept per channel, so a caller who comes back from a failed transfer is
recognised with the outcome. `Hangup` events end the matching calls even if their socket lingers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from panoramisk.message import Message

from gateway.asterisk.ami import AmiClient
from models.privacy import masked

log = logging.getLogger(__name__)

UUID_VARS = ("AS_UUID", "AUDIOSOCKET_UUID")
KEPT_VARS = ("SB_TRANSFER_RESULT", "SB_TRANSFER_TARGET", "SB_OUTBOUND")


def _number(value: str) -> str | None:
    return None if not value or value in ("<unknown>", "<null>") else value


@dataclass
class ChannelInfo:
    """One Asterisk channel as far as the gateway cares; shared by every UUID it had."""

    channel: str
    uniqueid: str
    caller: str | None
    caller_name: str | None
    dialled: str | None  # the extension first seen: the number the caller dialled
    variables: dict[str, str] = field(default_factory=dict)
    audiosocket_channel: str | None = None  # Dial(AudioSocket/...) mode: the bridged media channel
    seen_at: float = field(default_factory=time.monotonic)
    hung_up_at: float | None = None


@dataclass
class CallInfo:
    """What a call UUID maps to, with the channel's variables as they were when the UUID was set."""

    uuid: str
    channel: ChannelInfo
    variables: dict[str, str]

    @property
    def transfer_result(self) -> str | None:
        return self.variables.get("SB_TRANSFER_RESULT")

    @property
    def transfer_target(self) -> str | None:
        return self.variables.get("SB_TRANSFER_TARGET")


class CallDirectory:
    """UUID -> channel map fed by AMI events; `lookup` waits briefly for a racing event."""

    def __init__(self, ami: AmiClient, *, ttl_s: float = 4 * 3600, hung_up_ttl_s: float = 60.0) -> None:
        self.ami = ami
        self.ttl_s, self.hung_up_ttl_s = ttl_s, hung_up_ttl_s
        self._channels: dict[str, ChannelInfo] = {}  # by Uniqueid
        self._calls: dict[str, CallInfo] = {}  # by UUID
        self._hangup_watchers: dict[str, Callable[[], None]] = {}
        self._changed = asyncio.Event()
        ami.on_event("VarSet", self._on_varset)
        ami.on_event("Hangup", self._on_hangup)

    # No __len__ on purpose: an empty directory would be falsy, and `if calls` once silently
    # disabled every AMI transfer.

    def _on_varset(self, event: Message) -> None:
        name = event.get("Variable", "")
        if name not in UUID_VARS and name not in KEPT_VARS:
            return
        uniqueid = event.get("Uniqueid", "")
        info = self._channels.get(uniqueid)
        if info is None:
            info = self._channels[uniqueid] = ChannelInfo(
                channel=event.get("Channel", ""), uniqueid=uniqueid, caller=_number(event.get("CallerIDNum", "")),
                caller_name=_number(event.get("CallerIDName", "")), dialled=_number(event.get("Exten", "")))
        value = event.get("Value", "")
        if name in KEPT_VARS:
            info.variables[name] = value
            return
        existing = self._calls.get(value)
        if name == "AUDIOSOCKET_UUID" and existing is not None:
            # The AudioSocket channel of Dial(AudioSocket/...): transfers act on its bridged peer.
            existing.channel.audiosocket_channel = info.channel
            return
        self._calls[value] = CallInfo(value, info, dict(info.variables))
        log.info("call correlated uuid=%s channel=%s caller=%s dialled=%s", value, info.channel,
                 masked(info.caller), info.dialled or "-")
        self._changed.set()
        self._changed = asyncio.Event()

    def _on_hangup(self, event: Message) -> None:
        info = self._channels.get(event.get("Uniqueid", ""))
        if info is None:
            return
        info.hung_up_at = time.monotonic()
        for uuid, call in list(self._calls.items()):
            if call.channel is info and uuid in self._hangup_watchers:
                log.info("hangup from ami uuid=%s channel=%s cause=%s", uuid, info.channel, event.get("Cause-txt", ""))
                self._hangup_watchers.pop(uuid)()
        self.reap()

    async def lookup(self, uuid: str, wait_s: float) -> CallInfo | None:
        """The call's channel, waiting up to `wait_s` for its VarSet to arrive."""
        deadline = time.monotonic() + wait_s
        while uuid not in self._calls:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return None
        return self._calls[uuid]

    def get(self, uuid: str) -> CallInfo | None:
        return self._calls.get(uuid)

    def watch_hangup(self, uuid: str, callback: Callable[[], None]) -> None:
        """Call `callback` once when AMI reports the channel of `uuid` hung up."""
        self._hangup_watchers[uuid] = callback

    def forget(self, uuid: str) -> None:
        self._hangup_watchers.pop(uuid, None)

    def reap(self) -> None:
        """Drop channels hung up a while ago and entries older than the TTL (missed Hangup events)."""
        now = time.monotonic()
        stale = {uid for uid, info in self._channels.items()
                 if (info.hung_up_at is not None and now - info.hung_up_at > self.hung_up_ttl_s)
                 or now - info.seen_at > self.ttl_s}
        for uid in stale:
            del self._channels[uid]
        for uuid, call in list(self._calls.items()):
            if call.channel.uniqueid in stale:
                del self._calls[uuid]
                self._hangup_watchers.pop(uuid, None)
