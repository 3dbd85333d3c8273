"""What every command shares: logging set-up and loading the config with the admin's error message."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from gateway.config import Config, ConfigError, load_config
from models.privacy import set_log_transcripts

if TYPE_CHECKING:  # every command imports this module; only those on the database load the store
    from models.store import Store

T = TypeVar("T")

MIRROR_ENV = "SWITCHBOARD_MODEL_MIRROR"  # `models pull` fetches from this mirror


def setup_logging(level: str, *, transcripts: bool = False) -> None:
    # Under systemd the journal adds its own timestamps.
    fmt = "%(levelname)s %(name)s %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    set_log_transcripts(transcripts)


def load(args: argparse.Namespace) -> Config | None:
    """The config named by -c/--data-dir, or None once the error (file: key: reason) is printed."""
    try:
        return load_config(args.config, data_dir=args.data_dir)
    except ConfigError as exc:
        print(f"switchboard: configuration error: {exc}", file=sys.stderr)
        return None


def on_store(config: Config, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run `work` on the database, opened as a client: the daemon may have it open."""
    from models.store import Store

    async def run() -> T:
        store = await Store.open(config.database, client=True)
        try:
            return await work(store)
        finally:
            await store.close()
    return asyncio.run(run())
