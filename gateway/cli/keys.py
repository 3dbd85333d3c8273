"""`switchboard keys create | list | revoke`: HTTP API keys in the database the daemon reads per request."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime

from gateway.cli.common import load, on_store
from gateway.http.keys import new_key


def _when(at: float | None) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M") if at else "-"


def cmd_create(args: argparse.Namespace) -> int:
    config = load(args)
    if config is None:
        return 2
    try:
        key, record = new_key(args.name, args.scope, args.rate or config.http.default_rate, args.expires)
    except ValueError as exc:
        print(f"switchboard keys create: {exc}", file=sys.stderr)
        return 2
    try:
        on_store(config, lambda store: store.api_key_create(record))
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
    keys, now = on_store(config, lambda store: store.api_keys()), time.time()
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
    if not on_store(config, lambda store: store.api_key_revoke(args.name)):
        print(f"switchboard keys revoke: no active key named {args.name!r}", file=sys.stderr)
        return 1
    print(f"key {args.name} revoked")
    return 0
