"""Bearer keys, scopes, per-key rate limits and the audit trail of the HTTP API.

Each request looks its key up in the store (by SHA-256): a key revoked by `switchboard keys revoke`,
another process, is refused from the next request on, with no cache to invalidate (a cache would
still have to ask the file whether another process changed it, on every request). The lookup is one
indexed read on the store's reader connection, so it does not wait behind the writer's fsyncs.
Audit rows are written in batches (one commit per second at most, and at stop), so an accepted
request costs no extra fsync; a kill -9 loses at most the last second of audit rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from channels.outbox import TokenBucket
from channels.settings import RateLimit
from gateway.http.keys import hash_key
from models.records import ApiKey
from models.store import Store

log = logging.getLogger(__name__)

AUDIT_FLUSH_S = 1.0
_AUDIT_MAX_BUFFER = 10_000  # a store that cannot keep up must not grow memory without bound


class Unauthorized(Exception):
    """401: no key, an unknown one, or a revoked or expired one."""


class RateLimited(Exception):
    def __init__(self, retry_after_s: float, whose: str = "this key's rate") -> None:
        super().__init__(f"over {whose}; retry in {retry_after_s:.2f} s")
        self.retry_after = max(1, math.ceil(retry_after_s))


class Authenticator:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._buckets: dict[str, tuple[float, TokenBucket]] = {}
        self._audit: list[tuple[str, str, str, int, float]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def authenticate(self, authorization: str | None) -> ApiKey:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send Authorization: Bearer <key>")
        key = await self.store.api_key_by_hash(hash_key(token.strip()))
        if key is None or not key.usable(time.time()):
            raise Unauthorized("unknown, revoked or expired key")
        return key

    def take(self, key: ApiKey) -> None:
        """One token of the key's bucket; raises RateLimited."""
        held = self._buckets.get(key.name)
        if held is None or held[0] != key.created_at:  # a key re-created under the same name starts afresh
            held = self._buckets[key.name] = (key.created_at, TokenBucket(RateLimit(per_second=key.rate_per_s,
                                                                                    burst=key.burst)))
        wait = held[1].try_take()
        if wait:
            raise RateLimited(wait)

    def audit(self, key_name: str, method: str, route: str, status: int) -> None:
        if len(self._audit) < _AUDIT_MAX_BUFFER:
            self._audit.append((key_name, method, route, status, time.time()))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(AUDIT_FLUSH_S)
        await self.flush()

    async def flush(self) -> None:
        rows, self._audit = self._audit, []
        if rows:
            try:
                await self.store.api_audit_write(rows)
            except Exception as exc:  # the audit must never fail a request; say it is missing
                log.error("api audit not written rows=%d error=%s", len(rows), exc)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
