"""Refuse generated replies that state numbers, times or prices not found in the retrieved facts.

A caller who hears a wrong price or opening time is worse off than one who hears "I'll find out",
so every number-like token a model says must already appear in the facts it was given.
"""

from __future__ import annotations

import re

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
    "thousand": 1000, "noon": 12, "midnight": 0, "half": 30, "quarter": 15,
}
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")
_WORDS = re.compile(r"[a-z]+")


def _numbers(text: str) -> set[str]:
    lower = text.lower()
    found = {m.replace(",", "").rstrip(".") for m in _DIGITS.findall(lower)}
    # "8:30" and "8.30" both yield "8" and "30", so a time in either style matches the other.
    for m in _DIGITS.findall(lower.replace(":", " ").replace(".", " ")):
        found.add(m)
    # Compose spelled numbers: "one hundred twenty" -> 120, "twenty five" -> 25, but "eight thirty" -> 8, 30.
    value: int | None = None
    for word in _WORDS.findall(lower):
        n = _NUMBER_WORDS.get(word)
        if n is not None and value is not None and _continues(value, n):
            value = value * n if n in (100, 1000) else value + n
            continue
        if value is not None:
            found.add(str(value))
        value = n
    if value is not None:
        found.add(str(value))
    return {f.lstrip("0") or "0" for f in found}


def _continues(value: int, n: int) -> bool:
    if n in (100, 1000):
        return 0 < value < n
    if value >= 100 and value % 100 == 0:
        return n < 100
    return 20 <= value < 100 and value % 10 == 0 and n < 10


def ungrounded_numbers(reply: str, facts: str) -> list[str]:
    """Number-like tokens of `reply` that `facts` does not contain (empty list: grounded)."""
    allowed = _numbers(facts)
    return sorted(n for n in _numbers(reply) if n not in allowed)
