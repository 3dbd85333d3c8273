"""Dialog logic on a real store and the real knowledge file; the LLM is scripted here (its real
engine is exercised in tests/integration/test_engine.py)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from llm.dialog import Action, Dialog
from llm.engine import MESSAGE_OVERHEAD_TOKENS, PROMPT_OVERHEAD_TOKENS, Generation, LlmError
from llm.knowledge import Retriever
from models.store import Store

CFG = load_config(Path(__file__).resolve().parents[2] / "etc" / "switchboard.yaml")
SITE = CFG.site
MONDAY_10AM = dt.datetime(2026, 11, 23, 10, tzinfo=SITE.tz)


class ScriptedEngine:
    """Stands in for an instruction-tuned model: returns the next scripted decision, records prompts."""

    instruction_tuned = True

    def __init__(self, *decisions: dict[str, Any] | Exception, context: int = 4096) -> None:
        self.decisions = list(decisions)
        self.context = context
        self.prompts: list[list[dict[str, str]]] = []
        self.schemas: list[dict[str, Any]] = []

    async def chat_json(self, messages, schema, *, max_tokens=160, cancel=None):  # type: ignore[no-untyped-def]
        self.prompts.append(messages)
        self.schemas.append(schema)
        decision = self.decisions.pop(0)
        if isinstance(decision, Exception):
            raise decision
        return decision, Generation("{}", 10, 50.0, 5.0)

    def count_tokens(self, text: str) -> int:  # a token a word: plain to reason about here
        return len(text.split())

    def clip(self, text: str, max_tokens: int) -> str:
        return " ".join(text.split()[:max(0, max_tokens)])


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = await Store.open(tmp_path / "t.db")
    await s.replace_admin_knowledge(CFG.knowledge)
    yield s
    await s.close()


def dialog(store: Store, engine: Any = None, max_reply_tokens: int = 256) -> Dialog:
    return Dialog(SITE, Retriever(store), store, call_id="c1", caller="+15550001", engine=engine,
                  max_reply_tokens=max_reply_tokens, now=lambda: MONDAY_10AM)


async def test_knowledge_answers_in_the_admins_words(store: Store) -> None:
    reply = await dialog(store).respond("do you guys take cigna")
    entry = next(e for e in CFG.knowledge if "Cigna" in e.answer)
    assert reply.text.startswith(entry.answer) and reply.source == f"knowledge:{entry.id}"
    assert reply.action is Action.ANSWER


async def test_unknown_question_escalates_once(store: Store) -> None:
    reply = await dialog(store).respond("Can you fix my laptop screen?")
    assert reply.action is Action.ESCALATE and "get back to you" in reply.text
    requests = await store.help_requests(status="open")
    assert [(r.question, r.contact_number, r.call_id) for r in requests] == \
        [("Can you fix my laptop screen?", "+15550001", "c1")]


async def test_answered_help_request_teaches_the_next_caller(store: Store) -> None:
    await dialog(store).respond("Do you sell electric toothbrushes?")
    request = (await store.help_requests(status="open"))[0]
    await store.answer_help_request(request.id, "Yes, we sell electric toothbrushes at the front desk for 60 dollars.")
    reply = await dialog(store).respond("do you sell electric toothbrushes")
    assert reply.text.startswith("Yes, we sell electric toothbrushes") and reply.action is Action.ANSWER


async def test_message_taking_flow(store: Store, tmp_path: Path) -> None:
    db_path = tmp_path / "t.db"
    d = dialog(store)
    prompt = await d.respond("I'd like to leave a message for Doctor Lopez")
    assert prompt.action is Action.TAKE_MESSAGE and prompt.target.extension == "201"
    done = await d.respond("Please call me back about my crown, my number is 555 0199.")
    assert "Dr. Maria Lopez" in done.text
    with sqlite3.connect(db_path) as db:  # a second reader, as an admin's tool would be
        rows = db.execute("select for_staff, body, channel from messages").fetchall()
    assert rows == [("Dr. Maria Lopez", "Please call me back about my crown, my number is 555 0199.", "voice")]
    goodbye = await d.respond("No, that's it.")
    assert goodbye.action is Action.END_CALL


async def test_hours_come_from_config_not_models(store: Store) -> None:
    engine = ScriptedEngine()
    reply = await dialog(store, engine).respond("Are you open on Saturday?")
    assert reply.text.startswith("On Saturday we're open from 9 a.m. to 1 p.m.") and not engine.prompts


async def test_dtmf_zero_and_emergency_bypass_the_model(store: Store) -> None:
    engine = ScriptedEngine()
    d = dialog(store, engine)
    assert d.on_dtmf("0").target.extension == "200"
    assert d.on_dtmf("5") is None
    reply = await d.respond("This is an emergency, he can't breathe")
    assert reply.action is Action.TRANSFER and reply.source == "rule:emergency" and not engine.prompts


async def test_llm_reply_is_grounded_in_retrieved_facts(store: Store) -> None:
    engine = ScriptedEngine({"action": "answer", "target": "", "reply": "Whitening is 350 dollars."})
    reply = await dialog(store, engine).respond("what do you charge to make teeth whiter")
    assert reply.text.startswith("Whitening is 350 dollars.") and reply.source == "llm"
    facts = engine.prompts[0][-1]["content"]
    assert "350" in facts  # the retrieved entry was given to the model
    assert engine.schemas[0]["properties"]["action"]["enum"] == [a.value for a in Action]
    assert "Dr. Maria Lopez" in engine.schemas[0]["properties"]["target"]["enum"]


async def test_llm_reply_with_an_invented_price_is_replaced(store: Store) -> None:
    engine = ScriptedEngine({"action": "answer", "target": "", "reply": "Whitening is only 99 dollars today!"})
    reply = await dialog(store, engine).respond("how much is teeth whitening")
    assert "99" not in reply.text and "350" in reply.text and reply.source.startswith("knowledge:")


async def test_llm_transfer_and_escalate_and_failure(store: Store) -> None:
    engine = ScriptedEngine(
        {"action": "transfer", "target": "Tom Becker", "reply": ""},
        {"action": "escalate", "target": "", "reply": ""},
        LlmError("cut short"),
    )
    d = dialog(store, engine)
    transfer = await d.respond("I have a question about my bill")
    assert transfer.action is Action.TRANSFER and transfer.target.extension == "204"
    escalate = await d.respond("Can I bring my dog?")
    assert escalate.action is Action.ESCALATE
    fallback = await d.respond("Is there parking?")  # model failed: the knowledge answer still comes
    assert fallback.source.startswith("knowledge:") and "park" in fallback.text.lower()
    assert len(engine.prompts[1]) > len(engine.prompts[0])  # the conversation is kept per call


def prompt_tokens(engine: ScriptedEngine, messages: list[dict[str, str]]) -> int:
    return PROMPT_OVERHEAD_TOKENS + sum(engine.count_tokens(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in messages)


async def test_prompt_fits_the_context_the_oldest_turns_giving_way(store: Store) -> None:
    answer = {"action": "answer", "target": "", "reply": "We do."}
    room = 250  # for the conversation, beside the instructions and the reply
    system = dialog(store)._system_prompt()
    context = 96 + PROMPT_OVERHEAD_TOKENS + len(system.split()) + MESSAGE_OVERHEAD_TOKENS + room
    engine = ScriptedEngine(*[answer] * 12, context=context)
    d = dialog(store, engine, max_reply_tokens=96)
    said = [f"Question {n}: is there anything I should bring to my first cleaning appointment?" for n in range(10)]
    for text in said:
        await d.respond(text)
    for prompt in engine.prompts:
        assert prompt_tokens(engine, prompt) <= context - 96  # room for the whole reply, every turn
    last = engine.prompts[-1]
    assert last[-1]["content"].endswith(f"Caller: {said[-1]}")  # the newest turn, whole
    kept = [m["content"] for m in last[1:-1:2]]
    assert 0 < len(kept) < 9 and kept == said[9 - len(kept):9]  # the newest of the earlier turns, in order
    assert [m["role"] for m in last[1:]] == ["user", "assistant"] * len(kept) + ["user"]

    email = "Do you take Cigna? " + "Quoted earlier mail. " * 2000
    await d.respond(email)
    newest = engine.prompts[-1][-1]["content"]
    assert prompt_tokens(engine, engine.prompts[-1]) <= context - 96
    assert "Cigna" in newest.split("Caller:")[0]  # the best fact stays ...
    assert "Caller: Do you take Cigna? Quoted" in newest  # ... beside the start of the caller's words
    assert len(newest.split("Caller:")[1].split()) >= room // 3


async def test_no_room_beside_the_instructions_means_the_knowledge_answers(store: Store,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    engine = ScriptedEngine(context=300)
    reply = await dialog(store, engine, max_reply_tokens=256).respond("do you take cigna")
    assert reply.source.startswith("knowledge:") and not engine.prompts
    assert "leaves no room for a question" in caplog.text


async def test_stored_history_is_bounded(store: Store) -> None:
    d = dialog(store)
    for n in range(30):
        await d.respond(f"do you take cigna, question {n}? " + "and more words " * 200)
    assert len(d.history) <= 40 and max(len(m["content"]) for m in d.history) <= 1000
    assert d.history[-2]["content"].startswith("do you take cigna, question 29?")


def voice_dialog(store: Store, caller: str | None = None) -> Dialog:
    return Dialog(SITE, Retriever(store), store, call_id="v1", caller=caller, now=lambda: MONDAY_10AM,
                  read_back_numbers=True)


def stored_messages(tmp_path: Path) -> list[tuple]:
    with sqlite3.connect(tmp_path / "t.db") as db:
        return db.execute("select for_staff, body, caller_name from messages").fetchall()


async def test_a_message_said_in_two_turns_keeps_both(store: Store, tmp_path: Path) -> None:
    """The caller paused after their name (the turn ended there) and went on when asked for a number."""
    d = voice_dialog(store)
    await d.respond("Can I leave a message for Tom?")
    ask = await d.respond("This is Anne.")
    assert ask.source == "rule:callback_number"
    check = await d.respond("Please call me back about my crown appointment on 555 0142.")
    assert check.text.startswith("I have 5 5 5, 0 1 4 2.")
    await d.respond("Yes.")
    assert stored_messages(tmp_path) == [
        ("Tom Becker", "This is Anne. Please call me back about my crown appointment on 555 0142.", "Anne")]


@pytest.mark.parametrize(("message", "number", "digits"), [
    ("This is Pat Lee, my crown is loose, call me on 555 0199.", "5550199", "5 5 5, 0 1 9 9"),
    ("It's Pat Lee. My crown is loose. My number is five five five, oh one nine nine.", "5550199",
     "5 5 5, 0 1 9 9"),
    ("My name is Pat Lee and my crown is loose, 212-555-0199", "2125550199", "2 1 2, 5 5 5, 0 1 9 9"),
])
async def test_voice_message_reads_the_number_back_digit_by_digit(store: Store, tmp_path: Path, message: str,
                                                                  number: str, digits: str) -> None:
    d = voice_dialog(store)
    await d.respond("Could Doctor Lopez call me back?")
    check = await d.respond(message)
    assert check.text.startswith(f"I have {digits}.") and check.text.endswith("?")
    assert stored_messages(tmp_path) == []  # not before the caller says the number is right
    done = await d.respond("yes, that's right")
    assert done.source == "rule:message_taken" and "Dr. Maria Lopez" in done.text
    assert stored_messages(tmp_path) == [("Dr. Maria Lopez", message, "Pat Lee")]


async def test_voice_message_asks_for_name_and_number_it_lacks(store: Store, tmp_path: Path) -> None:
    d = voice_dialog(store)  # no caller ID
    await d.respond("Please tell Tom I sent the check.")
    assert (await d.respond("I sent the check on Monday.")).source == "rule:callback_name"
    asked = await d.respond("Pat")
    assert asked.source == "rule:callback_number" and "Tom Becker" in asked.text
    assert (await d.respond("sorry, what?")).text == asked.text  # repeating is not an answer
    assert (await d.respond("it's 555 0123")).text.startswith("I have 5 5 5, 0 1 2 3.")
    asked = await d.respond("no")  # wrong: asked again
    assert asked.source == "rule:callback_number"
    assert (await d.respond("five five five, oh one three two")).text.startswith("I have 5 5 5, 0 1 3 2.")
    assert (await d.respond("yep")).source == "rule:message_taken"
    assert stored_messages(tmp_path) == [("Tom Becker", "I sent the check on Monday.", "Pat")]


async def test_voice_message_offers_the_caller_id_and_takes_a_correction(store: Store) -> None:
    d = voice_dialog(store, caller="+1 555 0100")
    await d.respond("I'd like to leave a message for Sarah")
    assert (await d.respond("This is Jo, please call me about my cleaning")).text.startswith(
        "I have 1, 5 5 5, 0 1 0 0.")
    fixed = await d.respond("no, it's 555 0111")
    assert fixed.text.startswith("I have 5 5 5, 0 1 1 1.")
    assert (await d.respond("that's right")).source == "rule:message_taken"


async def test_emergency_while_a_message_is_pending_gets_911(store: Store, tmp_path: Path) -> None:
    d = voice_dialog(store)
    await d.respond("Have Doctor Chen call me back")
    reply = await d.respond("my wife is unconscious")
    assert reply.source == "rule:emergency" and "9 1 1" in reply.text


@pytest.mark.parametrize("then", ["hang up", "emergency"])
async def test_message_not_yet_confirmed_is_kept(store: Store, tmp_path: Path, then: str) -> None:
    d = voice_dialog(store, caller="+15550100")
    await d.respond("Please have Doctor Chen call me back")
    assert (await d.respond("It's Pat, my filling hurts")).source == "rule:callback_confirm"
    if then == "hang up":
        await d.call_ended()
    else:
        assert (await d.respond("oh no, he's not breathing")).source == "rule:emergency"
    await d.call_ended()  # once only
    assert stored_messages(tmp_path) == [("Dr. James Chen", "It's Pat, my filling hurts", "Pat")]


async def test_a_staff_member_in_another_hearing_is_asked_about_before_i_dont_know(store: Store) -> None:
    """Speech recognition's runner-up hearings (an espeak-ng caller, measured): only people are taken
    from them, as a question; a knowledge entry found only there is not offered."""
    d = dialog(store)
    reply = await d.respond("Can I beat the town of Johnson?",
                            alternatives=("Can I beat the town of Johnston?", "Can I speak to Thomas Johnson?"))
    assert reply.source == "clarify:Sarah Johnson" and reply.action is not Action.TRANSFER
    reply = await d.respond("yes")
    assert reply.action is Action.TRANSFER and reply.target.name == "Sarah Johnson"

    d = dialog(store)
    reply = await d.respond("I need to talk to Mr. Makers.", alternatives=("Tell Mr. Becker that I called.",))
    assert reply.source == "clarify:Tom Becker"
    assert (await d.respond("yes")).action is Action.TAKE_MESSAGE

    d = dialog(store)
    assert (await d.respond("Through the cabbage window.", alternatives=("What are your opening hours?",))).action \
        is Action.ESCALATE
    d = dialog(store)  # without the runner-up, as before
    assert (await d.respond("Can I beat the town of Johnson?")).action is Action.ESCALATE
