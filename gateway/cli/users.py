"""`switchboard users add | list | remove`: dashboard staff accounts in the database the daemon reads.

A password is never a command-line argument (it would sit in the shell history and in `ps`): it is
typed at a prompt, twice, or read from the environment variable --password-env names.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import datetime

from gateway.cli.common import load, on_store
from gateway.dashboard.accounts import new_user


def _password(args: argparse.Namespace) -> str | None:
    if args.password_env:
        value = os.environ.get(args.password_env)
        if value is None:
            print(f"switchboard users add: environment variable {args.password_env} is not set", file=sys.stderr)
        return value
    first = getpass.getpass(f"Password for {args.name}: ")
    if getpass.getpass("Again: ") != first:
        print("switchboard users add: the passwords differ", file=sys.stderr)
        return None
    return first


def cmd_add(args: argparse.Namespace) -> int:
    config = load(args)
    if config is None:
        return 2
    password = _password(args)
    if password is None:
        return 2
    try:
        user = new_user(args.name, args.role, password)
        on_store(config, lambda store: store.staff_add(user))
    except ValueError as exc:
        print(f"switchboard users add: {exc}", file=sys.stderr)
        return 1
    print(f"user {user.name} added, role {user.role}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    config = load(args)
    if config is None:
        return 2
    users = on_store(config, lambda store: store.staff_users())
    if not users:
        print("no users (switchboard users add NAME --role admin|supervisor|operator)")
    for u in users:
        print(f"{u.name}  {u.role}  created {datetime.fromtimestamp(u.created_at):%Y-%m-%d %H:%M}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    config = load(args)
    if config is None:
        return 2
    try:
        removed = on_store(config, lambda store: store.staff_remove(args.name))
    except ValueError as exc:  # the last admin
        print(f"switchboard users remove: {exc}", file=sys.stderr)
        return 1
    if not removed:
        print(f"switchboard users remove: no user named {args.name!r}", file=sys.stderr)
        return 1
    print(f"user {args.name} removed, and signed out everywhere")
    return 0
