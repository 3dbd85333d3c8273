"""Who to call back, and on which number: a caller's name and phone number as Whisper writes them.

Whisper writes a spoken number as digits ("555-0123"), as words ("five five five, oh one two
three") or as a mix, so both are read. A number is read back digit by digit in groups, the way a
person checks one on the phone ("5 5 5, 0 1 2 3").
"""

from __future__ import annotations

import re

from llm.rules import normalize

_DIGIT_WORDS = {"zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9"}
_REPEATS = {"double": 2, "triple": 3}
# Fewer digits than this is not a phone number (a time, a price); more is not one either.
MIN_DIGITS, MAX_DIGITS = 7, 15
_NAME_INTRO = re.compile(r"\b(?:my name is|my name's|name is|this is|it's|it is) ((?:[a-z']+ ?){1,3})")
# Before a name given as an answer ("I'm Pat"); in other sentences "I'm" is rarely a name ("I'm worried").
_ANSWER_LEAD = re.compile(r"^(?:(?:yes|yeah|sure|oh|um|uh|ok|okay|sorry|i'm|i am) )+")
# Words after "this is" / "I'm" that are not a name ("this is urgent", "I'm calling about").
_NOT_A_NAME = frozenset("""
a an the about calling call urgent important not just so very really only still also going gonna trying
looking worried sorry fine ok okay good here there regarding for from with my your his her our their about
ringing phoning again back number that this it is was and but or because please
""".split())


# Words around an answer to "your name?" / "your number?" that say nothing more.
_ANSWER_WORDS = frozenset("""
yes yeah yep no nope it's it is its my number name that's that is right correct the um uh ok okay sure i'm i am
and call me on at this
""".split())


def says_more(text: str) -> bool:
    """True if `text` holds more than a name, a number and the words around them: the rest of a
    message the caller goes on with when asked for their name or number."""
    words = [w for w in re.findall(r"[a-z']+", text.lower().replace("\u2019", "'"))
             if w not in _DIGIT_WORDS and w not in _REPEATS and w not in _ANSWER_WORDS]
    return len(words) >= 4


def spoken_number(text: str) -> str | None:
    """The phone number in `text` as digits, or None: the longest run of digits and digit words."""
    runs, run, repeat = [], "", 1
    for token in re.findall(r"[a-z]+|\d+", text.lower().replace("\u2019", "'")):
        if token in _REPEATS:
            repeat = _REPEATS[token]
            continue
        digits = token if token.isdigit() else _DIGIT_WORDS.get(token)
        if digits is None:
            if token not in ("and", "is", "it's", "s", "area", "code", "extension"):  # said inside a number
                runs.append(run)
                run = ""
            repeat = 1
            continue
        run += digits[0] * repeat + digits[1:] if repeat > 1 else digits
        repeat = 1
    runs.append(run)
    best = max(runs, key=len)
    return best if MIN_DIGITS <= len(best) <= MAX_DIGITS else None


def read_back(number: str) -> str:
    """'5550123' -> '5 5 5, 0 1 2 3'; grouped from the end as a person reads one: the last four, then threes
    ('15550001' -> '1, 5 5 5, 0 0 0 1')."""
    groups = [number[-4:]]
    rest = number[:-4]
    while rest:
        groups.insert(0, rest[-3:])
        rest = rest[:-3]
    return ", ".join(" ".join(group) for group in groups)


def caller_id_number(caller: str | None) -> str | None:
    """The caller ID's digits if it is a phone number ('+1 555-0100' -> '15550100')."""
    digits = re.sub(r"\D", "", caller or "")
    return digits if MIN_DIGITS <= len(digits) <= MAX_DIGITS else None


def spoken_name(text: str, *, answer: bool = False) -> str | None:
    """The caller's name if they say it ("this is Pat Smith", "my name's Pat"). With `answer`, the text
    is the reply to "what's your name?", so a bare "Pat Smith" counts too."""
    norm = normalize(text)
    match = _NAME_INTRO.search(norm)
    words = match.group(1).split() if match else (_ANSWER_LEAD.sub("", norm).split() if answer else [])
    name = []
    for word in words:
        if word in _NOT_A_NAME or word.isdigit() or word in _DIGIT_WORDS:
            break
        name.append(word)
    if not name or (answer and not match and len(words) > 3):
        return None
    return " ".join(w.capitalize() for w in name)
