"""Limits of the keyless (public) chat, per visitor address: open connections and messages a minute.

An address is the peer of the TCP connection: behind a reverse proxy every visitor has the proxy's
address, so there the proxy must limit per visitor (the README says so).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from channels.outbox import TokenBucket
from channels.settings import RateLimit
from gateway.config import PublicChatSettings
from gateway.http.auth import RateLimited

_FORGET_AFTER_S = 120.0  # an address silent this long, with no chat open, starts afresh
_PRUNE_ABOVE = 4096  # addresses remembered before the silent ones are forgotten


class Visitors:
    def __init__(self, settings: PublicChatSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self._clock = settings, clock
        self._open: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, TokenBucket]] = {}  # address -> (last message, its bucket)

    def admit(self, address: str) -> bool:
        """One more chat from `address`, if under max_connections_per_ip; `leave` when it ends."""
        if self._open.get(address, 0) >= self.settings.max_connections_per_ip:
            return False
        self._open[address] = self._open.get(address, 0) + 1
        return True

    def leave(self, address: str) -> None:
        self._open[address] -= 1
        if not self._open[address]:
            del self._open[address]

    def take(self, address: str) -> None:
        """One message from `address`; raises RateLimited over messages_per_minute_per_ip."""
        now = self._clock()
        if len(self._buckets) > _PRUNE_ABOVE:
            self._buckets = {a: held for a, held in self._buckets.items()
                             if a in self._open or now - held[0] < _FORGET_AFTER_S}
        per_minute = self.settings.messages_per_minute_per_ip
        bucket = self._buckets.get(address, (now, None))[1] or TokenBucket(
            RateLimit(per_second=per_minute / 60, burst=per_minute), self._clock)
        self._buckets[address] = (now, bucket)
        wait = bucket.try_take()
        if wait:
            raise RateLimited(wait, "this address's messages a minute")
