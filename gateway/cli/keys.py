"""`switchboard keys create | list | revoke`: HTTP API keys in the database the daemon reads per request."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime

from gateway.cli.common import load
from gateway.config import Config
from gateway.http.keys import new_key
from models.store import Store


def _when(at: float | None) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M") if at else "-"


async def _store(config: Config) -> Store:
    return await Store.open(config.database, client=True)  # the daemon may have it open


def cmd_create(args: argparse.Namespace) -> int:
    config = load(args)
    if config is None:
        return 2
    try:
        key, record = new_key(args.name, args.scope, args.rate or config.http.default_rate, args.expires)
    except ValueError as exc:
        print(f"switchboard keys create: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        store = await _store(config)
        try:
            await store.api_key_create(record)
        finally:
            await store.close()
    try:
        asyncio.run(run())
    except ValueError as exc:
        print(f"switchboard keys create: {exc}", file=sys.stderr)
        return 1
    print(f"key {record.name}: scopes {' '.join(record.scopes)}, rate {args.rate or config.http.default_rate}, "
          f"expires {_when(record.expires_at) if record.expires_at else 'never'}")
    print("Store it now: it is not shown again, and only its hash is kept.", file=sys.stderr)
    print(key)  # the last line of stdout, for scripts
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    config = load(args)
    if config is None:
        return 2

    async def run() -> list:
        store = await _store(config)
        try:
            return await store.api_keys()
        finally:
            await store.close()
    keys, now = asyncio.run(run()), time.time()
    if not keys:
        print("no keys (switchboard keys create --name NAME --scope SCOPE)")
        return 0
    rows = [("NAME", "PREFIX", "SCOPES", "CREATED", "LAST USED", "EXPIRES", "STATE")]
    rows += [(k.name, k.prefix + "…", ",".join(k.scopes), _when(k.created_at), _when(k.last_used_at),
              _when(k.expires_at), "revoked" if k.revoked_at else "expired" if not k.usable(now) else "active")
             for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    config = load(args)
    if config is None:
        return 2

    async def run() -> bool:
        store = await _store(config)
        try:
            return await store.api_key_revoke(args.name)
        finally:
            await store.close()
    if not asyncio.run(run()):
        print(f"switchboard keys revoke: no active key named {args.name!r}", file=sys.stderr)
        return 1
    print(f"key {args.name} revoked")
    return 0
