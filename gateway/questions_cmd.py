"""`switchboard questions`: the help requests callers left, and staff answers that teach the assistant."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys

from gateway.config import ConfigError, load_config
from models.migrations import SchemaVersionError
from models.store import NotFoundError, Store


def add_questions_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("questions", help="questions the assistant could not answer; answer them")
    sub = parser.add_subparsers(dest="questions_command", required=True)
    listing = sub.add_parser("list", help="open questions (with --all: answered ones too)")
    listing.add_argument("--all", action="store_true")
    listing.set_defaults(func=cmd_list)
    answer = sub.add_parser("answer", help="answer question ID; the answer is spoken to the next caller who asks")
    answer.add_argument("id", type=int)
    answer.add_argument("text", help="the answer, as it should be spoken")
    answer.set_defaults(func=cmd_answer)


async def _with_store(args: argparse.Namespace, work) -> int:  # type: ignore[no-untyped-def]
    try:
        config = load_config(args.config, data_dir=args.data_dir)
    except ConfigError as exc:
        print(f"switchboard: configuration error: {exc}")
        return 2
    if not config.database.exists():
        print(f"switchboard: no database at {config.database}: the service creates it when it first starts; "
              f"is {config.path} the config it runs with (see -c, --data-dir)?", file=sys.stderr)
        return 2
    try:
        # The daemon may be running on this file: open it as a client (see Store.open).
        store = await Store.open(config.database, client=True)
    except SchemaVersionError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    try:
        return await work(store)
    finally:
        await store.close()


def cmd_list(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        requests = await store.help_requests(status=None if args.all else "open")
        for r in requests:
            when = dt.datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M")
            print(f"#{r.id}  {when}  {r.contact_number or 'unknown caller'}  [{r.status}]  {r.question}")
            if r.answer:
                print(f"      answer: {r.answer}")
        if not requests:
            print("no open questions" if not args.all else "no questions yet")
        return 0

    return asyncio.run(_with_store(args, work))


def cmd_answer(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        try:
            entry = await store.answer_help_request(args.id, args.text)
        except NotFoundError:
            print(f"switchboard: no question #{args.id} (see `switchboard questions list --all`)")
            return 1
        print(f"learned ({entry.id}): {entry.question} -> {entry.answer}")
        return 0

    return asyncio.run(_with_store(args, work))
