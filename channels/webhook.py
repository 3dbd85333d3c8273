"""The `webhook` outbox channel: an event POSTed as JSON to an integrator's URL, signed.

The signature is HMAC-SHA256 under the receiver's secret over "<timestamp>.<body>", sent as
`Switchboard-Signature: v1=<hex>` with `Switchboard-Timestamp: <unix seconds>`; the receiver
recomputes it and refuses old timestamps (replays). Each attempt is signed afresh. Through the
outbox, an event survives a restart and a receiver that is down gets it later, with backoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time

import aiohttp

from channels.base import DeliveryHandler, InboundHandler, OutgoingMessage, PermanentError, SendResult, TemporaryError
from channels.settings import WebhookSettings


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "v1=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookChannel:
    name = "webhook"

    def __init__(self, hooks: tuple[WebhookSettings, ...]) -> None:
        self._hooks = {hook.url: hook for hook in hooks}
        self._http: aiohttp.ClientSession | None = None

    async def start(self, on_inbound: InboundHandler, on_delivery: DeliveryHandler) -> None:
        self._http = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def send(self, message: OutgoingMessage) -> SendResult:
        hook = self._hooks.get(message.to)
        if hook is None or self._http is None:  # the URL left the config since the event was queued
            raise PermanentError("no such webhook configured")
        body, timestamp = message.body.encode(), str(int(time.time()))
        headers = {"Content-Type": "application/json", "Switchboard-Timestamp": timestamp,
                   "Switchboard-Signature": signature(hook.secret(), timestamp, body),
                   "Idempotency-Key": message.idempotency_key}
        try:
            async with self._http.post(hook.url, data=body, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=hook.timeout_s)) as resp:
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise TemporaryError(f"{type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return SendResult(delivered=True)
        if status in (408, 425, 429) or status >= 500:
            raise TemporaryError(f"HTTP {status}")
        raise PermanentError(f"HTTP {status}")
