"""`switchboard` command: run | demo | doctor | call | models | questions."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from pathlib import Path

from gateway.config import Config, ConfigError, default_config, load_config
from gateway.models_cmd import add_models_parser
from gateway.questions_cmd import add_questions_parser
from models.privacy import set_log_transcripts

log = logging.getLogger("switchboard")


def setup_logging(level: str, *, transcripts: bool = False) -> None:
    # Under systemd the journal adds its own timestamps.
    fmt = "%(levelname)s %(name)s %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    set_log_transcripts(transcripts)


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config, data_dir=args.data_dir)
    except ConfigError as exc:
        print(f"switchboard: configuration error: {exc}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    setup_logging(config.log_level, transcripts=config.log_transcripts)
    if args.port is not None:
        config = dataclasses.replace(config, audiosocket=config.audiosocket.model_copy(update={"port": args.port}))
    from gateway.app import serve
    from llm.engine import LlmError
    from speech.models import ModelError

    try:
        return asyncio.run(serve(config))
    except (ModelError, LlmError) as exc:
        log.error("cannot start: %s", exc)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    setup_logging("WARNING" if not args.verbose else "INFO", transcripts=config.log_transcripts)
    from gateway.demo import run_demo

    if (args.wav is None) == (args.say is None):
        print("switchboard demo: give either CALLER.wav or --say TEXT", file=sys.stderr)
        return 2
    return asyncio.run(run_demo(config, args.out, wav=args.wav, say=args.say))


def cmd_doctor(args: argparse.Namespace) -> int:
    from gateway.doctor import run_doctor

    return asyncio.run(run_doctor(args.config, args.data_dir))


def cmd_call(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    if not config.ami.enabled:
        print(f"switchboard call: needs the AMI control plane: set ami.enabled and its credentials in {config.path}",
              file=sys.stderr)
        return 2
    if not args.text and args.code is None:
        print("switchboard call: give a TEXT to say, --code DIGITS, or both", file=sys.stderr)
        return 2
    if args.code is not None and not args.code.isdigit():
        print("switchboard call: --code must be digits only", file=sys.stderr)
        return 2
    setup_logging(config.log_level if args.verbose else "WARNING", transcripts=config.log_transcripts)
    from gateway.asterisk.outbound import run_outbound_call

    return asyncio.run(run_outbound_call(config, args.number, args.text, args.code))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="On-premise AI voice gateway for Asterisk.")
    parser.add_argument("-c", "--config", type=Path,
                        default=Path(os.environ.get("SWITCHBOARD_CONFIG") or default_config()),
                        help="path to switchboard.yaml (default: env SWITCHBOARD_CONFIG, else /etc/switchboard/"
                             "switchboard.yaml if it exists, else this checkout's etc/; now %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="override data_dir from the config (database, models)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway daemon (AudioSocket listener)")
    run.add_argument("--port", type=int, default=None, help="override audiosocket.port (0: any free port)")
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="play a WAV as a caller through a real AudioSocket connection")
    demo.add_argument("wav", type=Path, nargs="?", help="the caller's speech (WAV, 16-bit, any rate, mono or stereo)")
    demo.add_argument("--say", metavar="TEXT", help="instead of a WAV: the caller's words, spoken by the bundled voice")
    demo.add_argument("--out", type=Path, default=Path("demo-reply.wav"), help="where to write the gateway's audio")
    demo.add_argument("-v", "--verbose", action="store_true", help="show the gateway's log")
    demo.set_defaults(func=cmd_demo)
    doctor = sub.add_parser("doctor", help="check config, models, ports and Asterisk; say how to fix problems")
    doctor.set_defaults(func=cmd_doctor)
    call = sub.add_parser("call", help="place an outbound call over AMI that speaks a message or a one-time code")
    call.add_argument("number", help="number or extension, dialled as ami.outbound_channel")
    call.add_argument("text", nargs="?", default="", help="what to say")
    call.add_argument("--code", metavar="DIGITS", help="a one-time code, read digit by digit, twice")
    call.add_argument("-v", "--verbose", action="store_true", help="show the log (codes are masked)")
    call.set_defaults(func=cmd_call)
    add_models_parser(sub)
    add_questions_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
