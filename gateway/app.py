"""The daemon's wiring and lifecycle: services, media clock, AudioSocket listener, systemd, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from gateway import sdnotify
from gateway.asterisk.ami import AmiClient
from gateway.asterisk.ari import AriController, AriTransferer
from gateway.asterisk.correlation import CallDirectory
from gateway.asterisk.outbound import OutboundCalls, OutboundMessageSession
from gateway.asterisk.transfer import RETURN_STATUSES, AmiTransferer
from gateway.audiosocket import AudioSocketCall, AudioSocketServer
from gateway.call import CallSession, DialplanTransferer, Transferer
from gateway.config import Config
from gateway.messaging import Messaging
from gateway.pacer import MediaClock
from gateway.services import Services, load_services

log = logging.getLogger(__name__)


class Gateway:
    """Accepts AudioSocket calls and runs one CallSession per call, all sharing one media clock."""

    def __init__(self, services: Services, *, host: str | None = None, port: int | None = None,
                 transferer: Transferer | None = None, calls: CallDirectory | None = None,
                 outbound: OutboundCalls | None = None, ari: AriController | None = None,
                 messaging: Messaging | None = None) -> None:
        cfg = services.config.audiosocket
        self.services = services
        self.clock = MediaClock()
        self.transferer = transferer
        self.calls, self.outbound = calls, outbound  # the AMI control plane, when enabled
        self.ari, self.messaging = ari, messaging
        self._ami_hangups: set[asyncio.Task[None]] = set()
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
        job = self.outbound.claim(call.call_id) if self.outbound else None
        if job is not None:
            await OutboundMessageSession(call, self.services, self.clock, job).run()
            return
        on_message = self.messaging.message_taken if self.messaging else None
        session = CallSession(call, self.services, self.clock, self.transferer, on_message_taken=on_message,
                              **await self._correlate(call))
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            if self.calls is not None:
                self.calls.forget(call.call_id)

    async def _correlate(self, call: AudioSocketCall) -> dict:
        """Caller, dialled number and a failed transfer's target, from ARI or AMI (AMI's event races us)."""
        ari_call = self.ari.call(call.call_id) if self.ari else None
        if ari_call is not None:
            return {"caller": ari_call.caller_number, "dialled": ari_call.dialled}
        if self.calls is None:
            return {}
        info = await self.calls.lookup(call.call_id, self.services.config.ami.correlation_wait_ms / 1000)
        if info is None:
            log.info("call not correlated call=%s (no AS_UUID VarSet seen)", call.call_id)
            return {}

        def hung_up() -> None:
            task = asyncio.ensure_future(call.hangup("ami hangup"))
            self._ami_hangups.add(task)
            task.add_done_callback(self._ami_hangups.discard)

        self.calls.watch_hangup(call.call_id, hung_up)
        unavailable = None
        if info.transfer_result in RETURN_STATUSES:
            unavailable = next((m for m in self.services.config.site.directory.everyone()
                                if m.extension == info.transfer_target), None)
            log.info("transfer returned call=%s status=%s extension=%s", call.call_id, info.transfer_result,
                     info.transfer_target)
        return {"caller": info.channel.caller, "dialled": info.channel.dialled, "unavailable": unavailable}

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
    ami = AmiClient(config.ami) if config.ami.enabled else None
    calls = CallDirectory(ami) if ami else None
    transferer: Transferer | None = (
        AmiTransferer(ami, calls, services.store, config.ami, site=config.site) if ami and calls else None)
    ari = AriController(config.ari) if config.ari else None
    if ari is not None:
        transferer = AriTransferer(ari, fallback=transferer or DialplanTransferer())
    try:
        messaging = Messaging(config.messaging, services, ami) if config.messaging.channels_configured else None
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        await services.close()
        return 2
    gateway = Gateway(services, transferer=transferer, calls=calls, ari=ari, messaging=messaging)
    try:
        await gateway.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.audiosocket.host, config.audiosocket.port, exc.strerror)
        await services.close()
        return 2
    if ami is not None and isinstance(transferer, AmiTransferer):
        if config.ami.warm_transfer:  # staff legs of warm transfers come to this listener too
            gateway.outbound = transferer.outbound = OutboundCalls(
                ami, services.store, config.ami, site=config.site, audiosocket=f"{config.audiosocket.host}:{gateway.port}")
    if ami is not None:
        await ami.start()  # in the background: calls are served meanwhile, transfers wait for AMI
    if ari is not None:
        await ari.start()  # connects (and reconnects) in the background
    if messaging is not None:
        await messaging.start()
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
    await gateway.stop()  # callers hear goodbye before ARI hands them back to the dialplan
    if ari is not None:
        await ari.stop()
    if messaging is not None:
        await messaging.stop()
    if ami is not None:
        await ami.close()
    if watchdog:
        watchdog.cancel()
    await services.close()
    log.info("stopped")
    return 0
