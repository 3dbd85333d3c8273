"""AudioSocket server over real TCP on loopback, fed with real Asterisk 22 captures."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from gateway.media.audiosocket import (
    AudioIn,
    AudioSocketCall,
    AudioSocketServer,
    Dtmf,
    Event,
    Hangup,
    Kind,
    Message,
    ProtocolError,
    encode,
    read_message,
)
from speech.audio import FRAME_BYTES, resample, ulaw_decode

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "asterisk"
APP_CALL_ID = "8ca3ff14-6202-4f92-bdba-04eabda09d70"
ALLOWED_FROM_SERVER = {Kind.HANGUP, Kind.AUDIO_8K, Kind.AUDIO_16K}
HANGUP_BYTES = b"\x00\x00\x00"
IO_TIMEOUT = 5.0


# --- helpers ------------------------------------------------------------------


def load_capture(name: str) -> tuple[bytes, list[Message]]:
    """The raw capture and its messages, located by the capture's own index file."""
    data = (FIXTURES / f"{name}.bin").read_bytes()
    messages = []
    for line in (FIXTURES / f"{name}_index.jsonl").read_text().splitlines():
        entry = json.loads(line)
        start = entry["offset"] + 3
        messages.append(Message(int(entry["kind"], 16), data[start : start + entry["len"]]))
    return data, messages


def parse_stream(data: bytes) -> list[Message]:
    """Every message the server sent; fails on a kind Asterisk would reject or a torn tail."""
    out, pos = [], 0
    while pos < len(data):
        assert len(data) - pos >= 3, f"torn header at byte {pos}"
        kind, length = struct.unpack_from("!BH", data, pos)
        assert kind in ALLOWED_FROM_SERVER, f"server sent kind 0x{kind:02x}"
        assert kind == Kind.HANGUP or length > 0, "server sent zero-length audio"
        payload = data[pos + 3 : pos + 3 + length]
        assert len(payload) == length, f"torn payload at byte {pos}"
        out.append(Message(kind, payload))
        pos += 3 + length
    return out


def uuid_msg(call_id: str) -> bytes:
    return encode(Kind.UUID, uuid.UUID(call_id).bytes)


def marker_frame(value: int) -> bytes:
    return struct.pack("<h", value) * (FRAME_BYTES // 2)


async def until(pred: Callable[[], bool], timeout: float = IO_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class Recorder:
    """Handler that records each call's events and (optionally) echoes its audio."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.events: dict[str, list[Event]] = {}
        self.calls: dict[str, AudioSocketCall] = {}

    async def __call__(self, call: AudioSocketCall) -> None:
        events = self.events.setdefault(call.call_id, [])
        self.calls[call.call_id] = call
        async for event in call.events():
            events.append(event)
            if self.echo and isinstance(event, AudioIn):
                call.send_audio(event.pcm)

    def ended(self, call_id: str) -> bool:
        evs = self.events.get(call_id)
        return bool(evs) and isinstance(evs[-1], Hangup)

    async def wait_ended(self, call_id: str) -> Hangup:
        await until(lambda: self.ended(call_id))
        last = self.events[call_id][-1]
        assert isinstance(last, Hangup)
        return last


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, rcvbuf: int | None = None) -> Client:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf is not None:  # before connect, so the advertised window is small too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(*await asyncio.open_connection(sock=sock))

    async def send(self, data: bytes, rng: random.Random | None = None) -> None:
        """Send data; with rng, as 1..7-byte writes that each reach the server on their own."""
        if rng is None:
            self.writer.write(data)
            await self.writer.drain()
            return
        pos = 0
        while pos < len(data):
            size = rng.randint(1, 7)
            self.writer.write(data[pos : pos + size])
            pos += size
            await self.writer.drain()
            await asyncio.sleep(0)

    async def read_to_eof(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), IO_TIMEOUT)

    async def read_messages(self, count: int) -> list[Message]:
        out = []
        for _ in range(count):
            msg = await asyncio.wait_for(read_message(self.reader), IO_TIMEOUT)
            assert msg is not None
            out.extend(parse_stream(encode(msg.kind, msg.payload)))
        return out

    def reset(self) -> None:
        """Abortive close: SO_LINGER 0 makes the kernel send RST instead of FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


StartServer = Callable[..., Awaitable[AudioSocketServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    servers: list[AudioSocketServer] = []

    async def start(handler: Callable[[AudioSocketCall], Awaitable[None]], **kw: float) -> AudioSocketServer:
        server = AudioSocketServer("127.0.0.1", 0, handler, **kw)  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace_s=1.0)


def expected_events(messages: list[Message]) -> list[Event]:
    """What a slin 8 kHz capture must turn into: its audio and digits, in wire order."""
    out: list[Event] = []
    for kind, payload in messages[1:]:
        if kind == Kind.AUDIO_8K:
            out.append(AudioIn(payload))
        elif kind == Kind.DTMF:
            out.append(Dtmf(payload.decode()))
        else:
            raise AssertionError(f"unexpected kind in capture 0x{kind:02x}")
    return out


# --- framing --------------------------------------------------------------------


async def test_encode_and_read_message_framing() -> None:
    assert encode(Kind.AUDIO_8K, b"\x01\x02") == b"\x10\x00\x02\x01\x02"
    assert encode(Kind.AUDIO_16K, bytes(640))[:3] == b"\x12\x02\x80"  # big-endian length
    assert encode(Kind.HANGUP) == HANGUP_BYTES
    with pytest.raises(ValueError, match="65536"):
        encode(Kind.AUDIO_8K, bytes(65536))

    reader = asyncio.StreamReader()
    reader.feed_data(encode(Kind.DTMF, b"5") + encode(0x42, b"") + b"\x10\x01")
    reader.feed_eof()
    assert await read_message(reader) == Message(Kind.DTMF, b"5")
    assert await read_message(reader) == Message(0x42, b"")
    with pytest.raises(ProtocolError, match="truncated header"):
        await read_message(reader)

    reader = asyncio.StreamReader()
    reader.feed_data(b"\x10\x01\x40" + bytes(100))
    reader.feed_eof()
    with pytest.raises(ProtocolError, match="100 of 320"):
        await read_message(reader)

    reader = asyncio.StreamReader()
    reader.feed_eof()
    assert await read_message(reader) is None


# --- real captures ----------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True], ids=["whole", "1-7-byte-writes"])
async def test_app_capture_replay(start_server: StartServer, split: bool) -> None:
    data, messages = load_capture("audiosocket_in")
    assert messages[0] == Message(Kind.UUID, uuid.UUID(APP_CALL_ID).bytes)
    rec = Recorder()
    server = await start_server(rec)
    client = await Client.connect(server.port)
    await client.send(data, random.Random(7) if split else None)
    client.writer.write_eof()  # the caller hangs up: Asterisk just closes, no 0x00
    received = parse_stream(await client.read_to_eof())

    events = rec.events[APP_CALL_ID]
    assert events[-1] == Hangup("eof")
    assert events[:-1] == expected_events(messages)
    assert sum(isinstance(e, AudioIn) for e in events) == 126
    assert [e.digit for e in events if isinstance(e, Dtmf)] == ["5", "*"]
    # The echo comes back as the same 0x10 frames, and nothing else (no hangup: the peer left).
    audio_in = [m.payload for m in messages if m.kind == Kind.AUDIO_8K]
    assert received == [Message(Kind.AUDIO_8K, p) for p in audio_in]
    assert rec.calls[APP_CALL_ID].in_rate == 8000
    assert server.active_calls == 0


async def test_ari_external_media_capture(start_server: StartServer) -> None:
    data, messages = load_capture("audiosocket_in_ari_externalmedia")
    rec = Recorder()
    server = await start_server(rec)
    client = await Client.connect(server.port)
    await client.send(data, random.Random(3))
    client.writer.write_eof()
    received = parse_stream(await client.read_to_eof())
    call_id = str(uuid.UUID(bytes=messages[0].payload))
    assert rec.events[call_id] == [*expected_events(messages), Hangup("eof")]
    assert len(received) == len(messages) - 1


async def test_slin16_channel_driver_is_converted_both_ways(start_server: StartServer) -> None:
    data, messages = load_capture("audiosocket_in_chan104_slin16")
    wire_16k = [m.payload for m in messages[1:]]
    assert {m.kind for m in messages[1:]} == {Kind.AUDIO_16K} and len(wire_16k) == 50
    rec = Recorder()
    server = await start_server(rec)
    client = await Client.connect(server.port)
    await client.send(data)
    client.writer.write_eof()
    received = parse_stream(await client.read_to_eof())

    call_id = str(uuid.UUID(bytes=messages[0].payload))
    assert rec.calls[call_id].in_rate == 16000
    frames = [e.pcm for e in rec.events[call_id] if isinstance(e, AudioIn)]
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert len(frames) == 50  # one 8 kHz frame per 16 kHz frame, nothing held back
    got = np.frombuffer(b"".join(frames), "<i2").astype(float)
    ref = np.frombuffer(resample(b"".join(wire_16k), 16000, 8000), "<i2")[: got.size].astype(float)
    delay = 12  # the live resampler's FIR delay at 8 kHz (1.5 ms)
    assert np.corrcoef(got[delay:], ref[: got.size - delay])[0, 1] > 0.99  # the same speech at 8 kHz
    assert np.sqrt((got**2).mean()) > 1000  # and not silence
    # Replies go back as 20 ms slin16: one 0x12 message of 640 bytes per frame sent.
    assert len(received) == len(frames)
    assert {(m.kind, len(m.payload)) for m in received} == {(Kind.AUDIO_16K, 640)}
    echoed = np.frombuffer(b"".join(m.payload for m in received), "<i2").astype(float)
    assert np.sqrt((echoed**2).mean()) > 500  # real audio came out of the 8k->16k path


async def test_ulaw_labelled_0x10_is_decoded_when_configured(start_server: StartServer) -> None:
    """The real capture of Dial(AudioSocket/...) without c(slin), with audiosocket.codec_0x10: ulaw."""
    data, messages = load_capture("audiosocket_in_chan102_ulaw_as_0x10")
    rec = Recorder()
    server = await start_server(rec, codec_0x10="ulaw")
    client = await Client.connect(server.port)
    await client.send(data)
    client.writer.write_eof()
    received = parse_stream(await client.read_to_eof())

    call_id = str(uuid.UUID(bytes=messages[0].payload))
    expected = [AudioIn(ulaw_decode(m.payload)) for m in messages[1:]]
    assert len(expected) == 50 and all(len(e.pcm) == FRAME_BYTES for e in expected)
    assert rec.events[call_id] == [*expected, Hangup("eof")]
    assert {(m.kind, len(m.payload)) for m in received} == {(Kind.AUDIO_8K, 320)}


async def test_kind_and_length_are_trusted_10ms_slin_is_slin(start_server: StartServer) -> None:
    """160-byte 0x10 frames are 10 ms of slin to Asterisk: never guessed to be u-law from their length."""
    rec = Recorder(echo=False)
    server = await start_server(rec)
    speech = (np.sin(np.arange(1600) * 0.3) * 8000).astype("<i2").tobytes()  # 100 ms, 10 frames of 10 ms
    client = await Client.connect(server.port)
    await client.send(uuid_msg(GOOD_ID) + b"".join(encode(Kind.AUDIO_8K, speech[i:i + 160])
                                                   for i in range(0, len(speech), 160)))
    client.writer.write_eof()
    await client.read_to_eof()
    frames = [e.pcm for e in rec.events[GOOD_ID] if isinstance(e, AudioIn)]
    assert b"".join(frames) == speech  # re-cut into 20 ms frames, samples untouched


async def test_8bit_audio_labelled_slin_is_reported_once_with_the_fix(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The same capture at its real pace: half of slin's byte rate gives one clear warning."""
    data, messages = load_capture("audiosocket_in_chan102_ulaw_as_0x10")
    server = await start_server(Recorder(echo=False))
    with caplog.at_level(logging.WARNING, logger="gateway.media.audiosocket"):
        client = await Client.connect(server.port)
        await client.send(encode(messages[0].kind, messages[0].payload))
        for message in [*messages[1:], *messages[1:]][:60]:  # 1.2 s, paced like Asterisk
            await client.send(encode(message.kind, message.payload))
            await asyncio.sleep(0.02)
        client.writer.write_eof()
        await client.read_to_eof()
    warnings = [r.getMessage() for r in caplog.records if "codec_0x10" in r.getMessage()]
    assert len(warnings) == 1 and "c(slin)" in warnings[0], warnings


# --- malformed peers end only their own call --------------------------------------

BAD_ID = "11111111-2222-4333-8444-555555555555"
GOOD_ID = "99999999-8888-4777-8666-555555555555"
AUDIO = marker_frame(1234)


async def bad_then_eof(client: Client, data: bytes) -> None:
    await client.send(data)
    client.writer.write_eof()


async def bad_then_wait(client: Client, data: bytes) -> None:
    await client.send(data)


async def bad_then_reset(client: Client, data: bytes) -> None:
    await client.send(data)
    await asyncio.sleep(0.05)
    client.reset()


# (id, bytes sent, how the client behaves, expected Hangup reason or None = no call at all)
MALFORMED = [
    ("unknown-kind", uuid_msg(BAD_ID) + encode(Kind.AUDIO_8K, AUDIO) + encode(0x42, b"x"),
     bad_then_wait, "protocol: unknown kind 0x42 len=1"),
    ("not-uuid-first", encode(Kind.AUDIO_8K, AUDIO) + uuid_msg(BAD_ID), bad_then_wait, None),
    ("uuid-wrong-length", encode(Kind.UUID, uuid.UUID(BAD_ID).bytes[:15]), bad_then_wait, None),
    ("uuid-as-text", encode(Kind.UUID, BAD_ID.encode()), bad_then_wait, None),
    ("zero-length-audio", uuid_msg(BAD_ID) + encode(Kind.AUDIO_8K, AUDIO) + encode(Kind.AUDIO_8K),
     bad_then_wait, "protocol: zero-length audio kind=0x10"),
    ("oversized-audio", uuid_msg(BAD_ID) + encode(Kind.AUDIO_8K, bytes(3202)),
     bad_then_wait, "protocol: oversized audio kind=0x10 len=3202"),
    ("error-kind", uuid_msg(BAD_ID) + encode(Kind.ERROR, b"\x02"),
     bad_then_wait, "protocol: peer sent error message code=02"),
    ("bad-dtmf", uuid_msg(BAD_ID) + encode(Kind.DTMF, b"55"), bad_then_wait,
     "protocol: bad dtmf payload b'55'"),
    ("truncated-then-eof",
     uuid_msg(BAD_ID) + encode(Kind.AUDIO_8K, AUDIO) + encode(Kind.AUDIO_8K, AUDIO)[:100], bad_then_eof, "protocol: truncated payload kind=0x10 (97 of 320 bytes)"),
    ("no-uuid-in-time", b"", bad_then_wait, None),
    ("silent-after-uuid", uuid_msg(BAD_ID), bad_then_wait, "timeout"),
    ("reset", uuid_msg(BAD_ID) + encode(Kind.AUDIO_8K, AUDIO), bad_then_reset, "eof"),
]


@pytest.mark.parametrize(
    ("data", "behave", "reason"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
async def test_malformed_peer_ends_only_its_call(
    start_server: StartServer,
    data: bytes,
    behave: Callable[[Client, bytes], Awaitable[None]],
    reason: str | None,
) -> None:
    rec = Recorder()
    server = await start_server(rec, uuid_timeout_s=0.3, idle_timeout_s=0.5)
    good = await Client.connect(server.port)
    echoes: list[Message] = []

    async def good_caller() -> None:
        await good.send(uuid_msg(GOOD_ID))
        for _ in range(400):  # bounded; the test ends it long before
            await good.send(encode(Kind.AUDIO_8K, marker_frame(777)))
            echoes.extend(await good.read_messages(1))
            await asyncio.sleep(0.005)

    good_task = asyncio.create_task(good_caller())
    try:
        await until(lambda: len(echoes) >= 5)
        bad = await Client.connect(server.port)
        await behave(bad, data)
        if reason is None:
            assert await bad.read_to_eof() == b""  # closed without a word, no call created
            assert BAD_ID not in rec.events
        else:
            assert await rec.wait_ended(BAD_ID) == Hangup(reason)
            assert all(isinstance(e, AudioIn) and e.pcm == AUDIO for e in rec.events[BAD_ID][:-1])
            if behave is not bad_then_reset:
                parse_stream(await bad.read_to_eof())  # closed, having sent only echoes
        after = len(echoes)
        await until(lambda: len(echoes) >= after + 10)  # the other call never noticed
    finally:
        good_task.cancel()
        await asyncio.gather(good_task, return_exceptions=True)
    assert not rec.ended(GOOD_ID)
    assert set(echoes) == {Message(Kind.AUDIO_8K, marker_frame(777))}


# --- the call API -------------------------------------------------------------------


async def test_local_hangup_sends_000000_and_ignores_later_writes(start_server: StartServer) -> None:
    ended: list[Event] = []

    async def handler(call: AudioSocketCall) -> None:
        with pytest.raises(ValueError):
            call.send_audio(b"")  # never a zero-length frame on the wire
        for i in range(3):
            call.send_audio(marker_frame(i + 1))
        await call.hangup()
        call.send_audio(marker_frame(9))  # after close: silently dropped
        assert call.closed and call.frames_out == 3
        ended.extend([e async for e in call.events()])

    server = await start_server(handler)
    client = await Client.connect(server.port)
    await client.send(uuid_msg(BAD_ID) + encode(Kind.AUDIO_8K, AUDIO))
    received = await client.read_to_eof()
    client.writer.close()  # as Asterisk does on 00 00 00; the server waits for it (drain)
    assert parse_stream(received) == [
        *(Message(Kind.AUDIO_8K, marker_frame(i + 1)) for i in range(3)),
        Message(Kind.HANGUP, b""),
    ]
    assert received.endswith(HANGUP_BYTES)
    await until(lambda: bool(ended))
    assert ended == [Hangup("local")]


async def test_hangup_lets_in_flight_audio_land_without_reset(start_server: StartServer) -> None:
    """Asterisk keeps sending until it reads our 00 00 00: answering those frames with RST
    could destroy the hangup message, so the server half-closes and drains instead."""
    reasons: list[Event] = []

    async def handler(call: AudioSocketCall) -> None:
        async for event in call.events():
            if isinstance(event, AudioIn) and call.frames_in == 3:
                await call.hangup()
            reasons.append(event)

    server = await start_server(handler)
    client = await Client.connect(server.port)
    await client.send(uuid_msg(BAD_ID) + encode(Kind.AUDIO_8K, AUDIO) * 3)
    assert await client.read_to_eof() == HANGUP_BYTES
    for _ in range(3):  # frames that were already on their way
        await client.send(encode(Kind.AUDIO_8K, AUDIO))
        await asyncio.sleep(0.02)
    await client.send(encode(Kind.AUDIO_8K, AUDIO))  # raises if the server had reset
    client.writer.close()
    await until(lambda: bool(reasons) and isinstance(reasons[-1], Hangup))
    assert reasons[-1] == Hangup("local")


async def test_concurrent_calls_get_only_their_own_audio(start_server: StartServer) -> None:
    rec = Recorder()
    server = await start_server(rec)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(20)]

    async def caller(i: int) -> list[Message]:
        client = await Client.connect(server.port)
        await client.send(uuid_msg(ids[i]))
        got: list[Message] = []
        for _ in range(10):
            await client.send(encode(Kind.AUDIO_8K, marker_frame(100 * (i + 1))))
            got.extend(await client.read_messages(1))
        client.writer.close()
        return got

    results = await asyncio.gather(*(caller(i) for i in range(20)))
    for i, got in enumerate(results):
        assert got == [Message(Kind.AUDIO_8K, marker_frame(100 * (i + 1)))] * 10
    for i, call_id in enumerate(ids):
        assert (await rec.wait_ended(call_id)) == Hangup("eof")
        assert rec.events[call_id][:-1] == [AudioIn(marker_frame(100 * (i + 1)))] * 10
    await until(lambda: server.active_calls == 0)


async def test_failing_handler_ends_only_its_call(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    failing_id = str(uuid.UUID(int=666))

    async def handler(call: AudioSocketCall) -> None:
        if call.call_id == failing_id:
            async for _ in call.events():
                raise RuntimeError("bug in the session")
        await rec(call)

    server = await start_server(handler)
    good = await Client.connect(server.port)
    await good.send(uuid_msg(GOOD_ID) + encode(Kind.AUDIO_8K, AUDIO))
    assert await good.read_messages(1) == [Message(Kind.AUDIO_8K, AUDIO)]
    with caplog.at_level(logging.ERROR, logger="gateway.media.audiosocket"):
        bad = await Client.connect(server.port)
        await bad.send(uuid_msg(failing_id) + encode(Kind.AUDIO_8K, AUDIO))
        assert parse_stream(await bad.read_to_eof()) == [Message(Kind.HANGUP, b"")]
    assert any(f"call={failing_id}" in r.getMessage() and r.exc_info for r in caplog.records)

    await good.send(encode(Kind.AUDIO_8K, marker_frame(5)))
    assert await good.read_messages(1) == [Message(Kind.AUDIO_8K, marker_frame(5))]
    later = await Client.connect(server.port)  # the server still accepts calls
    await later.send(uuid_msg(BAD_ID) + encode(Kind.AUDIO_8K, AUDIO))
    assert await later.read_messages(1) == [Message(Kind.AUDIO_8K, AUDIO)]


async def test_over_max_calls_is_hung_up_at_once(start_server: StartServer) -> None:
    rec = Recorder()
    server = await start_server(rec, max_calls=1)
    first = await Client.connect(server.port)
    await first.send(uuid_msg(GOOD_ID) + encode(Kind.AUDIO_8K, AUDIO))
    await first.read_messages(1)
    second = await Client.connect(server.port)
    await second.send(uuid_msg(BAD_ID))
    assert await second.read_to_eof() == HANGUP_BYTES
    assert server.active_calls == 1 and BAD_ID not in rec.events


async def test_peer_that_stops_reading_is_ended_as_slow_consumer(start_server: StartServer) -> None:
    calls: list[AudioSocketCall] = []
    reasons: list[Event] = []

    async def flood(call: AudioSocketCall) -> None:
        calls.append(call)
        for i in range(20000):  # bounded: ~6 MB, far above any socket buffer
            if call.closed:
                break
            call.send_audio(AUDIO)
            if i % 50 == 0:
                await asyncio.sleep(0)
        reasons.extend([e async for e in call.events()])

    server = await start_server(flood)
    client = await Client.connect(server.port, rcvbuf=4096)
    await client.send(uuid_msg(BAD_ID))  # and never read
    await until(lambda: bool(reasons))
    assert reasons == [Hangup("slow consumer")]
    assert calls[0].frames_out < 20000


async def test_stop_cancels_handlers_after_grace(start_server: StartServer) -> None:
    started = asyncio.Event()
    calls: list[AudioSocketCall] = []

    async def stuck(call: AudioSocketCall) -> None:
        calls.append(call)
        started.set()
        await asyncio.Event().wait()

    server = await start_server(stuck)
    client = await Client.connect(server.port)
    await client.send(uuid_msg(BAD_ID))
    await asyncio.wait_for(started.wait(), IO_TIMEOUT)
    assert server.active_calls == 1
    port = server.port
    await asyncio.wait_for(server.stop(grace_s=0.2), IO_TIMEOUT)
    assert await client.read_to_eof() == HANGUP_BYTES
    assert calls[0].end_reason == "shutdown" and server.active_calls == 0
    with pytest.raises(OSError):
        await Client.connect(port)
