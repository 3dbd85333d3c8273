"""Rules that run before any model: emergency, hand-off, staff by name, hours, goodbyes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gateway.config import load_config
from llm import rules

SITE = load_config(Path(__file__).resolve().parents[2] / "etc" / "switchboard.yaml").site
TZ = SITE.tz


def at(y: int, m: int, d: int, hh: int, mm: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, hh, mm, tzinfo=TZ)


@pytest.mark.parametrize("text", ["It's an emergency!", "My tooth got knocked out.", "I have swelling in my face and trouble breathing"])
def test_emergency_phrases(text: str) -> None:
    assert rules.is_emergency(text, SITE)


def test_not_emergency() -> None:
    assert not rules.is_emergency("Do you do routine cleanings on Saturday?", SITE)


@pytest.mark.parametrize(
    ("text", "extension"),
    [
        ("Can I speak to Doctor Lopez?", "201"),
        ("could you put me through to dr lopes please", "201"),  # Whisper's spelling of the surname
        ("I'd like to talk with James Chen.", "202"),
        ("Is Sarah available?", "203"),
        ("Can I talk to a real person?", "200"),
        ("Operator.", "200"),
    ],
)
def test_transfer_targets(text: str, extension: str) -> None:
    member = rules.wants_transfer_to(text, SITE)
    assert member is not None and member.extension == extension


@pytest.mark.parametrize("text", ["Does Doctor Lopez do whitening?", "What are your hours?", "I want to leave a message for Doctor Chen"])
def test_no_transfer(text: str) -> None:
    assert rules.wants_transfer_to(text, SITE) is None


def test_message_for_named_staff() -> None:
    assert rules.wants_message("Can I leave a message for Tom?")
    assert rules.mentioned_staff("Can I leave a message for Tom?", SITE).extension == "204"


def test_hours_for_a_named_day() -> None:
    monday = at(2026, 11, 23, 10)
    question = rules.hours_question("What time do you close on Fridays?", monday.date())
    assert question == rules.HoursQuestion(dt.date(2026, 11, 27))
    assert rules.describe_hours(SITE, question, monday) == "On Friday we're open from 8 a.m. to 3 p.m."
    sunday = rules.hours_question("are you open sunday", monday.date())
    assert rules.describe_hours(SITE, sunday, monday) == "We're closed on Sunday."


def test_hours_now_and_holidays() -> None:
    open_now = rules.describe_hours(SITE, rules.HoursQuestion(None), at(2026, 11, 21, 10, 30))  # Saturday
    assert open_now == "Yes, we're open now, until 1 p.m. today."
    closed = rules.describe_hours(SITE, rules.HoursQuestion(None), at(2026, 11, 21, 14))
    assert closed == "We're closed right now. We open again on Monday at 8 a.m."
    thanksgiving = rules.describe_hours(SITE, rules.HoursQuestion(None), at(2026, 11, 26, 9))
    assert thanksgiving.startswith("We're closed right now for Thanksgiving Day.")
    eve = rules.describe_hours(SITE, rules.HoursQuestion(dt.date(2026, 12, 24)), at(2026, 12, 23, 9))
    assert eve == "Tomorrow, Christmas Eve, we're open from 8 a.m. to noon."


def test_not_an_hours_question() -> None:
    assert rules.hours_question("How much is a filling?", dt.date(2026, 11, 23)) is None


@pytest.mark.parametrize(("text", "bye"), [("No, that's all, thanks. Bye!", True), ("Goodbye", True),
                                           ("Thank you so much. Have a great day.", True),  # was "I don't know"
                                           ("Bye the way, do you do fillings for children on weekends?", False)])
def test_goodbye(text: str, bye: bool) -> None:
    assert rules.is_goodbye(text) is bye


def test_spoken_time() -> None:
    assert [rules.spoken_time(dt.time(h, m)) for h, m in ((8, 0), (12, 0), (17, 30), (0, 15))] == \
        ["8 a.m.", "noon", "5:30 p.m.", "12:15 a.m."]
