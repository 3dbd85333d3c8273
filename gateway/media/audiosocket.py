"""AudioSocket transport (Asterisk dialplan app, channel driver, ARI externalMedia).

Wire format (PROTOCOLS.md §1, fixtures/asterisk/audiosocket_notes.md): kind (uint8), payload
length (uint16 big-endian), payload. Audio is s16le mono; the kind gives the sample rate.
Whatever the peer speaks, calls see only 20 ms 8 kHz s16le frames (320 bytes) and hand back
the same; conversion to and from the peer's rate happens here.

Asterisk drops the call on anything but audio or hangup from us, so those are the only
kinds this module can write, and each message goes out in one write() (old versions broke
on a header split across TCP segments).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import IntEnum
from typing import NamedTuple

from gateway.media.leg import AudioIn, Dtmf, Event, Hangup
from speech.audio import FRAME_BYTES, FRAME_MS, SAMPLE_RATE, StreamResampler, alaw_decode, ulaw_decode

log = logging.getLogger(__name__)

HEADER = struct.Struct("!BH")
MAX_PAYLOAD = 0xFFFF
MAX_AUDIO_MS = 200  # more than this in one message is not a real ptime: treat as malformed
# Asterisk sends no frames at all during DTX, hold or silence suppression, so silence on the socket is
# not a hang-up (EOF is); this only reaps a peer that vanished without closing, e.g. a crashed host.
IDLE_TIMEOUT_S = 300.0
RATE_CHECK_S = 1.0  # media time after which the byte rate of kind 0x10 is checked against its codec
# Kind 0x10 means slin, but Dial(AudioSocket/...) without c(slin) sends the caller's 8-bit codec
# under it: how to read 0x10 is configured (audiosocket.codec_0x10), never guessed from a length.
CODECS_0X10: dict[str, Callable[[bytes], bytes] | None] = {"slin": None, "ulaw": ulaw_decode, "alaw": alaw_decode}
MAX_WRITE_BUFFER = 32 * 1024  # ~1 s of 8 kHz audio queued in user space: the peer stopped reading
CLOSE_TIMEOUT_S = 1.0
DTMF_DIGITS = frozenset("0123456789*#ABCD")


class Kind(IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    AUDIO_8K = 0x10
    AUDIO_12K = 0x11
    AUDIO_16K = 0x12
    AUDIO_24K = 0x13
    AUDIO_32K = 0x14
    AUDIO_44K = 0x15
    AUDIO_48K = 0x16
    AUDIO_96K = 0x17
    AUDIO_192K = 0x18
    ERROR = 0xFF


AUDIO_RATES: dict[int, int] = {
    Kind.AUDIO_8K: 8000,
    Kind.AUDIO_12K: 12000,
    Kind.AUDIO_16K: 16000,
    Kind.AUDIO_24K: 24000,
    Kind.AUDIO_32K: 32000,
    Kind.AUDIO_44K: 44100,
    Kind.AUDIO_48K: 48000,
    Kind.AUDIO_96K: 96000,
    Kind.AUDIO_192K: 192000,
}


class ProtocolError(Exception):
    """The peer sent something that is not valid AudioSocket."""


class Message(NamedTuple):
    kind: int  # not Kind: unknown kinds must reach validation to be reported
    payload: bytes




def encode(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"audiosocket payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(kind, len(payload)) + payload


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None on a clean EOF between messages."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise ProtocolError(f"truncated header ({len(e.partial)} of {HEADER.size} bytes)") from None
    kind, length = HEADER.unpack(header)
    try:
        payload = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError as e:
        raise ProtocolError(
            f"truncated payload kind=0x{kind:02x} ({len(e.partial)} of {length} bytes)"
        ) from None
    return Message(kind, payload)


def _frame_bytes(rate: int) -> int:
    return rate * FRAME_MS // 1000 * 2


def _peer(writer: asyncio.StreamWriter) -> str:
    addr = writer.get_extra_info("peername")
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


class AudioSocketCall:
    """One connected call, after its UUID. Single consumer of events(); send_audio() from
    the media clock."""

    transport = "audiosocket"

    def __init__(
        self,
        call_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_write_buffer: int = MAX_WRITE_BUFFER,
        codec_0x10: str = "slin",
    ) -> None:
        self.call_id = call_id
        self.peer = _peer(writer)
        self.frames_in = 0
        self.frames_out = 0
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        self.end_reason: str | None = None
        self._reader = reader
        self._writer = writer
        self._idle_timeout_s = idle_timeout_s
        self._in_read = False  # events() is waiting on the socket: it must do any draining
        self._drain: asyncio.Future[None] | None = None
        self._max_write_buffer = max_write_buffer
        # Media format, fixed by the peer's audio (None until its first frame).
        self._in_kind: int | None = None
        self._codec_0x10 = codec_0x10
        self._decode_8bit: Callable[[bytes], bytes] | None = None  # the configured 8-bit codec, while in 0x10
        self._media_bytes = 0  # of kind 0x10 in the first RATE_CHECK_S, to check the codec once
        self._media_since: float | None = None
        self._resample_in: StreamResampler | None = None
        self._resample_out: StreamResampler | None = None
        self._in_buf = bytearray()
        self._out_buf = bytearray()
        self._out_kind: int = Kind.AUDIO_8K  # until the peer's first frame says otherwise
        self._out_frame_bytes = FRAME_BYTES

    @property
    def in_rate(self) -> int | None:
        """Sample rate of the peer's audio on the wire (None before its first frame)."""
        return None if self._in_kind is None else AUDIO_RATES[self._in_kind]

    @property
    def closed(self) -> bool:
        return self.end_reason is not None

    async def events(self) -> AsyncIterator[Event]:
        """AudioIn / Dtmf events, ending with exactly one Hangup."""
        while not self.closed:
            self._in_read = True
            try:
                async with asyncio.timeout(self._idle_timeout_s):
                    msg = await read_message(self._reader)
                if msg is None:
                    self._close("eof")
                    break
                if self.closed:  # hung up locally while this message was arriving
                    break
                decoded = self._decode(msg)
            except TimeoutError:
                self._close("timeout")
                break
            except ProtocolError as e:
                log.warning("audiosocket protocol error call=%s peer=%s error=%s",
                            self.call_id, self.peer, e)
                self._close(f"protocol: {e}")
                break
            except OSError as e:  # connection reset: the caller is gone just as with EOF
                log.info("audiosocket connection lost call=%s error=%r", self.call_id, e)
                self._close("eof")
                break
            finally:
                self._in_read = False
            for event in decoded:
                yield event
        if not self._writer.is_closing():  # hung up locally: drain now that no read is pending
            await self._drained()
        assert self.end_reason is not None
        yield Hangup(self.end_reason)

    def send_audio(self, frame: bytes) -> None:
        """Send one 20 ms 8 kHz s16le frame in the peer's own format; ignored once closed."""
        if self.closed:
            return
        if len(frame) != FRAME_BYTES:
            raise ValueError(f"send_audio wants one {FRAME_BYTES}-byte frame, got {len(frame)}")
        if self._resample_out is None:
            payload = frame
        else:
            self._out_buf += self._resample_out.process(frame)
            size = self._out_frame_bytes
            if len(self._out_buf) < size:
                # soxr releases output in blocks: while it fills, silence keeps the 20 ms rhythm.
                payload = bytes(size)
            else:
                payload = bytes(self._out_buf[:size])
                del self._out_buf[:size]
        self._writer.write(encode(self._out_kind, payload))
        self.frames_out += 1
        if self._writer.transport.get_write_buffer_size() > self._max_write_buffer:
            log.warning("audiosocket peer not reading call=%s buffered=%d",
                        self.call_id, self._writer.transport.get_write_buffer_size())
            self._close("slow consumer", abort=True)

    async def hangup(self, reason: str = "local") -> None:
        """Send 00 00 00 (Asterisk's app then continues the dialplan) and close. Also waits,
        bounded, for the socket of an already ended call to close."""
        if not self.closed:
            try:
                self._writer.write(encode(Kind.HANGUP))
                self._writer.write_eof()
            except OSError:  # Asterisk closed first (e.g. AMI reports its hang-up after the socket went)
                self._close("eof")
                return
            self._end(reason)
        if self._in_read or self._writer.is_closing():
            await _closed(self._writer)  # events() owns the reader: it drains once its read returns
        else:
            await self._drained()

    async def _drained(self) -> None:
        """Run the post-hangup drain once, whoever asks first (the reader has one owner)."""
        if self._drain is None:
            self._drain = asyncio.ensure_future(_drain_and_close(self._reader, self._writer))
        await asyncio.shield(self._drain)

    def _end(self, reason: str) -> None:
        self.end_reason = reason
        self.ended_at = time.monotonic()

    def _close(self, reason: str, abort: bool = False) -> None:
        """End the call from our side of a remote problem: no hangup message, no draining."""
        if self.closed:
            return
        self._end(reason)
        if abort:
            self._writer.transport.abort()
        else:
            self._writer.close()

    def _decode(self, msg: Message) -> list[Event]:
        kind, payload = msg
        if kind in AUDIO_RATES:
            return self._audio(kind, payload)
        if kind == Kind.DTMF:
            digit = payload.decode("ascii", "replace")
            if digit not in DTMF_DIGITS:
                raise ProtocolError(f"bad dtmf payload {payload!r}")
            return [Dtmf(digit)]
        if kind == Kind.HANGUP:
            self._close("peer hangup")
            return []
        if kind == Kind.UUID:
            raise ProtocolError("second uuid message")
        if kind == Kind.ERROR:
            raise ProtocolError(f"peer sent error message code={payload.hex() or '-'}")
        raise ProtocolError(f"unknown kind 0x{kind:02x} len={len(payload)}")

    def _audio(self, kind: int, payload: bytes) -> list[Event]:
        rate = AUDIO_RATES[kind]
        if not payload:
            raise ProtocolError(f"zero-length audio kind=0x{kind:02x}")
        if len(payload) > rate * 2 * MAX_AUDIO_MS // 1000:
            raise ProtocolError(f"oversized audio kind=0x{kind:02x} len={len(payload)}")
        if kind != self._in_kind:
            self._set_media(kind)
        self.frames_in += 1
        if self._media_since is not None:
            self._check_rate(len(payload))
        if self._decode_8bit is not None:
            pcm = self._decode_8bit(payload)
        elif len(payload) % 2:
            raise ProtocolError(f"odd-length slin audio kind=0x{kind:02x} len={len(payload)}")
        elif self._resample_in is None:
            pcm = payload
        else:
            pcm = self._resample_in.process(payload)
        if not self._in_buf and len(pcm) == FRAME_BYTES:
            return [AudioIn(pcm)]  # the common case: a 20 ms 8 kHz slin frame
        # Other ptimes and the resampler's block output are re-cut into 20 ms frames.
        self._in_buf += pcm
        whole = len(self._in_buf) - len(self._in_buf) % FRAME_BYTES
        events: list[Event] = [
            AudioIn(bytes(self._in_buf[i : i + FRAME_BYTES])) for i in range(0, whole, FRAME_BYTES)
        ]
        del self._in_buf[:whole]
        return events

    def _set_media(self, kind: int) -> None:
        """Adopt the peer's audio kind for both directions (it expects replies in kind)."""
        if self._in_kind is not None:
            log.info("audiosocket media changed call=%s kind=0x%02x->0x%02x",
                     self.call_id, self._in_kind, kind)
        rate = AUDIO_RATES[kind]
        self._in_kind = self._out_kind = kind
        self._out_frame_bytes = _frame_bytes(rate)
        self._in_buf.clear()
        self._out_buf.clear()
        resampled = rate != SAMPLE_RATE
        self._resample_in = StreamResampler(rate, SAMPLE_RATE) if resampled else None
        self._resample_out = StreamResampler(SAMPLE_RATE, rate) if resampled else None
        codec = self._codec_0x10 if kind == Kind.AUDIO_8K else "slin"
        self._decode_8bit = CODECS_0X10[codec]
        self._media_since = time.monotonic() if kind == Kind.AUDIO_8K else None
        self._media_bytes = 0
        log.info("audiosocket media call=%s kind=0x%02x rate=%d codec=%s", self.call_id, kind, rate, codec)

    def _check_rate(self, length: int) -> None:
        """Once, after RATE_CHECK_S: does kind 0x10 arrive at the byte rate of its configured codec?
        slin is 16 000 bytes/s, an 8-bit codec 8 000. A mismatch is logged once, with the fix."""
        assert self._media_since is not None
        self._media_bytes += length
        elapsed = time.monotonic() - self._media_since
        if elapsed < RATE_CHECK_S:
            return
        self._media_since = None
        rate = self._media_bytes / elapsed
        eight_bit = rate < 0.75 * 2 * SAMPLE_RATE
        if eight_bit == (self._decode_8bit is None):
            log.warning(
                "audiosocket call=%s kind 0x10 arrives at %.0f bytes/s, which is %s, but audiosocket.codec_0x10 is "
                "%s: %s", self.call_id, rate, "an 8-bit codec (u-law or A-law)" if eight_bit else "slin",
                self._codec_0x10, "add /c(slin) to the Dial(AudioSocket/...) string (or set codec_0x10: ulaw or "
                "alaw)" if eight_bit else "set audiosocket.codec_0x10: slin")


Handler = Callable[[AudioSocketCall], Awaitable[None]]


class AudioSocketServer:
    """Accepts AudioSocket connections and runs ``handler(call)`` once per call in the
    connection's own task; a failing handler or a malformed peer ends only that call."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        *,
        uuid_timeout_s: float = 2.0,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_calls: int = 500,
        codec_0x10: str = "slin",
    ) -> None:
        self.host = host
        self._port = port
        self._handler = handler
        self._uuid_timeout_s = uuid_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._max_calls = max_calls
        self._codec_0x10 = codec_0x10
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._calls: set[AudioSocketCall] = set()

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        if self._server is None:
            return self._port
        return self._server.sockets[0].getsockname()[1]

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connect, self.host, self._port)
        log.info("audiosocket listening addr=%s:%d max_calls=%d", self.host, self.port, self._max_calls)

    def stop_accepting(self) -> None:
        """Refuse new calls while the running ones are wound down (daemon shutdown)."""
        if self._server is not None:
            self._server.close()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, give running calls ``grace_s`` to finish, then cancel them."""
        if self._server is None:
            return
        self._server.close()
        pending = set(self._connections)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        log.info("audiosocket stopped cancelled=%d", len(pending))

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # stop() ended it; a cancelled task here trips asyncio.streams' done callback (3.11)
        except Exception:  # a bug here must not surface as an unhandled task error
            log.exception("audiosocket connection failed peer=%s", _peer(writer))
            writer.transport.abort()
        finally:
            self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self._connections) > self._max_calls:
            log.warning("audiosocket call rejected peer=%s reason=max_calls limit=%d",
                        peer, self._max_calls)
            writer.write(encode(Kind.HANGUP))
            await _drain_and_close(reader, writer)
            return
        call_id = await self._read_uuid(reader, peer)
        if call_id is None:
            await _drain_and_close(reader, writer)
            return
        call = AudioSocketCall(call_id, reader, writer, idle_timeout_s=self._idle_timeout_s,
                               codec_0x10=self._codec_0x10)
        self._calls.add(call)
        log.info("audiosocket call connected call=%s peer=%s active=%d",
                 call_id, peer, len(self._calls))
        reason = "local"
        try:
            await self._handler(call)
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        except Exception:
            log.exception("audiosocket call handler failed call=%s", call_id)
            reason = "handler error"
        finally:
            self._calls.discard(call)
            await call.hangup(reason)
            log.info(
                "audiosocket call ended call=%s reason=%s frames_in=%d frames_out=%d duration_s=%.2f",
                call_id, call.end_reason, call.frames_in, call.frames_out,
                (call.ended_at or time.monotonic()) - call.started_at,
            )

    async def _read_uuid(self, reader: asyncio.StreamReader, peer: str) -> str | None:
        """The call id from the mandatory first message, or None (logged) if there is none."""
        try:
            async with asyncio.timeout(self._uuid_timeout_s):
                msg = await read_message(reader)
        except TimeoutError:
            problem = f"no uuid within {self._uuid_timeout_s:g}s"
        except (ProtocolError, OSError) as e:
            problem = f"before uuid: {e!r}"
        else:
            if msg is None:
                problem = "eof before uuid"
            elif msg.kind != Kind.UUID or len(msg.payload) != 16:
                problem = (f"first message kind=0x{msg.kind:02x} len={len(msg.payload)}"
                           " is not a 16-byte uuid")
            else:
                return str(uuid.UUID(bytes=msg.payload))
        log.warning("audiosocket connection closed peer=%s reason=%s", peer, problem)
        return None


async def _closed(writer: asyncio.StreamWriter) -> None:
    """Wait, bounded, for a closing socket to flush and close; abort it if it will not."""
    try:
        await asyncio.wait_for(writer.wait_closed(), 2 * CLOSE_TIMEOUT_S)
    except (TimeoutError, OSError):
        writer.transport.abort()


async def _drain_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, discard input until the peer closes too, then close.

    Closing at once would answer Asterisk's in-flight audio with RST, and an RST can destroy
    our 00 00 00 before Asterisk reads it: the app would then hang up instead of continuing
    the dialplan (hand-off).
    """
    try:
        writer.write_eof()
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            while await reader.read(65536):
                pass
    except (TimeoutError, OSError):
        writer.transport.abort()
        return
    writer.close()
    await _closed(writer)
