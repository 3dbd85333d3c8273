"""A store opened as a client (a CLI command beside the daemon) leaves the daemon's schema and WAL alone."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from models.migrations import LATEST_VERSION, SchemaVersionError
from models.store import Store


def version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT version FROM schema_version").fetchone()[0]


async def test_a_client_does_not_migrate_the_schema_of_a_running_older_daemon(tmp_path: Path) -> None:
    path = tmp_path / "sb.db"
    await (await Store.open(path)).close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE schema_version SET version = ?", [LATEST_VERSION - 1])  # as an older daemon left it
    with pytest.raises(SchemaVersionError, match="restart it"):
        await Store.open(path, client=True)
    assert version(path) == LATEST_VERSION - 1


async def test_a_client_keeps_the_wal_that_the_daemon_writes(tmp_path: Path) -> None:
    daemon = await Store.open(tmp_path / "sb.db")
    try:
        await daemon.contact_for("+15550100")
        wal = Path(f"{daemon.path}-wal")
        before = wal.stat().st_size
        client = await Store.open(daemon.path, client=True)
        assert await client.thread_for("+15550100")
        await client.close()
        assert wal.stat().st_size >= before > 0
    finally:
        await daemon.close()
    assert not wal.exists() or wal.stat().st_size == 0  # the daemon itself still folds it back at close
