"""`switchboard users add | list | remove` as an admin runs them, on a real database the dashboard reads."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from gateway.dashboard.accounts import check_password
from models.store import Store

ROOT = Path(__file__).resolve().parents[2]


def users(data: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", "--data-dir", str(data), "users", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def test_add_list_remove(tmp_path: Path) -> None:
    secret = {"SB_PW": "a long enough passphrase"}
    added = users(tmp_path, "add", "sam", "--role", "supervisor", "--password-env", "SB_PW", env=secret)
    assert added.returncode == 0 and "user sam added, role supervisor" in added.stdout, added.stderr
    assert users(tmp_path, "add", "sam", "--role", "admin", "--password-env", "SB_PW", env=secret).returncode == 1
    short = users(tmp_path, "add", "bob", "--role", "admin", "--password-env", "SB_PW", env={"SB_PW": "short"})
    assert short.returncode == 1 and "at least" in short.stderr
    unset = users(tmp_path, "add", "bob", "--role", "admin", "--password-env", "NOT_SET_ANYWHERE")
    assert unset.returncode == 2 and "NOT_SET_ANYWHERE is not set" in unset.stderr
    bad_role = users(tmp_path, "add", "bob", "--role", "root", "--password-env", "SB_PW", env=secret)
    assert bad_role.returncode == 2
    listed = users(tmp_path, "list")
    assert listed.stdout.startswith("sam  supervisor") and "bob" not in listed.stdout
    assert secret["SB_PW"] not in listed.stdout

    async def check() -> tuple[bool, bool]:
        store = await Store.open(tmp_path / "switchboard.db")
        try:
            return (await check_password(store, "sam", secret["SB_PW"]) is not None,
                    await check_password(store, "sam", "a wrong passphrase") is not None)
        finally:
            await store.close()
    assert asyncio.run(check()) == (True, False)

    assert users(tmp_path, "remove", "sam").returncode == 0
    assert users(tmp_path, "remove", "sam").returncode == 1
    assert "no users" in users(tmp_path, "list").stdout
    assert users(tmp_path, "add", "ada", "--role", "admin", "--password-env", "SB_PW", env=secret).returncode == 0
    last = users(tmp_path, "remove", "ada")  # nobody could manage users any more
    assert last.returncode == 1 and "ada is the last admin" in last.stderr
