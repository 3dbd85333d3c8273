"""The real llama.cpp engine on the bundled Gemma 3 270M base model."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from llm.engine import Cancelled, LlmEngine, LlmError

pytestmark = pytest.mark.models

SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "enum": ["answer", "transfer", "take_message", "escalate", "end_call"]},
        "target": {"type": "string", "enum": ["", "Dr. Maria Lopez", "the front desk"]},
        "reply": {"type": "string", "maxLength": 40},
    },
    "required": ["action", "target", "reply"],
}


async def test_by_default_no_llm_is_loaded(services) -> None:  # type: ignore[no-untyped-def]
    assert services.config.models.llm.path is None
    assert services.engine is None and services.dialog_engine is None


async def test_bundled_base_model_loads_and_is_not_for_dialog(bundled_engine) -> None:  # type: ignore[no-untyped-def]
    engine = bundled_engine
    assert not engine.instruction_tuned
    health = await engine.health_check()
    assert health.tokens > 0 and health.text.strip()
    with pytest.raises(LlmError, match="no chat template"):
        await engine.chat_json([{"role": "user", "content": "hi"}], SCHEMA)


@pytest.mark.parametrize("caller", ["Put me through to Doctor Lopez.", "What's the price of a filling?", "Bye!"])
async def test_constrained_output_is_always_a_valid_action(bundled_engine, caller: str) -> None:  # type: ignore[no-untyped-def]
    prompt = f"Phone assistant. Caller: {caller}\nDecision as JSON:"
    decision, gen = await bundled_engine.complete_json(prompt, SCHEMA, max_tokens=100)
    assert set(decision) == {"action", "target", "reply"}
    assert decision["action"] in SCHEMA["properties"]["action"]["enum"]
    assert decision["target"] in SCHEMA["properties"]["target"]["enum"]
    assert len(decision["reply"]) <= 40
    assert gen.tokens > 0


async def test_cancel_stops_generation(bundled_engine) -> None:  # type: ignore[no-untyped-def]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        await bundled_engine.complete_json("Caller: hello\nJSON:", SCHEMA, max_tokens=200, cancel=cancel)


def test_missing_and_corrupt_model_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(LlmError, match=str(tmp_path / "none.gguf")):
        LlmEngine(tmp_path / "none.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 1000)
    with pytest.raises(LlmError, match="bad.gguf: cannot be loaded"):
        LlmEngine(bad)


async def test_chat_path_runs_on_the_real_engine(services, bundled_engine) -> None:  # type: ignore[no-untyped-def]
    """The dialog's chat + grammar path on real llama.cpp inference (the bundled base model dressed with
    an explicit chat format; its words are meaningless, its structure must still be valid)."""
    import datetime as dt

    from llm.dialog import Action, Dialog
    from llm.knowledge import Retriever

    engine = await asyncio.to_thread(LlmEngine, bundled_engine.path, threads=2, context=2048, chat_format="gemma")
    try:
        assert engine.instruction_tuned
        site = services.config.site
        dialog = Dialog(site, Retriever(services.store), services.store, call_id="llm-chat", caller=None,
                        engine=engine, max_reply_tokens=96, now=lambda: dt.datetime(2026, 11, 23, 10, tzinfo=site.tz))
        reply = await dialog.respond("How much is teeth whitening?")
        assert reply.action in set(Action) and reply.text
        assert reply.source in ("llm", "fallback") or reply.source.startswith("knowledge:")
        assert reply.timings_ms["llm"] > 0  # the model really ran
        if reply.source == "llm":  # whatever it said, no number outside the retrieved facts got through
            from llm.grounding import ungrounded_numbers

            assert not ungrounded_numbers(reply.text, "350 dollars")
    finally:
        engine.close()
