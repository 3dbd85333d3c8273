"""Are written messages (email, SMS) answered right? Before: the whole text given to the dialog as one
turn (how text channels worked until llm/written.py). After: greeting, sign-off, signature and quoted
mail dropped, each question answered (llm/written.py). Both on tests/data/written_messages.yaml, the
real knowledge file, directory and store, at a fixed Monday 10 a.m.; e-mails first go through the
email channel's own quote stripping, as they do in the product.

    .venv/bin/python bench/written.py [--misses]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import tempfile
from pathlib import Path

import yaml

from common import ROOT, table
from llm.written import PHONE_ONLY

CORPUS = ROOT / "tests" / "data" / "written_messages.yaml"


def corpus(part: str = "messages") -> list[dict]:
    """`messages` (llm/written.py was tuned on them) or `heldout` (written after, measured once)."""
    return yaml.safe_load(CORPUS.read_text())[part]


def outcome(reply) -> str:  # type: ignore[no-untyped-def]
    from llm.dialog import Action

    if reply.source in ("rule:emergency", "rule:appointment", "rule:hours"):
        return reply.source.removeprefix("rule:")
    if reply.action is Action.TRANSFER:
        return f"transfer:{reply.target.name}"
    if reply.action is Action.TAKE_MESSAGE or reply.source == "rule:message_taken":
        return f"message:{reply.target.name}"
    # A probable answer is the entry's answer, saying which question it answers.
    return reply.source.replace("probable:", "knowledge:")  # knowledge:<id>, confirm:<id>, fallback, ...


async def run(items: list[dict]) -> list[dict]:
    """Each message in a fresh thread, both ways; per message the outcomes and the reply text."""
    from channels.email import strip_quoted
    from gateway.config import load_config
    from llm import written
    from llm.dialog import Action, Dialog
    from llm.knowledge import Retriever
    from models.store import Store

    cfg = load_config(ROOT / "etc" / "switchboard.yaml")
    monday_10am = dt.datetime(2026, 11, 23, 10, tzinfo=cfg.site.tz)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "sb.db")
        await store.replace_admin_knowledge(cfg.knowledge)
        retriever = Retriever(store)
        try:
            for n, item in enumerate(items):
                body = strip_quoted(item["body"]) if item["channel"] == "email" else item["body"]

                def dialog(mode: str, written_wording: bool) -> Dialog:
                    return Dialog(cfg.site, retriever, store, call_id=f"{mode}-{n}", caller="+15550100",
                                  now=lambda: monday_10am, written=written_wording)

                before = await dialog("before", False).respond(body)
                after = await written.answer(dialog("after", True), body)
                got = [outcome(r) for r in after.replies if r.action is not Action.END_CALL]
                results.append({**item, "before": [outcome(before)], "after": list(dict.fromkeys(got)),
                                "text_of": {"before": before.text, "after": after.text or ""}})
        finally:
            await store.close()
    return results


MODES = {"before": "whole text, one turn", "after": "llm/written.py"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list the messages answered wrong")
    args = parser.parse_args()
    rows = []
    misses = []
    for part in ("messages", "heldout"):
        results = asyncio.run(run(corpus(part)))
        several = [r for r in results if len(r["expect"]) > 1]
        for mode in ("before", "after"):
            right = [r for r in results if r[mode] == r["expect"]]
            probable = sum("If you are asking" in r["text_of"][mode] for r in right)
            phone = sum(bool(PHONE_ONLY.search(r["text_of"][mode])) for r in results)
            rows.append((part, MODES[mode], f"{len(right)}/{len(results)}", str(probable),
                         f"{sum(r in right for r in several)}/{len(several)}", f"{phone}/{len(results)}"))
        misses += [r for r in results if r["after"] != r["expect"]]
    print(table(rows, ("corpus", "mode", "right outcomes", "of which probable answers", "several questions right",
                       "phone-only phrase in reply")))
    if args.misses:
        for r in misses:
            print(f"- {r['body']!r}\n  expected {r['expect']}, got {r['after']}")


if __name__ == "__main__":
    main()
