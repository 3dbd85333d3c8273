"""Request bodies of the HTTP API, validated by pydantic: unknown keys and wrong types are 422, never 500."""

from __future__ import annotations

import re
import time
import unicodedata
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from models.store import normalize_number

Kind = Literal["sms", "sip", "email", "voice"]
_EMAIL = re.compile(r"^[^@\s<>]{1,64}@[^@\s<>]+\.[^@\s<>]{2,}$")
_SIP = re.compile(r"^(sips?:)?[^\s<>\"]{1,200}$")
_PHONE = re.compile(r"^\+?[0-9]{3,20}$")
MAX_SCHEDULE_S = 2 * 366 * 86400


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Outgoing(Body):
    """What is said to someone: a text, or a template under http.templates with its variables."""

    to: str = Field(min_length=1, max_length=254)
    text: str | None = Field(None, min_length=1, max_length=4000)
    template: str | None = Field(None, min_length=1, max_length=64)  # a name under http.templates
    vars: dict[str, str] = Field(default_factory=dict, max_length=50)
    send_at: AwareDatetime | None = None  # ISO 8601 with a zone; not before then
    idempotency_key: str | None = Field(None, min_length=1, max_length=128)  # per key, for messages and calls

    @model_validator(mode="after")
    def _one_text(self) -> Outgoing:
        if (self.text is None) == (self.template is None):
            raise ValueError("give exactly one of text and template")
        if self.vars and self.template is None:
            raise ValueError("vars go with a template")
        if self.send_at is not None and self.send_at.timestamp() > time.time() + MAX_SCHEDULE_S:
            raise ValueError("send_at: at most two years ahead")
        return self


class MessageIn(Outgoing):
    channel: Kind
    subject: str | None = Field(None, min_length=1, max_length=200)  # email only; default: the site's name


class CallIn(Outgoing):
    """An outbound call that speaks the text (twice if the callee stays on the line), placed by AMI
    Originate: `to` is a number or an extension."""


class OtpIn(Body):
    to: str = Field(min_length=1, max_length=254)
    channel: Kind
    purpose: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[\w .:-]+$")


class OtpVerifyIn(Body):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")
    code: str = Field(min_length=1, max_length=12, pattern=r"^[0-9]+$")


class ThreadMessageIn(Body):
    text: str = Field(min_length=1, max_length=4000)

    @model_validator(mode="after")
    def _not_blank(self) -> ThreadMessageIn:
        if not self.text.strip():
            raise ValueError("text: empty")
        if any(unicodedata.category(c) == "Cc" and c not in "\r\n\t" for c in self.text):
            raise ValueError("text: has control characters")
        return self


def destination(kind: str, to: str) -> str:
    """The recipient as the outbox and the per-destination limits see it; raises ValueError.
    One number written two ways is one destination ("+1 555-0100" == "+15550100")."""
    to = to.strip()
    if any(unicodedata.category(c).startswith("C") for c in to):  # controls, bidi overrides, ...
        raise ValueError("to: has control or format characters")
    if kind == "email":
        if not _EMAIL.match(to):
            raise ValueError("to: not an email address")
        return to.lower()
    if kind == "sip" and not _PHONE.match(normalize_number(to) or ""):
        if not _SIP.match(to):
            raise ValueError("to: not a SIP URI, endpoint or number")
        return to
    number = normalize_number(to) or ""
    if not _PHONE.match(number):
        raise ValueError("to: not a phone number")
    return number


# ---- responses: the handlers answer through these, and the OpenAPI document describes them --------
class Answer(BaseModel):
    model_config = ConfigDict(frozen=True)


class Health(Answer):
    status: Literal["ok"] = "ok"


class Ready(Answer):
    status: Literal["ready"] = "ready"
    checks: dict[str, Literal["up", "down"]]  # models, store, ami, ari, channel:NAME


class MessageAccepted(Answer):
    id: int
    status: str  # queued, or the state of the message an idempotency key already named


class Step(Answer):
    status: str  # queued | sending | sent | delivered | failed
    at: str  # ISO 8601, UTC
    attempts: int
    error: str | None = None


class MessageStatus(Answer):
    id: int
    channel: str
    status: str
    attempts: int
    last_error: str | None = None
    created_at: str
    send_at: str | None = None  # while queued: not before then
    sent_at: str | None = None
    timeline: list[Step]


class OtpAccepted(Answer):
    id: str
    expires_at: str


class OtpVerdict(Answer):
    valid: bool
    attempts_left: int


class ThreadAction(Answer):
    type: Literal["transfer", "message_offered", "message_taken", "escalation", "emergency"]
    person: str | None = None  # whom a transfer or message is for


class ThreadReply(Answer):
    external_id: str
    reply: str | None  # None: nothing to say (thanks, a goodbye), or held
    actions: list[ThreadAction]
    at: str
    # True: a staff member has taken this chat over from the assistant; the message is stored for them and
    # the assistant does not answer (`reply` is None). Their reply comes in the thread's history, and as a
    # `reply` frame `from: staff` to an open WebSocket chat.
    held: bool = False


class ChatDelta(Answer):
    """WS /v1/chat: the next piece of the reply being produced (joined, the deltas are the reply so far)."""

    type: Literal["delta"] = "delta"
    external_id: str
    text: str


class ChatReply(ThreadReply):
    """WS /v1/chat: the whole reply to a message, after its deltas; the text to keep."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, serialize_by_alias=True)

    type: Literal["reply"] = "reply"
    sender: Literal["assistant", "staff"] = Field("assistant", alias="from")  # who wrote `reply`


class ThreadEntry(Answer):
    role: Literal["user", "assistant", "staff"]  # staff: a staff member who took the chat over
    text: str
    at: str


class ThreadHistory(Answer):
    external_id: str
    messages: list[ThreadEntry]  # oldest first: the newest `limit` before the `before` cursor
    next: str | None = None  # the `before` of the page of older messages; None: this page reaches the start


class ProblemDocument(Answer):
    """RFC 9457, application/problem+json."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] | None = None  # 422: each field at fault (loc, msg)
    checks: dict[str, str] | None = None  # 503 from /ready
    retry_after: int | None = None  # 429 in a WebSocket frame (an HTTP answer has the Retry-After header)
