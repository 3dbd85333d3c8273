"""Speech to text with faster-whisper, tuned for short telephone utterances.

faster-whisper pads every input to Whisper's 30 s window (3000 mel frames), which
costs ~0.5-1 s per call on 2 cores even for "yes". The CTranslate2 encoder also
accepts a shorter window, so utterances up to ~28 s are encoded in a window sized
to the audio: ~0.1 s for a 2 s utterance, same text. Windows below ~10 s often made
tiny.en loop ("Is anybody there? Is anybody there? ...") in our measurements, so
the window never goes below `_MIN_WINDOW`; loops still happen now and then (noise,
a lone "No."), so a capped token budget and a repetition check catch them and redo
that utterance the standard way. A decode that stops well before the voice does (a long
turn's last words lost) is redone once in the whole 30 s window.

All calls share a few STT worker threads through one bounded queue (`SttQueue`): a caller whose turn
has ended goes before any speculation (a transcript started at a short pause, in case the pause
ends the turn), and a speculation whose caller spoke on is skipped, never run.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import re
import threading
import time
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before faster_whisper pulls in huggingface_hub

import ctranslate2  # noqa: E402
import numpy as np  # noqa: E402
from faster_whisper import WhisperModel  # noqa: E402
from faster_whisper.tokenizer import Tokenizer  # noqa: E402
from faster_whisper.transcribe import get_suppressed_tokens  # noqa: E402

from .audio import SAMPLE_RATE, pcm_to_float, resample  # noqa: E402
from .models import check_whisper_dir  # noqa: E402

log = logging.getLogger(__name__)

WHISPER_RATE = 16000
_FRAMES_PER_S = 100  # mel frames (10 ms hop)
_FULL_WINDOW = 3000  # Whisper's native 30 s window
_MIN_WINDOW = 1000
_WINDOW_MARGIN = 200  # frames of padding after the content
_SHORT_PATH_MAX_FRAMES = 2800  # longer utterances take faster-whisper's own path
_MAX_LENGTH = 448  # Whisper decoder context
# Generous token budget: fast speech is ~4-5 tokens/s; hitting it means a loop.
_TOKENS_BASE, _TOKENS_PER_S = 16, 8
_MAX_COMPRESSION = 2.4  # faster-whisper's own "too repetitive" threshold

# What Whisper says to silence, hum and line noise (in normalize_text form).
HALLUCINATIONS = frozenset(
    {
        "you", "thank you", "thank you very much", "thank you so much", "thanks",
        "thanks for watching", "thank you for watching", "thanks for listening",
        "bye", "bye bye", "goodbye", "oh", "uh", "um", "hmm", "so", "the",
        "music", "silence", "applause", "laughter", "blank audio", "inaudible",
        "please subscribe", "like and subscribe", "see you next time",
    }
)
_HALLUCINATION_PREFIXES = ("subtitles by", "captions by", "transcribed by", "translated by")
_QUIET_DBFS = -50.0  # loudest 100 ms below this: nobody spoke, whatever the text
# A listed phrase (or an echo of the prompt) is only believed when audibly spoken with
# some confidence.
_SHORT_SPEECH_MS = 150  # less audio near the peak level than this cannot be a word
_NO_SPEECH_PROB = 0.8
# Whisper's own rule for "this segment is silence", applied to any text.
_SILENCE_NO_SPEECH_PROB, _SILENCE_LOGPROB = 0.6, -1.0
# A fitted-window greedy decode sometimes ends early and drops the rest of a long turn (the phone
# number at its end). Utterances this long are aligned to their text (cross-attention, ~10-60 ms for
# tiny.en); voice going on well after the text's last token means words were lost, and the whole
# 30 s window decodes it once more (as faster-whisper would, same token budget); the longer
# transcript wins. In complete transcripts the last token starts within ~1 s of the end of the voice
# in our measurements; truncated ones left 4-6 s.
_TRUNCATION_MIN_FRAMES = 300
_TRUNCATED_GAP_S = 2.0
_MIN_WORDS_PER_S = 1.0  # of audible voice; complete transcripts had 2.7 or more
_VOICED_DB = 20.0  # a block this close to the peak level is voice, not line noise
_ALIGN_FRAMES_PER_S = 50  # encoder frames
# The prompt's names leak into transcripts of garbled speech ("... toothache, and MetLife, I might").
# A prompt word the decoder wrote with a first-token probability below this is dropped: in
# bench/hearing.py leaks fell from 7 to 2 in 420 utterances, names said and heard from 120 to 117/189.
_WEAK_NAME_PROB = 0.15
# A transcript whose average token log-probability is below this is decoded a second time when a
# second prompt is given (Transcriber.transcribe). Set on bench/understanding_tuning.yaml's voices.
_SECOND_DECODE_BELOW = -0.3
# Greedy decoding is fast and right on a clear voice. A transcript heard with less confidence than
# this is decoded again from the same encoder output by beam search, which keeps the words greedy
# decoding lost at one bad token ("I want to recurge, Julie" -> "I want to reschedule"). On
# bench/understanding_tuning.yaml in espeak-ng voices it took right outcomes from 33 to 40 of 60;
# clear voices stay above it and pay nothing.
_BEAM_BELOW = -0.4
_BEAM_SIZE = 5


@dataclass
class Transcript:
    text: str
    audio_ms: int
    elapsed_ms: float
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    path: str = ""  # window (fitted), retry (window stopped early), full (standard 30 s), empty; "+beam": re-decoded
    # The same audio decoded again with the second prompt (see Transcriber.transcribe), or "".
    second_text: str = ""
    # Of a doubtful hearing decoded by beam search, its runner-up hypotheses, best first: what the
    # caller may have said instead (a name: "Thomas Johnson" beside "the town of Johnson").
    alternatives: tuple[str, ...] = ()


@dataclass
class _Decoded:
    text: str
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    encoded: ctranslate2.StorageView  # the encoder output, for forced alignment
    alternatives: tuple[str, ...] = ()  # a beam search's other hypotheses


class SttBusy(Exception):
    """The STT queue is at its bound: this utterance would not be transcribed in time."""


class SttJob:
    """One queued utterance. Cancelling the future `result()` gives (or calling `cancel()`) before a
    worker takes the job means it is skipped, never transcribed."""

    def __init__(self, queue: "SttQueue", pcm: bytes, prompt: str | None, speculative: bool,
                 second_prompt: str | None = None, beam: bool = True) -> None:
        self.pcm, self.prompt, self.speculative = pcm, prompt, speculative
        self.second_prompt, self.beam = second_prompt, beam
        self.future: Future[Transcript] = Future()
        self._queue = queue

    def result(self) -> asyncio.Future[Transcript]:
        # A future, not a coroutine: cancelling it reaches the job even before anything awaited it.
        return asyncio.wrap_future(self.future)

    def promote(self) -> bool:
        """The speculation turned out to be the caller's whole turn: run it ahead of other speculations.
        False if it was dropped (to make room, or cancelled): transcribe the utterance afresh."""
        return self._queue.promote(self)

    def cancel(self) -> None:
        self.future.cancel()


class SttQueue:
    """A bounded two-level queue feeding `workers` threads that call `run(job)`.

    Final utterances go first, in order; speculations only when no final one waits. A final job
    that finds the queue full takes the place of the newest waiting speculation, else `SttBusy`;
    a speculation that finds it full is refused. Cancelled jobs are skipped when dequeued.
    """

    def __init__(self, run: Callable[[SttJob], Transcript], *, workers: int, max_queue: int) -> None:
        self._run, self.max_queue = run, max_queue
        self._finals: collections.deque[SttJob] = collections.deque()
        self._speculations: collections.deque[SttJob] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"stt-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, pcm: bytes, prompt: str | None, *, speculative: bool, second_prompt: str | None = None,
               beam: bool = True) -> SttJob:
        job = SttJob(self, pcm, prompt, speculative, second_prompt, beam)
        with self._cond:
            if self._closed:
                raise RuntimeError("stt queue closed")
            self._prune()
            if self.waiting >= self.max_queue:
                if speculative or not self._speculations:
                    raise SttBusy(f"{self.waiting} utterances waiting for speech recognition")
                self._speculations.pop().cancel()  # the newest guess gives way to a caller who finished
            (self._speculations if speculative else self._finals).append(job)
            self._cond.notify()
        return job

    def promote(self, job: SttJob) -> bool:
        with self._cond:
            if job.future.cancelled():
                return False
            if job in self._speculations:
                self._speculations.remove(job)
                self._finals.append(job)
            job.speculative = False
            return True

    @property
    def waiting(self) -> int:
        return len(self._finals) + len(self._speculations)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in (*self._finals, *self._speculations):
                job.cancel()
            self._finals.clear()
            self._speculations.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _prune(self) -> None:
        """Forget jobs cancelled while waiting, so they do not count against the bound."""
        for jobs in (self._finals, self._speculations):
            live = [j for j in jobs if not j.future.cancelled()]
            if len(live) != len(jobs):
                jobs.clear()
                jobs.extend(live)

    def _next(self) -> SttJob | None:
        with self._cond:
            while True:
                for jobs in (self._finals, self._speculations):
                    while jobs:
                        job = jobs.popleft()
                        if job.future.set_running_or_notify_cancel():
                            return job
                        log.debug("stt skipped cancelled speculative=%s", job.speculative)
                if self._closed:
                    return None
                self._cond.wait()

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                job.future.set_result(self._run(job))
            except BaseException as exc:  # delivered to the awaiting call, never lost in this thread
                job.future.set_exception(exc)


def normalize_text(text: str) -> str:
    """Lowercase words only: how transcripts are compared and matched to phrase lists."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower())).replace("'", "")


def _loudness(x: np.ndarray) -> tuple[float, int, float]:
    """(dBFS of the loudest 100 ms, ms of 10 ms blocks within 25 dB of that peak, seconds to the end
    of the last block within _VOICED_DB of it)."""
    block = WHISPER_RATE // 100
    n = len(x) // block
    if n == 0:
        return float("-inf"), 0, 0.0
    energy = np.mean(x[: n * block].reshape(n, block).astype(np.float64) ** 2, axis=1)
    smooth = np.convolve(energy, np.ones(10) / 10, mode="valid") if n >= 10 else energy
    peak = float(10 * np.log10(max(smooth.max(), 1e-12)))
    level = 10 * np.log10(np.maximum(energy, 1e-12))
    audible = int(np.count_nonzero(level > peak - 25)) * 10
    voiced = np.flatnonzero(level > peak - _VOICED_DB)
    return peak, audible, (int(voiced[-1]) + 1) / 100 if voiced.size else 0.0


def _is_phantom(
    text: str, x: np.ndarray, avg_logprob: float | None, no_speech_prob: float | None, prompt: str
) -> bool:
    """Text Whisper made up: for silence, noise, or by echoing the site prompt."""
    words = normalize_text(text)
    if not words:  # "", "...", "-": nothing a caller said ("5" is kept)
        return True
    peak_db, audible_ms, _ = _loudness(x)
    if peak_db < _QUIET_DBFS:
        return True
    if no_speech_prob is None or avg_logprob is None:
        return False
    if no_speech_prob > _SILENCE_NO_SPEECH_PROB and (avg_logprob < _SILENCE_LOGPROB or _looks_looped(text)):
        return True
    echo = set(words.split()) <= set(normalize_text(prompt).split())
    if not echo and words not in HALLUCINATIONS and not words.startswith(_HALLUCINATION_PREFIXES):
        return False
    return audible_ms < _SHORT_SPEECH_MS or no_speech_prob >= _NO_SPEECH_PROB


def _looks_looped(text: str) -> bool:
    """Whisper's failure mode, not speech: highly compressible text, a 4-word run said
    twice anywhere, or a tail that repeats (3+ words twice, 1-2 words three times;
    "bye bye" is fine). A false alarm only costs a standard-path decode."""
    data = text.encode()
    if data and len(data) / len(zlib.compress(data)) > _MAX_COMPRESSION:
        return True
    words = normalize_text(text).split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    if len(grams) != len(set(grams)):
        return True
    for unit in range(1, len(words) // 2 + 1):
        repeats = 2 if unit >= 3 else 3
        if unit * repeats <= len(words) and all(
            words[-unit * k - unit : len(words) - unit * k] == words[-unit:] for k in range(1, repeats)
        ):
            return True
    return False


class Transcriber:
    """One faster-whisper model shared by all calls; `transcribe` is thread-safe.

    A call may pass `prompt`, its site's vocabulary as plain text (business, staff and
    insurer names: "Bright Smile Dental. Dr. Chen. Aetna, MetLife."). Whisper reads it
    as preceding text, which helps with names tiny.en would otherwise mishear. On
    silence Whisper tends to echo the prompt back ("Dr. Nguyen."); such echoes are
    dropped like the other phantoms when no_speech_prob is high. Into garbled speech it
    leaks prompt names ("... toothache, and MetLife, I might"); a prompt word written with
    little confidence is dropped.
    """

    def __init__(
        self, model_dir: Path, *, cpu_threads: int = 2, workers: int = 1, max_queue: int = 16,
        language: str = "en",
    ) -> None:
        model_dir = check_whisper_dir(model_dir)
        started = time.monotonic()
        self.language = language
        self._model = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8",
            cpu_threads=cpu_threads, num_workers=workers,
        )
        multilingual = self._model.model.is_multilingual
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer, multilingual, task="transcribe",
            language=language if multilingual else "en",
        )
        self._prompts: dict[str, list[int]] = {}  # prompt text -> tokens; one per site
        self._prompt_words: dict[str, set[str]] = {}  # prompt text -> its words that may leak
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))
        self._queue = SttQueue(lambda job: self.transcribe(job.pcm, prompt=job.prompt,
                                                           second_prompt=job.second_prompt, beam=job.beam),
                               workers=workers, max_queue=max_queue)
        log.info("stt loaded model=%s ms=%d", model_dir, (time.monotonic() - started) * 1000)

    def transcribe(
        self, pcm8k: bytes, *, prompt: str | None = None, full_window: bool = False,
        second_prompt: str | None = None, beam: bool = True,
    ) -> Transcript:
        """Transcribe one utterance; full_window=True forces faster-whisper's standard
        30 s path (to compare against and for benchmarks).

        With `second_prompt`, an utterance heard with little confidence (a robotic or noisy voice) is
        decoded once more from the same encoder output, primed with that text instead: words the
        caller may have said (an emergency) that the first decode turned into others ("I have kept
        pain"). Only the decoder runs again. The caller decides what the second text is worth."""
        prompt = prompt.strip() if prompt else ""
        started = time.perf_counter()
        audio_ms = len(pcm8k) * 1000 // (2 * SAMPLE_RATE)
        x = pcm_to_float(resample(pcm8k, SAMPLE_RATE, WHISPER_RATE))
        heard = Transcript("", audio_ms, 0.0, path="empty")
        if x.size:
            heard = self._decode(x, prompt, full_window, second_prompt or "", beam)
            if _is_phantom(heard.text, x, heard.avg_logprob, heard.no_speech_prob, prompt):
                log.info("stt dropped phantom chars=%d no_speech=%.2f", len(heard.text), heard.no_speech_prob or 0)
                heard = dataclasses.replace(heard, text="", second_text="", alternatives=())
        elapsed = (time.perf_counter() - started) * 1000
        log.info("stt done audio_ms=%d ms=%.0f path=%s chars=%d second=%s alternatives=%d", audio_ms, elapsed,
                 heard.path, len(heard.text), bool(heard.second_text), len(heard.alternatives))
        return dataclasses.replace(heard, audio_ms=audio_ms, elapsed_ms=elapsed)

    def submit(self, pcm8k: bytes, *, prompt: str | None = None, speculative: bool = False,
               second_prompt: str | None = None, beam: bool = True) -> SttJob:
        """Queue an utterance for the workers; raises SttBusy when the queue is at its bound. `beam=False`
        never re-decodes a doubtful hearing by beam search: for a quick look, not for what is answered."""
        return self._queue.submit(pcm8k, prompt, speculative=speculative, second_prompt=second_prompt, beam=beam)

    async def transcribe_async(self, pcm8k: bytes, *, prompt: str | None = None) -> Transcript:
        return await self.submit(pcm8k, prompt=prompt).result()

    def health_check(self) -> float:
        """Transcribe 0.5 s of silence; returns elapsed ms (raises if the model is broken)."""
        return self.transcribe(bytes(SAMPLE_RATE)).elapsed_ms

    def close(self) -> None:
        self._queue.close()

    def _prompt_tokens(self, prompt: str) -> list[int]:
        """Decoder prompt, built the way faster-whisper builds it for initial_prompt."""
        tokens = self._prompts.get(prompt)
        if tokens is None:
            context = []
            if prompt:
                words = self._tokenizer.encode(" " + prompt)
                context = [self._tokenizer.sot_prev, *words[-(_MAX_LENGTH // 2 - 1) :]]
            tokens = [*context, *self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
            self._prompts[prompt] = tokens
        return tokens

    def _decode(
        self, x: np.ndarray, prompt: str, full_window: bool, second_prompt: str, beam_allowed: bool
    ) -> Transcript:
        """What was heard; audio_ms and elapsed_ms are the caller's to fill in."""
        features = self._model.feature_extractor(x)
        content = features.shape[-1] - 1  # the extractor appends one frame of padding
        if content <= _SHORT_PATH_MAX_FRAMES and not full_window:
            prompt_tokens = self._prompt_tokens(prompt)
            result = self._decode_window(features[:, :content], content, prompt_tokens)
            if result is not None:
                path = "window"
                if self._truncated(result, content, x):
                    retry = self._decode_window(features[:, :content], content, prompt_tokens, window=_FULL_WINDOW)
                    if retry is not None and len(retry.tokens) > len(result.tokens):
                        result, path = retry, "retry"
                heard = result  # its confidence, not the beam's, decides what follows
                if beam_allowed and result.avg_logprob < _BEAM_BELOW:
                    beam = self._decode_window(features[:, :content], content, prompt_tokens,
                                               encoded=result.encoded, beam_size=_BEAM_SIZE)
                    # Beam search favours ending early: on a long turn it may drop the end greedy kept.
                    if beam is not None and not self._truncated(beam, content, x):
                        result, path = beam, f"{path}+beam"
                text = self._drop_weak_names(result, content, prompt, prompt_tokens) or result.text
                second = ""
                if second_prompt and heard.avg_logprob < _SECOND_DECODE_BELOW:
                    again = self._decode_window(features[:, :content], content, self._prompt_tokens(second_prompt),
                                                encoded=result.encoded)
                    second = again.text if again is not None else ""
                return Transcript(text, 0, 0.0, heard.avg_logprob, heard.no_speech_prob, path, second,
                                  result.alternatives)
        text, avg_logprob, no_speech_prob = self._decode_full(x, prompt)  # 28 s and more: no second decode
        return Transcript(text, 0, 0.0, avg_logprob, no_speech_prob, path="full")

    def _truncated(self, result: _Decoded, content: int, x: np.ndarray) -> bool:
        """True if the voice goes on well after where the transcript ends (the decoder stopped early)."""
        tokens = result.tokens
        if content < _TRUNCATION_MIN_FRAMES or not tokens:
            return False
        _, audible_ms, voiced_end = _loudness(x)
        # A few words for many seconds of voice: their alignment is unreliable, the rate is not.
        words = len(normalize_text(result.text).split())
        if words < _MIN_WORDS_PER_S * audible_ms / 1000:
            log.warning("stt transcript has %d words for %.1f s of voice", words, audible_ms / 1000)
            return True
        alignment = self._model.model.align(result.encoded, self._tokenizer.sot_sequence, [tokens], content)
        alignment = alignment[0].alignments
        # Where the last token starts: its end is unreliable (a lone "Hello" is stretched to the end).
        last_start = min((t for i, t in alignment if i == len(tokens) - 1), default=0) / _ALIGN_FRAMES_PER_S
        gap = voiced_end - last_start
        if gap > _TRUNCATED_GAP_S:
            log.warning("stt transcript ends %.1f s before the voice", gap)
            return True
        return False

    def _drop_weak_names(self, result: _Decoded, content: int, prompt: str, prompt_tokens: list[int]) -> str | None:
        """The transcript without prompt words the audio hardly supported (None: nothing to drop).

        Only transcripts that contain a word of the prompt pay for the (prompted) forced alignment."""
        names = self._prompt_words.get(prompt)
        if names is None:
            names = self._prompt_words[prompt] = {w for w in normalize_text(prompt).split() if len(w) > 2}
        words, word_tokens = self._tokenizer.split_to_word_tokens(result.tokens)
        if not names & {normalize_text(w) for w in words}:
            return None
        probs = self._model.model.align(result.encoded, prompt_tokens, [result.tokens], content)[0].text_token_probs
        kept, dropped, i = [], 0, 0
        for word, ids in zip(words, word_tokens):
            if normalize_text(word) in names and i < len(probs) and probs[i] < _WEAK_NAME_PROB:
                dropped += 1
                kept.append(re.sub(r"^[^.?!]*", "", word))  # "Aetna?" leaves its "?"
            else:
                kept.append(word)
            i += len(ids)
        if not dropped:
            return None
        log.info("stt dropped %d weakly heard prompt word(s)", dropped)
        text = re.sub(r",(\s*,)+", ",", "".join(kept))
        return re.sub(r",\s*([.?!]|$)", r"\1", text).strip()

    def _decode_window(
        self, features: np.ndarray, content: int, prompt: list[int], window: int | None = None,
        encoded: ctranslate2.StorageView | None = None, beam_size: int = 1,
    ) -> _Decoded | None:
        """Decode (greedy unless `beam_size`) in a window fitted to the audio (or of `window` frames),
        from `encoded` if it was encoded already; None if the output looks looped."""
        budget = min(
            _MAX_LENGTH - len(prompt),
            _TOKENS_BASE + _TOKENS_PER_S * content // _FRAMES_PER_S,
        )
        if encoded is None:
            window = window or min(_FULL_WINDOW, max(_MIN_WINDOW, -(-(content + _WINDOW_MARGIN) // 100) * 100))
            padded = np.zeros((features.shape[0], window), dtype=np.float32)
            padded[:, :content] = features
            encoded = self._model.model.encode(ctranslate2.StorageView.from_array(padded[None]), to_cpu=False)
        result = self._model.model.generate(
            encoded, [prompt], beam_size=beam_size, num_hypotheses=beam_size, max_length=len(prompt) + budget,
            return_scores=True, return_no_speech_prob=True,
            suppress_blank=True, suppress_tokens=self._suppress,
        )[0]
        tokens = result.sequences_ids[0]
        text = self._tokenizer.decode(tokens).strip()
        if len(tokens) >= budget or _looks_looped(text):
            log.warning("stt window decode looped tokens=%d, using full window", len(tokens))
            return None
        # Same length normalisation as faster-whisper (length_penalty=1, +1 for EOT).
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        others = {normalize_text(text)}
        alternatives = []
        for ids in result.sequences_ids[1:]:
            other = self._tokenizer.decode(ids).strip()
            key = normalize_text(other)
            if key and key not in others and len(ids) < budget and not _looks_looped(other):
                others.add(key)
                alternatives.append(other)
        return _Decoded(text, tokens, avg_logprob, result.no_speech_prob, encoded, tuple(alternatives))

    def _decode_full(self, x: np.ndarray, prompt: str) -> tuple[str, float | None, float | None]:
        segments, _ = self._model.transcribe(
            x, language=self.language, beam_size=1, without_timestamps=True,
            condition_on_previous_text=False, temperature=0.0, vad_filter=False,
            initial_prompt=prompt or None,
        )
        segments = list(segments)  # decoding is lazy: do it here, in this thread
        text = "".join(s.text for s in segments).strip()
        if not segments:
            return text, None, None
        return (
            text,
            float(np.mean([s.avg_logprob for s in segments])),
            max(s.no_speech_prob for s in segments),
        )
