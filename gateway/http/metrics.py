"""Prometheus metrics of one daemon, in its own registry (several daemons in one test process must not share one)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from models.records import OUTBOX_STATES, CallEvent, Turn
from models.store import Store

CONTENT_TYPE = CONTENT_TYPE_LATEST
_SECONDS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# A call's stored transfer events -> the `result` label (transfer_outcome is told by the transfer context).
_TRANSFER_RESULTS = {"transfer_done": "sent", "transfer_failed": "failed"}


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
        self.voice_to_voice = Histogram("switchboard_voice_to_voice_seconds", "End of the caller's turn to the first "
                                        "reply audio sent, per answered turn", buckets=_SECONDS, registry=r)
        self.stt = Histogram("switchboard_stt_seconds", "Transcription of one caller turn", buckets=_SECONDS,
                             registry=r)
        self.first_audio = Histogram("switchboard_first_audio_seconds", "Reply text to its first synthesised audio",
                                     buckets=_SECONDS, registry=r)
        self.transfers = Counter("switchboard_transfers", "Transfers: sent or failed, then answered, returned "
                                 "or unanswered", ["result"], registry=r)
        self.deliveries = Counter("switchboard_deliveries", "Outbox rows settled, by outcome (sent, delivered, "
                                  "failed)", ["outcome"], registry=r)

    def observe(self, record: object) -> None:
        """Feed from what a call stores: its turns' timings and its transfer events."""
        if isinstance(record, Turn):
            timings = record.timings_ms
            if record.speaker == "caller" and "stt" in timings:
                self.stt.observe(timings["stt"] / 1000)
            elif record.speaker == "assistant":
                for histogram, name in ((self.voice_to_voice, "voice_to_voice"), (self.first_audio, "tts_first")):
                    if name in timings:
                        histogram.observe(timings[name] / 1000)
        elif isinstance(record, CallEvent):
            if record.kind in _TRANSFER_RESULTS:
                self.transfers.labels(_TRANSFER_RESULTS[record.kind]).inc()
            elif record.kind == "transfer_outcome":
                status = record.data.get("dial_status")
                self.transfers.labels("returned" if record.data.get("returned")
                                      else "answered" if status == "ANSWER" else "unanswered").inc()

    async def exposition(self, store: Store | None) -> bytes:
        """The text exposition; the outbox depth is read from the store at scrape time."""
        if store is not None:
            depth = {(row["channel"], row["state"]): row["n"] for row in await store.outbox_depth()}
            for channel in {c for c, _ in depth}:
                for state in OUTBOX_STATES:
                    self.outbox.labels(channel, state).set(depth.get((channel, state), 0))
        return generate_latest(self.registry)
