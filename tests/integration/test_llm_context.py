"""A dialog's prompt stays inside llama.cpp's context however long the conversation, and an engine
failure costs one turn its model, never the call: the real bundled GGUF with a small context, on the
chat path (the base model dressed with an explicit chat format, as in test_engine.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator

import pytest
from test_conversation import SITE, store  # noqa: F401  # store: a real one holding the site's knowledge

from llm.bundled import ensure_bundled_gguf
from llm.dialog import Action, Dialog
from llm.engine import LlmEngine, _parse_json
from llm.knowledge import Retriever
from models.store import Store

pytestmark = pytest.mark.models

CONTEXT = 512  # small, so that a few turns overflow it
REPLY_TOKENS = 96  # the smallest the config allows
# About 45 tokens each; none trips a rule.
QUESTIONS = [
    "My sister had her teeth whitened with you last spring and she was really happy with the result, "
    "so I have been thinking about doing the same before my wedding in June. How much does whitening cost?",
    "I changed jobs recently and my new employer gives us Cigna dental through work, and I am not sure "
    "whether my cleanings and fillings would be covered if I keep coming to your clinic. Do you take Cigna?",
    "We are driving in from the other side of town next week and last time it took us ages to find a spot "
    "near the building, my mother uses a walker so it matters. Where can we park near the entrance?",
    "My son is seven and he has never been to a dentist because he is terrified of needles and of the "
    "noise of the drill, his school nurse said we should not wait longer. Do you see children as well?",
]


@pytest.fixture(scope="module")
async def engine(config) -> AsyncIterator[LlmEngine]:  # type: ignore[no-untyped-def]
    path = await asyncio.to_thread(ensure_bundled_gguf, config.models_dir, False)
    llm = await asyncio.to_thread(LlmEngine, path, threads=2, context=CONTEXT, chat_format="gemma")
    yield llm
    llm.close()


def dialog(store: Store, engine: LlmEngine) -> Dialog:
    return Dialog(SITE, Retriever(store), store, call_id="ctx", caller="+15550001", engine=engine,
                  max_reply_tokens=REPLY_TOKENS, now=lambda: dt.datetime(2026, 11, 23, 10, tzinfo=SITE.tz))


async def test_a_long_conversation_keeps_the_model_answering(store: Store, engine: LlmEngine,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    d = dialog(store, engine)
    quoted = "\n\n" + "> On Monday you wrote: thank you for your visit, see you soon.\n" * 400
    # Two turns of three questions, then a long email: without the bound the third overflows CONTEXT.
    turns = [" ".join(QUESTIONS[:3]), " ".join(QUESTIONS[1:]), QUESTIONS[1] + quoted]
    with caplog.at_level(logging.WARNING, logger="llm.dialog"):
        for text in turns:
            reply = await d.respond(text)
            assert reply.text and reply.timings_ms["llm"] > 0  # the model ran every turn ...
            if reply.action is Action.TAKE_MESSAGE:  # the base model's pick is arbitrary: leave one, go on
                await d.respond("Please call me back tomorrow.")
    assert "llm decision failed" not in caplog.text  # ... and its prompt always fitted, reply included
    assert d.history[0]["content"] != turns[0]  # the oldest turns gave way


async def test_an_engine_failure_costs_one_turn_its_model_not_the_call(
        store: Store, engine: LlmEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    d = dialog(store, engine)
    # Fault injection: the engine claims a context far larger than llama.cpp's, so the prompt is
    # not cut down and llama.cpp itself refuses it (its ValueError on an overflowing prompt).
    monkeypatch.setattr(LlmEngine, "context", property(lambda self: 16 * CONTEXT))
    with caplog.at_level(logging.WARNING, logger="llm.dialog"):
        failed = await d.respond(" ".join(QUESTIONS[:1] * 12))
    monkeypatch.undo()
    # As without a model: an answer, a confirming question or an escalation from the knowledge.
    assert failed.source.startswith(("knowledge:", "confirm:")) or failed.action is Action.ESCALATE
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "llm.dialog"]
    assert len(warnings) == 1 and "ValueError" in warnings[0] and "exceed context window" in warnings[0]
    later = await d.respond(QUESTIONS[2])
    assert later.text and later.timings_ms["llm"] > 0  # the model answers the next turn


def test_a_raw_newline_in_a_constrained_string_still_parses() -> None:
    # llama.cpp's JSON-schema grammar lets a string hold control characters; strict JSON does not.
    assert _parse_json('{"reply": "Yes,\nwe do."}') == {"reply": "Yes,\nwe do."}
