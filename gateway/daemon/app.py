"""The daemon's wiring and lifecycle: services, media clock, AudioSocket listener, systemd, signals."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from channels.base import InboundMessage
from channels.outbox import Outbox
from channels.webhook import WebhookChannel
from gateway.daemon import sdnotify
from gateway.asterisk.ami import AmiClient
from gateway.asterisk.ari import AriController, AriTransferer
from gateway.asterisk.correlation import CallDirectory
from gateway.asterisk.originate import OutboundCalls
from gateway.asterisk.transfer import RETURN_STATUSES, AmiTransferer
from gateway.asterisk.voice import VoiceChannel
from gateway.media.audiosocket import AudioSocketCall, AudioSocketServer
from gateway.media.leg import MediaLeg
from gateway.media.sip import SipCall, SipServer, SipTransferer
from gateway.sessions.call import CallSession, DialplanTransferer, Transferer
from gateway.sessions.outbound import OutboundMessageSession
from gateway.config import Config
from gateway.daemon.messaging import Messaging
from gateway.dashboard.app import Dashboard
from gateway.dashboard.helpdesk import HelpDesk
from gateway.dashboard.pages import PREFIX as DASHBOARD_PREFIX
from gateway.http.api import HttpApi
from gateway.http.chats import Chats
from gateway.daemon.retention import Sweeper
from gateway.http.webhooks import Webhooks
from gateway.tasks import TaskSet
from gateway.media.pacer import MediaClock
from gateway.services import Services, load_services
from llm.site import StaffMember
from models.privacy import masked
from models.records import CallEvent, HelpRequest, Turn

log = logging.getLogger(__name__)

CALL_GRACE_S = 8.0  # a caller's goodbye on stop
# Everything a stop may take (calls' goodbyes, ARI, the outbox's in-flight sends, closing the
# models), after which the process exits whatever is still running; systemd's TimeoutStopSec
# (systemd/switchboard.service) is set above it.
STOP_DEADLINE_S = 30.0
SUMMARY_CHARS = 120  # call.ended's summary


class Gateway:
    """Accepts AudioSocket calls (and direct SIP calls, with `sip.enabled`) and runs one CallSession per call,
all sharing one media clock."""

    def __init__(self, services: Services, *, host: str | None = None, port: int | None = None,
                 transferer: Transferer | None = None, calls: CallDirectory | None = None,
                 outbound: OutboundCalls | None = None, ari: AriController | None = None,
                 messaging: Messaging | None = None,
                 on_call_ended: Callable[[str, str], None] | None = None) -> None:
        cfg = services.config.audiosocket
        self.services = services
        self.clock = MediaClock()
        self.transferer = transferer
        self.calls, self.outbound = calls, outbound  # the AMI control plane, when enabled
        self.ari, self.messaging = ari, messaging
        self.on_call_ended = on_call_ended  # (call id, reason): metrics and webhooks
        self._ami_hangups: set[asyncio.Task[None]] = set()
        self.sessions: set[CallSession] = set()
        self.server = AudioSocketServer(
            host if host is not None else cfg.host, cfg.port if port is None else port, self._handle,
            uuid_timeout_s=cfg.uuid_timeout_s, idle_timeout_s=cfg.idle_timeout_s, max_calls=cfg.max_calls,
            codec_0x10=cfg.codec_0x10)
        self.sip = SipServer(services.config.sip, self._handle_sip) if services.config.sip.enabled else None
        self._warmup: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        self.clock.start()
        await self.server.start()
        if self.sip is not None:
            await self.sip.start()  # registers in the background
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
        await self._run_session(call, self.transferer, **await self._correlate(call))

    async def _handle_sip(self, call: SipCall) -> None:
        await self._run_session(call, SipTransferer(), caller=call.caller, dialled=call.dialled)

    async def _run_session(self, call: MediaLeg, transferer: Transferer | None, **known) -> None:  # type: ignore[no-untyped-def]
        on_message = self.messaging.message_taken if self.messaging else None
        session = CallSession(call, self.services, self.clock, transferer, on_message_taken=on_message, **known)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            if self.calls is not None:
                self.calls.forget(call.call_id)
            if self.on_call_ended is not None:
                self.on_call_ended(call.call_id, session.end_reason)

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

    async def stop(self, grace_s: float = CALL_GRACE_S) -> None:
        """Stop accepting, tell every caller goodbye (bounded by grace), then stop the clock."""
        if self._warmup:
            self._warmup.cancel()
            await asyncio.gather(self._warmup, return_exceptions=True)
        self.server.stop_accepting()
        if self.sip is not None:
            self.sip.stop_accepting()
        if self.sessions:
            log.info("ending calls count=%d", len(self.sessions))
            goodbyes = [asyncio.ensure_future(s.shutdown(grace_s)) for s in list(self.sessions)]
            _, late = await asyncio.wait(goodbyes, timeout=grace_s + 1)
            for task in late:  # shutdown() bounds itself; this only guards against a bug there
                task.cancel()
            await asyncio.gather(*goodbyes, return_exceptions=True)
        await self.server.stop(grace_s=2.0)
        if self.sip is not None:
            await self.sip.stop(grace_s=2.0)
        for task in list(self._ami_hangups):
            task.cancel()
        await asyncio.gather(*self._ami_hangups, return_exceptions=True)
        await self.clock.stop()


class Daemon:
    """What `switchboard run` builds from the config: the gateway and its control and text planes.

    Built in one place so that tests start exactly the wiring users run (an AMI transferer that
    was never built once went unnoticed because tests assembled their own).
    """

    def __init__(self, services: Services) -> None:
        self.config = config = services.config
        self.services = services
        self.ami = AmiClient(config.ami) if config.ami.enabled else None
        calls = CallDirectory(self.ami) if self.ami is not None else None
        transferer: Transferer | None = None
        self.ami_transferer: AmiTransferer | None = None
        if self.ami is not None and calls is not None:
            transferer = self.ami_transferer = AmiTransferer(self.ami, calls, services.store, config.ami,
                                                             site=config.site)
        self.ari = AriController(config.ari) if config.ari else None
        if self.ari is not None:
            transferer = AriTransferer(self.ari, fallback=transferer or DialplanTransferer())
        # Raises ValueError for a channel that needs a missing plane (e.g. sip_via_ami without AMI).
        self.messaging = (Messaging(config.messaging, services, self.ami)
                          if config.messaging.channels_configured else None)
        # Messages spoken in outbound calls (HTTP API channel "voice"): an outbox of their own, so a site
        # with AMI and no text channel has no text plane.
        self.voice = Outbox(services.store, {"voice": VoiceChannel(lambda: self.gateway.outbound, config.ami)},
                            retry=config.messaging.outbox.retry) if self.ami and config.http.enabled else None
        # Events for integrators, through an outbox of their own (retried, kept across restarts).
        hooks = config.http.webhooks if config.http.enabled else ()
        self.hook_outbox = Outbox(services.store, {"webhook": WebhookChannel(hooks)},
                                  retry=config.messaging.outbox.retry) if hooks else None
        self.webhooks = Webhooks(hooks, self.hook_outbox)
        self._hook_tasks = TaskSet("webhooks")
        for outbox in (self.messaging.outbox if self.messaging else None, self.voice):
            if outbox is not None:
                outbox.on_settled = self._message_settled
        self.http = HttpApi(
            config.http, services, route=self.route, planes=self.planes, emit=self.webhooks.emit,
            calls_active=lambda: len(self.gateway.sessions),
            ami_connected=(lambda: self.ami.connected) if self.ami is not None else None,
            chats=Chats(config.site, services.retriever, services.store, engine=services.dialog_engine,
                        max_reply_tokens=config.models.llm.max_reply_tokens,
                        on_message_taken=self.messaging.deliver_to_staff if self.messaging else None,
                        on_escalation=self.messaging.conversations.escalate if self.messaging else None),
        ) if config.http.enabled else None
        self._unwatch: Callable[[], None] | None = None  # the store watcher feeding metrics and webhooks
        self.sweeper = Sweeper(services.store, config.retention)
        self._sweeping = TaskSet("retention")
        # Answers to help requests, their follow-up to the customer, and their timeout (with or without pages).
        self.helpdesk = HelpDesk(services.store, config.site.name, config.help_requests, route=self.route,
                                 outbox_of=self._outbox_of, prepare_speech=services.synthesizer.prepare)
        self.dashboard = Dashboard(config.dashboard, services.store, self.helpdesk, live_calls=lambda: [
            (s.call.call_id, s.caller, s.dialled, s.state) for s in self.gateway.sessions],
            conversations=self.messaging.conversations if self.messaging else None, chats=self.http.chats,
            capacity=lambda: (services.turns_in_use, config.capacity.max_turns),
            transfer=self._transfer_now if self.ami_transferer is not None else None,
            directory=config.site.directory.everyone(), zone=config.site.tz) \
            if self.http is not None and config.dashboard.enabled else None
        if self.http is not None and self.dashboard is not None:
            self.http.app.add_subapp(DASHBOARD_PREFIX, self.dashboard.app)
        self.gateway = Gateway(services, transferer=transferer, calls=calls, ari=self.ari, messaging=self.messaging,
                               on_call_ended=self._call_ended)

    async def _transfer_now(self, call_id: str, member: StaffMember) -> bool:
        """Staff's "Transfer now": the live call to `member` (of the directory) through its own transferer (AMI)."""
        session = next((s for s in self.gateway.sessions if s.call.call_id == call_id), None)
        if session is None:
            return False
        await session.transfer_now(member)
        return True

    def _recorded(self, record: Turn | CallEvent | HelpRequest) -> None:
        """What calls store (turn timings, transfer events) feeds the metrics; a help request is an event."""
        if self.http is not None:
            self.http.metrics.observe(record)
        if isinstance(record, HelpRequest) and self.hook_outbox is not None:
            self._hook_tasks.spawn(self.webhooks.emit("help_request.created", {
                "id": record.id, "call_id": record.call_id, "question": masked(record.question)}))

    def _call_ended(self, call_id: str, reason: str) -> None:
        if self.http is not None:
            self.http.metrics.calls_ended.labels(reason).inc()
        if self.hook_outbox is not None:
            self._hook_tasks.spawn(self._report_call_ended(call_id, reason))

    async def _report_call_ended(self, call_id: str, reason: str) -> None:
        """call.ended, with a summary for a list view: the outcome and the caller's first words, numbers masked."""
        first = next((t.text for t in await self.services.store.turns(call_id) if t.speaker == "caller"), None)
        summary = f"{reason}: {masked(first)}" if first else reason
        if len(summary) > SUMMARY_CHARS:
            summary = summary[:SUMMARY_CHARS - 1] + "…"
        await self.webhooks.emit("call.ended", {"call_id": call_id, "outcome": reason, "summary": summary})

    async def _message_settled(self, row_id: int, state: str) -> None:
        """message.sent | delivered | failed, for messages an API key queued (codes are reported by otp.*)."""
        if self.http is not None:
            self.http.metrics.deliveries.labels(state).inc()
        if self.hook_outbox is None:
            return
        row = await self.services.store.outbox_get(row_id)
        if row is not None and row.owner is not None and not row.idempotency_key.startswith("otp:"):
            await self.webhooks.emit(f"message.{state}", {"id": row.id, "channel": row.channel, "status": state,
                                                          "error": row.last_error})

    def route(self, kind: str) -> tuple[Outbox, str] | None:
        """The outbox and channel name serving an HTTP API channel kind (sms, sip, email, voice)."""
        if kind == "voice":
            return (self.voice, "voice") if self.voice is not None else None
        name = self.config.messaging.channel_name(kind)
        return (self.messaging.outbox, name) if self.messaging is not None and name else None

    def _outbox_of(self, channel: str) -> Outbox | None:
        """The outbox serving a text channel by its name (a text thread's own channel)."""
        outbox = self.messaging.outbox if self.messaging is not None else None
        return outbox if outbox is not None and channel in outbox.channels else None

    def planes(self) -> dict[str, bool]:
        """Each configured control plane and channel: is it connected (started) now?"""
        up = {"ami": self.ami.connected} if self.ami is not None else {}
        if self.ari is not None:
            up["ari"] = self.ari.connected.is_set()
        if self.messaging is not None:
            down = self.messaging.outbox.channels_down
            up.update({f"channel:{name}": name not in down for name in self.messaging.outbox.channels})
        return up

    async def start(self) -> None:
        """Listen, then connect the control planes in the background; raises OSError if a port is taken.
        The API listens first: /ready then tells what is still coming up, and a taken port stops nothing."""
        self._unwatch = self.services.store.watch(self._recorded)
        if self.http is not None:
            await self.http.start()
        try:
            await self.gateway.start()
        except OSError:
            if self.http is not None:
                await self.http.stop()
            raise
        config = self.config
        if self.ami is not None:
            # The spoken part of outbound calls (API voice messages, staff legs of warm transfers)
            # comes to this listener.
            self.gateway.outbound = OutboundCalls(self.ami, self.services.store, config.ami, site=config.site,
                                                  audiosocket=f"{config.audiosocket.host}:{self.gateway.port}")
            if self.ami_transferer is not None and config.ami.warm_transfer:
                self.ami_transferer.outbound = self.gateway.outbound
        if self.ami is not None:
            await self.ami.start()  # calls are served meanwhile; transfers wait for AMI
        if self.ari is not None:
            await self.ari.start()  # connects (and reconnects) in the background
        if self.messaging is not None:
            await self.messaging.start()
        if self.voice is not None:
            await self.voice.start(_no_inbound)
        if self.hook_outbox is not None:
            await self.hook_outbox.start(_no_inbound)
        self._sweeping.spawn(self.sweeper.run())
        await self.helpdesk.start()
        if self.dashboard is not None:
            await self.dashboard.start()

    async def stop(self, grace_s: float = 8.0) -> None:
        """No new API requests; callers hear goodbye before ARI hands them back to the dialplan; then the
        rest, in reverse."""
        if self.http is not None:
            await self.http.stop()
        await self._sweeping.finish()
        await self.helpdesk.stop()
        if self.dashboard is not None:
            await self.dashboard.stop()
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self.voice is not None:  # a call in progress is placed again after a restart
            await self.voice.stop()
        await self.gateway.stop(grace_s)
        if self.ari is not None:
            await self.ari.stop()
        if self.messaging is not None:
            await self.messaging.stop()
        await self._hook_tasks.finish(timeout_s=2.0)
        if self.hook_outbox is not None:
            await self.hook_outbox.stop()
        if self.ami is not None:
            await self.ami.close()


async def _no_inbound(message: InboundMessage) -> None:
    raise AssertionError("the voice and webhook channels receive nothing")


async def serve(config: Config) -> int:
    """`switchboard run`: returns the process exit code."""
    sdnotify.notify("STATUS=loading models")
    services = await load_services(config)
    try:
        daemon = Daemon(services)
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        await services.close()
        return 2
    try:
        await daemon.start()
    except OSError as exc:  # the AudioSocket or the HTTP port
        log.error("cannot listen: %s", exc)
        await services.close()
        return 2
    # What startup made (models, tokenizers, tables: kept for the daemon's life) leaves the collector's
    # view, so a full collection walks only what came later: under bench/api.py's load a full collection
    # of it all held the loop 35-100 ms, felt by the calls' frame timing and the API's p99.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before READY: a SIGTERM right after it must stop politely
        loop.add_signal_handler(sig, stop.set)
    log.info("ready audiosocket=%s:%d http=%s database=%s", config.audiosocket.host, daemon.gateway.port,
             f"{config.http.host}:{daemon.http.port}" if daemon.http else "off", config.database)
    sdnotify.notify(f"READY=1\nSTATUS=listening on {config.audiosocket.host}:{daemon.gateway.port}")
    interval = sdnotify.watchdog_interval()
    watchdog = asyncio.create_task(sdnotify.watchdog(interval)) if interval else None
    await stop.wait()
    log.info("stopping signal received calls=%d", len(daemon.gateway.sessions))
    sdnotify.notify("STOPPING=1\nSTATUS=ending calls")
    _exit_when_stuck(STOP_DEADLINE_S)
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal: stop now, without goodbyes
        loop.add_signal_handler(sig, _exit_now, sig)
    await daemon.stop()
    if watchdog:
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
    await services.close()
    log.info("stopped")
    return 0


def _exit_now(sig: signal.Signals) -> None:
    log.warning("second %s while stopping: exiting at once", sig.name)
    logging.shutdown()
    os._exit(1)


def _exit_when_stuck(deadline_s: float) -> None:
    """The last bound on a stop: a blocked event loop or an inference thread that will not return
    (its executor is joined at exit) must not keep the process past systemd's stop timeout."""
    def expire() -> None:
        os.write(2, f"switchboard: stop did not finish within {deadline_s:g} s: exiting\n".encode())
        os._exit(1)

    timer = threading.Timer(deadline_s, expire)
    timer.daemon = True  # dies with a process that exits in time
    timer.start()
