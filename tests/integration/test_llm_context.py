"""The LLM engine's constrained output on the chat path."""

from __future__ import annotations

from llm.engine import _parse_json


def test_a_raw_newline_in_a_constrained_string_still_parses() -> None:
    # llama.cpp's JSON-schema grammar lets a string hold control characters; strict JSON does not.
    assert _parse_json('{"reply": "Yes,\nwe do."}') == {"reply": "Yes,\nwe do."}
