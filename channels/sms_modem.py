"""SMS through a GSM modem (python-gsmmodem-new 0.13.0, PDU mode) as a Channel.

Threads: the library blocks (connect, sendSms up to ~35 s) and calls us back from its own threads
(one new thread per unsolicited notification). Every command we issue runs on ONE worker thread,
so the modem sees one command at a time; library callbacks hop onto the event loop with
run_coroutine_threadsafe and wait for the handler, because the library deletes a received SMS from
the SIM only when the callback returns without raising: an SMS the handler did not take stays on
the SIM and is read again (processStoredSms) at the next connect. Each part of a long SMS is
committed to the store before its callback returns, so it survives a restart; the assembled message
carries a provider_ref (sender, service-centre timestamp) so one read twice is answered once.

Modem problems (port missing, no SIM, PIN, no network, unplugged) are logged once per distinct
reason; a supervisor task retries every `reconnect_s`, and `send` raises TemporaryError meanwhile
so the outbox keeps the messages. A wrong PIN is never retried: each try burns one of three.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gsmmodem.exceptions import (
    CmeError,
    CmsError,
    CommandError,
    IncorrectPinError,
    PinRequiredError,
    PukRequiredError,
    TimeoutException,
)
from gsmmodem.modem import GsmModem, ReceivedSms, StatusReport
from gsmmodem.pdu import Concatenation

from channels.base import (
    DeliveryHandler,
    InboundHandler,
    InboundMessage,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TemporaryError,
)
from channels.sms_text import from_wire, segments, to_wire
from channels.settings import ModemSettings
from models.privacy import masked
from models.store import Store

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"\+?\d{3,20}")
# +CMS ERROR codes (3GPP TS 27.005 §3.2.5 / 24.011 E-2) that retrying will not fix:
# unassigned number, barring, rejected, unidentified/unknown subscriber, facility rejected or
# not subscribed, invalid message content, invalid PDU / text parameter.
_PERMANENT_CMS = {1, 8, 10, 21, 28, 29, 30, 50, 96, 97, 98, 99, 304, 305}
_CREG = {0: "not registered, not searching", 2: "searching for an operator", 3: "registration denied",
         4: "unknown", 1: "registered", 5: "registered, roaming"}
_PART_MAP_MAX = 1024
_PART_CODEC = "utf-16-le"  # a part of a UCS-2 SMS may end inside a surrogate pair

class ModemError(Exception):
    """Why the modem cannot be used, phrased for the admin. `retry` False: retrying would do harm."""

    def __init__(self, reason: str, *, retry: bool = True) -> None:
        super().__init__(reason)
        self.retry = retry


class _Modem(GsmModem):
    """GsmModem that remembers every +CMGS reference: sendSms returns only the last part's."""

    timeout = 0.2  # serial read timeout (library default 1 s): close() waits this long for its reader

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.part_refs: list[int] = []

    def write(self, data: str, *args: Any, **kwargs: Any) -> Any:
        lines = super().write(data, *args, **kwargs)
        for line in lines or ():
            if line.startswith("+CMGS:"):
                ref = int(line[6:].strip())
                if ref not in self.part_refs:  # the library re-enters write() when retrying a busy modem
                    self.part_refs.append(ref)
        return lines

    # The library handles each unsolicited notification in a thread of its own and lets an exception
    # end it unseen (e.g. a timeout deleting a read SMS while the modem closes): log it instead.
    def _handleSmsReceived(self, notificationLine: str) -> None:
        self._guarded(super()._handleSmsReceived, notificationLine)

    def _handleSmsStatusReport(self, notificationLine: str) -> None:
        self._guarded(super()._handleSmsStatusReport, notificationLine)

    @staticmethod
    def _guarded(handler: Any, line: str) -> None:
        try:
            handler(line)
        except Exception as exc:
            log.warning("modem notification failed kind=%s error=%s", line.split(":", 1)[0], type(exc).__name__)


_Group = tuple[str, int, int]  # a long SMS: (sender, concatenation reference, number of parts)


class ModemSmsChannel:
    """Channel over one modem. `to` is a phone number (E.164 preferred); provider_ref is the modem's
    message reference of the LAST part (0-255, it wraps: match delivery reports to the newest sent row)."""

    def __init__(self, settings: ModemSettings, store: Store) -> None:
        self.settings, self.store = settings, store
        self.name = settings.name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._modem: _Modem | None = None  # the connected modem, owned by the loop
        self._opened: _Modem | None = None  # the last one the worker thread opened, for cleanup
        self._lost = asyncio.Event()
        self._ready = asyncio.Event()
        self._down_reason: str | None = None
        self._expiry: dict[_Group, asyncio.TimerHandle] = {}  # incomplete long SMS, their parts in the store
        self._part_of: OrderedDict[int, int] = OrderedDict()  # earlier part ref -> last part ref
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_inbound: InboundHandler | None = None
        self._on_delivery: DeliveryHandler | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, on_inbound: InboundHandler, on_delivery: DeliveryHandler) -> None:
        """Return at once; the modem is connected (and reconnected) in the background."""
        self._loop = asyncio.get_running_loop()
        self._on_inbound, self._on_delivery = on_inbound, on_delivery
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"modem-{self.name}")
        self._lost, self._ready = asyncio.Event(), asyncio.Event()
        self._down_reason = None
        self._supervisor = asyncio.create_task(self._supervise(), name=f"modem-{self.name}")

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the modem is connected and registered; TemporaryError with the reason if not."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            raise TemporaryError(f"SMS modem not ready: {self._down_reason or 'connecting'}") from None

    @property
    def down_reason(self) -> str | None:
        """Why the modem is unusable right now (None when it is ready)."""
        return None if self._ready.is_set() else (self._down_reason or "connecting")

    async def stop(self) -> None:
        if self._supervisor:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._expiry:
            log.info("sms multipart kept for the next start channel=%s pending=%d", self.name, len(self._expiry))
        for timer in self._expiry.values():
            timer.cancel()
        self._expiry.clear()
        self._modem = None
        self._ready.clear()
        if self._executor and self._loop:
            # FIFO on one thread: runs after a connect still in progress, and closes what it opened.
            await self._loop.run_in_executor(self._executor, self._close_opened)
            self._executor.shutdown(wait=False)
            self._executor = None

    # -- connection supervision ----------------------------------------------------------------
    async def _supervise(self) -> None:
        assert self._loop and self._executor
        try:  # long SMS whose parts a previous run kept: complete them or restart their timeout
            for group in {(p["sender"], p["ref"], p["total"]) for p in await self.store.sms_parts_open(self.name)}:
                await self._assemble(group)
        except Exception as exc:  # they stay in the store for the next start
            log.error("sms multipart recovery failed channel=%s error=%s", self.name, exc)
        while True:
            self._lost.clear()
            try:
                modem = await self._loop.run_in_executor(self._executor, self._open)
            except ModemError as exc:
                self._down(str(exc))
                if not exc.retry:
                    return
                await asyncio.sleep(self.settings.reconnect_s)
                continue
            self._modem, self._down_reason = modem, None
            self._ready.set()
            log.info("sms modem ready channel=%s port=%s", self.name, self.settings.port)
            await self._lost.wait()
            self._ready.clear()
            self._modem = None
            await self._loop.run_in_executor(self._executor, self._close_opened)

    def _down(self, reason: str) -> None:
        if reason != self._down_reason:
            log.error("sms modem down channel=%s port=%s reason=%s retry_s=%.0f",
                      self.name, self.settings.port, reason, self.settings.reconnect_s)
        self._down_reason = reason

    def _mark_lost(self, modem: _Modem, reason: str) -> None:
        if modem is self._modem and not self._lost.is_set():
            self._down(reason)
            self._lost.set()

    def _serial_failed(self, modem: _Modem, exc: BaseException) -> None:  # the library's read thread
        if self._loop and not self._loop.is_closed():
            reason = f"modem connection lost on {self.settings.port} (unplugged?): {exc}"
            self._loop.call_soon_threadsafe(self._mark_lost, modem, reason)

    # -- worker-thread side --------------------------------------------------------------------
    def _open(self) -> _Modem:
        s = self.settings
        modem = _Modem(s.port, s.baudrate, smsReceivedCallbackFunc=self._sms_received,
                       smsStatusReportCallback=self._status_report)
        modem.fatalErrorCallback = lambda exc: self._serial_failed(modem, exc)
        self._opened = modem
        try:
            modem.connect(pin=self._pin())
            self._wait_for_network(modem)
            modem.processStoredSms()  # what arrived while we were away
            if not modem.alive:  # the port died during setup, before anyone listened for it
                raise ModemError(f"modem connection lost on {s.port} during setup (unplugged?)")
        except Exception as exc:
            self._close_opened()
            raise self._explain(exc) from exc
        return modem

    def _close_opened(self) -> None:
        modem, self._opened = self._opened, None
        if modem is not None and modem.alive:
            with contextlib.suppress(Exception):
                modem.close()

    def _pin(self) -> str | None:
        if not self.settings.pin_env:
            return None
        pin = os.environ.get(self.settings.pin_env)
        if not pin:
            raise ModemError(f"SIM PIN variable {self.settings.pin_env} is not set in the environment")
        return pin

    def _wait_for_network(self, modem: _Modem) -> None:
        """Poll +CREG until registered (our own loop: the library's leaves a Timer thread behind)."""
        deadline = time.monotonic() + self.settings.network_timeout_s
        while True:
            lines = modem.write("AT+CREG?", parseError=False) or []
            match = next((m for m in map(re.compile(r"\+CREG:\s*\d+,(\d+)").match, lines) if m), None)
            if match is None or int(match.group(1)) in (1, 5):
                return  # registered, or a modem without +CREG: let sending tell
            stat = int(match.group(1))
            if stat == 3 or time.monotonic() >= deadline:
                raise ModemError(f"no mobile network: {_CREG.get(stat, 'unknown')} (+CREG stat {stat})")
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _explain(self, exc: BaseException) -> ModemError:
        port, env = self.settings.port, self.settings.pin_env
        if isinstance(exc, ModemError):
            return exc
        if isinstance(exc, IncorrectPinError):
            return ModemError(f"SIM rejected the PIN from ${env}; not retrying (3 wrong PINs lock the SIM)",
                              retry=False)
        if isinstance(exc, PukRequiredError):
            return ModemError("SIM is PUK-locked; unlock it in a phone", retry=False)
        if isinstance(exc, PinRequiredError):
            return ModemError("SIM needs a PIN: set pin_env to the name of an environment variable holding it")
        if isinstance(exc, CmeError) and exc.code == 10:
            return ModemError("no SIM card in the modem (+CME ERROR: 10)")
        if isinstance(exc, CmeError) and exc.code in (13, 15):
            return ModemError(f"SIM card failure (+CME ERROR: {exc.code})")
        if isinstance(exc, TimeoutException):
            return ModemError(f"modem on {port} does not answer AT commands")
        if isinstance(exc, OSError):  # serial.SerialException is an OSError
            if not os.path.exists(port):
                return ModemError(f"modem port {port} does not exist (modem unplugged?)")
            return ModemError(f"cannot use modem port {port}: {exc}")
        if isinstance(exc, CommandError):
            return ModemError(f"modem refused {exc.command!r} during setup: {exc}")
        return ModemError(f"modem setup failed: {type(exc).__name__}: {exc}")

    @staticmethod
    def _send_blocking(modem: _Modem, to: str, text: str) -> list[int]:
        # Hold the library's (reentrant) port lock for the whole AT+CMGS / "> " / PDU exchange, so a
        # notification thread cannot slip its AT+CMGR between the prompt and the PDU.
        with modem._txLock:
            modem.part_refs = []
            sent = modem.sendSms(to, text)
            return modem.part_refs or [sent.reference]

    # -- library callbacks (library threads) ---------------------------------------------------
    def _run_on_loop(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` on the loop and wait: raising here keeps the SMS on the SIM for a later retry."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            raise RuntimeError("SMS channel is stopped")
        asyncio.run_coroutine_threadsafe(coro, loop).result(self.settings.handler_timeout_s)

    def _sms_received(self, sms: ReceivedSms | StatusReport) -> None:
        if isinstance(sms, StatusReport):  # processStoredSms hands stored reports to this callback too
            self._status_report(sms)
            return
        concat = next((ie for ie in sms.udh or () if isinstance(ie, Concatenation)), None)
        sent_at = sms.time.isoformat() if sms.time else ""
        self._run_on_loop(self._accept(sms.number, sms.text or "", concat, sent_at))

    def _status_report(self, report: StatusReport) -> None:
        self._run_on_loop(self._report(int(report.reference), int(report.deliveryStatus)))

    # -- loop side -----------------------------------------------------------------------------
    async def _accept(self, sender: str, text: str, concat: Concatenation | None, sent_at: str) -> None:
        if concat is None or concat.parts <= 1:
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            await self._deliver(sender, text, f"{sender} {sent_at} {digest}" if sent_at else None)
            return
        await self.store.sms_part(self.name, sender, concat.reference, concat.parts, concat.number, sent_at,
                                  text.encode(_PART_CODEC, "surrogatepass"))
        log.info("sms part channel=%s from=%s ref=%d part=%d/%d",
                 self.name, masked(sender), concat.reference, concat.number, concat.parts)
        await self._assemble((sender, concat.reference, concat.parts))

    async def _assemble(self, group: _Group, *, expired: bool = False) -> None:
        """Deliver a long SMS once all its parts are stored (or, `expired`, with the missing ones
        marked); until then make sure its timeout runs, counted from its first part."""
        parts = [p for p in await self.store.sms_parts_open(self.name) if (p["sender"], p["ref"], p["total"]) == group]
        if not parts:
            return
        sender, ref, total = group
        texts = {p["part"]: p["wire"].decode(_PART_CODEC, "surrogatepass") for p in parts}
        if len(texts) < total and not expired:
            if group not in self._expiry:
                assert self._loop
                due = min(p["received_at"] for p in parts) + self.settings.multipart_timeout_s - time.time()
                self._expiry[group] = self._loop.call_later(max(0.0, due), self._expire, group)
            return
        timer = self._expiry.pop(group, None)
        if timer:
            timer.cancel()
        if len(texts) < total:
            log.warning("sms multipart incomplete channel=%s from=%s ref=%d got=%d/%d",
                        self.name, masked(sender), ref, len(texts), total)
        text = "".join(texts.get(i, "[...]") for i in range(1, total + 1))
        await self._deliver(sender, text, f"{sender} {min(p['sent_at'] for p in parts)} {ref}/{total}")
        await self.store.sms_parts_assembled(self.name, sender, ref, total)

    def _expire(self, group: _Group) -> None:
        self._expiry.pop(group, None)
        task = asyncio.create_task(self._assemble(group, expired=True))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception():
            log.error("sms inbound handler failed channel=%s error=%s", self.name, task.exception())

    async def _deliver(self, sender: str, text: str, provider_ref: str | None) -> None:
        body = from_wire(text)
        log.info("sms received channel=%s from=%s chars=%d", self.name, masked(sender), len(body))
        assert self._on_inbound
        await self._on_inbound(InboundMessage(channel=self.name, sender=sender, body=body, at=time.time(),
                                              provider_ref=provider_ref))

    async def _report(self, ref: int, status: int) -> None:
        """TP-ST (3GPP TS 23.040 §9.2.3.15): <0x20 delivered, 0x20-0x3F still trying, else failed."""
        if 0x20 <= status < 0x40:
            log.info("sms delivery pending channel=%s ref=%d status=0x%02x", self.name, ref, status)
            return
        ok = status < 0x20
        last = self._part_of.get(ref)
        if last is not None:  # an earlier part of a long message: only its failure matters
            if ok:
                return
            ref = last
        log.info("sms delivery report channel=%s ref=%d status=0x%02x ok=%s", self.name, ref, status, ok)
        assert self._on_delivery
        await self._on_delivery(self.name, str(ref), ok)

    async def send(self, message: OutgoingMessage) -> SendResult:
        to = message.to.strip().replace(" ", "")
        if not _NUMBER.fullmatch(to):
            raise PermanentError(f"not a phone number: {masked(message.to)}")
        seg = segments(message.body)
        if seg.parts > self.settings.max_parts:
            raise PermanentError(f"text needs {seg.parts} SMS parts ({seg.encoding}), more than "
                                 f"max_parts={self.settings.max_parts}")
        modem = self._modem
        if modem is None or self._loop is None or self._executor is None:
            raise TemporaryError(f"SMS modem not ready: {self.down_reason}")
        try:
            refs = await self._loop.run_in_executor(
                self._executor, self._send_blocking, modem, to, to_wire(message.body))
        except CmsError as exc:
            if exc.code in _PERMANENT_CMS:
                raise PermanentError(f"network rejected the SMS to {masked(to)}: +CMS ERROR: {exc.code}") from exc
            raise TemporaryError(f"modem could not send: +CMS ERROR: {exc.code}") from exc
        except TimeoutException as exc:
            raise TemporaryError("modem did not confirm the SMS in time") from exc
        except OSError as exc:
            self._mark_lost(modem, f"modem port {self.settings.port} failed while sending: {exc}")
            raise TemporaryError(f"SMS modem failed: {exc}") from exc
        except CommandError as exc:
            raise TemporaryError(f"modem refused the SMS: {exc}") from exc
        for ref in refs[:-1]:
            self._part_of[ref] = refs[-1]
            while len(self._part_of) > _PART_MAP_MAX:
                self._part_of.popitem(last=False)
        self._part_of.pop(refs[-1], None)  # a reused reference is now a last part
        log.info("sms sent channel=%s id=%d parts=%d encoding=%s ref=%d",
                 self.name, message.id, len(refs), seg.encoding, refs[-1])
        return SendResult(provider_ref=str(refs[-1]))
