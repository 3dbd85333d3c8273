"""Callback details as Whisper writes them: numbers in digits or words, names said in passing."""

from __future__ import annotations

import pytest

from llm import callback
from llm.callback import read_back, spoken_name, spoken_number


@pytest.mark.parametrize(("text", "number"), [
    ("my number is 555-0123", "5550123"),
    ("it's five five five, oh one two three", "5550123"),
    ("double five five, 0123", "5550123"),
    ("call me on 212 555 0123 after lunch", "2125550123"),
    ("I'll be in at 3, it costs 120 dollars", None),  # a time and a price are not a phone number
    ("please call me back", None),
])
def test_spoken_number(text: str, number: str | None) -> None:
    assert spoken_number(text) == number


@pytest.mark.parametrize(("number", "spoken"), [
    ("5550123", "5 5 5, 0 1 2 3"), ("2125550123", "2 1 2, 5 5 5, 0 1 2 3"), ("15550100", "1, 5 5 5, 0 1 0 0")])
def test_read_back_in_groups(number: str, spoken: str) -> None:
    assert read_back(number) == spoken


@pytest.mark.parametrize(("text", "answer", "name"), [
    ("This is Pat Lee, my crown is loose", False, "Pat Lee"),
    ("my name's Jo and I need a call back", False, "Jo"),
    ("this is urgent, please call me", False, None),
    ("I'm worried about my filling", False, None),  # "I'm" introduces a name only as an answer
    ("I'm Sam", True, "Sam"),
    ("Maria Gonzalez", True, "Maria Gonzalez"),
    ("my tooth still hurts a lot after the filling", True, None),
])
def test_spoken_name(text: str, answer: bool, name: str | None) -> None:
    assert spoken_name(text, answer=answer) == name


@pytest.mark.parametrize(("text", "more"), [
    ("Pat", False),
    ("My name is Pat Lee", False),
    ("it's 555 0123", False),
    ("Yes, my number is five five five, oh one four two.", False),
    ("Please call me back about my crown appointment on 555 0142.", True),
    ("It's about the bill you sent, it's wrong, 555 0142", True),
])
def test_says_more_than_an_answer(text: str, more: bool) -> None:
    assert callback.says_more(text) is more
