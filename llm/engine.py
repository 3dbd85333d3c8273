"""llama.cpp behind one worker thread.

A llama.cpp context is not thread-safe (PROTOCOLS §8), so every call is queued onto one
dedicated thread; that also keeps the prompt prefix of the last call in the KV cache. Work is
streamed token by token inside the thread so an abandoned reply (barge-in, hang-up) stops
generating at the next token instead of running to max_tokens. At most `max_queue` generations
wait or run at once; one more raises LlmBusy (an LlmError, so a dialog answers from its
knowledge without the model) rather than queueing behind work that would make it late.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

# Chat markup around one message (role header, end of turn: 5 tokens in Gemma and ChatML) and around
# the whole prompt (BOS, the reply's role header). llama-cpp-python formats the prompt only inside a
# generation, so these are allowances on top of the content's real token count.
MESSAGE_OVERHEAD_TOKENS = 8
PROMPT_OVERHEAD_TOKENS = 8
_MAX_TOKEN_CHARS = 16  # clip() reads at most this many characters a token: tokenizing a 1 MB email is not free


class LlmError(Exception):
    pass


class LlmBusy(LlmError):
    """The engine's queue is at its bound."""


class Cancelled(Exception):
    """The caller no longer wants this generation."""


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int
    elapsed_ms: float
    first_token_ms: float


class LlmEngine:
    def __init__(self, model_path: Path, *, threads: int = 2, context: int = 4096,
                 chat_format: str | None = None, max_queue: int | None = None) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise LlmError(f"model file {path}: not found (set models.llm.path in etc/switchboard.yaml)")
        from llama_cpp import Llama  # heavy import, only when an engine is really wanted

        try:
            self._llm = Llama(
                model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                chat_format=chat_format, verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise LlmError(f"model file {path}: cannot be loaded by llama.cpp ({exc}); is it a complete GGUF?") from None
        self.path = path
        meta = self._llm.metadata
        self.name = meta.get("general.name", path.stem)
        # Only an instruction-tuned model ships a chat template; a base model's free text is not fit for callers.
        # `chat_format` is for instruction-tuned GGUFs converted without their template: the admin vouches.
        self.chat_template: str | None = meta.get("tokenizer.chat_template") or chat_format
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm")
        self.max_queue, self._queued = max_queue, 0  # generations submitted and not finished
        # A dialog re-measures its whole history every turn; the texts repeat, so their counts are kept.
        self._count = functools.lru_cache(maxsize=1024)(self._count_uncached)

    @property
    def instruction_tuned(self) -> bool:
        return bool(self.chat_template)

    @property
    def context(self) -> int:
        """The context window in tokens: prompt and reply together must fit in it."""
        return int(self._llm.n_ctx())

    # Tokenizing reads only the model's vocabulary, so these two are safe off the engine thread.
    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes as message content, by the model's own tokenizer."""
        return self._count(text)

    def clip(self, text: str, max_tokens: int) -> str:
        """`text` cut at its end to at most `max_tokens` tokens."""
        n = max(0, max_tokens)
        head = text[: n * _MAX_TOKEN_CHARS]
        tokens = self._tokenize(head)
        if head == text and len(tokens) <= n:
            return text
        return self._llm.detokenize(tokens[:n]).decode("utf-8", "ignore")

    def _tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode(), add_bos=False, special=True)  # as llama.cpp reads a chat prompt

    def _count_uncached(self, text: str) -> int:
        return len(self._tokenize(text))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._llm.close()

    # ---- synchronous primitives (run on the engine thread) ------------------------------------
    def _collect(self, chunks: Iterator[dict[str, Any]], cancel: threading.Event | None, chat: bool) -> Generation:
        start = time.perf_counter()
        first = 0.0
        parts: list[str] = []
        for n, chunk in enumerate(chunks, 1):
            if cancel is not None and cancel.is_set():
                chunks.close()  # type: ignore[attr-defined]  # stops llama.cpp at this token
                raise Cancelled()
            choice = chunk["choices"][0]
            piece = (choice.get("delta", {}).get("content") if chat else choice.get("text")) or ""
            if piece and not first:
                first = (time.perf_counter() - start) * 1000
            parts.append(piece)
        return Generation("".join(parts), n if parts else 0, (time.perf_counter() - start) * 1000, first)

    def _chat_json(self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int,
                   cancel: threading.Event | None) -> tuple[dict[str, Any], Generation]:
        stream = self._llm.create_chat_completion(
            messages=messages, response_format={"type": "json_object", "schema": schema},
            temperature=0.2, max_tokens=max_tokens, stream=True,
        )
        gen = self._collect(stream, cancel, chat=True)
        return _parse_json(gen.text), gen

    def _complete_json(self, prompt: str, schema: dict[str, Any], max_tokens: int,
                       cancel: threading.Event | None) -> tuple[dict[str, Any], Generation]:
        from llama_cpp import LlamaGrammar

        grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        stream = self._llm.create_completion(
            prompt=prompt, grammar=grammar, temperature=0.2, max_tokens=max_tokens, stream=True,
        )
        gen = self._collect(stream, cancel, chat=False)
        return _parse_json(gen.text), gen

    def _health(self) -> Generation:
        stream = self._llm.create_completion(prompt="The clinic opens at", max_tokens=4, temperature=0.0, stream=True)
        gen = self._collect(stream, None, chat=False)
        if gen.tokens == 0:
            raise LlmError(f"model file {self.path}: produced no tokens in the health check")
        return gen

    # ---- async API ----------------------------------------------------------------------------
    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except (Cancelled, LlmError):
            raise
        except Exception as exc:  # e.g. llama.cpp's ValueError when a prompt overflows the context
            raise LlmError(f"llama.cpp failed: {type(exc).__name__}: {exc}") from exc

    async def _generate(self, fn: Any, *args: Any) -> Any:
        if self.max_queue is not None and self._queued >= self.max_queue:
            raise LlmBusy(f"{self._queued} generations queued")
        self._queued += 1
        try:
            return await self._run(fn, *args)
        finally:
            self._queued -= 1

    async def health_check(self) -> Generation:
        return await self._run(self._health)

    async def chat_json(self, messages: list[dict[str, str]], schema: dict[str, Any], *, max_tokens: int = 256,
                        cancel: threading.Event | None = None) -> tuple[dict[str, Any], Generation]:
        """Grammar-constrained chat completion: the result always parses and matches `schema`'s enums."""
        if not self.instruction_tuned:
            raise LlmError(f"{self.name} has no chat template; it is not fit for dialog")
        return await self._generate(self._chat_json, messages, schema, max_tokens, cancel)

    async def complete_json(self, prompt: str, schema: dict[str, Any], *, max_tokens: int = 160,
                            cancel: threading.Event | None = None) -> tuple[dict[str, Any], Generation]:
        """Grammar-constrained raw completion (works on base models too)."""
        return await self._generate(self._complete_json, prompt, schema, max_tokens, cancel)


def _parse_json(text: str) -> dict[str, Any]:
    try:
        # Not strict: llama.cpp's JSON-schema grammar lets a string hold a raw newline or tab.
        value = json.loads(text, strict=False)
    except json.JSONDecodeError as exc:
        # Only possible when max_tokens cut the grammar short.
        raise LlmError(f"constrained output was cut short: {exc}") from None
    if not isinstance(value, dict):
        raise LlmError("constrained output is not a JSON object")
    return value
