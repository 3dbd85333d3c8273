"""Prometheus metrics of one daemon, in its own registry (several daemons in one test process must not share one)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from models.records import OUTBOX_STATES
from models.store import Store

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, *, calls_active: Callable[[], int], ai_turns: Callable[[], int],
                 ami_connected: Callable[[], bool] | None) -> None:
        disable_created_metrics()  # no `_created` twin of every counter: nothing here reads it
        self.registry = r = CollectorRegistry(auto_describe=True)
        Gauge("switchboard_calls_active", "Calls being served now", registry=r).set_function(calls_active)
        self.calls_ended = Counter("switchboard_calls_ended", "Calls ended, by outcome", ["outcome"], registry=r)
        Gauge("switchboard_ai_turns_in_use", "Caller turns holding an AI admission slot (capacity.max_turns)",
              registry=r).set_function(ai_turns)
        ami = Gauge("switchboard_ami_connected", "1 while the AMI control plane is connected (absent: AMI off)",
                    registry=r) if ami_connected else None
        if ami is not None and ami_connected is not None:
            ami.set_function(lambda: float(ami_connected()))
        self.http_requests = Counter("switchboard_http_requests", "HTTP API requests, by route and status",
                                     ["route", "status"], registry=r)
        self.outbox = Gauge("switchboard_outbox_messages", "Outbox rows, by channel and state",
                            ["channel", "state"], registry=r)
        self.otp = Counter("switchboard_otp", "One-time codes: sent, and verifications by outcome",
                           ["event"], registry=r)

    async def exposition(self, store: Store | None) -> bytes:
        """The text exposition; the outbox depth is read from the store at scrape time."""
        if store is not None:
            depth = {(row["channel"], row["state"]): row["n"] for row in await store.outbox_depth()}
            for channel in {c for c, _ in depth}:
                for state in OUTBOX_STATES:
                    self.outbox.labels(channel, state).set(depth.get((channel, state), 0))
        return generate_latest(self.registry)
