"""Durable outbox: every outgoing text is a SQLite row before any channel sees it.

One worker per channel claims due rows (queued -> sending, attempts + 1, committed), sends, and
commits the outcome: sent (or delivered when the transport confirms it), queued again with an
exponential, jittered, capped backoff after a TemporaryError, or failed. A delivery report that
arrives later moves sent -> delivered / failed.

Opt-out is enforced here, at the moment of sending, so no caller can bypass it: a row for a contact
who texted STOP fails instead of going out, whenever it was queued. The one exception is the row
enqueued as the confirmation of that STOP (`opt_notice`).

Guarantee: a row whose enqueue returned is sent at least once, even if the process is killed at
any moment; a row committed as sent is never sent again. The only duplicate a crash can cause is
the one message a channel had in flight (rows left in `sending` are re-sent after restart), and
it carries the same idempotency key (email: the same Message-ID), so the recipient can drop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

from channels.base import Channel, InboundHandler, OutgoingMessage, PermanentError
from channels.settings import OutboxSettings, RateLimit, RetryPolicy
from models.records import OutboxRecord
from models.store import Store

log = logging.getLogger(__name__)

_IDLE_RECHECK_S = 30.0  # also picks up rows another process (e.g. a CLI) enqueued
_EARLY_REPORTS_MAX = 1000
OPTED_OUT = "recipient opted out (STOP)"

def backoff_delay(attempts: int, policy: RetryPolicy, rand: Callable[[], float] = random.random) -> float:
    """Wait before the next attempt after `attempts` failed ones: half fixed, half random, so
    messages that failed together do not retry together."""
    delay = min(policy.cap_s, policy.base_s * 2 ** max(0, attempts - 1))
    return delay / 2 + rand() * delay / 2


class TokenBucket:
    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = limit.per_second, limit.burst, clock
        self._tokens = float(limit.burst)
        self._at = clock()

    def reserve(self) -> float:
        """Take one token; return how long to wait before using it (0 if one was available)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1
        return max(0.0, -self._tokens / self.rate)

    def try_take(self) -> float:
        """Take one token if there is one and return 0; else take nothing and return the wait for one."""
        wait = self.reserve()
        if wait:
            self._tokens += 1
        return wait

    async def take(self) -> None:
        wait = self.reserve()
        if wait:
            await asyncio.sleep(wait)


class Outbox:
    def __init__(self, store: Store, channels: Mapping[str, Channel],
                 rate_limits: Mapping[str, RateLimit] | None = None, *,
                 retry: RetryPolicy | None = None, send_timeout_s: float = 60.0,
                 channel_restart_s: float = 30.0) -> None:
        unknown = set(rate_limits or {}) - set(channels)
        if unknown:
            raise ValueError(f"outbox.rate_limits: no such channel {sorted(unknown)} (have {sorted(channels)})")
        self.store, self.channels = store, dict(channels)
        self.retry = retry or RetryPolicy()
        self.send_timeout_s, self.channel_restart_s = send_timeout_s, channel_restart_s
        self._buckets = {name: TokenBucket(limit) for name, limit in (rate_limits or {}).items()}
        self._wake = {name: asyncio.Event() for name in self.channels}
        self._workers: list[asyncio.Task[None]] = []
        self._started: set[str] = set()
        self._stopping = False
        # A delivery report can overtake the commit of `sent`; it is applied right after it.
        self._early_reports: dict[tuple[str, str], bool] = {}
        # Told (row id, sent | delivered | failed) after each such commit, e.g. to send a webhook.
        self.on_settled: Callable[[int, str], Awaitable[None]] | None = None

    @classmethod
    def from_settings(cls, store: Store, channels: Mapping[str, Channel], settings: OutboxSettings) -> Outbox:
        return cls(store, channels, settings.rate_limits, retry=settings.retry,
                   send_timeout_s=settings.send_timeout_s, channel_restart_s=settings.channel_restart_s)

    async def enqueue(self, channel: str, to: str, body: str, subject: str | None = None,
                      html: str | None = None, idempotency_key: str | None = None, opt_notice: bool = False, *,
                      send_at: float | None = None, owner: str | None = None) -> int:
        """Commit the message, then wake the channel's worker. The same key returns the same row.
        `opt_notice`: the confirmation of a STOP, sent although the recipient has opted out.
        `send_at`: not before this time (epoch s); `owner`: who queued it (an HTTP API key's name)."""
        if channel not in self.channels:
            raise ValueError(f"outbox: no channel {channel!r} configured (have {sorted(self.channels)})")
        if not to.strip() or not body.strip():
            raise ValueError(f"outbox: empty recipient or body for channel {channel!r}")
        key = idempotency_key or uuid.uuid4().hex
        row_id, created = await self.store.outbox_enqueue(channel, to.strip(), body, subject, html, key, opt_notice,
                                                          send_at=send_at, owner=owner)
        if created:
            log.info("outbox queued id=%d channel=%s key=%s", row_id, channel, key)
            self._wake[channel].set()
        return row_id

    async def send_again(self, row_id: int) -> OutboxRecord:
        """Send a failed row again (staff asked): queued now, its worker woken. NotFoundError if not failed."""
        record = await self.store.outbox_requeue(row_id)
        log.info("outbox retry by staff id=%d channel=%s", row_id, record.channel)
        if record.channel in self._wake:
            self._wake[record.channel].set()
        return record

    async def start(self, on_inbound: InboundHandler) -> None:
        """Requeue rows a crash left in flight, then start each channel and its worker."""
        recovered = await self.store.outbox_recover(list(self.channels))
        if recovered:
            log.warning("outbox recovered rows=%d state=sending (re-sent, same idempotency key)", recovered)
        self._stopping = False
        # One try here, so listeners are up when start returns; a failed channel is retried by its worker.
        for name in self.channels:
            await self._start_channel(name, on_inbound)
        self._workers = [asyncio.create_task(self._work(name, on_inbound), name=f"outbox-{name}")
                         for name in self.channels]

    async def stop(self, grace_s: float = 5.0) -> None:
        """Let each worker finish the send in hand (bounded), then stop the channels."""
        self._stopping = True
        for event in self._wake.values():
            event.set()
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        for name in list(self._started):
            try:
                await self.channels[name].stop()
            except Exception as exc:  # one broken channel must not keep the others running
                log.error("channel stop failed channel=%s error=%s", name, exc)
        self._started.clear()

    @property
    def channels_down(self) -> list[str]:
        """Channels not started (yet, or since a failed start): their messages wait."""
        return [name for name in self.channels if name not in self._started]

    async def on_delivery(self, channel: str, provider_ref: str, ok: bool) -> None:
        """The DeliveryHandler given to every channel."""
        row_id = await self.store.outbox_delivery(channel, provider_ref, ok)
        if row_id is not None:
            await self._settled(row_id, "delivered" if ok else "failed")
        if row_id is None:
            if len(self._early_reports) >= _EARLY_REPORTS_MAX:
                self._early_reports.pop(next(iter(self._early_reports)))
            self._early_reports[(channel, provider_ref)] = ok
            log.info("delivery report early channel=%s ref=%s ok=%s", channel, provider_ref, ok)
        else:
            log.info("delivery report id=%d channel=%s ok=%s", row_id, channel, ok)

    # ---- worker ----------------------------------------------------------------------------------
    async def _start_channel(self, name: str, on_inbound: InboundHandler) -> bool:
        try:
            await self.channels[name].start(on_inbound, self.on_delivery)
        except Exception as exc:
            # Messages stay queued, their attempts untouched, until the channel comes up.
            log.error("channel start failed channel=%s error=%s retry_s=%.0f", name, exc, self.channel_restart_s)
            return False
        self._started.add(name)
        return True

    async def _work(self, name: str, on_inbound: InboundHandler) -> None:
        channel, wake = self.channels[name], self._wake[name]
        while not self._stopping and name not in self._started:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self.channel_restart_s)
            wake.clear()
            if not self._stopping:
                await self._start_channel(name, on_inbound)
        while not self._stopping:
            wake.clear()  # before looking, so an enqueue after the look still wakes us
            due = await self.store.outbox_next_due(name)
            wait = _IDLE_RECHECK_S if due is None else due - time.time()
            if wait > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(wait, _IDLE_RECHECK_S))
                continue
            if name in self._buckets:
                await self._buckets[name].take()
            record = await self.store.outbox_claim(name)
            if record is not None:
                await self._attempt(channel, record)

    async def _attempt(self, channel: Channel, record: OutboxRecord) -> None:
        message = OutgoingMessage(
            id=record.id, channel=record.channel, to=record.recipient, body=record.body, subject=record.subject,
            html=record.html, idempotency_key=record.idempotency_key, attempts=record.attempts - 1)
        if not record.opt_notice and await self.store.is_opted_out(record.recipient):
            await self.store.outbox_failed(record.id, OPTED_OUT)
            log.info("outbox not sent id=%d channel=%s reason=opted out", record.id, record.channel)
            await self._settled(record.id, "failed")
            return
        try:
            # A channel may need longer than a text (a phone call rings and is spoken): its own bound.
            timeout = getattr(channel, "send_timeout_s", None) or self.send_timeout_s
            result = await asyncio.wait_for(channel.send(message), timeout)
        except PermanentError as exc:
            await self.store.outbox_failed(record.id, _describe(exc))
            log.warning("outbox failed id=%d channel=%s attempts=%d error=%s",
                        record.id, record.channel, record.attempts, _describe(exc))
            await self._settled(record.id, "failed")
        except Exception as exc:  # TemporaryError, a timeout, or a channel bug: the row must not be lost
            error = _describe(exc)
            if record.attempts >= self.retry.max_attempts:
                await self.store.outbox_failed(record.id, f"gave up after {record.attempts} attempts: {error}")
                log.warning("outbox failed id=%d channel=%s attempts=%d error=%s",
                            record.id, record.channel, record.attempts, error)
                await self._settled(record.id, "failed")
                return
            delay = backoff_delay(record.attempts, self.retry)
            await self.store.outbox_retry(record.id, error, time.time() + delay)
            log.info("outbox retry id=%d channel=%s attempts=%d in_s=%.1f error=%s",
                     record.id, record.channel, record.attempts, delay, error)
        else:
            await self.store.outbox_sent(record.id, result.provider_ref, result.delivered)
            log.info("outbox sent id=%d channel=%s attempts=%d ref=%s delivered=%s",
                     record.id, record.channel, record.attempts, result.provider_ref, result.delivered)
            await self._settled(record.id, "delivered" if result.delivered else "sent")
            early = self._early_reports.pop((record.channel, result.provider_ref or ""), None)
            if early is not None and not result.delivered:
                await self.store.outbox_delivery(record.channel, result.provider_ref or "", early)
                await self._settled(record.id, "delivered" if early else "failed")

    async def _settled(self, row_id: int, state: str) -> None:
        if self.on_settled is not None:
            try:
                await self.on_settled(row_id, state)
            except Exception as exc:  # a watcher's failure must not disturb sending
                log.error("outbox watcher failed id=%d state=%s error=%s", row_id, state, exc)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
