"""Shared fixtures: the real bundled models and a real gateway on a loopback port, loaded once per run."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
ETC = ROOT / "etc"
FIXTURES = ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def config(data_dir: Path):  # type: ignore[no-untyped-def]
    from gateway.config import load_config

    cfg = load_config(ETC / "switchboard.yaml", data_dir=data_dir)
    # Tests must not wait 10 s for the no-speech prompt unless they ask for it, nor hand a caller off
    # because a shared machine is slow (test_capacity.py sets stage timeouts low on purpose).
    slow_ok = {"stt_timeout_s": 30.0, "dialog_timeout_s": 30.0, "first_audio_timeout_s": 30.0}
    # Any free port for the HTTP API: several daemons (and other checkouts' tests) run side by side.
    return dataclasses.replace(cfg, calls=cfg.calls.model_copy(update={"no_speech_timeout_s": 30.0}),
                               capacity=cfg.capacity.model_copy(update=slow_ok),
                               http=cfg.http.model_copy(update={"port": 0}))


@pytest.fixture(scope="session")
async def services(config) -> AsyncIterator:  # type: ignore[no-untyped-def]
    from gateway.services import load_services

    svc = await load_services(config, progress=False)
    yield svc
    await svc.close()


@pytest.fixture(scope="session")
async def bundled_engine(config) -> AsyncIterator:  # type: ignore[no-untyped-def]
    """The real llama.cpp engine on the bundled Gemma 3 270M base (the daemon loads no LLM by default)."""
    import asyncio

    from llm.bundled import ensure_bundled_gguf
    from llm.engine import LlmEngine

    path = await asyncio.to_thread(ensure_bundled_gguf, config.models_dir, False)
    engine = await asyncio.to_thread(LlmEngine, path, threads=2, context=4096)
    yield engine
    await asyncio.to_thread(engine.close)


@pytest.fixture(scope="session")
async def gateway(services) -> AsyncIterator:  # type: ignore[no-untyped-def]
    from tests.support.gateway import running_gateway

    async with running_gateway(services) as gw:
        yield gw


@pytest.fixture(scope="session")
def speak(services):  # type: ignore[no-untyped-def]
    """Caller speech for tests: the bundled Piper voice at 8 kHz, cached per text."""
    import asyncio

    cache: dict[str, bytes] = {}

    async def _speak(text: str) -> bytes:
        if text not in cache:
            cache[text] = await asyncio.to_thread(services.synthesizer.synthesize, text)
        return cache[text]

    return _speak
