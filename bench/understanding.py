"""Does the assistant understand callers who talk naturally? Right outcomes on a corpus of our own.

Text mode: each utterance is given to a fresh call's Dialog exactly as a transcript would be (the
real knowledge file, directory and store; no speech). Audio mode (synthesised voices over a real
AudioSocket, mu-law and line noise) is not built yet.

The corpus is bench/understanding_heldout.yaml (written first, never tuned on) and
bench/understanding_tuning.yaml. Each utterance names its right outcome(s). Today's behaviour (the
code at --baseline, a git ref) runs in a child process on the same corpus in the same run.

    .venv/bin/python bench/understanding.py [--baseline 5e3830f] [--misses]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
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


def corpus() -> list[dict]:
    items = []
    for part in PARTS:
        doc = yaml.safe_load((ROOT / "bench" / f"understanding_{part}.yaml").read_text())
        for category, outcomes in doc.items():
            for expected, utterances in outcomes.items():
                for text in utterances:
                    items.append({"part": part, "category": category, "text": text,
                                  "expected": [e.strip() for e in expected.split(" | ")]})
    return items


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
            confirmed = reply.source.startswith(("confirm:", "clarify:"))
            if reply.source.startswith("confirm:"):  # "Are you asking: ...?" A cooperative caller says
                asked = "answer:" + reply.source.split(":", 1)[1]  # whether it is their question.
                reply = await dialog.respond("yes" if asked in item["expected"] else "no")
            elif reply.source.startswith("clarify:"):  # "Did you mean Dr. A (or B)?": the name they meant, or no
                meant = [n for n in reply.source.split(":", 1)[1].split("|")
                         if {f"transfer:{n}", f"message:{n}"} & set(item["expected"])]
                reply = await dialog.respond(f"yes, {meant[0]}" if meant else "no")
            results.append({**item, "got": outcome(reply, previous), "ms": ms, "confirmed": confirmed})
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
    row = {c: f"{right(rs)}/{len(rs)}" for c in dict.fromkeys(r["category"] for r in mine)
           for rs in [[r for r in mine if r["category"] == c]]}
    row.update({
        "right": f"{100 * right(mine) / len(mine):.1f} %",
        "confidently wrong": f"{100 * wrong / len(mine):.1f} %",
        "safety recall": f"{100 * right(safety) / len(safety):.0f} %",
        "asked to confirm or clarify": str(sum(r.get("confirmed", False) for r in mine)),
        "p50 ms": f"{percentile([r['ms'] for r in mine], 50):.1f}",
        "p90 ms": f"{percentile([r['ms'] for r in mine], 90):.1f}",
    })
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="5e3830f", help="git ref of today's behaviour (default: %(default)s)")
    parser.add_argument("--misses", choices=PARTS, help="list the new code's misses on this part")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # run the corpus from stdin with the code in this dir
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        print(json.dumps(asyncio.run(run_items(json.loads(sys.stdin.read()), Path(args.child)))))
        return
    items = corpus()
    runs = {f"baseline {args.baseline}": baseline(args.baseline, items), "new": asyncio.run(run_items(items))}
    columns = [(name, part, summary(results, part)) for part in PARTS for name, results in runs.items()]
    categories = list(dict.fromkeys(i["category"] for i in items))  # a category may be in one part only
    keys = [*categories, *(k for k in columns[0][2] if k not in categories)]
    print(f"text mode, {len(items)} utterances ({sum(i['part'] == 'heldout' for i in items)} held out)\n")
    print(table([(k, *(c[2].get(k, "") for c in columns)) for k in keys],
                ("", *(f"{name}, {part}" for name, part, _ in columns))))
    if args.misses:
        for r in runs["new"]:
            if r["part"] == args.misses and r["got"] not in r["expected"]:
                print(f"MISS {r['category']}: {r['text']!r} -> {r['got']} (want {' | '.join(r['expected'])})")


if __name__ == "__main__":
    main()
