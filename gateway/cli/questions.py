"""`switchboard questions`: the help requests callers left, and staff answers that teach the assistant."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys

from gateway.config import ConfigError, load_config
from models.migrations import SchemaVersionError
from models.store import NotFoundError, Store


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
