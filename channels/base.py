"""What every text channel (SMS by modem, SIP MESSAGE, email) provides to the outbox and the dialog."""
from __future__ import annotations
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    """Base of every channel's config section: unknown keys are errors, values are read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

@dataclass(frozen=True)
class OutgoingMessage:
    id: int                 # outbox row id
    channel: str            # "sms" | "sip" | "email"
    to: str                 # E.164 number, SIP URI/endpoint, or email address
    body: str               # plain text
    subject: str | None = None
    html: str | None = None
    idempotency_key: str = ""
    attempts: int = 0       # attempts before this one

@dataclass(frozen=True)
class SendResult:
    provider_ref: str | None = None   # modem message reference, SIP Call-ID, SMTP Message-ID
    delivered: bool = False           # True when the transport itself confirms delivery (e.g. SIP 200)

class TemporaryError(Exception):
    """Worth retrying later (no network, modem busy, 5xx, timeout)."""

class PermanentError(Exception):
    """Retrying will not help (bad number, 4xx other than auth, opted out)."""

@dataclass(frozen=True)
class InboundMessage:
    channel: str
    sender: str
    body: str
    at: float
    subject: str | None = None
    provider_ref: str | None = None

InboundHandler = Callable[[InboundMessage], Awaitable[None]]
DeliveryHandler = Callable[[str, str, bool], Awaitable[None]]  # (channel, provider_ref, delivered_ok)

class Channel(Protocol):
    name: str
    async def start(self, on_inbound: InboundHandler, on_delivery: DeliveryHandler) -> None: ...
    async def send(self, message: OutgoingMessage) -> SendResult: ...
    async def stop(self) -> None: ...
