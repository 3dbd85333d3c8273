"""Deterministic rules that run before any model: safety, hand-off, messages, appointments, hours,
goodbyes and "say that again".

They work on Whisper transcripts, so matching is on normalised words, tolerant of punctuation,
filler and small spelling differences in names ("Lopes" for "Lopez") and in emergency wording
("I can't breed"). Each rule needs a specific intent, not just a topic word: "do you take my
insurance" is a question, "who do I talk to about my insurance" a transfer.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
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
                   "nothing else", "no thanks", "no thank you", "i'm good", "i'm done", "have a good day",
                   "have a great day", "have a nice day", "have a good one",
                   "that's everything", "that is everything", "cheers", "see you")
AFFIRMATIVE_ANSWERS = ("yes", "yeah", "yep", "yup", "yes please", "correct", "right", "that's right", "exactly",
                       "sure", "uh huh", "mhm", "that's it", "that's the one")
NEGATIVE_ANSWERS = ("no", "nope", "nah", "no thanks", "no thank you", "not really", "i'm good", "that's fine")
_YES_WORDS = frozenset("yes yeah yep yup sure please ok okay actually there is i do have one more thing uh um well "
                       "mhm uh huh".split())
FOLLOW_UP_OPENERS = ("and ", "what about ", "how about ", "also ", "plus ", "same ", "what if ", "or ", "then ")
FOLLOW_UP_POINTERS = frozenset(("that", "it", "this", "those", "these", "them", "that's", "it's"))
HOURS_WORDS = ("open", "opening", "close", "closing", "closed", "hours", "what time", "when are you", "how late",
               "how early", "till when", "until when", "till what time", "until what time", "what days",
               "which days")
# With a day ("on a Sunday", "Saturdays"), being there or coming by asks about the hours.
DAY_PRESENCE = ("around", "working", "come by", "drop in", "drop by", "stop by", "pop in", "pop by", "walk in",
                "swing by")
# "What do I do after hours" asks what to do when closed, not when we open.
# Nor do being open to new patients and arriving for an appointment.
NOT_HOURS = ("after hours", "out of hours", "when you're closed", "when you are closed", "after you close",
             "when you're shut", "at night", "overnight", "middle of the night", "open to", "arrive", "get there")
# Life-threatening wording that always gets the 911 sentence, whatever the site configured.
LIFE_THREATENING = (
    "can't breathe", "cannot breathe", "not breathing", "trouble breathing", "hard to breathe",
    "struggling to breathe", "chest pain", "heart attack", "unconscious", "passed out", "unresponsive",
    "not responding", "bleeding heavily", "heavy bleeding", "won't stop bleeding", "can't stop bleeding",
    "throat is swelling", "throat swelling", "swelling in my throat", "throat feels tight", "choking",
    "overdose", "seizure", "stroke", "collapsed", "won't wake up", "will not wake up", "not waking up",
    "can't wake him", "can't wake her",
)
# Speech recognition's second hearing of a doubtful utterance is primed with these (llm.dialog asks
# "is this an emergency?" if only that hearing finds one): tiny.en then writes "I'm having chest pain"
# for a robotic voice it first heard as "I'm having kept pain".
EMERGENCY_PRIMER = ("Emergency! Chest pain, can't breathe, bleeding a lot, unconscious, seizure, stroke, "
                    "heart attack, overdose, swelling, choking.")
# Words a mishearing does not make out of part of another word: the caller said them.
_FUNCTION_WORDS = frozenset(("me", "my", "you", "your", "that", "it", "him", "her", "them", "us", "this"))
# Below this, a heard phrase is not taken for an emergency phrase ("can't breed" ~ "can't breathe").
EMERGENCY_SIMILARITY = 0.8
# The same for how the words sound (phonetic_key), which only leads to asking: near 1, as sound keys are
# coarse. At 0.85 a few everyday questions of bench/understanding_tuning.yaml sounded like one ("how
# expensive is a filling"), at 0.9 "... quoted earlier mail" like "knocked out"; at 0.95 none as
# written, one of 428 as tiny.en heard them in four voices.
EMERGENCY_SOUND_SIMILARITY = 0.95
EMERGENCY_MIN_KEY = 6  # shorter sound keys ("stroke") are near too many harmless words
REPEAT_PHRASES = ("repeat", "say that again", "say it again", "come again", "pardon", "didn't catch",
                  "didn't hear", "missed that", "what did you say", "what was that", "one more time")
REPEAT_ALONE = ("what", "sorry", "huh", "sorry what", "huh what", "excuse me", "what's that")
CALLBACK_PHRASES = ("call me back", "call me", "ring me", "give me a call", "give me a ring", "call back",
                    "callback", "get back to me", "phone me", "return my call", "contact me")
# Relaying words to a named person: "tell Dr Chen that ...", "let Tom know", "ask Sarah to ...".
_RELAY = re.compile(r"\b(?:tell (?!me\b|us\b)|let \w+(?: \w+){0,2} know\b|ask (?!about\b|for\b)|have \w+(?: \w+)"
                    r"{0,2} (?:call|ring|phone|contact|get back)|remind|pass (?:on|along))")
# Wanting a person rather than a fact: needed before a role or topic word means a transfer.
PERSON_INTENT = ("speak to", "speak with", "talk to", "talk with", "put me through", "transfer", "connect", "get me",
                 "who do i", "who can", "who handles", "who deals", "who takes care", "whoever", "someone",
                 "somebody", "anyone", "anybody", "help with", "available", "is the", "is your")
# Topic words that point at a role in directory.yaml ("billing and insurance", "dental hygienist").
ROLE_TOPICS: dict[str, tuple[str, ...]] = {
    "billing": ("bill", "bills", "billing", "invoice", "invoices", "charge", "charged", "charges", "statement",
                "balance", "payment", "payments", "refund", "account", "accounts", "paid", "owe"),
    "insurance": ("insurance", "insurer", "claim", "claims", "coverage"),
    "hygienist": ("hygienist", "hygienists", "hygiene"),
    "dentist": ("dentist", "dentists"),
    "reception": ("reception", "receptionist"),
}
APPOINTMENT_ACTS = ("book", "schedul", "reschedul", "cancel")  # word stems: "scheduled", "cancelling"
APPOINTMENT_PHRASES = ("move my", "change my", "push my", "push back", "set up", "make an appointment",
                       "get an appointment", "see the dentist", "see a dentist", "see the hygienist")
REQUEST_PHRASES = ("i'd like", "i would like", "i want", "i wanna", "i need", "i have to", "i've got to", "can i",
                   "could i", "can we", "could we", "can you", "could you", "please", "i'm calling to", "need to")
# A question about the rules of booking is for the knowledge, not a booking.
POLICY_WORDS = ("fee", "charge", "policy", "notice", "how much", "how far", "what happens", "what if", "penalty",
                "cost", "how do", "how can", "how does", "best way", "by phone", "online")
FUTURE_WORDS = ("next", "week", "tomorrow", "morning", "afternoon", *WEEKDAYS)
# Written messages abbreviate days: "are u open sat".
DAY_WORDS = {**{d: i for i, d in enumerate(WEEKDAYS)}, **{d + "s": i for i, d in enumerate(WEEKDAYS)},
             **{d[:3]: i for i, d in enumerate(WEEKDAYS)}, "tues": 1, "thur": 3, "thurs": 3}


def normalize(text: str) -> str:
    """Lower-case words separated by single spaces, with apostrophes kept (can't, that's)."""
    return " ".join(_WORD.findall(text.lower().replace("\u2019", "'")))


def _contains(norm: str, phrase: str) -> bool:
    return f" {normalize(phrase)} " in f" {norm} "


def contains_any(text: str, phrases: tuple[str, ...] | list[str]) -> bool:
    norm = normalize(text)
    return any(_contains(norm, p) for p in phrases)


@functools.lru_cache(maxsize=8)
def _emergency_index(phrases: tuple[str, ...]) -> dict[str, list[tuple[str, list[str]]]]:
    """Spelled-out phrases (no spaces or apostrophes) with their words, by first letter: a misheard
    phrase keeps its first letter, so each heard word is compared with a few phrases only."""
    index: dict[str, list[tuple[str, list[str]]]] = {}
    for phrase in phrases:
        target = phrase.replace(" ", "").replace("'", "")
        if len(target) >= 8:  # short words are too easily near something harmless
            index.setdefault(target[0], []).append((target, phrase.split()))
    return index


def _sounds_like(words: list[str], phrases: tuple[str, ...]) -> bool:
    """Some run of the heard words spells nearly a phrase: 'can't breed', 'chess pain', 'bleeding allot'."""
    index = _emergency_index(phrases)
    for i, word in enumerate(words):
        for target, phrase_words in index.get(word[0], ()):
            n = len(phrase_words)
            for size in range(max(1, n - 1), n + 2):
                if i + size > len(words):
                    break
                if _FUNCTION_WORDS.intersection(words[i + 1:i + size]).difference(phrase_words):
                    continue  # "knock me out", "that my swelling": a word of its own, not a misheard one
                heard = "".join(words[i:i + size]).replace("'", "")
                if abs(len(heard) - len(target)) > 3:
                    continue
                matcher = difflib.SequenceMatcher(None, heard, target, autojunk=False)
                # quick_ratio is an upper bound of ratio, and far cheaper.
                if matcher.quick_ratio() >= EMERGENCY_SIMILARITY and matcher.ratio() >= EMERGENCY_SIMILARITY:
                    return True
    return False


# How a word sounds, roughly, for matching what tiny.en writes for a robotic voice ("leaving a lot" for
# "bleeding a lot"): spelling rules first, then each consonant to a class that ignores voicing (t/d,
# p/b, k/g, f/v/th, s/z/sh/ch/j, m/n/ng), every vowel group to "a", h, w and y dropped.
_SPELLING = [(re.compile(a), b) for a, b in (
    (r"^kn", "n"), (r"^wr", "r"), (r"mb$", "m"), (r"tch", "ch"), (r"dge", "j"), (r"ph", "f"), (r"ck", "k"),
    (r"gh", ""), (r"qu", "kw"), (r"x", "ks"), (r"c(?=[eiy])", "s"), (r"sh|ch|tion|sion", "S"), (r"th", "f"),
    (r"ng", "n"))]
_PHONE_CLASSES = {**dict.fromkeys("pb", "p"), **dict.fromkeys("td", "t"), **dict.fromkeys("kgcq", "k"),
                  **dict.fromkeys("fv", "f"), **dict.fromkeys("szSj", "s"), **dict.fromkeys("mn", "n"),
                  **dict.fromkeys("aeiou", "a"), "l": "l", "r": "r"}


@functools.lru_cache(maxsize=4096)
def phonetic_key(word: str) -> str:
    """'bleeding' -> 'platan', 'leaving' -> 'lafan', 'chest pain' -> 'sastpan' (spaces dropped)."""
    w = word.replace("'", "").replace(" ", "")
    for pattern, replacement in _SPELLING:
        w = pattern.sub(replacement, w)
    key = ""
    for letter in w:
        code = _PHONE_CLASSES.get(letter, "")
        if code and not key.endswith(code):
            key += code
    return key


def _sounds_alike(words: list[str], phrases: tuple[str, ...]) -> bool:
    """Some run of the heard words sounds nearly the same as a phrase: 'I have just pain'. Nearly the
    same is nearly the same key, so only runs of about its length and with its first sound compete."""
    keys = [phonetic_key(w) for w in words]
    for phrase in phrases:
        target, phrase_words = phonetic_key(phrase), phrase.split()
        if len(target) < EMERGENCY_MIN_KEY:
            continue
        n = len(phrase_words)
        for size in range(max(1, n - 1), n + 2):
            for i in range(len(words) - size + 1):
                heard = "".join(keys[i:i + size])
                if not heard.startswith(target[0]) or abs(len(heard) - len(target)) > 1:
                    continue
                if _FUNCTION_WORDS.intersection(words[i + 1:i + size]).difference(phrase_words):
                    continue  # as in _sounds_like
                if difflib.SequenceMatcher(None, heard, target, autojunk=False).ratio() >= EMERGENCY_SOUND_SIMILARITY:
                    return True
    return False


def _phrases(site: Site) -> tuple[str, ...]:
    return tuple(normalize(p) for p in (*site.emergency_phrases, *LIFE_THREATENING))


def is_emergency(text: str, site: Site) -> bool:
    """The site's emergency phrases or life-threatening wording, as said or as misheard."""
    norm = normalize(text)
    phrases = _phrases(site)
    if any(_contains(norm, p) for p in phrases):
        return True
    return _sounds_like(norm.split(), phrases)


def may_be_emergency(text: str, site: Site) -> bool:
    """An emergency phrase, or words sounding nearly the same ('I have just pain'): worth asking."""
    return is_emergency(text, site) or _sounds_alike(normalize(text).split(), _phrases(site))


def safety_prompt(site: Site) -> str:
    """The second prompt for speech recognition (speech.stt.Transcriber.transcribe)."""
    return f"{site.name}. {EMERGENCY_PRIMER}"


def wants_repeat(text: str) -> bool:
    norm = normalize(text)
    return norm in REPEAT_ALONE or (len(norm.split()) <= 8 and contains_any(norm, REPEAT_PHRASES))


def wants_operator(text: str) -> bool:
    return contains_any(text, OPERATOR_PHRASES)


def wants_message(text: str) -> bool:
    return contains_any(text, MESSAGE_INTENT)


def is_goodbye(text: str) -> bool:
    norm = normalize(text)
    # "bye" inside a longer question ("goodbye to my old dentist, can you ...") is not a goodbye.
    return len(norm.split()) <= 8 and contains_any(norm, GOODBYE_PHRASES)


def is_affirmative(text: str) -> bool:
    norm = normalize(text)
    return len(norm.split()) <= 5 and contains_any(norm, AFFIRMATIVE_ANSWERS) and not is_negative(text)


def is_only_yes(text: str) -> bool:
    """'Yes', 'yeah, there is': a yes with no question in it."""
    words = set(normalize(text).split())
    return bool(words) and words <= _YES_WORDS and not is_negative(text)


def is_follow_up(text: str) -> bool:
    """Elliptical or pointing back: 'and Saturdays?', 'how much is that?', 'what about for kids?'."""
    norm = normalize(text)
    words = norm.split()
    return 0 < len(words) <= 8 and (len(words) <= 3 or norm.startswith(FOLLOW_UP_OPENERS)
                                     or bool(set(words) & FOLLOW_UP_POINTERS))


def is_negative(text: str) -> bool:
    norm = normalize(text)
    return len(norm.split()) <= 5 and contains_any(norm, NEGATIVE_ANSWERS)


_TITLES = {"dr", "doctor", "the", "mr", "mrs", "ms"}


def _name_keys(member: StaffMember) -> list[tuple[list[str], bool]]:
    """Word sequences that name the member, each with whether it may be heard approximately: proper
    names (capitalised in the directory, and the surname alone) may; lower-case aliases such as
    'billing' may not, or 'building' and 'filling' would name someone."""
    names = [member.name, *member.aliases]
    surname = normalize(member.name).split()[-1:]
    keys = [(surname, True)] if len(normalize(member.name).split()) > 1 else []
    for name in names:
        words = [w for w in normalize(name).split() if w not in _TITLES]
        if words:
            keys.append((words, name != name.lower()))
    return keys


def _similar(a: str, b: str, approximate: bool) -> bool:
    if a == b:
        return True
    # Whisper spells unfamiliar surnames by ear: accept one small difference in longer names.
    return approximate and len(a) >= 4 and difflib.SequenceMatcher(None, a, b).ratio() >= 0.8


def mentioned_staff(text: str, site: Site) -> StaffMember | None:
    """The staff member (not the front desk) a caller names, e.g. 'Doctor Lopes' -> Dr. Maria Lopez."""
    words = normalize(text).split()
    best: tuple[int, StaffMember] | None = None
    for member in site.directory.staff:
        for key, approximate in _name_keys(member):
            n = len(key)
            for i in range(len(words) - n + 1):
                if all(_similar(w, k, approximate) for w, k in zip(words[i:i + n], key)):
                    if best is None or n > best[0]:
                        best = (n, member)
    return best[1] if best else None


_SOUND_CLASSES = {**dict.fromkeys("bfpv", "1"), **dict.fromkeys("cgjkqsxz", "2"), **dict.fromkeys("dt", "3"),
                  "l": "4", **dict.fromkeys("mn", "5"), "r": "6"}


def sound_key(word: str) -> str:
    """A rough key of how a name sounds, Soundex-like but keeping the first sound's class too, so that
    Whisper's spellings of one name agree: 'chen', 'ken', 'shen', 'jen', 'chan' -> '25'; 'lopez', 'lobez'."""
    word = re.sub(r"[cs]h|ph|ck", lambda m: {"ph": "f", "ck": "k"}.get(m.group(), "k"), word.lower())
    key, last = "", ""
    for letter in word:
        code = _SOUND_CLASSES.get(letter, "")
        if code and code != last:
            key += code
        if letter not in "hw":  # as in Soundex, a vowel separates two equal sounds, h and w do not
            last = code
    return key


# Where a caller says a name: after a title or a request for a person ("put me through to Ken"), or
# in "is Ken in?".
_NAME_SLOT = re.compile(r"\b(?:dr|doctor|mr|mrs|ms|miss|(?:speak|talk|through|transfer me|connect me) (?:to|with)"
                        r"|get me|ask for) ((?:\w+ ?){1,2})"
                        r"|\bis ((?:\w+ ){1,2})(?:in|there|around|working|available)\b")
_NOT_NAMES = frozenset("""
a an the my your our me you him her them someone somebody anyone anybody one some about dentist dentists doctor
dr hygienist reception receptionist office front desk person human operator please there here in today now back
available around working free call ring talk speak book cancel schedule it that this what who how when
""".split())


def sound_alike_staff(text: str, site: Site) -> tuple[StaffMember, ...]:
    """Staff whose name sounds like a name the caller says but we do not know ('Dr. Ken' -> Dr. James
    Chen), for a clarifying question; empty when a name is recognised or none sounds alike."""
    norm = normalize(text)
    if mentioned_staff(text, site) is not None:
        return ()
    heard = {w for m in _NAME_SLOT.finditer(norm) for w in (m.group(1) or m.group(2)).split()
             if w not in _NOT_NAMES and len(w) >= 3 and not w.isdigit()}
    found: list[StaffMember] = []
    for member in site.directory.staff:
        keys = {w for key, approximate in _name_keys(member) if approximate for w in key if len(w) >= 3}
        if any(sound_key(h) == sound_key(k) or difflib.SequenceMatcher(None, h, k).ratio() >= 0.7
               for h in heard for k in keys):
            found.append(member)
    return tuple(found)


def misheard_staff(text: str, site: Site) -> tuple[tuple[StaffMember, ...], bool]:
    """Whom a caller may mean when they ask for, or leave word for, a name we do not know, and whether it
    is a message ('tell Dr. Ken ...') rather than a transfer. No one if they do not ask for a person."""
    norm = normalize(text)
    message = wants_message(text) or contains_any(norm, CALLBACK_PHRASES) or _RELAY.search(norm) is not None
    if not (message or contains_any(norm, TRANSFER_INTENT) or contains_any(norm, PERSON_INTENT)
            or _IS_IN.search(norm)):
        return (), False
    return sound_alike_staff(text, site), message


def role_member(text: str, site: Site) -> StaffMember | None:
    """Whom a role or topic word points at: 'the hygienist', 'billing', 'my invoice' -> by directory role."""
    words = set(normalize(text).split())
    for role_word, topic in ROLE_TOPICS.items():
        if words.intersection(topic):
            member = next((m for m in site.directory.everyone() if role_word in normalize(m.role).split()), None)
            if member is not None:
                return member
    return None


_DOCTOR = re.compile(r"\b(?:dr|doctor) \w+")
# "Is Tom Becker there?", "is doctor Ken in today": asking for a person without a transfer verb.
_IS_IN = re.compile(r"\bis (?:\w+ ){1,3}(?:in|there|around|working|available|free)\b")


def unknown_doctor(text: str, site: Site) -> bool:
    """'Doctor Ken': a doctor's name we do not know (often a misheard one)."""
    return _DOCTOR.search(normalize(text)) is not None and mentioned_staff(text, site) is None


def wants_transfer_to(text: str, site: Site) -> StaffMember | None:
    """Who a caller asks to be connected to: a named person, a role or topic ('someone about my bill'), or
    the front desk for 'a person' or a doctor's name we do not know."""
    if wants_message(text):
        return None
    member = mentioned_staff(text, site)
    if member and (contains_any(text, TRANSFER_INTENT) or _IS_IN.search(normalize(text))):
        return member
    if contains_any(text, PERSON_INTENT):
        member = role_member(text, site)
        if member is not None:
            return member
    if unknown_doctor(text, site) and (contains_any(text, PERSON_INTENT) or _IS_IN.search(normalize(text))):
        return site.directory.front_desk
    if wants_operator(text):
        return site.directory.front_desk
    return None


def message_request(text: str, site: Site) -> StaffMember | None:
    """Whom a caller wants a message to reach, also without the word 'message': 'have Dr Chen call me
    back', 'tell Tom that ...', 'can someone call me back' (the front desk). None if not a message."""
    norm = normalize(text)
    member = mentioned_staff(text, site) or role_member(text, site)
    if wants_message(text) or contains_any(norm, CALLBACK_PHRASES):
        return member or site.directory.front_desk
    if member is not None and _RELAY.search(norm):
        return member
    return None


def appointment_request(text: str) -> bool:
    """A request to book, move or cancel an appointment, not a question about how that works."""
    norm = normalize(text)
    if not contains_any(norm, REQUEST_PHRASES) or contains_any(norm, POLICY_WORDS):
        return False
    words = norm.split()
    if any(w.startswith(APPOINTMENT_ACTS) for w in words) or contains_any(norm, APPOINTMENT_PHRASES):
        return True
    # "Can I come in next week": a visit being arranged; "can I come in today" with a broken tooth is
    # the emergency-visit question.
    return _contains(norm, "come in") and any(w.rstrip("s") in FUTURE_WORDS for w in words)


@dataclass(frozen=True)
class HoursQuestion:
    day: dt.date | None  # None: "are you open (now)?"


def hours_question(text: str, today: dt.date) -> HoursQuestion | None:
    norm = normalize(text)
    words = norm.split()
    on_a_day = bool(set(words) & {*DAY_WORDS, "today", "tomorrow", "weekend", "weekends"})
    asks = contains_any(norm, HOURS_WORDS) or (on_a_day and contains_any(norm, DAY_PRESENCE))
    if not asks or contains_any(norm, NOT_HOURS):
        return None
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
