"""Direct SIP transport: the gateway registers as a PBX extension (pyVoIP 1.6.8) and answers calls itself.

pyVoIP does the SIP part (REGISTER with digest and refresh, INVITE/ACK/BYE/CANCEL) in its own threads.
The media is ours, through the one documented extension point pyVoIP has for it (VoIPPhone._create_Call
"to enable better subclassing", and VoIPCall.create_rtp_clients): instead of pyVoIP's RTPClient, which
sends from a thread of its own with relative sleeps (it drifts behind real time, so its FIFO and the
caller's delay grow), has no flush for barge-in and works in 8-bit linear audio, each call gets an
RtpMedia whose socket is served by the event loop. Frames go out from the shared media clock exactly
as AudioSocket frames do, G.711 straight from s16le; nothing queues below the OutputStream, so barge-in
drops everything at once. pyVoIP itself is not modified.

Threads meet the loop in three places only: pyVoIP's call thread hands each call over with
run_coroutine_threadsafe (and stays blocked until the call is over, because pyVoIP forgets calls whose
thread has ended); pyVoIP's BYE handling stops our RtpMedia, which tells the loop with
call_soon_threadsafe; and blocking pyVoIP calls (start, answer, hangup, stop) run in the executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pyVoIP.VoIP import CallState, InvalidStateError, VoIPCall, VoIPPhone  # first: pyVoIP.SIP alone is a cycle
import pyVoIP
from pyVoIP import RTP, SIP
from pyVoIP.VoIP.status import PhoneStatus

from gateway.config import SipSettings
from gateway.media.leg import AudioIn, Dtmf, Event, Hangup
from gateway.tasks import TaskSet
from speech.audio import FRAME_BYTES, FRAME_SAMPLES, alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

log = logging.getLogger(__name__)

RTP_HEADER = struct.Struct("!BBHII")
DTMF_KEYS = "0123456789*#ABCD"  # RFC 4733 events 0-15
CODECS: dict[str, tuple[RTP.PayloadType, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "PCMU": (RTP.PayloadType.PCMU, ulaw_encode, ulaw_decode),
    "PCMA": (RTP.PayloadType.PCMA, alaw_encode, alaw_decode),
}
STATUS_POLL_S = 0.5  # how often the registration state is looked at (an attribute read)
PYVOIP_STOP_S = 10.0  # phone.stop() deregisters and may wait for a silent registrar
REFER_RETRANSMIT_S = (0.5, 1.0, 2.0)  # RFC 3261 timer E over UDP, until REFER_TIMEOUT_S
REFER_TIMEOUT_S = 4.0
REFERRED_LEAVE_S = 10.0  # after a 202, how long the PBX may take to end our leg (its BYE) before we do


class RtpMedia:
    """One call's RTP socket, in place of pyVoIP's RTPClient: it keeps the attributes pyVoIP reads and
    writes (assoc, inPort, outIP, outPort: a re-INVITE moves the target) and its start()/stop().

    Built in pyVoIP's SIP thread; everything else runs on the event loop, except stop()."""

    def __init__(self, offered: dict[int, RTP.PayloadType], codecs: list[str], port: int, out_ip: str,
                 out_port: int) -> None:
        self.inPort, self.outIP, self.outPort = port, out_ip, out_port
        # The answer (pyVoIP writes our SDP from assoc): the first offered codec we accept, and
        # telephone-event if offered.
        wanted = {CODECS[name][0] for name in codecs}
        audio = next(((pt, codec) for pt, codec in offered.items() if codec in wanted), None)
        event = next((pt for pt, codec in offered.items() if codec is RTP.PayloadType.EVENT), None)
        self.assoc: dict[int, RTP.PayloadType] = {}
        self.codec: str | None = None
        if audio is not None:
            self.assoc[audio[0]] = audio[1]
            self.codec = str(audio[1])
        if event is not None:
            self.assoc[event] = RTP.PayloadType.EVENT
        self.audio_pt, self.event_pt = (audio[0] if audio else -1), event
        self.on_stop: Callable[[], None] | None = None  # set by SipCall: pyVoIP's BYE ends the call here

    def start(self) -> None:
        """pyVoIP calls this while answering; the socket is already bound (SipCall.open)."""

    def stop(self) -> None:
        """pyVoIP's BYE, CANCEL or hangup (any thread)."""
        if self.on_stop is not None:
            self.on_stop()


class _Call(VoIPCall):
    def __init__(self, *args: Any, codecs: list[str], **kwargs: Any) -> None:
        self._codecs = codecs  # before super().__init__, which builds the media
        super().__init__(*args, **kwargs)

    def create_rtp_clients(self, codecs: dict[int, RTP.PayloadType], ip: str, port: int,
                           request: Any, baseport: int) -> None:
        if not self.RTPClients:  # one audio stream: a second m= line is not answered
            self.RTPClients.append(RtpMedia(codecs, self._codecs, port, request.body["c"][0]["address"],
                                            baseport))  # type: ignore[arg-type]


def _bare_response(request: bytes, method: bytes) -> bytes:
    """200 to OPTIONS and NOTIFY, 405 to other methods, echoing the request's transaction headers."""
    status = b"200 OK" if method in (b"OPTIONS", b"NOTIFY") else b"405 Method Not Allowed"
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    keep = [h for h in head if h.split(b":", 1)[0].strip().lower() in _TRANSACTION_HEADERS]
    allow = ", ".join(pyVoIP.SIPCompatibleMethods).encode()
    return b"\r\n".join([b"SIP/2.0 " + status, *keep, b"Allow: " + allow, b"Content-Length: 0", b"", b""])


_TRANSACTION_HEADERS = {b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"}


class _Phone(VoIPPhone):
    """pyVoIP's phone with our media, plus what its SIP client lacks, added by wrapping two of that client's
    methods on this instance (pyVoIP itself is not changed):
    - blind transfer (REFER, RFC 3515): the request goes out on its SIP socket; its dispatch
      (parse_message) hands us the REFER's responses;
    - requests its parser refuses (it knows INVITE, ACK, BYE, CANCEL only) got no answer at all: a PBX's
      OPTIONS keepalive then marks the extension unreachable, and the NOTIFYs after a REFER are resent for
      32 s. Its receive (recv) now peeks at each datagram first: OPTIONS and NOTIFY get 200, other
      unknown methods 405."""

    def __init__(self, *args: Any, codecs: list[str], **kwargs: Any) -> None:
        self._codecs = codecs
        super().__init__(*args, **kwargs)
        self._refers: dict[str, concurrent.futures.Future[int]] = {}  # Call-ID -> final status of our REFER
        pyvoip_parse = self.sip.parse_message

        def parse_message(message: SIP.SIPMessage) -> None:
            if not self._refer_dialog(message):
                pyvoip_parse(message)

        self.sip.parse_message = parse_message  # type: ignore[method-assign]
        pyvoip_recv = self.sip.recv

        def recv() -> None:  # under pyVoIP's receive lock, its socket non-blocking
            try:
                method = self.sip.s.recv(8192, socket.MSG_PEEK).split(b" ", 1)[0]
            except BlockingIOError:
                raise  # pyVoIP's loop waits on it
            except OSError as e:  # a reported ICMP error, now cleared: pyVoIP's thread would die of it
                log.debug("sip socket error=%r", e)
                return
            if method.isalpha() and method.isupper() and method.decode() not in pyVoIP.SIPCompatibleMethods:
                self.send(_bare_response(self.sip.s.recv(8192), method))
            else:
                pyvoip_recv()

        self.sip.recv = recv  # type: ignore[method-assign]

    def _refer_dialog(self, message: SIP.SIPMessage) -> bool:
        """SIP thread: a REFER's response (handled here), or anything else (pyVoIP's)."""
        if message.type is SIP.SIPMessageType.RESPONSE and message.headers["CSeq"]["method"] == "REFER":
            future = self._refers.get(message.headers["Call-ID"])
            if future is not None and int(message.status) >= 200 and not future.done():
                future.set_result(int(message.status))
            return True
        return False

    def refer_request(self, call: VoIPCall, target: str) -> tuple[bytes, concurrent.futures.Future[int]]:
        """A REFER in `call`'s dialog (we are its UAS) to `target`, and the future of its final status.
        Its CSeq is the INVITE's: our side of the dialog counts on its own, and pyVoIP's BYE uses one more."""
        invite = call.request
        headers = invite.headers
        ours = self.sip.tagLibrary[headers["Call-ID"]]
        contact = headers["Contact"].strip("<").strip(">")
        request = (
            f"REFER {contact} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.myIP}:{self.sip.myPort};branch={self.sip.gen_branch()};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: {headers['To']['raw']};tag={ours}\r\n"
            f"To: {headers['From']['raw']};tag={headers['From']['tag']}\r\n"
            f"Call-ID: {headers['Call-ID']}\r\n"
            f"CSeq: {headers['CSeq']['check']} REFER\r\n"
            f"Contact: <sip:{self.username}@{self.myIP}:{self.sip.myPort}>\r\n"
            f"Refer-To: <{target}>\r\n"
            f"Referred-By: <sip:{self.username}@{self.server}>\r\n"
            "Content-Length: 0\r\n\r\n")
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._refers[headers["Call-ID"]] = future
        future.add_done_callback(lambda _: self._refers.pop(headers["Call-ID"], None))
        return request.encode("utf8"), future

    def send(self, data: bytes) -> None:
        """To the PBX, as pyVoIP sends everything."""
        self.sip.out.sendto(data, (self.server, self.port))

    def _create_Call(self, request: Any, sess_id: int) -> None:  # noqa: N802 (pyVoIP's name)
        call_id = request.headers["Call-ID"]
        self.calls[call_id] = _Call(self, CallState.RINGING, request, sess_id, self.myIP,
                                    sendmode=self.recvmode, codecs=self._codecs)


class SipCall:
    """One answered SIP call as a MediaLeg: 20 ms 8 kHz s16le frames both ways, RFC 4733 DTMF, hang-up."""

    transport = "sip"

    def __init__(self, call: VoIPCall, media: RtpMedia, loop: asyncio.AbstractEventLoop) -> None:
        self.call_id = str(call.call_id)
        self.caller: str | None = call.request.headers["From"].get("number") or None
        self.dialled: str | None = call.request.headers["To"].get("number") or None
        self.frames_in = self.frames_out = self.dropped = 0
        self.started_at = time.monotonic()
        self.end_reason: str | None = None
        self._call, self._media, self._loop = call, media, loop
        self._encode = CODECS[media.codec or "PCMU"][1]
        self._decode = CODECS[media.codec or "PCMU"][2]
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._closed = asyncio.Event()
        self._sock: socket.socket | None = None
        self._in_buf = bytearray()
        self._source: tuple[str, int] | None = None  # latched from the first packet
        self._last_seq: int | None = None
        self._last_event_ts: int | None = None
        self._seq = self._ts = 0
        self._ssrc = int.from_bytes(os.urandom(4), "big")
        media.on_stop = lambda: loop.call_soon_threadsafe(self._end, "peer hangup")

    @property
    def closed(self) -> bool:
        return self.end_reason is not None

    def open(self, host: str) -> None:
        """Bind the RTP port pyVoIP chose for this call (before the 200 OK announces it)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((host, self._media.inPort))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._readable)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Hangup):
                return

    def send_audio(self, frame: bytes) -> None:
        if self.closed or self._sock is None:
            return
        if len(frame) != FRAME_BYTES:
            raise ValueError(f"send_audio wants one {FRAME_BYTES}-byte frame, got {len(frame)}")
        header = RTP_HEADER.pack(0x80, self._media.audio_pt, self._seq, self._ts, self._ssrc)
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + FRAME_SAMPLES) & 0xFFFFFFFF
        try:
            self._sock.sendto(header + self._encode(frame), (self._media.outIP, self._media.outPort))
        except (BlockingIOError, InterruptedError):
            return  # a full socket buffer: this frame is lost, as on any congested path
        except OSError as e:  # e.g. unreachable: the call's media is gone
            log.warning("sip rtp send failed call=%s error=%r", self.call_id, e)
            self._end("rtp send failed")
            return
        self.frames_out += 1

    async def refer(self, extension: str) -> int | None:
        """Blind transfer: REFER the caller to `extension` at the PBX. The final status, or None if the
        PBX never answered."""
        phone = self._call.phone
        assert isinstance(phone, _Phone)
        request, status = phone.refer_request(self._call, f"sip:{extension}@{phone.server}")
        answered = asyncio.wrap_future(status, loop=self._loop)
        deadline = self._loop.time() + REFER_TIMEOUT_S
        try:
            for wait in (*REFER_RETRANSMIT_S, REFER_TIMEOUT_S):
                await self._loop.run_in_executor(None, phone.send, request)
                done, _ = await asyncio.wait([answered], timeout=max(0.0, min(wait, deadline - self._loop.time())))
                if done:
                    return answered.result()
                if self._loop.time() >= deadline:
                    return None
            return None
        finally:
            status.cancel()  # forgets the transaction if it is still open

    async def hangup(self, reason: str = "local") -> None:
        """Send BYE (pyVoIP, in the executor) unless the call already ended."""
        if self.closed:
            return
        self._end(reason)
        if self._call.state is CallState.ANSWERED:
            try:
                await self._loop.run_in_executor(None, self._call.hangup)
            except (InvalidStateError, OSError) as e:  # BYE crossed ours, or the SIP socket is gone
                log.info("sip hangup not sent call=%s error=%r", self.call_id, e)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _end(self, reason: str) -> None:
        if self.closed:
            return
        self._closed.set()
        self.end_reason = reason
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._events.put_nowait(Hangup(reason))

    # ---- RTP in (event loop) ----------------------------------------------------------------------
    def _readable(self) -> None:
        assert self._sock is not None
        for _ in range(64):  # bounded per wake-up: a flood must not starve the loop
            try:
                packet, source = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # ICMP unreachable from an earlier send: not fatal for reception
                log.debug("sip rtp recv error call=%s error=%r", self.call_id, e)
                return
            # The SDP's address, and then the first port heard from it (RTP latching): a stray or
            # injected stream is dropped, whatever it carries.
            if source[0] != self._media.outIP or (self._source is not None and source != self._source):
                self._drop(f"unexpected source {source[0]}:{source[1]}")
                continue
            self._source = self._source or source
            self._packet(packet)
            if self.closed:
                return

    def _drop(self, why: str) -> None:
        """Bad or foreign RTP is dropped, never fatal; the first of each call is logged."""
        if not self.dropped:
            log.warning("sip rtp dropped call=%s reason=%s (further drops counted at hang-up)", self.call_id, why)
        self.dropped += 1

    def _packet(self, packet: bytes) -> None:
        if len(packet) < RTP_HEADER.size:
            return self._drop(f"short packet len={len(packet)}")
        first, second, seq, ts, _ = RTP_HEADER.unpack_from(packet)
        if first >> 6 != 2:
            return self._drop(f"rtp version {first >> 6}")
        start = RTP_HEADER.size + 4 * (first & 0x0F)
        if first & 0x10:  # header extension
            if len(packet) < start + 4:
                return self._drop("truncated extension")
            start += 4 + 4 * struct.unpack_from("!H", packet, start + 2)[0]
        end = len(packet) - (packet[-1] if first & 0x20 and packet[-1] else 0)  # padding
        payload = packet[start:end]
        pt = second & 0x7F
        if pt == self._media.event_pt:
            return self._dtmf(payload, ts)
        if pt != self._media.audio_pt:
            return self._drop(f"payload type {pt} not negotiated")
        if seq == self._last_seq:
            return  # a duplicate
        self._last_seq = seq
        self._in_buf += self._decode(payload)
        whole = len(self._in_buf) - len(self._in_buf) % FRAME_BYTES
        for i in range(0, whole, FRAME_BYTES):
            self._events.put_nowait(AudioIn(bytes(self._in_buf[i : i + FRAME_BYTES])))
            self.frames_in += 1
        del self._in_buf[:whole]

    def _dtmf(self, payload: bytes, ts: int) -> None:
        """RFC 4733: one event is many packets with one timestamp; report it once."""
        if len(payload) < 4 or payload[0] >= len(DTMF_KEYS):
            return self._drop("bad telephone-event")
        if ts != self._last_event_ts:
            self._last_event_ts = ts
            self._events.put_nowait(Dtmf(DTMF_KEYS[payload[0]]))


class SipTransferer:
    """A call session's Transferer on direct SIP: a blind REFER to the staff extension. When the PBX refuses
    or does not answer, the session offers to take a message (an emergency or busy hand-off hears its
    wording and is hung up: there is no dialplan behind a SIP extension)."""

    async def transfer(self, call: SipCall, member: Any) -> bool:
        if call.closed:
            return False
        status = await call.refer(member.extension)
        log.info("sip refer call=%s extension=%s status=%s", call.call_id, member.extension, status or "no answer")
        if status is None or not 200 <= status < 300:
            return False
        # The PBX now calls the extension and ends our leg with BYE; if it does not, we leave ourselves.
        try:
            async with asyncio.timeout(REFERRED_LEAVE_S):
                await call.wait_closed()
        except TimeoutError:
            log.info("sip refer accepted but our leg was not ended call=%s: hanging up", call.call_id)
            await call.hangup("transferred")
        return True

    async def end_call(self, call: SipCall) -> None:
        await call.hangup()


Handler = Callable[[SipCall], Awaitable[None]]


class SipServer:
    """Registers with the PBX and runs ``handler(call)`` for every answered call; a failing handler or a
    malformed peer ends only that call. When pyVoIP gives up registering (it stops after three failed
    attempts, ending its calls) a fresh phone starts after ``retry_s``: registration resumes once the
    registrar is back."""

    def __init__(self, settings: SipSettings, handler: Handler) -> None:
        self.settings = settings
        self._handler = handler
        self._loop: asyncio.AbstractEventLoop | None = None
        self._phone: _Phone | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._calls: set[SipCall] = set()
        self._tasks = TaskSet("sip")  # one per call
        self._accepting = True
        self.registered = asyncio.Event()
        self.registrations = 0  # times the phone went to REGISTERED (log and tests)

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    async def start(self) -> None:
        """Starts registering in the background: calls are served once the registrar has answered."""
        self._loop = asyncio.get_running_loop()
        self._supervisor = asyncio.create_task(self._supervise(), name="sip-phone")

    def stop_accepting(self) -> None:
        self._accepting = False

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, give running calls ``grace_s`` to finish, cancel the rest, then deregister."""
        self._accepting = False
        cancelled = self._tasks.running
        await self._tasks.finish(grace_s)
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        await self._stop_phone()
        log.info("sip stopped calls_at_stop=%d", cancelled)

    # ---- the phone ---------------------------------------------------------------------------------
    def _new_phone(self) -> _Phone:
        s = self.settings
        phone = _Phone(s.server, s.port, s.user, s.secret(), myIP=s.my_ip, callCallback=self._on_invite,
                       sipPort=s.sip_port, rtpPortLow=s.rtp_port_low, rtpPortHigh=s.rtp_port_high,
                       codecs=list(s.codecs))
        phone.sip.default_expires = s.register_expires_s
        phone.sip.register_timeout = s.register_timeout_s
        return phone

    async def _supervise(self) -> None:
        assert self._loop is not None
        s = self.settings
        while True:
            self._phone = phone = self._new_phone()
            log.info("sip registering server=%s:%d user=%s", s.server, s.port, s.user)
            try:
                await self._loop.run_in_executor(None, phone.start)
            except Exception as e:  # bad address, port taken, refused credentials: logged, retried
                log.error("sip phone failed to start server=%s:%d error=%s", s.server, s.port,
                          type(e).__name__ if "assword" in str(e) else repr(e))
            was = None
            while True:
                status = phone.get_status()
                if status is not was:
                    if status is PhoneStatus.REGISTERED:
                        self.registrations += 1
                        self.registered.set()
                        log.info("sip registered server=%s:%d user=%s expires_s=%d", s.server, s.port, s.user,
                                 s.register_expires_s)
                    elif was is PhoneStatus.REGISTERED:
                        self.registered.clear()
                        log.debug("sip registration state=%s", status.value)  # a renewal, mostly
                    was = status
                if status in (PhoneStatus.FAILED, PhoneStatus.INACTIVE):
                    break
                await asyncio.sleep(STATUS_POLL_S)
            self.registered.clear()
            log.warning("sip registration failed server=%s:%d retry_s=%g", s.server, s.port, s.retry_s)
            await self._stop_phone()
            await asyncio.sleep(s.retry_s)

    async def _stop_phone(self) -> None:
        phone, self._phone = self._phone, None
        if phone is None or self._loop is None:
            return
        try:  # deregisters: bounded, a silent registrar must not hold the daemon's stop
            await asyncio.wait_for(self._loop.run_in_executor(None, phone.stop), PYVOIP_STOP_S)
        except Exception as e:
            log.warning("sip phone stop incomplete error=%r", e)

    # ---- calls ------------------------------------------------------------------------------------
    def _on_invite(self, call: VoIPCall) -> None:
        """pyVoIP's call thread (1 s after its 180 Ringing): serve the call on the loop, and stay until it
        is over (pyVoIP drops calls whose thread has ended)."""
        assert self._loop is not None
        try:
            future = asyncio.run_coroutine_threadsafe(self._serve(call), self._loop)
        except RuntimeError:  # the loop is closed: the daemon is gone
            return
        try:
            future.result()
        except BaseException:  # cancelled at stop, or a bug the task set has logged
            pass

    async def _serve(self, call: VoIPCall) -> None:
        try:
            await self._tasks.spawn(self._answer_and_run(call))  # the set logs a failure
        except asyncio.CancelledError:
            pass  # the daemon stopping

    async def _answer_and_run(self, call: VoIPCall) -> None:
        assert self._loop is not None
        media = call.RTPClients[0] if call.RTPClients else None
        reason = None
        if not self._accepting:
            reason = "stopping"
        elif len(self._calls) >= self.settings.max_calls:
            reason = f"max_calls limit={self.settings.max_calls}"
        elif not isinstance(media, RtpMedia) or media.codec is None:
            reason = "no common codec"
        if reason is not None:
            log.warning("sip call rejected call=%s reason=%s", call.call_id, reason)
            await self._loop.run_in_executor(None, call.deny)
            return
        assert isinstance(media, RtpMedia)
        leg = SipCall(call, media, self._loop)
        try:
            leg.open(self.settings.bind_host or self.settings.my_ip)
            await self._loop.run_in_executor(None, call.answer)
        except (OSError, InvalidStateError) as e:  # RTP port taken, or cancelled while ringing
            log.warning("sip call not answered call=%s error=%r", leg.call_id, e)
            leg._end("not answered")
            if call.state is CallState.RINGING:
                await self._loop.run_in_executor(None, call.deny)
            return
        self._calls.add(leg)
        log.info("sip call answered call=%s codec=%s rtp=%s:%d active=%d", leg.call_id, media.codec,
                 media.outIP, media.outPort, len(self._calls))
        reason = "local"
        try:
            await self._handler(leg)
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        except Exception:
            log.exception("sip call handler failed call=%s", leg.call_id)
            reason = "handler error"
        finally:
            self._calls.discard(leg)
            await leg.hangup(reason)
            log.info("sip call ended call=%s reason=%s frames_in=%d frames_out=%d dropped=%d duration_s=%.2f",
                     leg.call_id, leg.end_reason, leg.frames_in, leg.frames_out, leg.dropped,
                     time.monotonic() - leg.started_at)
