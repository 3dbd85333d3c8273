"""Written messages (email, SMS, SIP MESSAGE) shaped for the dialog, and one reply composed for them.

A call turn is one utterance; a written message wraps its questions in a greeting, a sign-off, a
signature, quoted earlier mail, and often asks several things at once. `own_words` keeps what the
sender wrote this time (what a staff member should read), `core` drops the greeting and sign-off
(what the dialog should understand), `parts` splits that into the questions to answer, in order.
`answer` runs the dialog on each part and composes a single reply.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from llm.dialog import Action, Dialog, Reply
from llm.rules import normalize, wants_message

MAX_DIALOGS = 500  # live dialogs of text threads kept; an evicted thread starts a fresh dialog
# Where the sender's own text ends: a quoted reply, a forward, a signature or a device footer.
_CUT = re.compile(
    r"^\s*(?:On\b.{0,200}\bwrote:?"  # Gmail, Apple Mail, Thunderbird (a trailing line may hold "wrote:")
    r"|-{2,}\s*(?:Original|Forwarded) Message\s*-{2,}|Begin forwarded message:"
    r"|_{10,}|-- ?|--"  # Outlook's rule; the "-- " signature separator (and its trimmed form)
    r"|Sent from (?:my |Mail |Yahoo |Outlook|Samsung)\S*.*|Get Outlook for .*"
    r")\s*$", re.IGNORECASE)
# Outlook quotes its original under a header block: "From: ..." followed by "Sent:"/"Date:"/"To:".
_HEADER = re.compile(r"^\s*(?:From|Sent|Date|To|Subject|Cc):\s", re.IGNORECASE)
_ON_DATE = re.compile(r"^\s*On\b.{0,200}$", re.IGNORECASE)

_GREETING_WORD = (r"(?:hi|hello|hey|hiya|howdy|greetings|dear|good (?:morning|afternoon|evening|day)|"
                  r"morning|afternoon|evening)")
# Words that address someone after a greeting: names (capitalised) or these.
_ADDRESSEE = r"(?:(?-i:[A-Z])[\w'&.-]*|there|team|all|everyone|folks|guys|again|or|and|the|\w+'s)"
_GREETING = re.compile(rf"^\s*{_GREETING_WORD}(?:[ \t]+{_ADDRESSEE}){{0,4}}?\s*(?:[,!:;.]+|\n)\s*", re.IGNORECASE)
_GREETING_ALONE = re.compile(rf"^\s*{_GREETING_WORD}(?: there)?\b[,!]*\s*", re.IGNORECASE)
_PLEASANTRY = re.compile(
    r"^(?:i hope (?:this|that|you)|hope (?:you|all|this)|thanks|thank you|many thanks|much appreciated|"
    r"thx|ty|cheers|(?:i have |i've got )?(?:a |just a )?(?:couple of|few|two|three|some|quick|one more) "
    r"(?:things|questions|question)|(?:a )?quick question)\b", re.IGNORECASE)
# The sender introducing themselves: their name is no part of the question ("Margaret Thornbury here, ...").
_NAME = r"(?-i:[A-Z])[\w'-]+(?: (?-i:[A-Z])[\w'-]+){0,2}"
_INTRO = re.compile(rf"^(?:(?:this is|it's|it is|my name is) {_NAME}(?: here)?|{_NAME} here)\b[\s,.!:-]*",
                    re.IGNORECASE)
# Asking for help with the questions themselves: "Could you answer the questions below?"
_ABOUT_QUESTIONS = re.compile(r"^(?:please |(?:could|can|would) you (?:please )?)(?:answer|help (?:me )?with|look at) "
                              r"(?:\S+ ){0,3}(?:below|following|attached|these|those)\b", re.IGNORECASE)
_SIGN_OFF = re.compile(
    r"^(?:thanks|thank you|many thanks|thanks again|thanks in advance|thx|ty|cheers|best|regards|"
    r"kind regards|best regards|warm regards|warmest regards|all the best|best wishes|sincerely|"
    r"yours(?: sincerely| faithfully| truly)?|take care|much appreciated|speak soon|talk soon)"
    r"\b[\s,.!]*(?:so much|a lot|very much|a million|in advance|again)?[\s,.!]*$", re.IGNORECASE)
_CONTACT = re.compile(r"(?:\+?\d[\d ().-]{5,}\d|\S+@\S+\.\w+|https?://|www\.)")
_ABBREVIATION = re.compile(r"(?:\b(?:Dr|Mr|Mrs|Ms|St|Mt|No|vs|etc|approx|e\.g|i\.e)|\b[ap]\.m|\b[A-Z])\.$")
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+|\n+")
# Lead-ins and acknowledgements: "And also, ...", "Great, and ...", "ok great."
_LEAD = re.compile(r"^(?:(?:and|also|plus|oh|ok|okay|so|p\.?s\.?|one more thing|another thing|lastly|finally|great|"
                   r"perfect|awesome|brilliant|lovely|cool|super|got it|sounds good|will do|noted|understood)\b"
                   r"[\s,:;!.-]*)+", re.IGNORECASE)
# A second question joined to the first: "do you do fillings and how much is a cleaning".
_JOINED = re.compile(r"(?:,\s*|\s+)(?:and|also|plus)(?:\s+also)?\s+(?=(?:where|what|when|how|which|who|whether|"
                     r"is|are|do|does|can|could|will|would|should)\b)", re.IGNORECASE)
# A question about what the one before it asked: "How much does it cost?", "Is that free?" (or just "how much").
_FOLLOW_UP = re.compile(r"\b(?:it|that|this|they|them|those|one)\b", re.IGNORECASE)
_SUBJECT_PREFIX = re.compile(r"^(?:\s*(?:re|fwd?|aw|sv|wg)\s*:)+", re.IGNORECASE)
_SUBJECT = re.compile(r"\b(?:you|your|i|we|my|our)\b", re.IGNORECASE)
_QUESTION_START = re.compile(
    r"^(?:where|what|whats|what's|when|how|which|who|whom|why|is|are|am|do|does|did|can|could|will|would|"
    r"should|may|might|have|has|any)\b", re.IGNORECASE)
# What only makes sense on the phone; an admin's answer may say it too ("ask me to put you through").
PHONE_ONLY = re.compile(
    r"anything else i can help|\bpress \d|\bput(?:ting)? you through|\bplease hold\b|\bhold the line\b|"
    r"\bstay on the line\b|\bone moment\b|\bhang up\b|\bdial 9|\bsay (?:your message|it) after|"
    r"thank you for calling", re.IGNORECASE)
_REQUEST = re.compile(
    r"\b(?:i'd like|i would like|i want|i wanna|i need|i have to|please|wondering|wonder|tell|let \w+ know|"
    r"call me|get back to me|ask|book|cancel|reschedule|speak|talk)\b", re.IGNORECASE)


def own_words(body: str) -> str:
    """What the sender wrote this time: no quoted earlier mail, forwarded mail, '-- ' signature or
    device footer. This is the text a staff member should read (it keeps the sender's name)."""
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if (_CUT.match(line) or (_ON_DATE.match(line) and following.strip().lower().startswith("wrote"))
                or (_HEADER.match(line) and line.lstrip().lower().startswith("from:") and _HEADER.match(following))):
            break
        if not line.lstrip().startswith(">"):
            kept.append(line.rstrip())
    return "\n".join(kept).strip()


def _signature_line(line: str) -> bool:
    """A name, title or contact line: 'Pat Smith', 'Acme Corp | 555-0100', 'R. Singh'."""
    words = line.split()
    if not words or "?" in line or _QUESTION_START.match(line):
        return False
    if _CONTACT.search(line):
        return True
    return len(words) <= 4 and all(w[:1].isupper() or not w[:1].isalnum() for w in words)


def core(body: str) -> str:
    """The part to understand: the sender's own words without greeting, sign-off and signature."""
    lines = own_words(body).replace("\u2019", "'").split("\n")
    for i, line in enumerate(lines):  # a sign-off line ends the message: the rest is a signature
        if i and _SIGN_OFF.match(line.strip()):
            lines = lines[:i]
            break
    while lines and (not lines[-1].strip() or (len(lines) > 1 and _signature_line(lines[-1]))):
        lines.pop()
    text = "\n".join(lines).strip()
    greeted = _GREETING.sub("", text, count=1)
    if greeted == text:
        greeted = _GREETING_ALONE.sub("", text, count=1)
    return greeted.strip()


def _sentences(text: str) -> list[str]:
    pieces: list[str] = []
    for piece in _SENTENCE_END.split(text):
        piece = piece.strip()
        if not piece:
            continue
        if pieces and _ABBREVIATION.search(pieces[-1]) and not pieces[-1].endswith("\n"):
            pieces[-1] = f"{pieces[-1]} {piece}"
        else:
            pieces.append(piece)
    return pieces


def _signed(sentence: str) -> bool:
    """'Thanks, Pat', 'Cheers!', 'Best, Jo': a sign-off, with or without a name."""
    head = re.sub(r"[\s,.!]+$", "", sentence)
    return bool(_SIGN_OFF.match(head) or _SIGN_OFF.match(head.split(",")[0]))


def _name(sentence: str) -> bool:
    """'Jo', 'Pat Smith': a bare name that ends a message."""
    words = sentence.split()
    return len(words) <= 3 and all(w[:1].isupper() for w in words) and not sentence.endswith("?") \
        and not _QUESTION_START.match(sentence)


def _is_question(sentence: str) -> bool:
    return sentence.rstrip().endswith("?") or bool(_QUESTION_START.match(sentence) or _REQUEST.search(sentence))


def parts(text: str) -> list[str]:
    """The questions and requests in a written message (after `core`), in order. A sentence that asks
    nothing ('My mother uses a wheelchair.') goes with the question before it, or the first one; a short
    follow-up ('How much is it?') carries the question it follows."""
    sentences = _sentences(text)
    # A name alone is asked about ("Invisalign"); after a question it is the sender's.
    while sentences and (_signed(sentences[-1]) or (len(sentences) > 1 and _name(sentences[-1]))):
        sentences.pop()
    found: list[str] = []
    context: list[str] = []
    topic = ""  # the last question that stands on its own
    for sentence in sentences:
        if _ABOUT_QUESTIONS.match(sentence):
            continue
        for piece in _JOINED.split(sentence):
            piece = _INTRO.sub("", _LEAD.sub("", piece)).strip(" ,;:-")
            if not normalize(piece) or (_PLEASANTRY.match(piece) and not piece.endswith("?")):
                continue
            if _is_question(piece):
                size = len(piece.split())
                elliptic = size <= 3 and not _SUBJECT.search(piece)  # "and how much", "what time"
                if found and not context and (elliptic or (_FOLLOW_UP.search(piece) and size <= 8)):
                    piece = f"{topic} {piece}"  # "How much does it cost?", "and how much" after "Do you do whitening?"
                else:
                    topic = piece
                found.append(" ".join([*context, piece]))
                context = []
            elif found:
                found[-1] = f"{found[-1]} {piece}"
            else:
                context.append(piece)
    if context:  # nothing asked outright: the whole text is the one thing to understand
        found.append(" ".join(context))
    return found


def bare_message_request(text: str) -> bool:
    """'Can I leave a message for Sarah?' and nothing more: the message itself is still to come."""
    return wants_message(text) and len(normalize(text).split()) <= 10


def without_phone_only(text: str) -> str:
    """`text` without its sentences that only make sense on the phone (all of it if nothing is left)."""
    kept = [sentence for sentence in re.split(r"(?<=[.!?])\s+", text) if not PHONE_ONLY.search(sentence)]
    return " ".join(kept) or text


class Dialogs:
    """The live dialogs of text threads, the most recently used kept (an evicted thread starts afresh)."""

    def __init__(self, keep: int = MAX_DIALOGS) -> None:
        self._keep = keep
        self._live: OrderedDict[int, Dialog] = OrderedDict()

    def get(self, thread_id: int, make: Callable[[], Dialog]) -> Dialog:
        dialog = self._live.pop(thread_id, None) or make()
        self._live[thread_id] = dialog
        while len(self._live) > self._keep:
            self._live.popitem(last=False)
        return dialog

    def drop(self, thread_id: int) -> None:
        self._live.pop(thread_id, None)


@dataclass(frozen=True)
class WrittenAnswer:
    text: str | None  # the reply to send; None when there is nothing to say (a goodbye, say)
    replies: tuple[Reply, ...]  # the dialog's decision for each part, in the order of the text


def compose(replies: list[Reply], questions: list[str]) -> str | None:
    """One reply: an emergency first, then each answer once, in the order asked. A goodbye says
    nothing; an unanswered question among answered ones is quoted so the sender knows which."""
    said: list[str] = []
    seen: set[str] = set()
    several = len({r.source for r in replies if r.action is not Action.END_CALL}) > 1
    ordered = sorted(zip(replies, questions), key=lambda rq: rq[0].source != "rule:emergency")
    for reply, question in ordered:
        text = without_phone_only(reply.text)
        quoted = reply.action is Action.ESCALATE and several
        entry = reply.source.partition(":")[2] if reply.source.startswith(("knowledge:", "probable:")) else None
        key = f"entry:{entry}" if entry else question if quoted else text
        if reply.action is Action.END_CALL or not text or key in seen:
            continue
        seen.add(key)
        said.append(f"\u201c{question}\u201d {text}" if quoted else text)
    return "\n\n".join(said) or None


def subject_question(subject: str | None) -> str | None:
    """An email's subject when it asks something ("Parking?", "Re: Do you see kids"), else None."""
    text = _SUBJECT_PREFIX.sub("", subject or "").strip()
    return text if text and _is_question(text) else None


async def answer(dialog: Dialog, body: str, at: float | None = None, subject: str | None = None,
                 progress: Callable[[str | None], Awaitable[None]] | None = None) -> WrittenAnswer:
    """Run the dialog on each question of a written message and compose one reply. A request for a
    person or a message is taken at once as a message with the sender's own words (they are written
    already); a bare 'can I leave a message' is asked for the message. `at`: when it was sent; an
    email's `subject` is the question when the body asks none ("Sent from my iPhone" under "Parking?").
    `progress` gets the reply composed so far after each question is answered (a live chat streams it)."""
    asked_in_subject = subject_question(subject)
    if asked_in_subject and not parts(core(body)):
        body = f"{asked_in_subject}\n{body}"
    words = own_words(body) or body.strip()
    if dialog.awaiting_message is not None:  # the whole text is the message asked for
        reply = await dialog.take_message(dialog.awaiting_message, words, at)
        return WrittenAnswer(reply.text, (reply,))
    understood = core(body)
    questions = parts(understood)
    if not questions and understood:  # only thanks and pleasantries: nothing to answer
        return WrittenAnswer(None, ())
    if not questions:  # a greeting alone
        return WrittenAnswer(dialog.site.text_wording.greeting_reply, ())
    replies: list[Reply] = []
    asked: list[str] = []
    passed_to: set[str] = set()  # the whole text goes to each person once
    front_desk = dialog.site.directory.front_desk.name
    for question in questions:
        reply = await dialog.respond(question)
        target = reply.target
        if reply.action in (Action.TAKE_MESSAGE, Action.TRANSFER) and target is not None:
            if len(questions) == 1 and reply.action is Action.TAKE_MESSAGE and bare_message_request(question):
                pass  # the offer stands: the next text is the message
            elif target.name in passed_to or (passed_to and target.name == front_desk):
                dialog.awaiting_message = None  # "ask her to call me" after a message for her: passed already
                continue
            else:
                passed_to.add(target.name)
                taken = await dialog.take_message(target, words, at)
                if reply.action is Action.TAKE_MESSAGE:
                    reply = taken
        replies.append(reply)
        asked.append(question)
        if progress is not None:
            await progress(compose(replies, asked))
    return WrittenAnswer(compose(replies, asked), tuple(replies))
