"""What every command shares: logging set-up and loading the config with the admin's error message."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from gateway.config import Config, ConfigError, load_config
from models.privacy import set_log_transcripts

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
