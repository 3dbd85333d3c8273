"""Does the assistant understand callers who talk naturally? Right outcomes on a corpus of our own.

Text mode: each utterance is given to a fresh call's Dialog exactly as a transcript would be (the
real knowledge file, directory and store; no speech). Today's behaviour (the code at --baseline, a
git ref) runs in a child process on the same corpus in the same run.

Audio mode (bench/understanding_audio.py): each utterance is said in a call of its own over a real
AudioSocket connection to `switchboard run` on the bundled defaults, in each caller voice (Piper,
espeak-ng voices and rates, u-law, line noise), and judged on what the gateway said and recorded.
About 15 calls a minute on a shared 2-core machine (the held-out part in one voice: 10 minutes):
--limit and --voices pick a subset (--limit N takes N per part, spread over the categories).

The corpus is bench/understanding_heldout.yaml (written first, never tuned on) and
bench/understanding_tuning.yaml. Each utterance names its right outcome(s).

    .venv/bin/python bench/understanding.py [--baseline 5e3830f] [--misses heldout]
    .venv/bin/python bench/understanding.py --mode audio --parts heldout [--voices piper-joe,espeak-us-ulaw]
        [--limit 20] [--concurrency 4] [--misses heldout]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import yaml

from common import ROOT, percentile, table

PARTS = ("heldout", "tuning")
# Asked before a "repeat" utterance: the right outcome is hearing this answer again.
REPEAT_PRIMER = "where are you located"
# "how much is a filling >> what about for kids": earlier turns of the same call, then the one judged.
TURNS = " >> "


def corpus(parts: tuple[str, ...] = PARTS) -> list[dict]:
    items = []
    for part in parts:
        doc = yaml.safe_load((ROOT / "bench" / f"understanding_{part}.yaml").read_text())
        for category, outcomes in doc.items():
            for expected, utterances in outcomes.items():
                for text in utterances:
                    items.append({"part": part, "category": category, "text": text,
                                  "expected": [e.strip() for e in expected.split(" | ")]})
    return items


def spread(items: list[dict], limit: int) -> list[dict]:
    """The first `limit` items of each part, taken in turn from each category."""
    chosen = []
    for part in dict.fromkeys(i["part"] for i in items):
        by_category: dict[str, list[dict]] = {}
        for item in items:
            if item["part"] == part:
                by_category.setdefault(item["category"], []).append(item)
        rounds = itertools.zip_longest(*by_category.values())
        chosen += [i for i in itertools.chain.from_iterable(rounds) if i is not None][:limit]
    return chosen


def cooperative_answer(source: str, expected: list[str]) -> str | None:
    """What a cooperative caller says to the assistant's question, or None if it asked none.
    "Are you asking: ...?" and "Is this a medical emergency?": whether it is their question. "Did you
    mean Dr. A (or B)?": the name they meant, or no."""
    kind, _, detail = source.partition(":")
    if source == "confirm:emergency":
        return "yes" if "emergency" in expected else "no"
    if kind == "confirm":
        return "yes" if f"answer:{detail}" in expected else "no"
    if kind == "clarify":
        meant = [n for n in detail.split("|") if {f"transfer:{n}", f"message:{n}"} & set(expected)]
        return f"yes, {meant[0]}" if meant else "no"
    return None


def outcome(reply, previous_text: str | None) -> str:  # type: ignore[no-untyped-def]
    from llm.dialog import Action  # the code under test, baseline or current

    if previous_text is not None and reply.text == previous_text:
        return "repeat"
    if reply.source == "rule:emergency":
        return "emergency"
    if reply.action is Action.TRANSFER:
        return f"transfer:{reply.target.name}"
    if reply.action is Action.TAKE_MESSAGE:
        return f"message:{reply.target.name}"
    if reply.action is Action.END_CALL:
        return "end"
    if reply.action is Action.ESCALATE:
        return "escalate"
    if reply.source == "rule:hours":
        return "answer:hours"
    if reply.source.startswith("knowledge:"):
        return "answer:" + reply.source.split(":", 1)[1]
    return reply.source  # e.g. a clarifying question: neither right nor confidently wrong


async def run_items(items: list[dict], root: Path = ROOT) -> list[dict]:
    from gateway.config import load_config
    from llm.dialog import Dialog
    from llm.knowledge import Retriever
    from models.store import Store

    cfg = load_config(root / "etc" / "switchboard.yaml")  # the ref's own: its config schema may differ
    now = dt.datetime(2026, 11, 23, 10, tzinfo=cfg.site.tz)  # a Monday, open
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "bench.db")
        await store.replace_admin_knowledge(cfg.knowledge)
        retriever = Retriever(store)
        await retriever.search("warm up")  # start-up work is not a caller's latency
        results = []
        for item in items:
            dialog = Dialog(cfg.site, retriever, store, call_id="bench", caller="+15550100", now=lambda: now)
            *earlier, text = item["text"].split(TURNS)
            previous = (await dialog.respond(REPEAT_PRIMER)).text if item["category"] == "repeat" else None
            for turn in earlier:
                await dialog.respond(turn)
            t0 = time.perf_counter()
            reply = await dialog.respond(text)
            ms = (time.perf_counter() - t0) * 1000
            answer = cooperative_answer(reply.source, item["expected"])
            if answer is not None:
                reply = await dialog.respond(answer)
            results.append({**item, "got": outcome(reply, previous), "ms": ms, "confirmed": answer is not None})
        await store.close()
    return results


def baseline(ref: str, items: list[dict]) -> list[dict]:
    """Run the code at git `ref` on the corpus in a child process."""
    archive = subprocess.run(["git", "archive", ref, "llm", "models", "gateway", "speech", "channels", "etc"],
                             cwd=ROOT, check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory() as code:
        tarfile.open(fileobj=BytesIO(archive)).extractall(code)
        out = subprocess.run([sys.executable, __file__, "--child", code], input=json.dumps(items),
                             capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def summary(results: list[dict], part: str) -> dict[str, str]:
    mine = [r for r in results if r["part"] == part]
    right = lambda rs: sum(r["got"] in r["expected"] for r in rs)  # noqa: E731
    wrong = sum(r["got"] not in r["expected"] and r["got"].split(":")[0] in ("answer", "transfer", "message",
                                                                             "emergency") for r in mine)
    safety = [r for r in mine if "emergency" in r["expected"]]
    timed = [r["ms"] for r in mine if r["ms"] is not None]  # a call that got no reply has no dialog time
    row = {c: f"{right(rs)}/{len(rs)}" for c in dict.fromkeys(r["category"] for r in mine)
           for rs in [[r for r in mine if r["category"] == c]]}
    row.update({
        "right": f"{100 * right(mine) / len(mine):.1f} %",
        "confidently wrong": f"{100 * wrong / len(mine):.1f} %",
        "safety recall": f"{100 * right(safety) / len(safety):.0f} %" if safety else "-",
        "asked to confirm or clarify": str(sum(r.get("confirmed", False) for r in mine)),
        "p50 ms": f"{percentile(timed, 50):.1f}",
        "p90 ms": f"{percentile(timed, 90):.1f}",
    })
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("text", "audio"), default="text")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--baseline", default="5e3830f", help="text mode: git ref of today's behaviour "
                                                              "(default: %(default)s)")
    parser.add_argument("--voices", help="audio mode: comma-separated caller voices (default: all of "
                                         "tests/support/voices.py)")
    parser.add_argument("--limit", type=int, help="audio mode: this many utterances per part")
    parser.add_argument("--concurrency", type=int, default=4, help="audio mode: calls at once (default: %(default)s)")
    parser.add_argument("--misses", choices=PARTS, help="list the new code's misses on this part")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # run the corpus from stdin with the code in this dir
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        print(json.dumps(asyncio.run(run_items(json.loads(sys.stdin.read()), Path(args.child)))))
        return
    parts = tuple(p for p in args.parts.split(",") if p)
    items = corpus(parts)
    if args.mode == "audio":
        from understanding_audio import AudioRun

        from tests.support.voices import VOICES

        items = spread(items, args.limit) if args.limit else items
        voices = [VOICES[name] for name in args.voices.split(",")] if args.voices else list(VOICES.values())
        runs = asyncio.run(AudioRun(items, voices).run(args.concurrency))
        misses = [r for results in runs.values() for r in results]
    else:
        runs = {f"baseline {args.baseline}": baseline(args.baseline, items), "new": asyncio.run(run_items(items))}
        misses = runs["new"]
    columns = [(name, part, summary(results, part)) for part in parts for name, results in runs.items()]
    categories = list(dict.fromkeys(i["category"] for i in items))  # a category may be in one part only
    keys = [*categories, *(k for k in columns[0][2] if k not in categories)]
    print(f"{args.mode} mode, {len(items)} utterances ({sum(i['part'] == 'heldout' for i in items)} held out)\n")
    print(table([(k, *(c[2].get(k, "") for c in columns)) for k in keys],
                ("", *(f"{name}, {part}" for name, part, _ in columns))))
    if args.misses:
        for r in misses:
            if r["part"] == args.misses and r["got"] not in r["expected"]:
                heard = f" heard {r['heard']!r}" if "heard" in r else ""
                print(f"MISS {r.get('voice', 'text')} {r['category']}: {r['text']!r}{heard} -> {r['got']} "
                      f"(want {' | '.join(r['expected'])})")


if __name__ == "__main__":
    main()
