"""SIP MESSAGE channels against a real SIP peer: SIPp (Debian sip-tester) as the SMS gateway (UAS with
401/407 digest challenges) and as a sender of inbound MESSAGE (UAC), all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import re
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channels.base import InboundMessage, OutgoingMessage, PermanentError, TemporaryError
from channels.sip_message import (
    AmiMessageChannel,
    AmiMessageSettings,
    SipMessageChannel,
    SipMessageSettings,
    digest_authorization,
    parse_challenge,
    uri_user,
)

SCENARIOS = Path(__file__).resolve().parent.parent / "support" / "sipp"
SIPP = shutil.which("sipp")
needs_sipp = pytest.mark.skipif(SIPP is None and os.environ.get("CI") != "true",
                                reason="sipp not installed (apt-get install sip-tester); .ci/run installs it")
NUMBER = "+31612345678"


def free_udp_port() -> int:
    """A free port below the kernel's ephemeral range, so a socket bound to port 0 (our channel)
    cannot be handed the same port between this probe and sipp's own bind."""
    for _ in range(100):
        port = random.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port in 20000-32000")


class Sipp:
    """One SIPp run (-m 1: a single call), bounded by its own -timeout and ours."""

    def __init__(self, scenario: str, cwd: Path, *args: str, **keys: str) -> None:
        self.port = free_udp_port()
        self.argv = [SIPP or "sipp", *args, "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1",
                     "-p", str(self.port), "-m", "1", "-nostdin", "-timeout", "20s", "-timeout_error",
                     "-trace_err", "-trace_msg"]
        for key, value in keys.items():
            self.argv += ["-key", key, value]
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> "Sipp":
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=self.cwd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        return self

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode or 0

    def log(self, kind: str) -> str:
        return "".join(p.read_text(errors="replace") for p in self.cwd.glob(f"*_{kind}.log"))


class Peer:
    def __init__(self) -> None:
        self.inbound: asyncio.Queue[InboundMessage] = asyncio.Queue()
        self.handler_delay = 0.0
        self.calls = 0

    async def on_inbound(self, message: InboundMessage) -> None:
        self.calls += 1
        await asyncio.sleep(self.handler_delay)
        await self.inbound.put(message)

    async def on_delivery(self, channel: str, ref: str, ok: bool) -> None:
        raise AssertionError("SIP MESSAGE confirms delivery in the send result, not by report")


@pytest.fixture
async def make_channel() -> AsyncIterator:  # type: ignore[type-arg]
    made: list[SipMessageChannel] = []

    async def make(gateway_port: int, password: str | None = "s3cret", **overrides: object):  # type: ignore[no-untyped-def]
        settings = SipMessageSettings(**{
            "gateway_host": "127.0.0.1", "gateway_port": gateway_port, "bind_host": "127.0.0.1", "bind_port": 0,
            "username": "gw", "domain": "sms.example", "timer_f_s": 8.0, **overrides})
        peer = Peer()
        channel = SipMessageChannel(settings, password=password)
        await channel.start(peer.on_inbound, peer.on_delivery)
        made.append(channel)
        return channel, peer

    yield make
    for channel in made:
        await channel.stop()


def outgoing(body: str = "Your table is booked for 19:30. Grüße!", to: str = NUMBER) -> OutgoingMessage:
    return OutgoingMessage(id=1, channel="sip", to=to, body=body)


@needs_sipp
@pytest.mark.parametrize("qop", ['qop="auth", ', ""], ids=["qop-auth", "no-qop"])
async def test_401_challenge_then_accepted(make_channel, tmp_path: Path, qop: str) -> None:  # type: ignore[no-untyped-def]
    sipp = await Sipp("uas_401.xml", tmp_path, user="gw", password="s3cret", qop=qop).start()
    channel, _ = await make_channel(sipp.port)
    result = await channel.send(outgoing())
    assert await sipp.wait() == 0, sipp.log("errors")  # SIPp's verifyauth accepted our digest
    assert result.delivered and result.provider_ref and result.provider_ref.endswith("@sms.example")
    messages = sipp.log("messages")
    assert messages.count(f"Call-ID: {result.provider_ref}") >= 4  # both requests and both answers
    branches = re.findall(r"^Via: SIP/2.0/UDP [^;]+;branch=(z9hG4bK\w+)", messages, re.M)
    assert len(set(branches)) == 2  # a new transaction for the authenticated retry
    assert "Grüße".encode().decode() in messages


@needs_sipp
async def test_401_after_407_is_answered_with_both_credentials(make_channel, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sipp = await Sipp("uas_407_401.xml", tmp_path, user="gw", password="s3cret").start()
    channel, _ = await make_channel(sipp.port)
    result = await channel.send(outgoing())
    assert await sipp.wait() == 0, sipp.log("errors")  # the 401's digest verified, the 407's still sent
    assert result.delivered


@needs_sipp
async def test_401_with_wrong_password_is_permanent(make_channel, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sipp = await Sipp("uas_401.xml", tmp_path, user="gw", password="s3cret", qop='qop="auth", ').start()
    channel, _ = await make_channel(sipp.port, password="wrong")
    with pytest.raises(PermanentError, match="403"):
        await channel.send(outgoing())
    await sipp.wait()


@needs_sipp
@pytest.mark.parametrize("qop", ['qop="auth", ', ""], ids=["qop-auth", "no-qop"])
async def test_407_proxy_challenge_then_accepted(make_channel, tmp_path: Path, qop: str) -> None:  # type: ignore[no-untyped-def]
    sipp = await Sipp("uas_407.xml", tmp_path, qop=qop).start()
    channel, _ = await make_channel(sipp.port)
    result = await channel.send(outgoing())
    assert await sipp.wait() == 0, sipp.log("errors")
    assert result.delivered
    # SIPp cannot verify Proxy-Authorization: recompute the digest here from what it received.
    header = re.search(r"^Proxy-Authorization: (Digest .*)$", sipp.log("messages"), re.M)
    assert header, "no Proxy-Authorization in the retry"
    p = parse_challenge(header.group(1))
    assert p and p["username"] == "gw" and p["realm"] == "sms.example" and p["opaque"] == "0paque"
    assert p["uri"] == f"sip:{NUMBER}@sms.example"
    ha1 = hashlib.md5(b"gw:sms.example:s3cret").hexdigest()
    ha2 = hashlib.md5(f"MESSAGE:{p['uri']}".encode()).hexdigest()
    if qop:
        assert p["qop"] == "auth" and p["nc"] == "00000001" and p["cnonce"]
        expected = hashlib.md5(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:auth:{ha2}".encode()).hexdigest()
    else:
        assert "qop" not in p and "cnonce" not in p
        expected = hashlib.md5(f"{ha1}:{p['nonce']}:{ha2}".encode()).hexdigest()
    assert p["response"] == expected


@needs_sipp
async def test_challenge_without_password_is_permanent(make_channel, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sipp = await Sipp("uas_401.xml", tmp_path, user="gw", password="s3cret", qop="").start()
    channel, _ = await make_channel(sipp.port, password=None)
    with pytest.raises(PermanentError, match="demands authentication"):
        await channel.send(outgoing())
    with pytest.raises(asyncio.TimeoutError):  # SIPp still waits for the authenticated retry
        await sipp.wait(timeout=0.5)


@needs_sipp
async def test_inbound_message_from_sipp_is_answered_once(make_channel, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    channel, peer = await make_channel(free_udp_port(), inbound_from=["127.0.0.1"])
    peer.handler_delay = 1.2  # SIPp retransmits meanwhile (500 ms): absorbed, one 200 at the end
    body = "Can I book for 4? Grüße 😀"
    sipp = await Sipp("uac_message.xml", tmp_path, f"127.0.0.1:{channel.local_port}", "-s", "switchboard",
                      sender=NUMBER, body=body).start()
    message = await asyncio.wait_for(peer.inbound.get(), 15)
    assert await sipp.wait() == 0, sipp.log("errors")
    assert (message.channel, message.sender) == ("sip", NUMBER)
    assert message.body == body and message.provider_ref and message.provider_ref.endswith(";1 MESSAGE")
    assert peer.calls == 1
    assert sipp.log("messages").count("MESSAGE sip:switchboard@") >= 2  # it did retransmit


@needs_sipp
@pytest.mark.parametrize("inbound_from", [["192.0.2.1"], []], ids=["other-peer", "none-configured"])
async def test_inbound_from_untrusted_source_is_refused(make_channel, tmp_path: Path, inbound_from) -> None:  # type: ignore[no-untyped-def]
    # The gateway itself is on 127.0.0.1 too: being the gateway does not make a source trusted.
    gateway = free_udp_port()
    channel, peer = await make_channel(gateway, inbound_from=inbound_from)
    sipp = await Sipp("uac_message.xml", tmp_path, f"127.0.0.1:{channel.local_port}", "-s", "switchboard",
                      sender=NUMBER, body="spoofed").start()
    assert await sipp.wait() != 0  # it wanted 200
    assert "SIP/2.0 403 Forbidden" in sipp.log("messages")
    assert peer.calls == 0


@needs_sipp
@pytest.mark.parametrize(("password", "accepted"), [("peer-pass", True), ("wrong", False)])
async def test_inbound_digest_auth(make_channel, tmp_path: Path, monkeypatch, password: str, accepted: bool) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TEST_SIP_INBOUND_PASSWORD", "peer-pass")
    channel, peer = await make_channel(free_udp_port(), inbound_from=["127.0.0.1"], inbound_username="gateway",
                                       inbound_password_env="TEST_SIP_INBOUND_PASSWORD")
    sipp = await Sipp("uac_message_auth.xml", tmp_path, f"127.0.0.1:{channel.local_port}", "-s", "switchboard",
                      "-au", "gateway", "-ap", password, sender=NUMBER, body="authenticated").start()
    code = await sipp.wait()
    messages = sipp.log("messages")
    assert 'WWW-Authenticate: Digest realm="sms.example"' in messages  # the first request was challenged
    if accepted:
        assert code == 0, sipp.log("errors")
        message = await asyncio.wait_for(peer.inbound.get(), 5)
        assert message.body == "authenticated" and message.provider_ref.endswith(";2 MESSAGE")
    else:
        assert code != 0 and messages.count("SIP/2.0 401 Unauthorized") >= 2  # the retry was refused too
    assert peer.calls == (1 if accepted else 0)


async def test_binds_to_loopback_by_default_and_says_so_for_a_remote_gateway() -> None:
    settings = SipMessageSettings(gateway_host="192.0.2.1", bind_port=0)
    assert settings.bind_host == "127.0.0.1" and settings.inbound_from == []
    with pytest.raises(RuntimeError, match="bind_host 127.0.0.1 cannot reach gateway_host 192.0.2.1"):
        await SipMessageChannel(settings).start(Peer().on_inbound, Peer().on_delivery)


async def test_retransmits_until_timer_f_then_temporary(make_channel) -> None:  # type: ignore[no-untyped-def]
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a gateway that never answers
    silent.bind(("127.0.0.1", 0))
    silent.setblocking(False)
    try:
        channel, _ = await make_channel(silent.getsockname()[1], timer_t1_s=0.05, timer_t2_s=0.2, timer_f_s=1.0)
        attempts = []
        for _ in range(2):  # the outbox's next attempt of the same row: the same idempotency key
            with pytest.raises(TemporaryError, match="no final response"):
                await channel.send(dataclasses.replace(outgoing(), idempotency_key="row-7"))
            copies = []
            while True:
                try:
                    copies.append(silent.recv(65535))
                except BlockingIOError:
                    break
            attempts.append(copies)
        with pytest.raises(TemporaryError):
            await channel.send(dataclasses.replace(outgoing(), idempotency_key="row-8"))
        other = silent.recv(65535)
    finally:
        silent.close()
    copies = attempts[0]
    assert len(copies) >= 4 and len(set(copies)) == 1  # the same request (branch, CSeq) each time
    assert b"CSeq: 1 MESSAGE" in copies[0]
    call_ids = [re.search(rb"^Call-ID: (.+)$", a[0], re.M).group(1) for a in (*attempts, [other])]  # type: ignore[union-attr]
    assert call_ids[0] == call_ids[1] != call_ids[2]  # a re-send is recognisably the same message


def test_digest_matches_rfc2617_example() -> None:
    """RFC 2617 §3.5 (qop=auth): the published response for Mufasa / "Circle Of Life"."""
    challenge = parse_challenge('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                                'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    assert challenge
    header = digest_authorization(challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", cnonce="0a4f113b")
    assert 'response="6629fae49393a05397450978507c4ef1"' in header
    assert 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in header and "nc=00000001" in header


def test_uri_user() -> None:
    assert uri_user('"Ann" <sip:+31612345678@gw.example;user=phone>;tag=9') == "+31612345678"
    assert uri_user("<tel:%2B3161234>;tag=1") == "+3161234"


async def test_ami_channel_hands_message_to_the_injected_sender() -> None:
    calls: list[tuple[str, str, str]] = []
    failure: list[Exception] = []

    async def send_via_ami(to: str, from_: str, body: str) -> None:
        if failure:
            raise failure[0]
        calls.append((to, from_, body))

    channel = AmiMessageChannel(AmiMessageSettings(destination="pjsip:{to}", sender='"Desk" <sip:desk@pbx>'),
                                send_via_ami)
    result = await channel.send(outgoing("two\nlines", to="6001"))
    assert calls == [("pjsip:6001", '"Desk" <sip:desk@pbx>', "two\nlines")]
    assert not result.delivered and result.provider_ref is None  # AMI only says "queued"
    with pytest.raises(PermanentError, match="1300"):
        await channel.send(outgoing("x" * 1301, to="6001"))
    failure.append(ConnectionError("AMI not connected"))
    with pytest.raises(TemporaryError, match="AMI not connected"):
        await channel.send(outgoing(to="6001"))
    failure[0] = PermanentError("no such endpoint")
    with pytest.raises(PermanentError, match="no such endpoint"):
        await channel.send(outgoing(to="6001"))
