"""`switchboard run`: the daemon, in the foreground (systemd runs it as Type=notify)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging

from gateway.cli.common import load, setup_logging
from gateway.daemon.app import serve
from llm.engine import LlmError
from speech.models import ModelError

log = logging.getLogger("switchboard")


def command(args: argparse.Namespace) -> int:
    config = load(args)
    if config is None:
        return 2
    setup_logging(config.log_level, transcripts=config.log_transcripts)
    if args.port is not None:
        config = dataclasses.replace(config, audiosocket=config.audiosocket.model_copy(update={"port": args.port}))
    if args.http_port is not None:
        config = dataclasses.replace(config, http=config.http.model_copy(update={"port": args.http_port}))
    try:
        return asyncio.run(serve(config))
    except (ModelError, LlmError) as exc:
        log.error("cannot start: %s", exc)
        return 2
