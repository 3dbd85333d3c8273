"""Shared by the benchmarks: a gateway in its own process, caller speech, percentiles, tables."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.asynccontextmanager
async def gateway_process(calls: dict | None = None, ready_line: str = "phrases prepared", *,
                          sections: dict | None = None, http_port: int = 0, vad: dict | None = None,
                          ) -> AsyncIterator[tuple[int, subprocess.Popen, Path]]:
    """`switchboard run` on the example site and a free loopback port; yields once `ready_line` is logged.

    `calls` and `vad` override keys of the config's `calls:` and `vad:` sections (e.g. admission limits
    for load tests, the end-of-turn mode); `sections` replaces whole top-level sections (e.g.
    `messaging`, `http`). The HTTP API listens on
    `http_port` (0: any free port, so benchmarks never collide with a service on 8080).
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        etc = Path(tmp) / "etc"
        shutil.copytree(ROOT / "etc", etc)
        config = yaml.safe_load((etc / "switchboard.yaml").read_text())
        config["calls"] = {**config.get("calls", {}), **(calls or {})}
        config["vad"] = {**config.get("vad", {}), **(vad or {})}
        config.update(sections or {})
        (etc / "switchboard.yaml").write_text(yaml.safe_dump(config))
        data = Path(tmp) / "data"
        log_path = Path(tmp) / "gateway.log"
        log = log_path.open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.main", "--config", str(etc / "switchboard.yaml"), "--data-dir", str(data),
             "run", "--port", str(port), "--http-port", str(http_port)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            deadline = time.monotonic() + 300
            while ready_line not in log_path.read_text():
                if proc.poll() is not None:
                    raise RuntimeError(f"gateway exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError("gateway not ready within 300 s")
                await asyncio.sleep(0.2)
            yield port, proc, data
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
