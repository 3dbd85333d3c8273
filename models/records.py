"""Plain records passed between the pipeline and the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class KnowledgeEntry:
    id: str
    question: str
    answer: str
    phrasings: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    # "admin" (from etc/knowledge.yaml) or "learned" (staff answer to a help request)
    source: str = "admin"


@dataclass
class CallRecord:
    call_id: str
    caller: str | None
    dialled: str | None
    site: str
    transport: str
    started_at: float


@dataclass
class Turn:
    call_id: str
    seq: int
    speaker: str  # "caller" | "assistant" | "system"
    text: str
    at: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    action: str | None = None
    interrupted: bool = False


@dataclass
class HelpRequest:
    id: int | None
    call_id: str | None
    contact_number: str | None
    question: str
    status: str = "open"  # "open" | "answered" | "unresolved" (no answer within help_requests.timeout)
    answer: str | None = None
    created_at: float = 0
    answered_at: float | None = None
    answered_by: str | None = None  # the staff member (dashboard), None from the CLI
    followup_channel: str | None = None  # how the answer went back to the customer who asked
    followup_outbox_id: int | None = None
    followup_note: str | None = None  # why no follow-up was sent, when none was
    answered_entry: str | None = None  # the existing entry it was closed with (question added as a phrasing)


@dataclass
class TakenMessage:
    call_id: str | None
    contact_number: str | None
    for_staff: str | None
    caller_name: str | None
    text: str
    at: float


@dataclass
class CallEvent:
    call_id: str
    kind: str  # e.g. "transfer", "message", "escalate", "hangup"
    at: float
    data: dict[str, Any] = field(default_factory=dict)


OUTBOX_STATES = ("queued", "sending", "sent", "delivered", "failed")


@dataclass
class OutboxRecord:
    id: int
    idempotency_key: str
    channel: str
    recipient: str
    body: str
    subject: str | None
    html: str | None
    state: str  # one of OUTBOX_STATES
    attempts: int  # attempts started, including one in flight
    last_error: str | None
    next_attempt_at: float
    provider_ref: str | None
    created_at: float
    updated_at: float
    sent_at: float | None
    opt_notice: int = 0  # 1: the confirmation of a STOP, the one text an opted-out contact still gets
    owner: str | None = None  # the API key that queued it (HTTP API), else None
    dismissed_by: str | None = None  # a failed row staff took off the dashboard's list


@dataclass(frozen=True)
class ApiKey:
    """An HTTP API key as stored: never the key itself, only its SHA-256."""

    name: str
    key_hash: str
    prefix: str  # the key's first characters, to recognise it in `keys list`
    scopes: tuple[str, ...]
    rate_per_s: float
    burst: int
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


STAFF_ROLES = ("operator", "supervisor", "admin")  # each may do what the one before may, and more


@dataclass(frozen=True)
class StaffUser:
    """A dashboard account as stored: an argon2 hash, never the password."""

    name: str
    role: str  # one of STAFF_ROLES
    password_hash: str
    created_at: float

    def may(self, role: str) -> bool:
        """Has this user at least `role`?"""
        return STAFF_ROLES.index(self.role) >= STAFF_ROLES.index(role)


@dataclass(frozen=True)
class StaffSession:
    user: StaffUser
    csrf: str  # the token every form of this session carries
    expires_at: float


@dataclass(frozen=True)
class OtpCode:
    id: str
    key_name: str
    channel: str
    destination: str
    purpose: str | None
    code_hmac: str
    created_at: float
    expires_at: float


@dataclass
class ThreadMessage:
    id: int
    thread_id: int | None
    channel: str  # "voice" (taken during a call), "sms", "sip", "email"
    direction: str  # "in" | "out"
    body: str
    status: str  # inbound: "pending" until "answered" / "opted_out" / "dropped" / "rate_limited"
    at: float
    outbox_id: int | None = None
    sender: str | None = None  # inbound: the address as the channel gave it, to reply to
    subject: str | None = None
    sent_by: str | None = None  # outbound: the staff member who wrote it (None: the assistant)
