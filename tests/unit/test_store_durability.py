"""The README promises that what the store committed survives a crash, power loss included:
every connection the store opens commits with synchronous=FULL (NORMAL in WAL mode may lose the last
commits on power loss)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.store import Store

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


@pytest.mark.parametrize("client", [False, True])
async def test_every_store_connection_syncs_full(tmp_path: Path, client: bool) -> None:
    store = await Store.open(tmp_path / "sb.db", client=client)
    try:
        # On the writer thread, which owns the connection every query and commit goes through.
        level = await store._run(lambda: store._writer_db.execute("PRAGMA synchronous").fetchone()[0])
        assert level == FULL
    finally:
        await store.close()
