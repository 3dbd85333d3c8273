"""sd_notify from the event loop must never block it, even when the receiver stops reading."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from gateway.daemon import sdnotify


def test_notify_never_blocks_when_the_receiver_stops_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    results: list[bool] = []

    def ping() -> None:  # more datagrams than the kernel queues for an unread socket (max_dgram_qlen)
        results.extend(sdnotify.notify("WATCHDOG=1") for _ in range(200))

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    pinger.join(10)
    try:
        assert not pinger.is_alive(), "notify() blocked: the event loop would freeze"
        assert results[0] is True and results[-1] is False  # queued until full, then dropped
        assert receiver.recv(100) == b"WATCHDOG=1"
    finally:
        receiver.close()
