"""The daemon's wiring and lifecycle: services, media clock, AudioSocket listener, systemd, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from gateway import sdnotify
from gateway.audiosocket import AudioSocketCall, AudioSocketServer
from gateway.call import CallSession, Transferer
from gateway.config import Config
from gateway.pacer import MediaClock
from gateway.services import Services, load_services

log = logging.getLogger(__name__)


class Gateway:
    """Accepts AudioSocket calls and runs one CallSession per call, all sharing one media clock."""

    def __init__(self, services: Services, *, host: str | None = None, port: int | None = None,
                 transferer: Transferer | None = None) -> None:
        cfg = services.config.audiosocket
        self.services = services
        self.clock = MediaClock()
        self.transferer = transferer
        self.sessions: set[CallSession] = set()
        self.server = AudioSocketServer(
            host if host is not None else cfg.host, cfg.port if port is None else port, self._handle,
            uuid_timeout_s=cfg.uuid_timeout_s, idle_timeout_s=cfg.idle_timeout_s, max_calls=cfg.max_calls)
        self._warmup: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        self.clock.start()
        await self.server.start()
        # Fixed phrases and knowledge answers are synthesised ahead, so most replies start at once.
        self._warmup = asyncio.create_task(self._prepare_phrases())

    async def _prepare_phrases(self) -> None:
        t0 = time.perf_counter()
        phrases = self.services.fixed_phrases()
        await self.services.synthesizer.prepare(phrases)
        log.info("phrases prepared count=%d ms=%.0f", len(phrases), (time.perf_counter() - t0) * 1000)

    async def _handle(self, call: AudioSocketCall) -> None:
        session = CallSession(call, self.services, self.clock, self.transferer)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    async def stop(self, grace_s: float = 8.0) -> None:
        """Stop accepting, tell every caller goodbye (bounded by grace), then stop the clock."""
        if self._warmup:
            self._warmup.cancel()
        self.server.stop_accepting()
        if self.sessions:
            log.info("ending calls count=%d", len(self.sessions))
            await asyncio.wait([asyncio.ensure_future(s.shutdown()) for s in list(self.sessions)], timeout=grace_s)
        await self.server.stop(grace_s=2.0)
        await self.clock.stop()


async def serve(config: Config) -> int:
    """`switchboard run`: returns the process exit code."""
    sdnotify.notify("STATUS=loading models")
    services = await load_services(config)
    gateway = Gateway(services)
    try:
        await gateway.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.audiosocket.host, config.audiosocket.port, exc.strerror)
        await services.close()
        return 2
    log.info("ready audiosocket=%s:%d database=%s", config.audiosocket.host, gateway.port, config.database)
    sdnotify.notify(f"READY=1\nSTATUS=listening on {config.audiosocket.host}:{gateway.port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    interval = sdnotify.watchdog_interval()
    watchdog = asyncio.create_task(sdnotify.watchdog(interval)) if interval else None
    await stop.wait()
    log.info("stopping signal received calls=%d", len(gateway.sessions))
    sdnotify.notify("STOPPING=1\nSTATUS=ending calls")
    await gateway.stop()
    if watchdog:
        watchdog.cancel()
    await services.close()
    log.info("stopped")
    return 0
