"""One call's conversation: rules first, then the site's knowledge, then (if capable) the LLM.

The order is the product's safety story: an emergency or a request for a person never waits on
a model; facts are the admin's own words; a model, when an instruction-tuned one is configured,
only adds understanding and phrasing, its action is constrained to a fixed set, and any number it
says must be in the facts it was given. Nothing here touches audio or sockets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from llm import callback, rules
from llm.engine import MESSAGE_OVERHEAD_TOKENS, PROMPT_OVERHEAD_TOKENS, Cancelled, LlmEngine, LlmError
from llm.grounding import ungrounded_numbers
from llm.knowledge import Match, Retriever
from llm.site import Site, StaffMember
from models.records import HelpRequest, KnowledgeEntry, TakenMessage
from models.store import Store

log = logging.getLogger(__name__)

# Memory bound for long text threads (500 of them are kept alive); the prompt takes fewer when they
# do not fit the model's context.
_MAX_HISTORY_MESSAGES = 40
_MAX_STORED_CHARS = 1000


class Action(str, enum.Enum):
    ANSWER = "answer"
    TRANSFER = "transfer"
    TAKE_MESSAGE = "take_message"
    ESCALATE = "escalate"
    END_CALL = "end_call"


@dataclass
class _Callback:
    """A message being completed on a voice call: who it is from and the number, confirmed by ear."""
    member: StaffMember
    text: str
    name: str | None
    number: str | None
    asked: str = ""  # "name", "number" or "confirm": what the caller's next turn answers
    turns: int = 0


# Turns spent on name and number before the message is kept with what we have.
_MAX_CALLBACK_TURNS = 6
# Words of earlier questions a follow-up is read with.
_TOPIC_WORDS = 30


@dataclass(frozen=True)
class Reply:
    text: str
    action: Action = Action.ANSWER
    target: StaffMember | None = None
    source: str = ""  # e.g. "rule:emergency", "knowledge:hours", "llm", "fallback"
    timings_ms: dict[str, float] = field(default_factory=dict)


def _listing(site: Site) -> str:
    return "\n".join(f"- {m.name} ({m.role})" for m in site.directory.everyone())


def _oldest_to_drop(history: list[dict[str, str]], enough: Callable[[list[dict[str, str]]], bool]) -> int:
    """How many of the oldest messages to drop, in whole turns so that roles still alternate. Callers
    drop well below their limit, not just to it: the prompt's start then stays byte-stable for the
    next turns, so llama.cpp reuses its KV cache."""
    drop = 0
    while drop < len(history) and not enough(history[drop:]):
        drop += 2
    return drop


def _turn(facts: list[str], words: str) -> str:
    listed = "\n".join(f"- {fact}" for fact in facts) or "- (no facts found)"
    return f"Facts:\n{listed}\n\nCaller: {words}"


class Dialog:
    """Per-call state; `respond` is called once per caller turn, in order."""

    def __init__(self, site: Site, retriever: Retriever, store: Store, *, call_id: str, caller: str | None,
                 engine: LlmEngine | None = None, max_reply_tokens: int = 256,
                 now: Callable[[], dt.datetime] | None = None,
                 on_message_taken: Callable[[TakenMessage], Awaitable[None]] | None = None,
                 written: bool = False, read_back_numbers: bool = False) -> None:
        self.site, self.retriever, self.store, self.engine = site, retriever, store, engine
        # Text channels get their own wording: no "is there anything else", "press 1" or "putting you through".
        self.written = written
        self.wording = site.text_wording if written else site.wording
        self.call_id, self.caller = call_id, caller
        self.max_reply_tokens = max_reply_tokens
        self._now = now or (lambda: dt.datetime.now(site.tz))
        self.on_message_taken = on_message_taken  # e.g. deliver to the staff member by SMS/email
        # Whom the next turn is a message for, after an offer to take one (None: not waiting for one).
        self.awaiting_message: StaffMember | None = None
        # On a voice call a message also gets the caller's name and a callback number read back.
        self.read_back_numbers = read_back_numbers
        self._callback: _Callback | None = None
        # The staff we asked "did you mean ...?" about, and whether for a message.
        self._clarifying: tuple[tuple[StaffMember, ...], bool] | None = None
        # What the last answer was about ("hours" or an entry id) and the words that asked it.
        self._topic: tuple[str, str] | None = None
        self._asked_anything_else = False
        self._last_said: str | None = None  # what "sorry, say that again" repeats
        # The entry we asked "are you asking: ...?" about, and the caller's question that led to it.
        self._confirming: tuple[KnowledgeEntry, str] | None = None
        # The caller's words that sounded like an emergency, while we ask whether it is one.
        self._checking_emergency: str | None = None
        self.history: list[dict[str, str]] = []  # chat messages for the LLM, byte-stable across turns

    @property
    def expects_number(self) -> bool:
        """We asked the caller for a callback number: their turn may pause between groups of digits."""
        return self._callback is not None and self._callback.asked == "number"

    # ---- entry points ----------------------------------------------------------------------------
    def greeting(self) -> Reply:
        self._last_said = self.site.greeting
        return Reply(self.site.greeting, source="greeting")

    def on_dtmf(self, digit: str) -> Reply | None:
        if digit == "0":
            return self._transfer(self.site.directory.front_desk, "rule:dtmf0")
        return None

    def offer_message(self, member: StaffMember, wording: str, source: str) -> Reply:
        """Ask the caller for a message for `member`; their next turn is stored as that message."""
        self.awaiting_message = member
        return Reply(wording.format(name=member.name), Action.TAKE_MESSAGE, member, source=source)

    async def call_ended(self) -> None:
        """A message whose name or number was still being asked for is kept with what we have: the
        caller's words matter more than the read-back."""
        if self._callback is not None:
            await self._finish_callback(self._callback)

    def no_speech(self, prompts_so_far: int, max_prompts: int) -> Reply:
        if prompts_so_far < max_prompts:
            return Reply(self.wording.no_speech_prompt, source="rule:no_speech")
        return Reply(self.wording.goodbye, Action.END_CALL, source="rule:no_speech")

    async def respond(self, text: str, cancel: threading.Event | None = None, also_heard: str = "",
                      alternatives: tuple[str, ...] = ()) -> Reply:
        """The reply to the caller's `text`. `also_heard`: another hearing of the same words (speech
        recognition listening for an emergency, Transcriber's second prompt); if only that one says
        an emergency, or the words only sound like one, the caller is asked whether it is one.
        `alternatives`: speech recognition's runner-up hearings, consulted before "I don't know"."""
        start = time.perf_counter()
        reply = await self._decide(text, cancel, also_heard, alternatives)
        reply.timings_ms.setdefault("dialog", (time.perf_counter() - start) * 1000)
        self._asked_anything_else = bool(self.wording.anything_else) and reply.text.endswith(self.wording.anything_else)
        self._last_said = reply.text
        self.history += [{"role": "user", "content": text[:_MAX_STORED_CHARS]},
                         {"role": "assistant", "content": reply.text[:_MAX_STORED_CHARS]}]
        if len(self.history) > _MAX_HISTORY_MESSAGES:
            del self.history[:_oldest_to_drop(self.history, lambda kept: len(kept) <= _MAX_HISTORY_MESSAGES // 2)]
        return reply

    # ---- the decision ----------------------------------------------------------------------------
    async def _decide(self, text: str, cancel: threading.Event | None, also_heard: str,
                      alternatives: tuple[str, ...]) -> Reply:
        site = self.site
        if self._last_said is not None and rules.wants_repeat(text):
            # Before a pending message: "sorry, what?" is not the message. The action stays an answer.
            return Reply(self._last_said, source="rule:repeat")
        # Whatever we were waiting for, an emergency comes first. In a thread: the misheard-emergency
        # search costs milliseconds on a long email.
        checking, self._checking_emergency = self._checking_emergency, None
        emergency = await asyncio.to_thread(rules.is_emergency, text, site)
        if emergency or (checking is not None and rules.is_affirmative(text)):
            await self.call_ended()  # to staff now: a message half-confirmed is kept as it is
            self.awaiting_message = self._confirming = self._clarifying = self._topic = None
            return self._transfer(site.directory.front_desk, "rule:emergency", self.wording.emergency)
        if checking is not None and rules.is_negative(text):
            text = checking  # not an emergency: the question they asked, as it was heard
        elif self.wording.confirm_emergency and any(rules.may_be_emergency(t, site) for t in (text, also_heard)):
            # Sounding like an emergency, or heard as one only when listening for one: asking costs a
            # turn, silence a life.
            self._checking_emergency = text
            return Reply(self.wording.confirm_emergency, source="confirm:emergency")
        if self.awaiting_message is not None:
            return await self._spoken_message(self.awaiting_message, text)
        if self._callback is not None:
            return await self._continue_callback(text)
        confirming, self._confirming = self._confirming, None
        clarifying, self._clarifying = self._clarifying, None
        topic, self._topic = self._topic, None
        if confirming is not None:
            entry, question = confirming
            if rules.is_affirmative(text):
                return self._answer(entry.answer, f"knowledge:{entry.id}", question)
            if rules.is_negative(text):
                return await self._escalate(question)
            # Anything else is a new question.
        if clarifying is not None:
            reply = self._clarified(text, *clarifying)
            if reply is not None:
                return reply
        member = rules.message_request(text, site)
        if member is None or member is site.directory.front_desk:
            candidates, for_message = rules.misheard_staff(text, site)
            if candidates:
                return self._clarify(candidates, for_message)
        if member is not None:
            return self.offer_message(member, self.wording.take_message_prompt, "rule:message")
        if rules.appointment_request(text):
            return self._transfer(site.directory.front_desk, "rule:appointment")
        target = rules.wants_transfer_to(text, site)
        if target is not None:
            return self._transfer(target, "rule:transfer")
        if rules.is_goodbye(text) or (self._asked_anything_else and rules.is_negative(text)):
            return Reply(self.wording.goodbye, Action.END_CALL, source="rule:goodbye")
        if self._asked_anything_else and rules.is_only_yes(text):
            return Reply(self.wording.go_ahead, source="rule:go_ahead")
        now = self._now()
        follow_up = topic is not None and rules.is_follow_up(text)
        question = rules.hours_question(text, now.date())
        if question is None and follow_up and topic[0] == "hours":
            # "And Saturdays?" after the hours: the same question about another day.
            question = rules.hours_question(f"open {text}", now.date())
            question = question if question is not None and question.day is not None else None
        if question is not None:
            return self._answer(rules.describe_hours(site, question, now), "rule:hours", text)

        t0 = time.perf_counter()
        matches = await self.retriever.search(text, limit=3)
        verdict = await self.retriever.understand(self._as_tuned(text))
        if follow_up and not verdict.sure:
            # "How much is that?": read with the question it follows.
            assert topic is not None
            text = " ".join(f"{topic[1]} {text}".split()[-_TOPIC_WORDS:])
            combined = await self.retriever.understand(self._as_tuned(text))
            if combined.sure or verdict.match is None:
                verdict = combined
        best = verdict.match if verdict.sure else None
        retrieval_ms = (time.perf_counter() - t0) * 1000
        if self.engine is not None and self.engine.instruction_tuned:
            reply = await self._ask_model(text, matches, best, cancel)
            if reply is not None:
                reply.timings_ms["retrieval"] = retrieval_ms
                return reply
        if best is not None:
            reply = self._answer(best.entry.answer, f"knowledge:{best.entry.id}", text)
        elif verdict.match is not None and self.wording.probable_answer:
            # By text a "did you mean" costs the sender a round trip: the answer, saying what it answers.
            entry = verdict.match.entry
            reply = Reply(self._then_offer(self.wording.probable_answer.format(question=entry.question,
                                                                              answer=entry.answer)),
                          source=f"probable:{entry.id}")
        elif verdict.match is not None:  # likely but not sure: asking beats a wrong answer
            entry = verdict.match.entry
            self._confirming = (entry, text)
            question = entry.question[:1].lower() + entry.question[1:]
            reply = Reply(self.wording.confirm_question.format(question=question), source=f"confirm:{entry.id}")
        else:
            reply = self._heard_otherwise(alternatives) or await self._escalate(text)
        reply.timings_ms["retrieval"] = retrieval_ms
        return reply

    def _as_tuned(self, text: str) -> str:
        """Spoken words in lower case without punctuation, as the retrieval thresholds were set on them:
        the embedding model is case-sensitive, and Whisper's capitals are its own ("What if ... shut?"
        came out nearer the hours than the after-hours entry). Written words keep theirs: there a
        capital "How ...?" is nearer the entries' own questions, and written replies were set on it."""
        return text if self.written else rules.normalize(text)

    def _answer(self, text: str, source: str, question: str) -> Reply:
        """An answer from the knowledge or the hours; `question` is kept for a follow-up to be read with."""
        self._topic = (source.split(":", 1)[1], question)
        return Reply(self._then_offer(text), source=source)

    def _then_offer(self, text: str) -> str:
        """`text` and the "anything else?" offer, where the channel has one."""
        return f"{text} {self.wording.anything_else}".strip()

    def _clarify(self, candidates: tuple[StaffMember, ...], for_message: bool) -> Reply:
        self._clarifying = (candidates, for_message)
        names = [m.name for m in candidates]
        return Reply(self.wording.clarify_name.format(names=" or ".join(names)),
                     source="clarify:" + "|".join(names))

    def _heard_otherwise(self, alternatives: tuple[str, ...]) -> Reply | None:
        """Before "I don't know": a staff member another hearing of the caller's words asks for
        ("Can I speak to Thomas Johnson?" beside "Can I beat the town of Johnson?"), offered as a
        question ("Did you mean Sarah Johnson?"), never acted on unconfirmed. Only people: measured on
        bench/understanding_tuning.yaml in espeak-ng voices, knowledge entries found in a runner-up
        hearing were all wrong, staff named in one mostly right."""
        site = self.site
        for heard in alternatives:
            member = rules.message_request(heard, site)
            for_message = member is not None
            member = member or rules.wants_transfer_to(heard, site)
            if member is not None and member is not site.directory.front_desk:
                log.info("staff heard in another hearing call=%s", self.call_id)
                return self._clarify((member,), for_message)
        return None

    def _clarified(self, text: str, candidates: tuple[StaffMember, ...], for_message: bool) -> Reply | None:
        """The answer to "did you mean ...?": a yes, a name, or a no (then the front desk). None if the
        caller moved on to something else."""
        site = self.site
        chosen = rules.mentioned_staff(text, site)
        if chosen is None and rules.is_affirmative(text):
            if len(candidates) > 1:
                return self._clarify(candidates, for_message)  # "yes" to "A or B?": ask again
            chosen = candidates[0]
        if chosen is None and rules.is_negative(text):
            chosen = site.directory.front_desk
        if chosen is None:
            return None
        if for_message:
            return self.offer_message(chosen, self.wording.take_message_prompt, "rule:clarified")
        return self._transfer(chosen, "rule:clarified")

    def _transfer(self, member: StaffMember, source: str, preface: str = "") -> Reply:
        words = self.wording.transfer.format(name=member.name)
        if preface:
            # The emergency wording already says we are putting them through.
            words = preface
        return Reply(words, Action.TRANSFER, member, source=source)

    async def take_message(self, member: StaffMember, text: str, at: float | None = None) -> Reply:
        """Store `text` as a message for `member` and hand it to `on_message_taken`; `at` is when it was
        sent (a written message answered again after a restart is then the same message)."""
        self.awaiting_message = None
        return await self._store_message(member, text, None, self.caller, at)

    async def _spoken_message(self, member: StaffMember, text: str) -> Reply:
        if not self.read_back_numbers:
            return await self.take_message(member, text)
        self.awaiting_message = None
        return self._callback_step(_Callback(member, text, callback.spoken_name(text),
                                             callback.spoken_number(text) or callback.caller_id_number(self.caller)))

    def _callback_step(self, call: _Callback) -> Reply:
        """Ask for what the message still lacks: the caller's name (once), a number, then a yes to it."""
        wording = self.wording
        self._callback = call
        if call.name is None and not call.asked:
            call.asked, words = "name", wording.ask_caller_name
        elif call.number is None:
            call.asked, words = "number", wording.ask_callback_number.format(name=call.member.name)
        else:
            call.asked = "confirm"
            words = wording.read_back_number.format(digits=callback.read_back(call.number))
        return Reply(words, source=f"rule:callback_{call.asked}")

    async def _continue_callback(self, text: str) -> Reply:
        call = self._callback
        assert call is not None
        call.turns += 1
        number = callback.spoken_number(text)
        # More than an answer belongs to the message: a caller who paused mid-message (their turn ended
        # there) goes on with it when asked for a name or a number.
        if callback.says_more(text):
            call.text = f"{call.text} {text}"
        if call.asked == "name":
            call.name = callback.spoken_name(text, answer=True)
        if call.asked == "confirm" and number is None:
            if rules.is_affirmative(text):
                return await self._finish_callback(call)
            if rules.is_negative(text):
                call.number = None
        call.number = number or call.number
        if call.turns >= _MAX_CALLBACK_TURNS:  # keep the message with what we have rather than lose it
            return await self._finish_callback(call)
        return self._callback_step(call)

    async def _finish_callback(self, call: _Callback) -> Reply:
        self._callback = None
        return await self._store_message(call.member, call.text, call.name, call.number or self.caller)

    async def _store_message(self, member: StaffMember, text: str, name: str | None, number: str | None,
                             at: float | None = None) -> Reply:
        message = TakenMessage(call_id=self.call_id, contact_number=number, for_staff=member.name,
                               caller_name=name, text=text, at=time.time() if at is None else at)
        await self.store.take_message(message)
        if self.on_message_taken is not None:
            try:  # stored already: a delivery problem must not cost the caller their call
                await self.on_message_taken(message)
            except Exception:
                log.exception("message delivery failed call=%s for=%s", self.call_id, member.name)
        return Reply(self._then_offer(self.wording.message_taken.format(name=member.name)), target=member,
                     source="rule:message_taken")

    async def _escalate(self, question: str) -> Reply:
        request_id = await self.store.create_help_request(HelpRequest(
            id=None, call_id=self.call_id, contact_number=self.caller, question=question, created_at=time.time()))
        log.info("help request created call=%s id=%s", self.call_id, request_id)
        return Reply(self._then_offer(self.wording.unknown_answer), Action.ESCALATE, source="fallback")

    # ---- optional model ----------------------------------------------------------------------------
    def _schema(self) -> dict:
        names = [m.name for m in self.site.directory.everyone()]
        return {
            "type": "object",
            "properties": {
                "action": {"type": "string", "enum": [a.value for a in Action]},
                "target": {"type": "string", "enum": ["", *names]},
                # Bounded so the grammar closes the object within max_reply_tokens even at one
                # token per character; the rest of the object takes under 48 tokens.
                "reply": {"type": "string", "maxLength": max(40, self.max_reply_tokens - 48)},
            },
            "required": ["action", "target", "reply"],
        }

    def _system_prompt(self) -> str:
        return (
            f"You are the {'written-message' if self.written else 'telephone'} assistant of {self.site.name}, "
            f"{self.site.address}. Reply in one or two short {'written' if self.written else 'spoken'} sentences. "
            "Use ONLY the facts given with each caller message; "
            "never guess numbers, times or prices. If the facts do not answer the question, use action "
            "\"escalate\". To connect the caller to someone, use action \"transfer\" with the person's exact name "
            "as target. Use \"take_message\" when the caller wants to leave a message, \"end_call\" when they "
            f"are done. Staff:\n{_listing(self.site)}\nAnswer with a JSON object."
        )

    def _fit(self, text: str, matches: list[Match], history: list[dict[str, str]]) -> tuple[str, int]:
        """This turn's message and how many of the oldest history messages to drop, measured by the
        model's tokenizer so that the prompt leaves room for the reply. The newest turn always goes in:
        if too long, the end of the caller's words gives way (down to half the room, the rest being
        for the facts), then the weakest facts. The oldest turns give way to it."""
        assert self.engine is not None
        engine = self.engine

        def cost(content: str) -> int:
            return engine.count_tokens(content) + MESSAGE_OVERHEAD_TOKENS

        def total(messages: list[dict[str, str]]) -> int:
            return sum(cost(m["content"]) for m in messages)

        room = engine.context - self.max_reply_tokens - PROMPT_OVERHEAD_TOKENS - cost(self._system_prompt())
        frame = cost(_turn([], ""))
        if room - frame < 16:
            raise LlmError(f"context of {engine.context} tokens leaves no room for a question beside the "
                           f"instructions and a reply of {self.max_reply_tokens}")
        facts = [m.entry.answer for m in matches]
        words = engine.clip(text, max(room // 2 - frame, room - cost(_turn(facts, ""))))
        while facts and cost(_turn(facts, words)) > room:
            facts.pop()  # matches come best first
        newest = _turn(facts, words)
        room -= cost(newest)
        drop = _oldest_to_drop(history, lambda kept: total(kept) <= room // 2) if total(history) > room else 0
        return newest, drop

    async def _ask_model(self, text: str, matches: list[Match], best: Match | None,
                         cancel: threading.Event | None) -> Reply | None:
        assert self.engine is not None
        try:
            # Off the event loop: tokenizing a long email takes a while. On a snapshot, applied only
            # if this turn is still wanted when it returns.
            newest, drop = await asyncio.to_thread(self._fit, text, matches, list(self.history))
            del self.history[:drop]
            messages = [{"role": "system", "content": self._system_prompt()}, *self.history,
                        {"role": "user", "content": newest}]
            decision, gen = await self.engine.chat_json(messages, self._schema(), max_tokens=self.max_reply_tokens,
                                                        cancel=cancel)
        except Cancelled:
            raise
        except LlmError as exc:
            log.warning("llm decision failed call=%s error=%s; using knowledge", self.call_id, exc)
            return None
        timings = {"llm": gen.elapsed_ms, "llm_first_token": gen.first_token_ms}
        action = Action(decision["action"])
        reply_text = str(decision["reply"]).strip()
        if action is Action.TRANSFER:
            member = next((m for m in self.site.directory.everyone() if m.name == decision["target"]),
                          self.site.directory.front_desk)
            reply = self._transfer(member, "llm")
        elif action is Action.TAKE_MESSAGE:
            member = next((m for m in self.site.directory.everyone() if m.name == decision["target"]),
                          self.site.directory.front_desk)
            self.awaiting_message = member
            reply = Reply(self.wording.take_message_prompt.format(name=member.name), action, member, "llm")
        elif action is Action.END_CALL:
            reply = Reply(self.wording.goodbye, action, source="llm")
        elif action is Action.ESCALATE or not reply_text:
            reply = await self._escalate(text)
        else:
            bad = ungrounded_numbers(reply_text, "\n".join(m.entry.answer for m in matches))
            if bad:
                log.info("llm reply dropped call=%s ungrounded=%s", self.call_id, ",".join(bad))
                reply = (self._answer(best.entry.answer, f"knowledge:{best.entry.id}", text) if best
                         else await self._escalate(text))
            else:
                reply = Reply(self._then_offer(reply_text), source="llm")
        reply.timings_ms.update(timings)
        return reply
