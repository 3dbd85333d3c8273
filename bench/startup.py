"""What each bundled model costs the daemon at start: load time and resident memory.

Loads them one after another in one process (the daemon loads them concurrently, so its start is
shorter than the sum) and prints, per model, the time and the growth of the process's RSS.

    .venv/bin/python bench/startup.py
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from common import ROOT, table

from gateway.config import load_config
from llm.bundled import ensure_bundled_gguf
from llm.engine import LlmEngine
from llm.knowledge import Retriever
from models.store import Store
from speech.models import bundled_piper_voice, bundled_whisper_dir
from speech.stt import Transcriber
from speech.tts import Synthesizer
from speech.voice import load_model as load_voice_model


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main() -> None:
    config = load_config(ROOT / "etc" / "switchboard.yaml")
    rows: list[tuple[str, ...]] = [("python and the libraries", "-", f"{rss_mb():.0f}")]
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "bench.db")
        await store.replace_admin_knowledge(config.knowledge)
        gguf = await asyncio.to_thread(ensure_bundled_gguf, config.models_dir, False)
        loaded: list[object] = []

        async def step(name: str, load) -> None:  # type: ignore[no-untyped-def]
            before, t0 = rss_mb(), time.perf_counter()
            loaded.append(await load())
            rows.append((name, f"{(time.perf_counter() - t0) * 1000:.0f}", f"+{rss_mb() - before:.0f}"))

        await step("STT: faster-whisper tiny.en", lambda: asyncio.to_thread(
            Transcriber, bundled_whisper_dir(), cpu_threads=2, workers=1, max_queue=8))
        await step("TTS: Piper joe-medium", lambda: asyncio.to_thread(Synthesizer, bundled_piper_voice()))
        await step("barge-in: Silero", lambda: asyncio.to_thread(load_voice_model))
        retriever = Retriever(store)
        await step("retrieval: WordLlama + entry vectors", retriever.prepare)

        async def llm() -> LlmEngine:
            engine = await asyncio.to_thread(LlmEngine, gguf, threads=2, context=4096)
            await engine.health_check()
            return engine

        await step("LLM: bundled Gemma 3 270M base, + health check", llm)
        rows.append(("total", "-", f"{rss_mb():.0f}"))
        for thing in loaded:
            close = getattr(thing, "close", None)
            if close is not None:
                await asyncio.to_thread(close)
        await store.close()
    print(table(rows, ("loaded", "ms", "RSS MB")))


if __name__ == "__main__":
    asyncio.run(main())
