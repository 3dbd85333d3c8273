"""Everything a call shares: the store, the three engines (loaded once per process), admission control."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.config import Config
from llm.bundled import ensure_bundled_gguf
from llm.engine import LlmEngine
from llm.knowledge import Retriever
from models.store import Store
from speech.models import bundled_piper_voice, bundled_whisper_dir, check_piper_voice, check_whisper_dir
from speech.stt import Transcriber
from speech.tts import Synthesizer
from speech.voice import load_model as load_voice_model

log = logging.getLogger(__name__)

CAPABLE_MODEL_HINT = (
    "for understanding and phrasing, configure an instruction-tuned GGUF: "
    "`switchboard models list`, `switchboard models pull NAME`, then set models.llm.path in etc/switchboard.yaml"
)


class Overloaded(Exception):
    """Every AI turn slot is taken (capacity.max_turns)."""


@dataclass
class Services:
    config: Config
    store: Store
    retriever: Retriever
    transcriber: Transcriber
    synthesizer: Synthesizer
    engine: LlmEngine | None  # None: no LLM configured (models.llm.path)
    load_ms: dict[str, float] = field(default_factory=dict)
    _turns: int = 0  # caller turns in STT or dialog now

    @property
    def dialog_engine(self) -> LlmEngine | None:
        """The LLM takes part in dialog only if it is instruction-tuned (has a chat template)."""
        return self.engine if self.engine is not None and self.engine.instruction_tuned else None

    @property
    def turns_in_use(self) -> int:
        return self._turns

    def admit(self) -> bool:
        """May a new call start? Calls cost nothing while silent (the greeting is a cached phrase), so
        this is False only while every AI turn slot is taken; the caller is then put through to staff."""
        return self._turns < self.config.capacity.max_turns

    @contextlib.contextmanager
    def ai_turn(self) -> Iterator[None]:
        """Hold one of capacity.max_turns slots for a caller turn's STT and dialog; raises Overloaded."""
        if self._turns >= self.config.capacity.max_turns:
            raise Overloaded(f"{self._turns} turns in progress")
        self._turns += 1
        try:
            yield
        finally:
            self._turns -= 1

    def fixed_phrases(self) -> list[str]:
        """Sentences worth synthesising before any caller needs them."""
        site = self.config.site
        w = site.wording
        # The busy hand-off first: it must play even when speech synthesis is saturated.
        phrases = [w.busy, site.greeting, w.anything_else, w.not_understood, w.no_speech_prompt, w.goodbye, w.emergency,
                   w.shutting_down, w.unknown_answer, w.press_to_repeat]
        for member in site.directory.everyone():
            phrases += [w.transfer.format(name=member.name), w.take_message_prompt.format(name=member.name),
                        w.message_taken.format(name=member.name), w.transfer_unavailable.format(name=member.name)]
        phrases += [entry.answer for entry in self.config.knowledge]
        return phrases

    async def close(self) -> None:
        await asyncio.to_thread(self.transcriber.close)
        await asyncio.to_thread(self.synthesizer.close)
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
        await self.store.close()


async def _timed(name: str, timings: dict[str, float], fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    result = await asyncio.to_thread(fn, *args, **kwargs)
    timings[name] = (time.perf_counter() - t0) * 1000
    return result


async def _nothing() -> None:
    return None


async def load_services(config: Config, *, progress: bool = True, client: bool = False) -> Services:
    """Open the store and load the models (in threads, concurrently); raises with a clear message.
    client=True for a CLI command beside the daemon: the store is opened as a client and the daemon's
    knowledge is left as the daemon loaded it."""
    timings: dict[str, float] = {}
    store = await Store.open(config.database, client=client)
    try:
        if not client:
            await store.replace_admin_knowledge(config.knowledge)
        stt_dir = check_whisper_dir(config.models.stt.path or bundled_whisper_dir())
        voice = check_piper_voice(config.models.tts.voice or bundled_piper_voice())
        llm = config.models.llm
        llm_path = await asyncio.to_thread(ensure_bundled_gguf, config.models_dir, progress) \
            if llm.path == "bundled" else llm.path
        retriever = Retriever(store)
        cap = config.capacity
        transcriber, synthesizer, engine, _, _ = await asyncio.gather(
            _timed("stt", timings, Transcriber, stt_dir, cpu_threads=config.models.stt.threads,
                   workers=config.models.stt.workers, max_queue=cap.stt_queue),
            _timed("tts", timings, Synthesizer, voice, workers=config.models.tts.workers,
                   cache_dir=config.data_dir / "tts-cache", max_queue=cap.tts_queue,
                   first_audio_timeout_s=cap.first_audio_timeout_s),
            _timed("llm", timings, LlmEngine, llm_path, threads=llm.threads, context=llm.context,
                   chat_format=llm.chat_format, max_queue=cap.llm_queue) if llm_path else _nothing(),
            retriever.prepare(),  # the embedding model and the entries' vectors, before the first caller
            _timed("vad", timings, load_voice_model),  # barge-in's second opinion
        )
    except BaseException:
        await store.close()
        raise
    services = Services(config, store, retriever, transcriber, synthesizer, engine, timings)
    health_ms = (await engine.health_check()).elapsed_ms if engine is not None else 0.0
    log.info("models loaded stt=%s tts=%s llm=%s load_ms=%s llm_health_ms=%.0f", stt_dir, voice, llm_path or "none",
             {k: round(v) for k, v in timings.items()}, health_ms)
    if engine is None:
        log.info("no LLM configured: replies come from rules and the site's knowledge; %s", CAPABLE_MODEL_HINT)
    elif not engine.instruction_tuned:
        log.warning("llm model=%s has no chat template: loaded and health-checked only, never spoken; replies come "
                    "from rules and the site's knowledge; %s", engine.name, CAPABLE_MODEL_HINT)
    return services
