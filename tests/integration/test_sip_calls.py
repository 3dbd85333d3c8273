"""Direct SIP mode end to end: the daemon as `switchboard run` builds it registers with SIPp (a registrar
with digest auth) and answers SIPp's INVITEs (the PBX delivering calls) on 127.0.0.1. The media is a UDP
socket of the test's own (tests/support/rtp.py), named in SIPp's SDP: it speaks the caller's question as
PCMU RTP and records the gateway's RTP, which the real models then transcribe."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.daemon.app import Daemon
from test_call_e2e import heard
from test_sip_message import Sipp, free_udp_port, needs_sipp
from tests.support.gateway import own_store
from tests.support.rtp import RtpPeer

pytestmark = [pytest.mark.models, needs_sipp]
PASSWORD_ENV = "SB_TEST_SIP_PASSWORD"


class Pbx(Sipp):
    """SIPp on the PBX's one address: the registrar first, then (same port) the caller. pyVoIP sends every
    request and response to its registrar's address, as it would to a real PBX."""

    def __init__(self, scenario: str, cwd: Path, port: int, *args: str, calls: int = 1, **keys: str) -> None:
        super().__init__(scenario, cwd, *args, **keys)
        self.port = port
        for flag, value in (("-p", str(port)), ("-m", str(calls)), ("-timeout", "180s")):
            self.argv[self.argv.index(flag) + 1] = value


def rtp_range() -> int:
    """The low end of 20 free UDP ports for the gateway's RTP."""
    for _ in range(100):
        low = random.randrange(33000, 40000, 20)
        try:
            for port in range(low, low + 20):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return low
    raise RuntimeError("no free RTP port range")


@pytest.fixture
async def pbx_port() -> int:
    return free_udp_port()


@pytest.fixture
def sip_expires() -> int:
    return 3600  # no re-registration during a test, unless it asks for one


@pytest.fixture
async def daemon(services, tmp_path, pbx_port, sip_expires, monkeypatch) -> AsyncIterator[Daemon]:  # type: ignore[no-untyped-def]
    """The daemon, registered with a SIPp registrar that checked its digest credentials."""
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    low = rtp_range()
    sip = services.config.sip.model_copy(update={
        "enabled": True, "server": "127.0.0.1", "port": pbx_port, "user": "reception", "password_env": PASSWORD_ENV,
        "my_ip": "127.0.0.1", "sip_port": free_udp_port(), "rtp_port_low": low, "rtp_port_high": low + 19,
        "register_expires_s": sip_expires, "register_timeout_s": 1.0, "retry_s": 1.0})
    svc = await own_store(services, tmp_path, sip=sip, http=services.config.http.model_copy(update={"enabled": False}))
    registrar = await Pbx("uas_register.xml", tmp_path, pbx_port, user="reception", password="s3cret").start()
    d = Daemon(svc)
    await d.start()
    try:
        assert await registrar.wait(30) == 0, registrar.log("errors")
        assert d.gateway.sip is not None
        await asyncio.wait_for(d.gateway.sip.registered.wait(), 10)
        yield d
    finally:
        await d.stop(grace_s=2.0)
        await svc.store.close()


async def place_calls(daemon: Daemon, tmp_path: Path, port: int, peers: list[RtpPeer]) -> Pbx:
    """SIPp calls the gateway once per peer, all at once, each call's SDP naming its peer's socket."""
    inf = tmp_path / "calls.csv"
    inf.write_text("SEQUENTIAL\n" + "".join(f"+1555010{i:04d};{p.port};\n" for i, p in enumerate(peers)))
    sip = daemon.config.sip
    caller = await Pbx("uac_call.xml", tmp_path, port, f"127.0.0.1:{sip.sip_port}", "-s", sip.user,
                       "-inf", str(inf), "-l", str(len(peers)), "-r", str(len(peers)), calls=len(peers)).start()
    for peer in peers:
        peer.start()
    return caller


async def call_ids(daemon: Daemon, count: int) -> list[str]:
    for _ in range(200):
        ids = [s.call.call_id for s in daemon.gateway.sessions]
        if len(ids) == count:
            return ids
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {count} live calls, have {len(daemon.gateway.sessions)}")


def hang_up(call_id: str, sipp_port: int) -> None:
    """Tell the SIPp caller (an INFO in the call's dialog) to send its BYE."""
    info = (f"INFO sip:caller@127.0.0.1:{sipp_port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKtest\r\n"
            f"From: <sip:test@127.0.0.1>;tag=t\r\nTo: <sip:caller@127.0.0.1>\r\nCall-ID: {call_id}\r\n"
            "CSeq: 9 INFO\r\nContent-Length: 0\r\n\r\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(info.encode(), ("127.0.0.1", sipp_port))


async def ended(daemon: Daemon, call_id: str) -> str:
    for _ in range(200):
        record = await daemon.services.store.call(call_id)
        if record is not None and record["ended_at"] is not None:
            return record["end_reason"] or ""
        await asyncio.sleep(0.1)
    raise AssertionError(f"call {call_id} did not end")


async def test_registered_call_greets_answers_and_caller_hangs_up(daemon, services, speak, tmp_path,
                                                                  pbx_port) -> None:
    peer = RtpPeer.bind()
    caller = await place_calls(daemon, tmp_path, pbx_port, [peer])
    try:
        greeting = await peer.wait_reply(time.monotonic() - 1)
        text = await heard(services, greeting)
        assert "bright smile" in text and "help" in text
        (call_id,) = await call_ids(daemon, 1)
        assert peer.target is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stray:  # another sender, loud noise
            for i in range(50):
                stray.sendto(bytes([0x80, 0, 0, i]) + bytes(8) + random.randbytes(160), peer.target)
        for junk in (b"\x80", b"\x00" * 20, bytes([0x80, 99]) + bytes(170)):  # short, RTP v0, unknown PT
            peer.sock.sendto(junk, peer.target)
        record = await daemon.services.store.call(call_id)
        assert record is not None and record["transport"] == "sip"
        sent = await peer.say(await speak("How much would it be to get my teeth whitened?"))
        text = await heard(services, await peer.wait_reply(sent))
        assert "350" in text or "three hundred fifty" in text or "three hundred and fifty" in text
        (session,) = daemon.gateway.sessions
        assert session.call.dropped == 53  # every stray and malformed packet, and the call went on
        hang_up(call_id, pbx_port)
        assert await caller.wait(30) == 0, caller.log("errors")
        assert await ended(daemon, call_id) == "peer hangup"
        assert not daemon.gateway.sessions
    finally:
        await peer.close()


async def test_two_calls_at_once_and_the_gateway_hangs_up(daemon, services, speak, tmp_path, pbx_port) -> None:
    peers = [RtpPeer.bind(), RtpPeer.bind()]
    caller = await place_calls(daemon, tmp_path, pbx_port, peers)
    try:
        await asyncio.gather(*(p.wait_reply(time.monotonic() - 1) for p in peers))
        assert len({p.received[0].ssrc for p in peers}) == 2  # two streams, one per call
        questions = ["How much would it be to get my teeth whitened?", "What are your opening hours on Saturday?"]
        sent = [await p.say(await speak(q)) for p, q in zip(peers, questions)]
        replies = await asyncio.gather(*(p.wait_reply(s) for p, s in zip(peers, sent)))
        whitening, hours = [await heard(services, r) for r in replies]
        assert "350" in whitening or "fifty" in whitening
        assert "350" not in hours and "fifty" not in hours  # no cross-talk: the other call's answer
        ids = await call_ids(daemon, 2)
        await daemon.gateway.stop(grace_s=4.0)  # goodbye, then our BYE to each caller
        assert await caller.wait(30) == 0, caller.log("errors")
        assert {await ended(daemon, i) for i in ids} == {"shutdown"}
    finally:
        for p in peers:
            await p.close()


async def test_dtmf_0_transfers_by_refer_to_the_front_desk(daemon, tmp_path, pbx_port) -> None:
    peer = RtpPeer.bind()
    caller = await place_calls(daemon, tmp_path, pbx_port, [peer])
    try:
        await peer.wait_reply(time.monotonic() - 1)
        (call_id,) = await call_ids(daemon, 1)
        peer.dtmf("0")
        assert await caller.wait(60) == 0, caller.log("errors")
        front_desk = daemon.config.site.directory.front_desk.extension
        assert f"Refer-To: <sip:{front_desk}@127.0.0.1>" in caller.log("messages")
        assert await ended(daemon, call_id) == "transferred"
        kinds = {e.kind: e.data for e in await daemon.services.store.events(call_id)}
        assert kinds["transfer_done"]["extension"] == front_desk
    finally:
        await peer.close()


async def test_keepalives_unknown_methods_and_garbage(daemon, pbx_port) -> None:
    """OPTIONS (a PBX's qualify) gets 200 and an unknown method 405, at the PBX's address as pyVoIP answers
    everything; a malformed datagram before them costs nothing."""
    request = ("{method} sip:reception@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{method}\r\n"
               "From: <sip:pbx@127.0.0.1>;tag=p\r\nTo: <sip:reception@127.0.0.1>\r\nCall-ID: {method}-1\r\n"
               "CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pbx:
        pbx.bind(("127.0.0.1", pbx_port))  # the registrar has gone: the PBX's address is free
        pbx.settimeout(10)
        gateway = ("127.0.0.1", daemon.config.sip.sip_port)
        pbx.sendto(b"\x00\xffnot sip at all\r\n\r\n", gateway)
        answers = {}
        for method in ("OPTIONS", "MESSAGE"):
            pbx.sendto(request.format(method=method, port=pbx_port).encode(), gateway)
            answer = pbx.recv(4096).decode()
            answers[method] = answer.split("\r\n")[0]
            assert f"Call-ID: {method}-1" in answer and f"CSeq: 1 {method}" in answer
    assert answers == {"OPTIONS": "SIP/2.0 200 OK", "MESSAGE": "SIP/2.0 405 Method Not Allowed"}


@pytest.mark.parametrize("sip_expires", [8])  # renewed 5 s before: 3 s after registering
async def test_registers_again_once_the_registrar_is_back(daemon, tmp_path, pbx_port) -> None:
    sip = daemon.gateway.sip
    assert sip is not None and sip.registrations == 1
    for _ in range(300):  # the renewal finds no registrar (it exited): pyVoIP gives up after three tries
        if not sip.registered.is_set():
            break
        await asyncio.sleep(0.1)
    assert not sip.registered.is_set()
    registrar = await Pbx("uas_register.xml", tmp_path, pbx_port, user="reception", password="s3cret").start()
    assert await registrar.wait(60) == 0, registrar.log("errors")
    await asyncio.wait_for(sip.registered.wait(), 10)
    assert sip.registrations == 2
