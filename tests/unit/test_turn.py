"""speech.turn.completion: does the text of a turn so far read as finished?"""

from __future__ import annotations

import pytest

from speech.turn import Completion, completion, interrupts

C, I, D = Completion.COMPLETE, Completion.INCOMPLETE, Completion.DIGITS


@pytest.mark.parametrize("text, expected", [
    # Whisper's transcripts at a mid-sentence pause.
    ("I wanted to ask about", I),
    ("I wanted to ask", I),
    ("Could I book an appointment for", I),
    ("I'd like to come in on Saturday and", I),
    ("We need two cleanings, a checkup, and", I),
    ("Um", I),
    ("So I was wondering if...", I),
    ("I'm calling because the", I),
    ("My number is", D),
    ("You can reach me on", I),
    ("Call me back on my phone at", D),
    ("My number is 555", D),
    ("My number is five five five, oh one", D),
    ("It's 555-01", D),
    # Finished turns.
    ("What are your opening hours?", C),
    ("Are you open on Saturday?", C),
    ("Can you?", C),
    ("Is it?", C),
    ("I'd like to book a cleaning.", C),
    ("Thank you, goodbye.", C),
    ("Yes", C),
    ("No, that's all.", C),
    ("Do you take Delta Dental", C),
    ("How much is a filling", C),
    ("Can I come in at 3?", C),
    ("Is it 50 dollars", C),
    ("My number is 555 123 4567.", C),  # a whole number, area code included
    ("My number is 555-0123.", C),  # a whole local number, as Whisper writes one
    ("My number is 555-123.", D),
    ("It's 212-555-01", D),
    ("", I),
])
def test_completion(text: str, expected: Completion) -> None:
    assert completion(text) is expected


def test_expecting_a_number_waits_on_any_digits_and_open_words() -> None:
    assert completion("Sure, it's", expecting_number=True) is D
    assert completion("5 5", expecting_number=True) is D
    assert completion("555 0123", expecting_number=True) is D
    assert completion("5 5", expecting_number=False) is C  # a short number out of a number context: a time
    assert completion("I don't have one.", expecting_number=True) is C
    assert completion("555 123 4567", expecting_number=True) is C


@pytest.mark.parametrize("text", ["Mm-hmm.", "Mm-h.", "Mm-h-h", "Mm-hmm-huh.", "Mhm.", "Hmm.", "Uh-huh.", "Okay. Okay.",
                                  "OK.", "Right.", "Yeah.", "I see.", "All right.", "Yes, I see.", "", "  "])
def test_backchannel_words_do_not_take_the_turn(text: str) -> None:
    assert not interrupts(text)


@pytest.mark.parametrize("text", ["Sorry.", "How much?", "Wait, what?", "Okay, so what about", "No.", "Great, thanks"])
def test_other_words_take_the_turn(text: str) -> None:
    assert interrupts(text)
