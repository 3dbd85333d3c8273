"""Text to speech with Piper, clause by clause, as 8 kHz s16le pcm.

Piper only yields whole sentences, so latency to first audio is the time to
synthesise the first clause: text is cut at sentence ends and at long-enough
comma/semicolon/colon pieces, and each clause is synthesised while the previous
one plays.

The voice's worker threads are shared by all calls, so a reply whose first clause would wait too
long (too many renders in flight, or not ready within `first_audio_timeout_s`) raises `TtsBusy`
at once instead of leaving its caller in silence; cached clauses never wait.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from piper import PiperVoice

from .audio import SAMPLE_RATE, float_to_pcm, resample
from .models import check_piper_voice

log = logging.getLogger(__name__)

MIN_SENTENCE_WORDS = 3  # a shorter sentence joins the next one
MIN_CLAUSE_WORDS = 4  # both sides of a comma split need this many words
# Abbreviations whose period never ends a sentence ("Dr. Smith", "e.g. Monday").
_NEVER_ENDS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "mt", "no", "vs", "e.g", "i.e", "cf", "approx", "ca"}
)
_CLOSERS = "\"')]\u201d\u2019"
_FADE_MS = 5
_SENTENCE_PAUSE_MS = 120
_CLAUSE_PAUSE_MS = 40  # between clauses of one sentence, where Piper gives no pause
_SILENT = 0.01  # |sample| below this counts as existing pause


class TtsBusy(Exception):
    """A reply's first audio cannot be ready in time: the voice's workers are saturated."""


def _is_sentence_end(word: str, next_word: str | None) -> bool:
    core = word.rstrip(_CLOSERS)
    if core.endswith(("!", "?")):
        return True
    if not core.endswith("."):
        return False
    stem = core.rstrip(".").lower()
    if stem in _NEVER_ENDS or re.fullmatch(r"[a-z]", stem):  # title or initial: "J. Smith"
        return False
    return next_word is None or not next_word[0].islower()


def _is_clause_break(word: str) -> bool:
    return word.rstrip(_CLOSERS).endswith((",", ";", ":"))


def _sentences(words: list[str]) -> list[list[str]]:
    sentences: list[list[str]] = [[]]
    for i, word in enumerate(words):
        sentences[-1].append(word)
        if _is_sentence_end(word, words[i + 1] if i + 1 < len(words) else None):
            sentences.append([])
    return [s for s in sentences if s]


def split_clauses(text: str) -> list[str]:
    """Split text into speakable clauses, avoiding 1-2 word ones.

    Sentences end a clause; a comma/semicolon/colon followed by a space ends one only
    when both sides have MIN_CLAUSE_WORDS words. A sentence shorter than
    MIN_SENTENCE_WORDS ("Hi!") joins the next one. Splitting is on whitespace, so
    "8:30", "$120.50" and "1,000" stay whole.
    """
    clauses: list[list[str]] = []
    carry: list[str] = []
    for sentence in _sentences(text.split()):
        words = carry + sentence
        if len(words) < MIN_SENTENCE_WORDS:
            carry = words
            continue
        carry, current = [], []
        for i, word in enumerate(words):
            current.append(word)
            if (
                _is_clause_break(word)
                and len(current) >= MIN_CLAUSE_WORDS
                and len(words) - i - 1 >= MIN_CLAUSE_WORDS
            ):
                clauses.append(current)
                current = []
        clauses.append(current)
    if carry:
        if clauses:
            clauses[-1].extend(carry)
        else:
            clauses.append(carry)
    return [" ".join(c) for c in clauses]


def cache_key(text: str) -> str:
    """Whitespace-normalised text; case and punctuation change how Piper speaks, so they stay."""
    return " ".join(text.split())


def _trailing_silence(x: np.ndarray) -> int:
    loud = np.flatnonzero(np.abs(x) >= _SILENT)
    return len(x) - (int(loud[-1]) + 1 if loud.size else 0)


def _fade(x: np.ndarray) -> np.ndarray:
    n = min(len(x) // 2, SAMPLE_RATE * _FADE_MS // 1000)
    if n:
        ramp = np.linspace(0.0, 1.0, n, endpoint=False, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


class Synthesizer:
    """One Piper voice shared by all calls (Piper's phonemiser is locked, ONNX runs are thread-safe).

    Audio is cached per clause, so a fixed phrase that ends a reply ("Is there anything else ...")
    and a knowledge answer at its start are both ready whatever else the reply says. With a
    `cache_dir`, prepared clauses persist across restarts (keyed by voice file and text).
    """

    def __init__(self, voice_path: Path, *, workers: int = 1, cache_dir: Path | None = None,
                 max_queue: int | None = None, first_audio_timeout_s: float | None = None) -> None:
        voice_path = check_piper_voice(voice_path)
        started = time.monotonic()
        self._voice = PiperVoice.load(str(voice_path))
        self.sample_rate: int = self._voice.config.sample_rate
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="tts")
        self._cache: dict[str, bytes] = {}
        stat = voice_path.stat()
        self._voice_id = f"{voice_path.name}:{stat.st_size}:{stat.st_mtime_ns}"
        self._cache_dir = cache_dir
        self._live = 0  # streams in progress: warm-up waits for them
        self._in_flight = 0  # clause renders submitted and not finished
        self.max_queue, self.first_audio_timeout_s = max_queue, first_audio_timeout_s
        log.info("tts loaded voice=%s rate=%d ms=%d", voice_path, self.sample_rate,
                 (time.monotonic() - started) * 1000)

    def synthesize(self, text: str) -> bytes:
        """The whole text as 8 kHz pcm (the same audio `stream` yields, joined)."""
        clauses = split_clauses(text)
        return b"".join(self.cached(c) or self._render(c, last=i == len(clauses) - 1) for i, c in enumerate(clauses))

    async def stream(self, text: str) -> AsyncIterator[bytes]:
        """Yield 8 kHz pcm clause by clause, synthesising at most one clause ahead.

        Cached clauses come at once. Close the generator (or use contextlib.aclosing) when
        abandoning it: the clause in flight is then cancelled if it has not started, and
        nothing further is queued. Raises TtsBusy before any audio when the first clause
        would wait past the bounds given at construction.
        """
        clauses = split_clauses(text)
        loop = asyncio.get_running_loop()

        def submit(i: int) -> asyncio.Future[bytes]:
            hit = self.cached(clauses[i])
            if hit is not None:
                future: asyncio.Future[bytes] = loop.create_future()
                future.set_result(hit)
                return future
            if i == 0 and self.max_queue is not None and self._in_flight >= self.max_queue:
                raise TtsBusy(f"{self._in_flight} clauses being synthesised")
            self._in_flight += 1
            future = loop.run_in_executor(self._pool, self._render, clauses[i], i == len(clauses) - 1)
            future.add_done_callback(self._rendered)
            return future

        ahead = submit(0) if clauses else None
        self._live += 1
        done = 0
        try:
            while ahead is not None:
                if done == 0 and not ahead.done() and self.first_audio_timeout_s is not None:
                    try:
                        pcm = await asyncio.wait_for(ahead, self.first_audio_timeout_s)
                    except TimeoutError:
                        raise TtsBusy(f"first audio not ready within {self.first_audio_timeout_s:g} s") from None
                else:
                    pcm = await ahead
                done += 1
                ahead = submit(done) if done < len(clauses) else None
                yield pcm
        finally:
            self._live -= 1
            if ahead is not None:
                ahead.cancel()

    async def prepare(self, texts: Iterable[str]) -> None:
        """Synthesise the clauses of fixed phrases into the cache (from disk when stored before).

        One clause at a time, and only while no call is waiting for speech, so warm-up never
        delays a live reply.
        """
        loop = asyncio.get_running_loop()
        for text in texts:
            for clause in split_clauses(text):
                key = cache_key(clause)
                if key in self._cache:
                    continue
                while self._live:
                    await asyncio.sleep(0.05)
                # Rendered with its trailing pause, so the clause fits anywhere in a reply.
                self._cache[key] = await loop.run_in_executor(self._pool, self._load_or_render, clause)
        log.info("tts cache clauses=%d", len(self._cache))

    def _rendered(self, _: asyncio.Future[bytes]) -> None:
        self._in_flight -= 1

    def cached(self, text: str) -> bytes | None:
        return self._cache.get(cache_key(text))

    def _disk_path(self, clause: str) -> Path | None:
        if self._cache_dir is None:
            return None
        digest = hashlib.sha256(f"{self._voice_id}\n{cache_key(clause)}".encode()).hexdigest()[:32]
        return self._cache_dir / f"{digest}.pcm"

    def _load_or_render(self, clause: str) -> bytes:
        path = self._disk_path(clause)
        if path is not None and path.is_file():
            return path.read_bytes()
        pcm = self._render(clause, last=False)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(pcm)
                tmp.replace(path)  # atomic: a crash never leaves a half clause behind
            except OSError as exc:
                log.warning("tts cache not written path=%s error=%s", path, exc.strerror)
        return pcm

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _render(self, clause: str, last: bool) -> bytes:
        """One clause -> 8 kHz pcm: each Piper sentence faded in/out, followed by a pause
        unless it ends the text."""
        started = time.perf_counter()
        chunks = list(self._voice.synthesize(clause))
        ends_sentence = clause.rstrip(_CLOSERS).endswith((".", "!", "?"))
        parts = []
        for i, chunk in enumerate(chunks):
            pcm = resample(chunk.audio_int16_bytes, chunk.sample_rate, SAMPLE_RATE)
            x = _fade(np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0)
            if i < len(chunks) - 1:
                pause_ms = _SENTENCE_PAUSE_MS
            elif last:
                pause_ms = 0
            else:
                pause_ms = _SENTENCE_PAUSE_MS if ends_sentence else _CLAUSE_PAUSE_MS
            pad = max(0, SAMPLE_RATE * pause_ms // 1000 - _trailing_silence(x))
            parts.append(float_to_pcm(x) + bytes(2 * pad))
        pcm = b"".join(parts)
        log.debug("tts clause chars=%d audio_ms=%d ms=%.0f", len(clause), len(pcm) // 16,
                  (time.perf_counter() - started) * 1000)
        return pcm
