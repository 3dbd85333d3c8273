"""The outbox state machine with a real SQLite store and a scripted in-process channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channels.base import (
    DeliveryHandler, InboundHandler, OutgoingMessage, PermanentError, SendResult, TemporaryError,
)
from channels.outbox import Outbox, RateLimit, RetryPolicy, TokenBucket, backoff_delay
from models.records import OutboxRecord
from models.store import NotFoundError, Store

FAST = RetryPolicy(base_s=0.01, cap_s=0.05, max_attempts=4)


class ScriptedChannel:
    """Answers each send with the next scripted outcome (an exception to raise or a result)."""

    def __init__(self, name: str = "test", outcomes: list[object] | None = None, start_failures: int = 0) -> None:
        self.name, self.outcomes, self.start_failures = name, list(outcomes or []), start_failures
        self.sent: list[OutgoingMessage] = []
        self.starts = 0

    async def start(self, on_inbound: InboundHandler, on_delivery: DeliveryHandler) -> None:
        self.starts += 1
        if self.starts <= self.start_failures:
            raise TemporaryError("modem not plugged in")

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.sent.append(message)
        outcome = self.outcomes.pop(0) if self.outcomes else SendResult(provider_ref=f"ref-{message.id}")
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, SendResult)
        return outcome

    async def stop(self) -> None:
        pass


async def no_inbound(*_: object) -> None:
    return None


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "sb.db")
    yield s
    await s.close()


async def wait_state(store: Store, row_id: int, *states: str, timeout: float = 10.0) -> OutboxRecord:
    async def poll() -> OutboxRecord:
        while True:
            row = await store.outbox_get(row_id)
            if row is not None and row.state in states:
                return row
            await asyncio.sleep(0.01)
    return await asyncio.wait_for(poll(), timeout)


async def running(store: Store, channel: ScriptedChannel, **kw: object) -> Outbox:
    outbox = Outbox(store, {channel.name: channel}, retry=FAST, channel_restart_s=0.02, **kw)  # type: ignore[arg-type]
    await outbox.start(no_inbound)
    return outbox


async def test_enqueue_is_durable_before_send_and_idempotent(store: Store) -> None:
    channel = ScriptedChannel()
    outbox = Outbox(store, {"test": channel})
    first = await outbox.enqueue("test", "+15550102030", "hello", idempotency_key="k1")
    again = await outbox.enqueue("test", "+15550102030", "hello (changed)", idempotency_key="k1")
    assert first == again
    [row] = await store.outbox_rows()
    assert (row.state, row.body, row.attempts) == ("queued", "hello", 0)  # written, nothing sent yet
    await outbox.start(no_inbound)
    try:
        row = await wait_state(store, first, "sent")
    finally:
        await outbox.stop()
    assert [m.idempotency_key for m in channel.sent] == ["k1"]
    assert (row.provider_ref, row.attempts) == (f"ref-{first}", 1)
    with pytest.raises(ValueError, match="no channel 'sms'"):
        await outbox.enqueue("sms", "+15550102030", "hi")


async def test_temporary_errors_retry_with_backoff_then_send(store: Store) -> None:
    channel = ScriptedChannel(outcomes=[TemporaryError("modem busy"), TemporaryError("no network")])
    outbox = await running(store, channel)
    try:
        row_id = await outbox.enqueue("test", "+15550102030", "hi")
        row = await wait_state(store, row_id, "sent")
    finally:
        await outbox.stop()
    assert [m.attempts for m in channel.sent] == [0, 1, 2]
    assert row.attempts == 3 and row.last_error is None and row.sent_at is not None


async def test_permanent_error_and_exhausted_retries_fail(store: Store) -> None:
    channel = ScriptedChannel(outcomes=[PermanentError("bad number"), *[TemporaryError("busy")] * FAST.max_attempts])
    outbox = await running(store, channel)
    try:
        bad = await outbox.enqueue("test", "+1", "hi")
        failed = await wait_state(store, bad, "failed")
        busy = await outbox.enqueue("test", "+15550102030", "hi")
        gave_up = await wait_state(store, busy, "failed")
    finally:
        await outbox.stop()
    assert (failed.attempts, failed.last_error) == (1, "PermanentError: bad number")
    assert gave_up.attempts == FAST.max_attempts
    assert gave_up.last_error == f"gave up after {FAST.max_attempts} attempts: TemporaryError: busy"


async def test_a_failed_message_sent_again_by_staff_goes_out_at_once(store: Store) -> None:
    channel = ScriptedChannel(outcomes=[PermanentError("no credit")])
    outbox = await running(store, channel)
    try:
        row_id = await outbox.enqueue("test", "+15550102030", "hi")
        await wait_state(store, row_id, "failed")
        queued = await outbox.send_again(row_id)
        assert (queued.state, queued.attempts) == ("queued", 0)
        # Well within the worker's 30 s idle recheck: send_again woke it.
        row = await wait_state(store, row_id, "sent", timeout=10.0)
        with pytest.raises(NotFoundError):
            await outbox.send_again(row_id)  # only a failed row
    finally:
        await outbox.stop()
    assert row.attempts == 1 and len(channel.sent) == 2


async def test_a_channel_that_cannot_start_keeps_its_messages(store: Store) -> None:
    channel = ScriptedChannel(start_failures=3)
    outbox = Outbox(store, {"test": channel}, retry=FAST, channel_restart_s=0.02)
    row_id = await outbox.enqueue("test", "+15550102030", "hi")
    await outbox.start(no_inbound)
    try:
        row = await wait_state(store, row_id, "sent")
    finally:
        await outbox.stop()
    assert channel.starts == 4 and row.attempts == 1  # waiting for the channel cost no attempts


async def test_restart_resends_in_flight_rows_but_never_sent_ones(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "sb.db")
    outbox = Outbox(store, {"test": ScriptedChannel()})
    in_flight = await outbox.enqueue("test", "+15550102030", "in flight", idempotency_key="a")
    done = await outbox.enqueue("test", "+15550102030", "done", idempotency_key="b")
    # Simulate a crash: one row was claimed and never finished, one was confirmed sent.
    claimed = await store.outbox_claim("test")
    assert claimed is not None and claimed.id == in_flight
    assert (await store.outbox_claim("test")).id == done  # type: ignore[union-attr]
    await store.outbox_sent(done, "ref-b", delivered=False)
    await store.close()

    store = await Store.open(tmp_path / "sb.db")
    channel = ScriptedChannel()
    outbox = await running(store, channel)
    try:
        row = await wait_state(store, in_flight, "sent")
        await asyncio.sleep(0.05)  # give a wrong second send the chance to happen
    finally:
        await outbox.stop()
        await store.close()
    assert [m.idempotency_key for m in channel.sent] == ["a"]
    assert row.attempts == 2


async def test_delivery_reports_move_sent_rows_even_when_they_come_early(store: Store) -> None:
    channel = ScriptedChannel(outcomes=[SendResult("r1"), SendResult("r2"), SendResult("r3", delivered=True)])
    outbox = Outbox(store, {"test": channel}, retry=FAST)
    await outbox.on_delivery("test", "r2", False)  # before its send is even recorded
    ids = [await outbox.enqueue("test", "+15550102030", f"m{i}") for i in range(3)]
    await outbox.start(no_inbound)
    try:
        await wait_state(store, ids[0], "sent")
        await outbox.on_delivery("test", "r1", True)
        states = [(await wait_state(store, i, "delivered", "failed")).state for i in ids]
    finally:
        await outbox.stop()
    assert states == ["delivered", "failed", "delivered"]


async def test_rate_limit_holds_messages_beyond_the_burst(store: Store) -> None:
    channel = ScriptedChannel()
    outbox = await running(store, channel, rate_limits={"test": RateLimit(per_second=0.001, burst=2)})
    try:
        ids = [await outbox.enqueue("test", "+15550102030", f"m{i}") for i in range(4)]
        [await wait_state(store, i, "sent") for i in ids[:2]]
        await asyncio.sleep(0.2)  # the next token is 1000 s away
        waiting = [await store.outbox_get(i) for i in ids[2:]]
    finally:
        await outbox.stop(grace_s=0.1)
    assert len(channel.sent) == 2
    assert [(r.state, r.attempts) for r in waiting if r] == [("queued", 0), ("queued", 0)]
    with pytest.raises(ValueError, match="no such channel"):
        Outbox(store, {"test": channel}, {"sms": RateLimit(per_second=1)})


def test_token_bucket_refills_at_its_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(RateLimit(per_second=2, burst=3), clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(3)] == [0, 0, 0]
    assert bucket.reserve() == pytest.approx(0.5)
    assert bucket.reserve() == pytest.approx(1.0)  # reservations queue up
    now[0] += 10  # refill is capped at the burst size
    assert [bucket.reserve() for _ in range(3)] == [0, 0, 0] and bucket.reserve() > 0


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_s=2, cap_s=60, max_attempts=10)
    assert [backoff_delay(n, policy, rand=lambda: 0.0) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert [backoff_delay(n, policy, rand=lambda: 1.0) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert backoff_delay(20, policy, rand=lambda: 1.0) == 60


async def test_a_reused_modem_reference_reports_only_the_newest_message(store: Store) -> None:
    """GSM message references wrap at 256: a report for "7" is about the latest message sent as 7."""
    channel = ScriptedChannel(outcomes=[SendResult("7"), SendResult("7")])
    outbox = await running(store, channel)
    try:
        old = await outbox.enqueue("test", "+15550102030", "old")
        await wait_state(store, old, "sent")
        new = await outbox.enqueue("test", "+15550102030", "new")
        await wait_state(store, new, "sent")
        await outbox.on_delivery("test", "7", True)
        assert (await wait_state(store, new, "delivered")).state == "delivered"
        assert (await store.outbox_get(old)).state == "sent"
    finally:
        await outbox.stop()


async def test_an_opted_out_recipient_gets_nothing_but_the_stop_confirmation(store: Store) -> None:
    channel = ScriptedChannel()
    outbox = Outbox(store, {"test": channel}, retry=FAST)
    queued_before = await outbox.enqueue("test", "+1 555 010 2030", "your appointment is tomorrow")
    await store.set_opted_out("+15550102030", True)
    after = await outbox.enqueue("test", "+15550102030", "your message was passed on")
    notice = await outbox.enqueue("test", "+15550102030", "you will get no more messages", opt_notice=True)
    other = await outbox.enqueue("test", "+15550109999", "hello")
    await outbox.start(no_inbound)
    try:
        for row_id in (queued_before, after):
            row = await wait_state(store, row_id, "failed")
            assert row.last_error == "recipient opted out (STOP)" and row.attempts == 1
        await wait_state(store, notice, "sent")
        await wait_state(store, other, "sent")
    finally:
        await outbox.stop()
    assert sorted(m.body for m in channel.sent) == ["hello", "you will get no more messages"]
