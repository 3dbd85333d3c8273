"""The `switchboard` commands an admin runs: demo (real models, real AudioSocket) and doctor."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.net import free_port
from speech.audio import read_wav, write_wav

ROOT = Path(__file__).resolve().parents[2]
AMI_BANNER = (ROOT.parent / "shared" / "fixtures" / "asterisk" / "ami_received.txt").read_bytes().split(b"\r\n")[0]


def switchboard(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.models
async def test_demo_plays_a_wav_as_a_caller(tmp_path: Path, speak, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    caller = tmp_path / "caller.wav"
    write_wav(caller, bytes(4000) + await speak("Do you see children at the clinic?") + bytes(4000), 8000)
    out = tmp_path / "reply.wav"
    proc = await asyncio.to_thread(switchboard, "--data-dir", str(data_dir), "demo", str(caller), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.lower()
    caller_line = next(line for line in lines.splitlines() if line.startswith("caller:"))
    assert "children" in caller_line  # tiny.en may vary the rest of the synthetic question
    assert "voice-to-voice latency" in lines
    answer = next(line for line in lines.splitlines() if line.startswith("assistant:") and ("child" in line or "kids" in line))
    assert answer
    pcm, rate = read_wav(out)
    assert rate == 8000 and len(pcm) > 8000 * 2 * 4  # greeting and answer: several seconds


def test_demo_refuses_a_missing_wav(tmp_path: Path) -> None:
    proc = switchboard("demo", str(tmp_path / "nope.wav"))
    assert proc.returncode == 2 and "cannot read" in proc.stdout + proc.stderr



@pytest.fixture
def etc(tmp_path: Path) -> Path:
    for name in ("switchboard.yaml", "directory.yaml", "knowledge.yaml"):
        shutil.copy(ROOT / "etc" / name, tmp_path / name)
    return tmp_path


def _set(etc: Path, old: str, new: str) -> None:
    path = etc / "switchboard.yaml"
    path.write_text(path.read_text().replace(old, new, 1))


async def test_doctor_passes_with_asterisk_reachable(etc: Path, tmp_path: Path) -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(AMI_BANNER + b"\r\n")  # what Asterisk 22 sends first (fixture)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    ami_port = server.sockets[0].getsockname()[1]
    _set(etc, "log_level: INFO", f"log_level: INFO\nami:\n  enabled: true\n  secret: s\n  port: {ami_port}")
    _set(etc, "port: 9092", f"port: {free_port()}")
    _set(etc, "port: 8080", f"port: {free_port()}")
    async with server:
        proc = await asyncio.to_thread(switchboard, "--config", str(etc / "switchboard.yaml"), "--data-dir",
                                       str(tmp_path / "data"), "doctor", timeout=60)
    assert proc.returncode == 0, proc.stdout
    assert "Asterisk Call Manager" in proc.stdout and "all checks passed" in proc.stdout


def test_doctor_says_what_is_wrong_and_how_to_fix_it(etc: Path, tmp_path: Path) -> None:
    _set(etc, "log_level: INFO", f"log_level: INFO\nami:\n  enabled: true\n  secret: s\n  port: {free_port()}")  # nothing listens there
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    _set(etc, "port: 9092", f"port: {busy.getsockname()[1]}")
    _set(etc, "port: 8080", f"port: {busy.getsockname()[1]}")
    try:
        proc = switchboard("--config", str(etc / "switchboard.yaml"), "--data-dir", str(tmp_path / "data"), "doctor",
                           timeout=60)
    finally:
        busy.close()
    assert proc.returncode == 1
    assert "[FAIL] AudioSocket port" in proc.stdout and "in use" in proc.stdout
    assert "[FAIL] HTTP API port" in proc.stdout and "change http.port" in proc.stdout
    assert "[FAIL] Asterisk AMI" in proc.stdout and "fix:" in proc.stdout
    assert "3 problem(s) found" in proc.stdout


def test_doctor_passes_without_asterisk_when_ami_is_off(etc: Path, tmp_path: Path) -> None:
    _set(etc, "port: 9092", f"port: {free_port()}")
    _set(etc, "port: 8080", f"port: {free_port()}")
    proc = switchboard("--config", str(etc / "switchboard.yaml"), "--data-dir", str(tmp_path / "data"), "doctor",
                       timeout=60)
    assert proc.returncode == 0, proc.stdout
    assert "AMI control plane off" in proc.stdout and "all checks passed" in proc.stdout


def test_doctor_reports_a_config_error(etc: Path) -> None:
    _set(etc, "barge_in: true", "barge_in: sometimes")
    proc = switchboard("--config", str(etc / "switchboard.yaml"), "doctor", timeout=60)
    assert proc.returncode == 1 and "calls.barge_in" in proc.stdout


async def test_staff_answer_teaches_the_next_caller(tmp_path: Path, config) -> None:  # type: ignore[no-untyped-def]
    """A question nobody could answer is listed for staff; their answer is spoken to the next caller."""
    from llm.dialog import Dialog
    from llm.knowledge import Retriever
    from models.store import Store

    data = tmp_path / "data"
    store = await Store.open(data / "switchboard.db")
    await store.replace_admin_knowledge(config.knowledge)
    first = Dialog(config.site, Retriever(store), store, call_id="c1", caller="+15550100")
    assert (await first.respond("Do you sell gift vouchers?")).action.value == "escalate"
    await store.close()

    listed = await asyncio.to_thread(switchboard, "--data-dir", str(data), "questions", "list", timeout=60)
    assert "+15550100" in listed.stdout and "Do you sell gift vouchers?" in listed.stdout
    qid = listed.stdout.split()[0].lstrip("#")
    answered = await asyncio.to_thread(switchboard, "--data-dir", str(data), "questions", "answer", qid,
                                       "Yes, gift vouchers are sold at the front desk.", timeout=60)
    assert answered.returncode == 0, answered.stdout
    missing = await asyncio.to_thread(switchboard, "--data-dir", str(data), "questions", "answer", "999", "x", timeout=60)
    assert missing.returncode == 1 and "no question #999" in missing.stdout

    store = await Store.open(data / "switchboard.db")
    try:
        later = Dialog(config.site, Retriever(store), store, call_id="c2", caller="+15550111")
        reply = await later.respond("do you sell gift vouchers")
        assert reply.text.startswith("Yes, gift vouchers are sold at the front desk.")
    finally:
        await store.close()
