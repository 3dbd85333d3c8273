"""How well does the STT hear callers? Word error rate and key-word recall of the bundled Whisper on
varied voices, and how often the site's vocabulary leaks into what was heard.

Voices: Piper joe (the gateway's own voice, the baseline) and espeak-ng voices at two rates; each
clean at 8 kHz, through mu-law (300-3400 Hz), and through mu-law with pink line noise. The corpus is
bench/hearing.yaml: things a dental clinic's callers say, with the words that matter in each.

Leakage: a transcript of an utterance that says none of the site's names, yet contains one (the
vocabulary prompt "heard" instead of the audio: "... on Sunday, MetLife?").

    .venv/bin/python bench/hearing.py [--quick] [--prompt-styles] [--no-retry] [--no-beam] [--keep-weak-names] [--model DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from common import ROOT, table

from gateway.config import load_config  # noqa: E402
from speech.models import bundled_piper_voice, bundled_whisper_dir  # noqa: E402
from speech import stt  # noqa: E402
from speech.stt import Transcriber, normalize_text  # noqa: E402
from speech.tts import Synthesizer  # noqa: E402
from tests.support.hearing import edit_distance, espeak, phone_line  # noqa: E402

ESPEAK_VOICES = ("en-us", "en-us+f3", "en-gb+m4")
ESPEAK_RATES = (140, 185)
CHANNELS: dict[str, Callable[[bytes], bytes]] = {
    "8 kHz": lambda pcm: pcm,
    "mu-law": phone_line,
    "mu-law + noise 25 dB": lambda pcm: phone_line(pcm, snr_db=25.0),
}
_DIGITS = "zero one two three four five six seven eight nine".split()
# Spellings that mean the same word (US model, UK site; titles).
_SAME = {"dr": "doctor", "ok": "okay", "harbor": "harbour"}


def words(text: str) -> list[str]:
    """normalize_text, with digits spoken one by one and equivalent spellings unified."""
    spaced = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", text)
    return [_SAME.get(w, w) for w in normalize_text(spaced).split()]


def keyword_hits(keywords: list[str], hyp: list[str]) -> int:
    """Key words heard; a compound may come split ("met life") or joined ("checkup")."""
    joined = "".join(hyp)
    return sum(1 for k in keywords if k in hyp or "".join(words(k)) in joined)


def vocabulary_words(prompt: str) -> set[str]:
    """The distinctive words of the site prompt (names, insurers), not titles or common words."""
    common = {"doctor", "dental", "street", "staff", "and", "we", "take", "the", "insurance", "at", "a"}
    return {w for w in words(prompt) if w not in common and len(w) > 2}


def corpus(quick: bool) -> list[dict]:
    items = yaml.safe_load((ROOT / "bench" / "hearing.yaml").read_text())
    return items[::3] if quick else items


def voices(quick: bool) -> dict[str, Callable[[str], bytes]]:
    synth = Synthesizer(bundled_piper_voice())
    out: dict[str, Callable[[str], bytes]] = {"piper joe": synth.synthesize}
    for voice in ESPEAK_VOICES[:1] if quick else ESPEAK_VOICES:
        for wpm in ESPEAK_RATES:
            out[f"espeak {voice} {wpm}"] = lambda text, v=voice, r=wpm: espeak(text, v, r)
    return out


def pad(pcm: bytes) -> bytes:
    return bytes(4800) + pcm + bytes(4800)  # 300 ms either side, as the endpointer hands it over


def run(transcriber: Transcriber, clips: list[tuple[str, str, dict, bytes]], prompt: str,
        names: set[str]) -> dict[tuple[str, str], dict]:
    """Per (voice, channel): errors, reference words, key words heard / asked, and leaks (a site `names`
    word heard in an utterance that says none of them) / such utterances."""
    stats: dict[tuple[str, str], dict] = {}
    for voice, channel, item, pcm in clips:
        s = stats.setdefault((voice, channel), dict.fromkeys(("err", "ref", "kw", "kw_n", "name", "name_n", "leak", "free", "n", "ms", "retry", "beam"), 0))
        result = transcriber.transcribe(pcm, prompt=prompt)
        ref, hyp = words(item["text"]), words(result.text)
        s["err"] += edit_distance(ref, hyp)
        s["ref"] += len(ref)
        s["kw"] += keyword_hits(item["keys"], hyp)
        s["kw_n"] += len(item["keys"])
        said = [k for k in item["keys"] if k in names]
        s["name"] += keyword_hits(said, hyp)
        s["name_n"] += len(said)
        s["n"] += 1
        s["ms"] += result.elapsed_ms
        s["retry"] += result.path.startswith("retry")
        s["beam"] += result.path.endswith("+beam")
        if not names & set(ref):
            s["free"] += 1
            leaked = names & set(hyp)
            s["leak"] += bool(leaked)
            if leaked and VERBOSE:
                print(f"  leak [{voice} / {channel}] {item['text']!r} -> {result.text!r}", file=sys.stderr)
    return stats


def _cell(s: dict) -> str:
    return f"{100 * s['err'] / s['ref']:.0f} % / {100 * s['kw'] / s['kw_n']:.0f} %"


def _total(stats: list[dict]) -> dict:
    return {k: sum(s[k] for s in stats) for k in stats[0]}


def report(stats: dict[tuple[str, str], dict]) -> str:
    """A row per voice, a column per channel: "WER / key-word recall"; then totals."""
    voices_ = list(dict.fromkeys(v for v, _ in stats))
    rows = [(v, *(_cell(stats[v, c]) for c in CHANNELS)) for v in voices_]
    rows.append(("all", *(_cell(_total([stats[v, c] for v in voices_])) for c in CHANNELS)))
    total = _total(list(stats.values()))
    return "\n".join([
        table(rows, ("voice (WER / key words)", *CHANNELS)),
        f"all: WER {100 * total['err'] / total['ref']:.1f} %, key words {100 * total['kw'] / total['kw_n']:.1f} %, "
        f"names said and heard {total['name']}/{total['name_n']}, "
        f"leaks {total['leak']}/{total['free']} vocabulary-free utterances, retries {total['retry']}/{total['n']}, "
        f"beam searched {total['beam']}/{total['n']}, "
        f"mean {total['ms'] / total['n']:.0f} ms per utterance",
    ])


def _or(names: list[str]) -> str:
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


PROMPT_STYLES: dict[str, Callable] = {
    "none": lambda site: "",
    "name list (before)": lambda site: ", ".join(
        [site.name, *(m.name for m in site.directory.staff), *site.vocabulary]) + ".",
    "name list + question": lambda site: ", ".join(
        [site.name, *(m.name for m in site.directory.staff), *site.vocabulary]) + ". How can I help you?",
    "sentences + question": lambda site: (
        f"Thank you for calling {site.name}. You can ask for {_or([m.name for m in site.directory.staff])}, "
        f"or about {_or(list(site.vocabulary))}. How can I help you?"),
}
VERBOSE = False


def main() -> None:
    global VERBOSE
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a third of the corpus, fewer voices")
    parser.add_argument("--prompt-styles", action="store_true", help="compare vocabulary prompt styles (leakage)")
    parser.add_argument("--model", type=Path, help="a faster-whisper model dir (default: bundled tiny.en)")
    parser.add_argument("--verbose", action="store_true", help="print each leak")
    parser.add_argument("--no-retry", action="store_true", help="never decode a transcript that stopped early again")
    parser.add_argument("--no-beam", action="store_true", help="never decode a doubtful transcript by beam search")
    parser.add_argument("--keep-weak-names", action="store_true", help="keep prompt names however weakly heard")
    args = parser.parse_args()
    VERBOSE = args.verbose
    if args.no_retry:
        stt._TRUNCATED_GAP_S, stt._MIN_WORDS_PER_S = float("inf"), 0.0
    if args.no_beam:
        stt._BEAM_BELOW = float("-inf")
    if args.keep_weak_names:
        stt._WEAK_NAME_PROB = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        site = load_config(ROOT / "etc" / "switchboard.yaml", data_dir=Path(tmp)).site
    started = time.monotonic()
    clips = [(voice, channel, item, pad(degrade(speak(item["text"]))))
             for voice, speak in voices(args.quick).items() for item in corpus(args.quick)
             for channel, degrade in CHANNELS.items()]
    print(f"{len(clips)} clips synthesised in {time.monotonic() - started:.0f} s", file=sys.stderr)
    transcriber = Transcriber(args.model or bundled_whisper_dir())
    names = vocabulary_words(site.speech_prompt)
    try:
        if args.prompt_styles:
            rows = []
            for style, make in PROMPT_STYLES.items():
                prompt = make(site)
                total = _total(list(run(transcriber, clips, prompt, names).values()))
                rows.append((style, f"{100 * total['err'] / total['ref']:.1f} %",
                             f"{100 * total['kw'] / total['kw_n']:.1f} %", f"{total['leak']}/{total['free']}"))
                print(rows[-1], file=sys.stderr)
            print(table(rows, ("prompt", "WER", "key words", "leaks")))
        else:
            print(f"prompt: {site.speech_prompt!r}")
            print(report(run(transcriber, clips, site.speech_prompt, names)))
    finally:
        transcriber.close()


if __name__ == "__main__":
    main()
