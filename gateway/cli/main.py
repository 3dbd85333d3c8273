"""`switchboard` command: run | demo | doctor | call | models | questions | keys | users.

The whole command line is declared here; each command's work lives in its own module
(gateway/cli/<command>.py), imported only when that command runs, so that `switchboard questions
list` loads neither the models nor the channels' and PBX's network stacks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from gateway.cli.common import MIRROR_ENV
from gateway.config import default_config


def _command(parser: argparse.ArgumentParser, handler: str) -> argparse.ArgumentParser:
    """`handler` is "module:function" under gateway.cli."""
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="On-premise AI voice gateway for Asterisk.")
    parser.add_argument("-c", "--config", type=Path,
                        default=Path(os.environ.get("SWITCHBOARD_CONFIG") or default_config()),
                        help="path to switchboard.yaml (default: env SWITCHBOARD_CONFIG, else /etc/switchboard/"
                             "switchboard.yaml if it exists, else this checkout's etc/; now %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="override data_dir from the config (database, models)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = _command(sub.add_parser("run", help="run the gateway daemon (AudioSocket listener)"), "run:command")
    run.add_argument("--port", type=int, default=None, help="override audiosocket.port (0: any free port)")
    run.add_argument("--http-port", type=int, default=None, help="override http.port (0: any free port)")

    demo = _command(sub.add_parser("demo", help="play a WAV as a caller through a real AudioSocket connection"),
                    "demo:command")
    demo.add_argument("wav", type=Path, nargs="?", help="the caller's speech (WAV, 16-bit, any rate, mono or stereo)")
    demo.add_argument("--say", metavar="TEXT", help="instead of a WAV: the caller's words, spoken by the bundled voice")
    demo.add_argument("--out", type=Path, default=Path("demo-reply.wav"), help="where to write the gateway's audio")
    demo.add_argument("-v", "--verbose", action="store_true", help="show the gateway's log")

    _command(sub.add_parser("doctor", help="check config, models, ports and Asterisk; say how to fix problems"),
             "doctor:command")

    call = _command(sub.add_parser("call", help="place an outbound call over AMI that speaks a message or a "
                                                "one-time code"), "call:command")
    call.add_argument("number", help="number or extension, dialled as ami.outbound_channel")
    call.add_argument("text", nargs="?", default="", help="what to say")
    call.add_argument("--code", metavar="DIGITS", help="a one-time code, read digit by digit, twice")
    call.add_argument("-v", "--verbose", action="store_true", help="show the log (codes are masked)")

    models = sub.add_parser("models", help="list, download and verify models",
                            description="List, download and verify models under <data_dir>/models.")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    _command(models_sub.add_parser("list", help="show the catalogue and what is installed"), "models:cmd_list")
    pull = _command(models_sub.add_parser("pull", help="download a catalogue model into <data_dir>/models/NAME"),
                    "models:cmd_pull")
    pull.add_argument("name", help="a name from `switchboard models list`")
    pull.add_argument("--url-base", metavar="URL",
                      help=f"fetch from this mirror (scheme://host[:port][/prefix]) instead of the catalogue's "
                           f"host; the {MIRROR_ENV} environment variable does the same")
    _command(models_sub.add_parser("verify", help="re-hash downloaded models and the assembled bundled Gemma; "
                                                  "exit 1 if anything is wrong"), "models:cmd_verify")

    questions = sub.add_parser("questions", help="questions the assistant could not answer; answer them")
    questions_sub = questions.add_subparsers(dest="questions_command", required=True)
    listing = _command(questions_sub.add_parser("list", help="open questions (with --all: answered ones too)"),
                       "questions:cmd_list")
    listing.add_argument("--all", action="store_true")
    answer = _command(questions_sub.add_parser(
        "answer", help="answer question ID; the answer is spoken to the next caller who asks"), "questions:cmd_answer")
    answer.add_argument("id", type=int)
    answer.add_argument("text", help="the answer, as it should be spoken")

    keys = sub.add_parser("keys", help="HTTP API keys: create, list, revoke",
                          description="HTTP API keys, stored hashed in the database; the daemon sees changes at once.")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = _command(keys_sub.add_parser("create", help="make a key; it is printed once, as the last line"),
                      "keys:cmd_create")
    create.add_argument("--name", required=True, help="who uses it, e.g. the integrator's system")
    create.add_argument("--scope", action="append", required=True, metavar="SCOPE",
                        help="repeat for each: messages:send, messages:read, otp:send, otp:verify, calls:create, "
                             "threads:write, threads:read, admin")
    create.add_argument("--expires", metavar="DURATION", help="e.g. 90d, 12h (default: never)")
    create.add_argument("--rate", metavar="N/UNIT", help="requests per s, m or h, e.g. 20/s (default: http.default_rate)")
    _command(keys_sub.add_parser("list", help="names, scopes, prefixes, dates; never the keys"), "keys:cmd_list")
    revoke = _command(keys_sub.add_parser("revoke", help="refuse key NAME from now on"), "keys:cmd_revoke")
    revoke.add_argument("name")

    users = sub.add_parser("users", help="dashboard staff accounts: add, list, remove",
                           description="Staff accounts for the dashboard (/dashboard on the HTTP server), stored "
                                       "with argon2 password hashes; the daemon sees changes at once.")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    add = _command(users_sub.add_parser("add", help="add user NAME; the password is asked for (twice)"),
                   "users:cmd_add")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("admin", "supervisor", "operator"),
                     help="operator: conversations and live calls; supervisor: also help requests and "
                          "knowledge; admin: everything, users included")
    add.add_argument("--password-env", metavar="VAR", help="read the password from this environment variable "
                                                           "instead of a prompt (never give it as an argument)")
    _command(users_sub.add_parser("list", help="names, roles, dates; never passwords"), "users:cmd_list")
    remove = _command(users_sub.add_parser("remove", help="delete user NAME and end their sessions"),
                      "users:cmd_remove")
    remove.add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, function = args.handler.split(":")
    return int(getattr(importlib.import_module(f"gateway.cli.{module}"), function)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
