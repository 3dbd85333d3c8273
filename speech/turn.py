"""Does a caller's turn look finished? A cheap verdict on the words heard so far (a speculative transcript).

Whisper writes what it heard up to a pause. A turn whose text stops on a word that cannot end an
English clause ("... ask about", "my number is", "and", "um") or on a phone number still being
given is not finished: the caller is pausing, not done. A question or a clause that stands on its
own is finished. The verdict only chooses how long the endpointer waits for more speech
(speech/vad.py, `vad.end_of_turn: adaptive`); it never ends a turn while the caller speaks.
"""

from __future__ import annotations

import re
from enum import Enum


class Completion(Enum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    DIGITS = "digits"  # a number or code is being given: digits come in bursts with pauses between


# Never the last word of a finished clause, even before a question mark: articles, possessives,
# prepositions, conjunctions, hesitations.
_OPEN = frozenset("""
a an the my your our his her their its this these those some any every no
and or but so because if than then when while where whether
to of for about with at on in from by into onto as like until till before after between
um uh er erm hmm ah eh
""".split())
# Rarely the last word of a statement, often the last of a question ("can you?", "is it?"): open
# unless Whisper heard a question.
_OPEN_UNLESS_ASKED = frozenset("""
is are was were am be been being i'm it's that's there's what's
can could would should will shall may might must do does did have has had
i we he she they
want wanted need needed wondering wonder ask asking know tell
""".split())
_DIGIT_WORDS = frozenset("zero oh o one two three four five six seven eight nine double triple".split())
_NUMBER_WORDS = frozenset({"number", "phone", "code", "extension", "zip", "postcode", "account", "reference"})
# A trailing digit run this long is a whole phone number (area code included); shorter may still grow,
# except a local number as Whisper writes a whole one ("555-0123").
_WHOLE_NUMBER = 10
_WHOLE_LOCAL = re.compile(r"(?<![\d-])\d{3}-\d{4}\W*$")
# Shorter trailing runs are times and prices ("at 3", "$50"), not a number being given; when we asked
# for a number, only a lone digit word is not one ("I don't have one").
_MIN_RUN, _MIN_RUN_ASKED = 3, 2
_TOKEN = re.compile(r"[a-z']+|\d+")


def _digit_run(tokens: list[str]) -> int:
    """Digits in the run of digits and digit words at the end of `tokens`."""
    count = 0
    for token in reversed(tokens):
        if token.isdigit():
            count += len(token)
        elif token in _DIGIT_WORDS:
            count += 1
        else:
            break
    return count


def completion(text: str, *, expecting_number: bool = False) -> Completion:
    """The verdict on `text`, what the caller said so far. `expecting_number`: we asked for a number."""
    stripped = text.strip()
    tokens = _TOKEN.findall(stripped.lower().replace("\u2019", "'"))
    if not tokens:
        return Completion.INCOMPLETE
    asked = stripped.endswith("?")
    run = _digit_run(tokens)
    whole = run >= _WHOLE_NUMBER or _WHOLE_LOCAL.search(stripped) is not None
    if run and not whole and not asked and run >= (_MIN_RUN_ASKED if expecting_number else _MIN_RUN):
        return Completion.DIGITS
    trailing_off = stripped.endswith(("...", "\u2026", "-", ","))
    last = tokens[-1]
    if trailing_off or last in _OPEN or (last in _OPEN_UNLESS_ASKED and not asked):
        near_number = expecting_number or any(t in _NUMBER_WORDS for t in tokens[-3:])
        return Completion.DIGITS if near_number else Completion.INCOMPLETE
    return Completion.COMPLETE


# What a listener says to show they follow, not to take the turn: said over our reply, it must not stop it.
_BACKCHANNEL_WORDS = frozenset("""
uh-huh uh-uh uh huh um ah oh aha okay ok right alright yeah yep yup yes sure exactly cool great good fine perfect
""".split())
_BACKCHANNEL_PAIRS = frozenset({("i", "see"), ("got", "it"), ("all", "right"), ("that's", "right")})
# "mm", "mhm", "mm-hmm", "hmm"; Whisper cuts them short ("mm-h") or adds to them ("mm-hmm-huh").
_HUM = re.compile(r"[mh][mhu-]*")
# Whisper primed with these writes a hum as "Mm-hmm" (unprimed, tiny.en heard espeak-ng's as "MMA Kim",
# "and the make"); other words still come out as said ("Sorry.", "How much?", "Wait."). Primed, it
# also loops more often on short clips, so the call uses it for a second reading only.
BACKCHANNEL_PROMPT = "Mm-hmm. Uh-huh. Okay. Right. Yeah. I see."


def interrupts(text: str) -> bool:
    """Do these words, said while we speak, take the turn? Only backchannel words ("mm-hm", "okay",
    "right", "yeah", "I see", and Whisper's repeats of them) or none at all do not."""
    words = re.sub(r"[.,!?;:]", " ", text.lower().replace("\u2019", "'")).split()
    i = 0
    while i < len(words):
        if tuple(words[i:i + 2]) in _BACKCHANNEL_PAIRS:
            i += 2
        elif words[i] in _BACKCHANNEL_WORDS or _HUM.fullmatch(words[i]):
            i += 1
        else:
            return True
    return False
