"""Deterministic rules that run before any model: safety, hand-off, hours, goodbyes.

They work on Whisper transcripts, so matching is on normalised words, tolerant of punctuation,
filler and small spelling differences in names ("Lopes" for "Lopez").
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from dataclasses import dataclass

from llm.site import WEEKDAYS, OpeningSpan, Site, StaffMember

_WORD = re.compile(r"[a-z0-9']+")

OPERATOR_PHRASES = (
    "a person", "a human", "real person", "real human", "live person", "an operator", "the operator",
    "operator", "receptionist", "front desk", "speak to someone", "talk to someone", "speak with someone",
    "talk to somebody", "speak to somebody", "speak to a person", "talk to a person", "a representative",
    "human being", "someone from the office", "staff member",
)
TRANSFER_INTENT = (
    "speak", "talk", "put me through", "transfer", "connect", "reach", "get me", "get hold", "available",
    "is there", "can i have", "could i have", "i need", "i want", "i'd like", "i would like", "call from",
)
MESSAGE_INTENT = ("leave a message", "take a message", "pass a message", "pass on a message", "give a message",
                  "leave him a message", "leave her a message", "leave them a message", "message for")
GOODBYE_PHRASES = ("bye", "goodbye", "good bye", "that's all", "that is all", "that's it", "that is it",
                   "nothing else", "no thanks", "no thank you", "i'm good", "i'm done", "have a good day")
NEGATIVE_ANSWERS = ("no", "nope", "nah", "no thanks", "no thank you", "not really", "i'm good", "that's fine")
HOURS_WORDS = ("open", "opening", "close", "closing", "closed", "hours", "what time", "when are you")
DAY_WORDS = {**{d: i for i, d in enumerate(WEEKDAYS)}, **{d + "s": i for i, d in enumerate(WEEKDAYS)}}


def normalize(text: str) -> str:
    """Lower-case words separated by single spaces, with apostrophes kept (can't, that's)."""
    return " ".join(_WORD.findall(text.lower().replace("\u2019", "'")))


def _contains(norm: str, phrase: str) -> bool:
    return f" {normalize(phrase)} " in f" {norm} "


def contains_any(text: str, phrases: tuple[str, ...] | list[str]) -> bool:
    norm = normalize(text)
    return any(_contains(norm, p) for p in phrases)


def is_emergency(text: str, site: Site) -> bool:
    return contains_any(text, site.emergency_phrases)


def wants_operator(text: str) -> bool:
    return contains_any(text, OPERATOR_PHRASES)


def wants_message(text: str) -> bool:
    return contains_any(text, MESSAGE_INTENT)


def is_goodbye(text: str) -> bool:
    norm = normalize(text)
    # "bye" inside a longer question ("goodbye to my old dentist, can you ...") is not a goodbye.
    return len(norm.split()) <= 8 and contains_any(norm, GOODBYE_PHRASES)


def is_negative(text: str) -> bool:
    norm = normalize(text)
    return len(norm.split()) <= 5 and contains_any(norm, NEGATIVE_ANSWERS)


def _name_keys(member: StaffMember) -> list[list[str]]:
    names = [member.name, *member.aliases]
    titles = {"dr", "doctor", "the", "mr", "mrs", "ms"}
    keys = []
    for name in names:
        words = [w for w in normalize(name).split() if w not in titles]
        if words:
            keys.append(words)
    return keys


def _similar(a: str, b: str) -> bool:
    if a == b:
        return True
    # Whisper spells unfamiliar surnames by ear: accept one small difference in longer names.
    return len(a) >= 4 and difflib.SequenceMatcher(None, a, b).ratio() >= 0.8


def mentioned_staff(text: str, site: Site) -> StaffMember | None:
    """The staff member (not the front desk) a caller names, e.g. 'Doctor Lopes' -> Dr. Maria Lopez."""
    words = normalize(text).split()
    best: tuple[int, StaffMember] | None = None
    for member in site.directory.staff:
        for key in _name_keys(member):
            n = len(key)
            for i in range(len(words) - n + 1):
                if all(_similar(w, k) for w, k in zip(words[i:i + n], key)):
                    if best is None or n > best[0]:
                        best = (n, member)
    return best[1] if best else None


def wants_transfer_to(text: str, site: Site) -> StaffMember | None:
    """A named staff member with an intent to be connected; the front desk for 'a person'."""
    member = mentioned_staff(text, site)
    if member and contains_any(text, TRANSFER_INTENT) and not wants_message(text):
        return member
    if wants_operator(text) and not wants_message(text):
        return site.directory.front_desk
    return None


@dataclass(frozen=True)
class HoursQuestion:
    day: dt.date | None  # None: "are you open (now)?"


def hours_question(text: str, today: dt.date) -> HoursQuestion | None:
    norm = normalize(text)
    if not any(_contains(norm, w) for w in HOURS_WORDS):
        return None
    words = norm.split()
    for word in words:
        if word in DAY_WORDS:
            ahead = (DAY_WORDS[word] - today.weekday()) % 7
            return HoursQuestion(today + dt.timedelta(days=ahead))
    if "tomorrow" in words:
        return HoursQuestion(today + dt.timedelta(days=1))
    if "today" in words or "tonight" in words:
        return HoursQuestion(today)
    if _contains(norm, "weekend"):
        return HoursQuestion(today + dt.timedelta(days=(5 - today.weekday()) % 7))
    return HoursQuestion(None)


def spoken_time(t: dt.time) -> str:
    """08:00 -> '8 a.m.', 12:00 -> 'noon', 17:30 -> '5:30 p.m.' (reads well through TTS)."""
    if t.hour == 12 and t.minute == 0:
        return "noon"
    hour = t.hour % 12 or 12
    suffix = "a.m." if t.hour < 12 else "p.m."
    return f"{hour}:{t.minute:02d} {suffix}" if t.minute else f"{hour} {suffix}"


def _sentence(text: str) -> str:
    """End with one full stop even when the text ends in 'p.m.'."""
    return text if text.endswith(".") else text + "."


def _spans_text(spans: tuple[OpeningSpan, ...]) -> str:
    return " and ".join(f"from {spoken_time(s.opens)} to {spoken_time(s.closes)}" for s in spans)


def _next_opening(site: Site, after: dt.datetime) -> str | None:
    for ahead in range(0, 15):
        day = after.date() + dt.timedelta(days=ahead)
        spans, _ = site.spans_on(day)
        for span in spans:
            if ahead or span.opens > after.time():
                when = "today" if ahead == 0 else "tomorrow" if ahead == 1 else f"on {WEEKDAYS[day.weekday()].title()}"
                return _sentence(f"We open again {when} at {spoken_time(span.opens)}")
    return None


def describe_hours(site: Site, question: HoursQuestion, now: dt.datetime) -> str:
    """Answer from the configured hours and holidays; `now` is in the site's time zone."""
    if question.day is None:
        spans, holiday = site.spans_on(now.date())
        current = next((s for s in spans if s.opens <= now.time() < s.closes), None)
        if current:
            return f"Yes, we're open now, until {spoken_time(current.closes)} today."
        reason = f" for {holiday.name}" if holiday else ""
        return f"We're closed right now{reason}. " + (_next_opening(site, now) or "")
    spans, holiday = site.spans_on(question.day)
    if question.day == now.date():
        label = "today"
    elif question.day == now.date() + dt.timedelta(days=1):
        label = "tomorrow"
    else:
        label = f"on {WEEKDAYS[question.day.weekday()].title()}"
    if holiday:
        label += f", {holiday.name},"
    if not spans:
        return f"We're closed {label}."
    return _sentence(f"{label[0].upper()}{label[1:]} we're open {_spans_text(spans)}")
