"""CLI commands as an admin runs them, as separate processes, on the database a running daemon holds open.

The daemon here is a Store opened in this process the way the daemon opens it, with its admin knowledge
loaded. A CLI command must read and write that same database without replacing the daemon's knowledge
or checkpointing (TRUNCATE) its WAL, which would block the daemon's writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from models.records import HelpRequest, KnowledgeEntry
from models.store import Store
from support.ami_server import AmiTestServer

ROOT = Path(__file__).resolve().parents[2]
DAEMON_ONLY = KnowledgeEntry(id="daemon-only", question="Is the daemon's knowledge kept?", answer="It is.")


def switchboard(config: Path, data: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", "-c", str(config), "--data-dir", str(data), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    for name in ("switchboard.yaml", "directory.yaml", "knowledge.yaml"):
        shutil.copy(ROOT / "etc" / name, tmp_path / name)
    return tmp_path / "switchboard.yaml"


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Store]:
    """The daemon's store: open for the whole test, with knowledge the CLI's config does not have."""
    store = await Store.open(tmp_path / "data" / "switchboard.db")
    await store.replace_admin_knowledge([DAEMON_ONLY])
    await store.create_help_request(HelpRequest(id=None, call_id="c1", contact_number="+15550100",
                                                question="Do you sell gift vouchers?"))
    yield store
    await store.close()


def wal(store: Store) -> int:
    return Path(f"{store.path}-wal").stat().st_size


async def test_questions_list_and_answer_share_the_running_daemons_database(daemon: Store, etc: Path) -> None:
    data = daemon.path.parent
    wal_before = wal(daemon)
    assert wal_before > 0

    listed = await asyncio.to_thread(switchboard, etc, data, "questions", "list", timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "Do you sell gift vouchers?" in listed.stdout
    assert wal(daemon) >= wal_before  # not checkpointed (TRUNCATE leaves it empty)

    qid = listed.stdout.split()[0].lstrip("#")
    answered = await asyncio.to_thread(switchboard, etc, data, "questions", "answer", qid,
                                       "Yes, at the front desk.", timeout=60)
    assert answered.returncode == 0, answered.stderr
    assert wal(daemon) >= wal_before
    # The running daemon sees the answer at once, and still has its own knowledge.
    ids = {e.id for e in await daemon.knowledge()}
    assert {f"learned-{qid}", DAEMON_ONLY.id} <= ids
    assert (await daemon.help_requests(status="open")) == []


def test_questions_without_a_database_say_where_they_looked(etc: Path, tmp_path: Path) -> None:
    proc = switchboard(etc, tmp_path / "nothing-here", "questions", "list", timeout=60)
    assert proc.returncode == 2
    assert f"no database at {tmp_path / 'nothing-here' / 'switchboard.db'}" in proc.stderr
    assert not (tmp_path / "nothing-here" / "switchboard.db").exists()


@pytest.mark.models
async def test_outbound_call_command_keeps_the_daemons_knowledge_and_wal(daemon: Store, etc: Path) -> None:
    """`switchboard call` loads the models and opens the store like the daemon, but as a client."""
    server = await AmiTestServer().start()
    server.originate_reasons = [5]  # busy: the result is stored without any audio
    etc.write_text(etc.read_text().replace(
        "log_level: INFO", "log_level: INFO\nami: {enabled: true, port: %d, username: gateway, secret: secret,"
        " outbound_retries: 0}" % server.port, 1))
    wal_before = wal(daemon)
    try:
        proc = await asyncio.to_thread(switchboard, etc, daemon.path.parent, "call", "0612345678", "Hello.", "-v")
    finally:
        await server.stop()
    assert proc.returncode == 1 and "0612345678: busy after 1 attempt(s)" in proc.stdout, proc.stderr
    assert wal(daemon) >= wal_before
    assert [e.id for e in await daemon.knowledge()] == [DAEMON_ONLY.id]
    with contextlib.closing(sqlite3.connect(daemon.path)) as db:  # written to the daemon's database
        assert db.execute("SELECT count(*) FROM calls WHERE dialled = '0612345678'").fetchone() == (1,)
    # The log (-v) shows the callee's number masked.
    assert "number=***678" in proc.stderr and "0612345678" not in proc.stderr
