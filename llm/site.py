"""What the dialog knows about one site: identity, opening hours, staff directory, fixed wording.

These are validated pydantic models so the gateway can load them straight from etc/*.yaml and
report the exact key of any mistake; the dialog uses them as plain read-only data.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_SPAN = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")


class Strict(BaseModel):
    """Unknown keys are errors: a typo in etc/ must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OpeningSpan(Strict):
    opens: dt.time
    closes: dt.time


def parse_spans(value: str) -> tuple[OpeningSpan, ...]:
    """'08:00-12:00, 13:00-17:00' or 'closed' -> spans."""
    text = value.strip().lower()
    if text in ("closed", ""):
        return ()
    spans = []
    for part in text.split(","):
        m = _SPAN.match(part.strip())
        if not m:
            raise ValueError(f"expected 'HH:MM-HH:MM' (or 'closed'), got {part.strip()!r}")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        try:
            opens, closes = dt.time(h1, m1), dt.time(h2, m2)
        except ValueError as exc:
            raise ValueError(f"{part.strip()!r}: {exc}") from None
        if closes <= opens:
            raise ValueError(f"{part.strip()!r}: closing time is not after opening time")
        spans.append(OpeningSpan(opens=opens, closes=closes))
    return tuple(spans)


class Holiday(Strict):
    date: dt.date
    name: str
    hours: str = "closed"

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str) -> str:
        parse_spans(v)
        return v


class Hours(Strict):
    monday: str = "closed"
    tuesday: str = "closed"
    wednesday: str = "closed"
    thursday: str = "closed"
    friday: str = "closed"
    saturday: str = "closed"
    sunday: str = "closed"

    @field_validator(*WEEKDAYS)
    @classmethod
    def _spans(cls, v: str) -> str:
        parse_spans(v)
        return v

    def spans(self, weekday: int) -> tuple[OpeningSpan, ...]:
        return parse_spans(getattr(self, WEEKDAYS[weekday]))


class StaffMember(Strict):
    name: str
    role: str = ""
    extension: str = Field(pattern=r"^[0-9*#+]{1,20}$")
    aliases: tuple[str, ...] = ()
    # How a message taken for this person reaches them (channels come with the messaging issue).
    message_via: Literal["store", "email", "sms"] = "store"
    email: str | None = None
    mobile: str | None = None


class Directory(Strict):
    front_desk: StaffMember
    staff: tuple[StaffMember, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> "Directory":
        seen: set[str] = set()
        for member in (self.front_desk, *self.staff):
            key = member.name.lower()
            if key in seen:
                raise ValueError(f"staff name {member.name!r} appears twice")
            seen.add(key)
        return self

    def everyone(self) -> tuple[StaffMember, ...]:
        return (self.front_desk, *self.staff)


class Wording(Strict):
    """Fixed sentences the assistant says; admins may reword them."""

    anything_else: str = "Is there anything else I can help you with?"
    not_understood: str = "Sorry, I didn't catch that. Could you say it again?"
    no_speech_prompt: str = "Are you still there? How can I help you?"
    goodbye: str = "Thank you for calling. Goodbye!"
    unknown_answer: str = (
        "I'm sorry, I don't know the answer to that. I've passed your question to our team, "
        "and someone will get back to you."
    )
    transfer: str = "One moment please, I'm putting you through to {name}."
    # Asked when the caller's question probably matches a knowledge entry but not surely enough.
    confirm_question: str = "Just to check, are you asking: {question}"
    # Said instead of asking, when set: the probable entry's answer, saying which question it answers.
    probable_answer: str = ""
    # Said to a caller who comes back from a transfer that was busy or not answered.
    transfer_unavailable: str = (
        "I'm sorry, {name} can't take your call right now. If you'd like to leave a message, "
        "please say it after this, and I'll pass it on."
    )
    # Heard by the staff member before a warm transfer connects them.
    warm_summary: str = "Call from {caller} for {name}. They said: {reason}. Connecting you now."
    take_message_prompt: str = "Of course. Please say your message after this, and I'll pass it on to {name}."
    message_taken: str = "Thank you, I've taken your message for {name}."
    # Voice calls: who the message is from and the callback number, read back digit by digit.
    ask_caller_name: str = "And who shall I say it's from?"
    ask_callback_number: str = "What number should {name} call you back on?"
    read_back_number: str = "I have {digits}. Is that the right number to call you back on?"
    # A staff name we do not know but that sounds like one we do ("Dr. Ken").
    clarify_name: str = "Did you mean {names}?"
    # A "yes" to "is there anything else?".
    go_ahead: str = "Of course. What else can I help you with?"
    emergency: str = (
        "If this is a life-threatening emergency, please hang up and dial 9 1 1. "
        "I'm putting you through to our staff right now."
    )
    # Asked when the caller's words sound like an emergency phrase without being one for sure (a
    # robotic or noisy voice misheard); empty: never asked (written messages are not misheard).
    confirm_emergency: str = "Is this a medical emergency?"
    busy: str = "Sorry, all our lines are busy right now. I'm putting you through to our staff."
    # Outbound calls (switchboard call): a one-time code is read digit by digit, twice.
    code_message: str = "Your code is {digits}. Again, your code is {digits}."
    press_to_repeat: str = "To hear this again, press 1."
    shutting_down: str = "I'm sorry, I have to end this call now. Please call us back in a moment. Goodbye."


class TextWording(Wording):
    """The same sentences for written replies (email, SMS): nothing that only makes sense on the phone.
    A request for a person becomes a message to them (it is in writing already), so the sender is told
    who will get back to them rather than asked to call or hold."""

    anything_else: str = ""
    not_understood: str = "Sorry, I didn't understand your message. Could you put it another way?"
    goodbye: str = "Thank you for your message."
    transfer: str = "I've passed this on to {name}, who will get back to you as soon as possible."
    probable_answer: str = "If you are asking \u201c{question}\u201d: {answer}"
    take_message_prompt: str = "Of course. Reply with your message, and I'll pass it on to {name}."
    message_taken: str = "Thank you, I've passed your message on to {name}, who will get back to you."
    emergency: str = "If this is a life-threatening emergency, call 911 now. I've alerted our staff."
    confirm_emergency: str = ""
    greeting_reply: str = "Hello! How can we help you?"  # to a message that only says hello


@functools.cache
def server_zone() -> ZoneInfo:
    """The server's own zone, with its DST rules: $TZ when it names a zone, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return ZoneInfo("UTC")


class Site(Strict):
    name: str
    greeting: str
    timezone: str = ""  # an IANA name; empty: the server's own zone
    address: str = ""
    hours: Hours
    holidays: tuple[Holiday, ...] = ()
    emergency_phrases: tuple[str, ...] = ()
    # Names callers say that a small speech model may not know (insurers, products, streets).
    vocabulary: tuple[str, ...] = ()
    wording: Wording = Wording()
    text_wording: TextWording = TextWording()  # replies by email, SMS and SIP MESSAGE
    directory: Directory

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        if not v:
            return v
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as 'America/New_York')") from None
        return v

    @property
    def speech_prompt(self) -> str:
        """Words to bias speech recognition towards: the business, its people, its vocabulary."""
        names = [self.name, *(m.name for m in self.directory.staff), *self.vocabulary]
        return ", ".join(names) + "."

    @property
    def tz(self) -> ZoneInfo:
        """The zone of opening hours and of every time staff see (dashboard pages, filters, charts)."""
        return ZoneInfo(self.timezone) if self.timezone else server_zone()

    def spans_on(self, day: dt.date) -> tuple[tuple[OpeningSpan, ...], Holiday | None]:
        for holiday in self.holidays:
            if holiday.date == day:
                return parse_spans(holiday.hours), holiday
        return self.hours.spans(day.weekday()), None
