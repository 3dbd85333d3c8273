"""SMS as SIP MESSAGE (RFC 3428): through Asterisk's AMI MessageSend, or directly over UDP to a SIP
SMS gateway with digest authentication, RFC 3261 retransmission timers, and inbound MESSAGE.

The direct channel is one UDP socket (asyncio DatagramProtocol) for both directions. It is a
non-INVITE client transaction per attempt: the request is retransmitted at T1, doubling up to T2
(after a provisional response: every T2) until a final response or timer F. Each 401/407 challenge
is answered once, in a new transaction: same Call-ID and From tag, CSeq + 1, a new branch; a 401 after
a 407 (a proxy, then the gateway behind it) is answered too, with both credentials. Call-ID and From
tag derive from the outbox idempotency key, so a re-send after a crash or a timeout is recognisably
the same message to the receiver.

Inbound MESSAGE is taken only from the source addresses in `inbound_from` (none by default), and the
socket binds to loopback unless told otherwise. With `inbound_username` / `inbound_password_env` a
peer must also answer our 401 digest challenge (for peers that support it; source address alone is
spoofable over UDP). Nonces are stateless: a timestamp signed with a per-process key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from channels.base import (
    DeliveryHandler,
    InboundHandler,
    InboundMessage,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TemporaryError,
)
from channels.settings import AmiMessageSettings, SipMessageSettings
from models.privacy import masked

log = logging.getLogger(__name__)


_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "l": "content-length",
            "c": "content-type", "m": "contact", "k": "supported"}
_TEMPORARY_4XX = {408, 480, 486, 491}  # timeout, temporarily unavailable, busy, request pending
_PERMANENT_5XX = {501, 505, 513}  # not implemented, version not supported, message too large
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_PARAM = re.compile(r'([\w-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]+)')
_URI_USER = re.compile(r"(?:sips?|tel):([^@;>?]+)")


# -- (a) through Asterisk: AMI MessageSend -----------------------------------------------------

SendViaAmi = Callable[[str, str, str], Awaitable[None]]
"""async send_via_ami(to, from_, body): one AMI `MessageSend` with Destination=to, From=from_, the body
as given (the helper base64-encodes it if it has newlines). Returns when Asterisk acknowledged
the action (queued, not delivered). It may raise TemporaryError / PermanentError itself; any
other exception (not connected, timeout, `Response: Error`) is taken as temporary."""

class AmiMessageChannel:
    """Outbound only: Asterisk routes inbound MESSAGE through its dialplan, not through this channel."""

    def __init__(self, settings: AmiMessageSettings, send_via_ami: SendViaAmi) -> None:
        self.settings, self.name = settings, settings.name
        self._send_via_ami = send_via_ami

    async def start(self, on_inbound: InboundHandler, on_delivery: DeliveryHandler) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, message: OutgoingMessage) -> SendResult:
        to = message.to.strip()
        if not to or any(c in to for c in "\r\n,"):
            raise PermanentError(f"not a SIP destination: {masked(message.to)}")
        size = len(message.body.encode())
        if size > self.settings.max_body_bytes:
            raise PermanentError(f"text is {size} bytes; AMI MessageSend takes at most {self.settings.max_body_bytes}")
        destination = self.settings.destination.format(to=to)
        try:
            await self._send_via_ami(destination, self.settings.sender, message.body)
        except (TemporaryError, PermanentError):
            raise
        except Exception as exc:
            raise TemporaryError(f"AMI MessageSend to {masked(destination)} failed: {type(exc).__name__}: {exc}") from exc
        log.info("sip message queued via=ami channel=%s id=%d to=%s bytes=%d", self.name, message.id,
                 masked(destination), size)
        return SendResult()


# -- (b) direct: RFC 3428 MESSAGE over UDP -----------------------------------------------------

@dataclass
class SipPacket:
    start: str
    headers: list[tuple[str, str]]  # (lower-case full name, value), in order
    body: bytes

    @classmethod
    def parse(cls, data: bytes) -> "SipPacket":
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:  # folded continuation
                headers[-1] = (headers[-1][0], headers[-1][1] + " " + line.strip())
            elif ":" in line:
                name, value = line.split(":", 1)
                name = name.strip().lower()
                headers.append((_COMPACT.get(name, name), value.strip()))
        packet = cls(lines[0], headers, body)
        length = packet.get("content-length")
        if length and length.isdigit():
            packet.body = body[: int(length)]
        return packet

    def get(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    @property
    def status(self) -> int | None:
        if self.start.startswith("SIP/2.0 "):
            code = self.start.split(" ", 2)[1]
            return int(code) if code.isdigit() else None
        return None

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0]

    @property
    def branch(self) -> str | None:
        via = self.get("via") or ""
        match = re.search(r";\s*branch=([^;,\s]+)", via.split(",")[0])
        return match.group(1) if match else None


def parse_challenge(header: str) -> dict[str, str] | None:
    """Params of a `Digest ...` challenge (lower-case names, unquoted), or None if not Digest."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    return {k.lower(): v[1:-1].replace('\\"', '"') if v.startswith('"') else v for k, v in _PARAM.findall(rest)}


def digest_authorization(challenge: dict[str, str], method: str, uri: str, username: str, password: str,
                         *, cnonce: str | None = None, nc: int = 1) -> str:
    """RFC 2617/7616 digest credentials for `challenge` (qop=auth if offered, else the RFC 2069 form)."""
    algorithm = challenge.get("algorithm", "MD5")
    realm, nonce = challenge.get("realm", ""), challenge.get("nonce", "")
    fields = [f'username="{username}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
    qops = [q.strip() for q in challenge.get("qop", "").split(",") if q.strip()]
    if "auth" in qops:
        cnonce = cnonce or secrets.token_hex(8)
        count = f"{nc:08x}"
        response = digest_response(challenge, method, uri, username, password, (count, cnonce))
        fields += [f'response="{response}"', f"algorithm={algorithm}", f'cnonce="{cnonce}"', "qop=auth", f"nc={count}"]
    else:
        response = digest_response(challenge, method, uri, username, password, None)
        fields += [f'response="{response}"', f"algorithm={algorithm}"]
    if "opaque" in challenge:
        fields.append(f'opaque="{challenge["opaque"]}"')
    return "Digest " + ", ".join(fields)


def digest_response(params: dict[str, str], method: str, uri: str, username: str, password: str,
                    qop_auth: tuple[str, str] | None) -> str:
    """The digest `response` value; `qop_auth` is (nc, cnonce) for qop=auth, None for RFC 2069."""
    digest = _HASHES[params.get("algorithm", "MD5").upper()]

    def h(text: str) -> str:
        return digest(text.encode()).hexdigest()

    nonce = params.get("nonce", "")
    ha1, ha2 = h(f"{username}:{params.get('realm', '')}:{password}"), h(f"{method}:{uri}")
    if qop_auth is None:
        return h(f"{ha1}:{nonce}:{ha2}")
    return h(f"{ha1}:{nonce}:{qop_auth[0]}:{qop_auth[1]}:auth:{ha2}")


def _usable(challenge: dict[str, str] | None) -> bool:
    if challenge is None or challenge.get("algorithm", "MD5").upper() not in _HASHES:
        return False
    qops = [q.strip() for q in challenge.get("qop", "").split(",") if q.strip()]
    return not qops or "auth" in qops


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def uri_user(header: str) -> str:
    """The user part of the URI in a From/To header value: `"Ann" <sip:+316@gw>;tag=1` -> `+316`."""
    match = _URI_USER.search(header)
    return unquote(match.group(1)) if match else header.strip()


@dataclass
class _ClientTxn:
    future: asyncio.Future[SipPacket]
    proceeding: bool = False


@dataclass
class _ServerTxn:
    response: bytes | None = None  # None while the inbound handler runs: retransmissions are absorbed
    expiry: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, channel: "SipMessageChannel") -> None:
        self.channel = channel

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip():
            return  # CRLF keep-alive
        try:
            packet = SipPacket.parse(data)
        except Exception as exc:  # a stray datagram must not kill the socket
            log.warning("sip unparsable datagram from=%s:%d error=%s", addr[0], addr[1], exc)
            return
        self.channel._received(packet, addr)


class SipMessageChannel:
    """Direct SIP MESSAGE. `to`: a number or user (sent to sip:<to>@<domain>) or a full sip: URI.
    provider_ref is the Call-ID; a 200/202 counts as delivered. Inbound MESSAGE -> 200 OK -> on_inbound."""

    def __init__(self, settings: SipMessageSettings, password: str | None = None) -> None:
        """`password`: the digest password, normally read from the `password_env` variable."""
        self.settings, self.name = settings, settings.name
        self._password = password
        self._inbound_password: str | None = None
        self._nonce_key = secrets.token_bytes(16)
        self._transport: asyncio.DatagramTransport | None = None
        self._gateway: tuple[str, int] | None = None
        self._trusted: set[str] = set()
        self._host = ""
        self._client: dict[str, _ClientTxn] = {}
        self._server: dict[tuple[str, str, str], _ServerTxn] = {}
        self._on_inbound: InboundHandler | None = None

    @property
    def local_port(self) -> int:
        assert self._transport, "not started"
        return self._transport.get_extra_info("sockname")[1]

    async def start(self, on_inbound: InboundHandler, on_delivery: DeliveryHandler) -> None:
        s = self.settings
        if self._password is None and s.password_env:
            self._password = os.environ.get(s.password_env)
            if not self._password:
                raise RuntimeError(f"sip: environment variable {s.password_env} (password_env) is not set")
        if s.inbound_password_env:
            self._inbound_password = os.environ.get(s.inbound_password_env)
            if not self._inbound_password:
                raise RuntimeError(f"sip: environment variable {s.inbound_password_env} (inbound_password_env) "
                                   "is not set")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(s.gateway_host, s.gateway_port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
        self._gateway = infos[0][4][:2]
        if _loopback(s.bind_host) and not _loopback(self._gateway[0]):
            raise RuntimeError(f"sip: bind_host {s.bind_host} cannot reach gateway_host {s.gateway_host} "
                               f"({self._gateway[0]}); set bind_host to this machine's address on that network")
        self._trusted = set(s.inbound_from)
        self._host = s.advertised_host or self._route_address()
        self._on_inbound = on_inbound
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(s.bind_host, s.bind_port))
        log.info("sip message ready channel=%s listen=%s:%d gateway=%s:%d inbound_from=%s",
                 self.name, s.bind_host, self.local_port, *self._gateway, ",".join(sorted(self._trusted)) or "-")

    def _route_address(self) -> str:
        if self.settings.bind_host not in ("0.0.0.0", ""):
            return self.settings.bind_host
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # connect() sends nothing
            probe.connect(self._gateway or ("127.0.0.1", 9))
            return probe.getsockname()[0]

    async def stop(self) -> None:
        for txn in self._server.values():
            if txn.expiry:
                txn.expiry.cancel()
            if txn.task:
                txn.task.cancel()
        self._server.clear()
        if self._transport:
            self._transport.close()
            self._transport = None

    # -- outbound ------------------------------------------------------------------------------
    def _uri(self, to: str) -> str:
        to = to.strip()
        if to.startswith(("sip:", "sips:")):
            return to
        if not re.fullmatch(r"[\w+.\-*#]+", to):
            raise PermanentError(f"not a SIP user or number: {masked(to)}")
        return f"sip:{to}@{self.settings.domain or self.settings.gateway_host}"

    def _request(self, uri: str, call_id: str, tag: str, cseq: int, branch: str, body: bytes,
                 auth: dict[str, str]) -> bytes:
        s = self.settings
        display = f'"{s.from_display}" ' if s.from_display else ""
        lines = [
            f"MESSAGE {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self._host}:{self.local_port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: {display}<sip:{s.from_user}@{s.domain or s.gateway_host}>;tag={tag}",
            f"To: <{uri}>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} MESSAGE",
        ]
        lines += [f"{name}: {value}" for name, value in auth.items()]
        lines += ["User-Agent: Switchboard", "Content-Type: text/plain;charset=UTF-8",
                  f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def send(self, message: OutgoingMessage) -> SendResult:
        if self._transport is None:
            raise TemporaryError("SIP channel not started")
        s = self.settings
        uri, body = self._uri(message.to), message.body.encode()
        seed = hashlib.sha256(f"sip-message|{message.idempotency_key or message.id}".encode()).hexdigest()
        call_id, tag, cseq = f"{seed[:32]}@{s.domain or s.gateway_host}", seed[32:44], 1
        auth: dict[str, str] = {}  # header name -> credentials, kept for every later request
        for _ in range(4):  # the first try, a proxy's and the gateway's challenge, one stale nonce
            branch = "z9hG4bK" + secrets.token_hex(10)
            request = self._request(uri, call_id, tag, cseq, branch, body, auth)
            if len(request) > s.max_request_bytes:
                raise PermanentError(f"MESSAGE would be {len(request)} bytes; over UDP at most {s.max_request_bytes}")
            response = await self._transact(request, branch)
            status = response.status or 0
            if status not in (401, 407):
                break
            challenge = self._challenge(response, status)
            name = "Authorization" if status == 401 else "Proxy-Authorization"
            if name in auth and challenge.get("stale", "").lower() != "true":
                raise PermanentError(f"gateway rejected our credentials ({status} after authenticating)")
            assert self._password is not None
            auth[name] = digest_authorization(challenge, "MESSAGE", uri, s.username or s.from_user, self._password)
            cseq += 1
        else:
            raise PermanentError(f"gateway keeps challenging ({status})")
        reason = response.start.split(" ", 2)[-1]
        if 200 <= status < 300:
            log.info("sip message sent channel=%s id=%d status=%d call_id=%s", self.name, message.id, status, call_id)
            return SendResult(provider_ref=call_id, delivered=True)
        error = f"gateway answered {status} {reason}"
        if (400 <= status < 500 and status not in _TEMPORARY_4XX) or status >= 600 or status in _PERMANENT_5XX \
                or 300 <= status < 400:
            raise PermanentError(error)
        raise TemporaryError(error)

    def _challenge(self, response: SipPacket, status: int) -> dict[str, str]:
        if self._password is None:
            raise PermanentError(f"gateway demands authentication ({status}); set password_env")
        header = "www-authenticate" if status == 401 else "proxy-authenticate"
        for value in response.all(header):
            challenge = parse_challenge(value)
            if challenge is not None and _usable(challenge):
                return challenge
        raise PermanentError(f"no usable Digest challenge in {status} (want MD5/SHA-256 with qop auth or none)")

    async def _transact(self, request: bytes, branch: str) -> SipPacket:
        """A non-INVITE client transaction (RFC 3261 §17.1.2): retransmit until final or timer F."""
        assert self._transport and self._gateway
        loop = asyncio.get_running_loop()
        s = self.settings
        txn = self._client[branch] = _ClientTxn(loop.create_future())
        deadline = loop.time() + s.timer_f_s
        interval = s.timer_t1_s
        try:
            self._transport.sendto(request, self._gateway)
            while True:
                wait = min(s.timer_t2_s if txn.proceeding else interval, deadline - loop.time())
                try:
                    return await asyncio.wait_for(asyncio.shield(txn.future), max(wait, 0))
                except asyncio.TimeoutError:
                    if loop.time() >= deadline:
                        raise TemporaryError(f"no final response from {s.gateway_host}:{s.gateway_port} "
                                             f"within {s.timer_f_s:g} s") from None
                    interval = min(interval * 2, s.timer_t2_s)
                    self._transport.sendto(request, self._gateway)
        finally:
            del self._client[branch]
            txn.future.cancel()

    # -- inbound -------------------------------------------------------------------------------
    def _received(self, packet: SipPacket, addr: tuple[str, int]) -> None:
        if packet.status is not None:
            txn = self._client.get(packet.branch or "")
            if txn is None or txn.future.done():
                return  # a late or stray response
            if packet.status < 200:
                txn.proceeding = True
            else:
                txn.future.set_result(packet)
            return
        if packet.method == "ACK":
            return
        key = (packet.get("call-id") or "", packet.get("cseq") or "", packet.branch or "")
        if key in self._server:  # a retransmission: resend the answer, or absorb while still working
            answer = self._server[key].response
            if answer and self._transport:
                self._transport.sendto(answer, addr)
            return
        if addr[0] not in self._trusted:
            log.warning("sip request refused from=%s:%d method=%s (not in inbound_from)", addr[0], addr[1], packet.method)
            self._respond(packet, addr, key, 403, "Forbidden")
        elif packet.method == "OPTIONS":
            self._respond(packet, addr, key, 200, "OK", ["Allow: MESSAGE, OPTIONS"])
        elif packet.method != "MESSAGE":
            self._respond(packet, addr, key, 405, "Method Not Allowed", ["Allow: MESSAGE, OPTIONS"])
        elif not (packet.get("content-type") or "text/plain").lower().startswith("text/"):
            self._respond(packet, addr, key, 415, "Unsupported Media Type", ["Accept: text/plain"])
        elif self._inbound_password is not None and not self._authorized(packet):
            realm = self.settings.domain or self.settings.gateway_host
            self._respond(packet, addr, key, 401, "Unauthorized", [
                f'WWW-Authenticate: Digest realm="{realm}", nonce="{self._nonce()}", qop="auth", algorithm=MD5'])
        else:
            txn = self._server[key] = _ServerTxn()
            txn.task = asyncio.ensure_future(self._deliver(packet, addr, key))

    def _nonce(self, at: int | None = None) -> str:
        stamp = str(int(time.time()) if at is None else at)
        return f"{stamp}.{hmac.new(self._nonce_key, stamp.encode(), hashlib.sha256).hexdigest()[:24]}"

    def _authorized(self, packet: SipPacket) -> bool:
        """Digest credentials of ours, on a nonce we gave out in the last 5 minutes. The digest-uri is
        not compared with the Request-URI: some peers (SIPp among them) put a host-only URI there."""
        creds = parse_challenge(packet.get("authorization") or "")
        s = self.settings
        if creds is None or creds.get("username") != s.inbound_username or \
                creds.get("realm") != (s.domain or s.gateway_host) or not _usable(creds):
            return False
        nonce, uri = creds.get("nonce", ""), creds.get("uri", "")
        stamp = nonce.split(".", 1)[0]
        if not stamp.isdigit() or not hmac.compare_digest(nonce, self._nonce(int(stamp))) \
                or time.time() - int(stamp) > 300:
            return False
        qop_auth = (creds.get("nc", ""), creds.get("cnonce", "")) if creds.get("qop") == "auth" else None
        assert s.inbound_username is not None and self._inbound_password is not None
        expected = digest_response(creds, "MESSAGE", uri, s.inbound_username, self._inbound_password, qop_auth)
        return hmac.compare_digest(expected, creds.get("response", ""))

    async def _deliver(self, packet: SipPacket, addr: tuple[str, int], key: tuple[str, str, str]) -> None:
        sender = uri_user(packet.get("from") or "")
        body = packet.body.decode("utf-8", "replace").strip()  # gateways often end the body with CRLF
        log.info("sip message received channel=%s from=%s src=%s chars=%d", self.name, masked(sender), addr[0],
                 len(body))
        try:
            assert self._on_inbound
            # Call-ID and CSeq: what a sender keeps when it re-sends the same MESSAGE.
            await self._on_inbound(InboundMessage(channel=self.name, sender=sender, body=body, at=time.time(),
                                                  provider_ref=f"{packet.get('call-id')};{packet.get('cseq')}"))
        except Exception as exc:  # the gateway keeps the message and may retry
            log.error("sip inbound handler failed channel=%s from=%s error=%s", self.name, masked(sender), exc)
            self._respond(packet, addr, key, 500, "Server Internal Error")
        else:
            self._respond(packet, addr, key, 200, "OK")

    def _respond(self, request: SipPacket, addr: tuple[str, int], key: tuple[str, str, str], status: int,
                 reason: str, extra: list[str] | None = None) -> None:
        to = request.get("to") or ""
        if ";tag=" not in to.replace(" ", ""):
            to += f";tag={secrets.token_hex(6)}"
        lines = [f"SIP/2.0 {status} {reason}"] + [f"Via: {v}" for v in request.all("via")]
        lines += [f"From: {request.get('from') or ''}", f"To: {to}", f"Call-ID: {request.get('call-id') or ''}",
                  f"CSeq: {request.get('cseq') or ''}", *(extra or []), "Server: Switchboard", "Content-Length: 0"]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode()
        txn = self._server.setdefault(key, _ServerTxn())
        txn.response = data
        # Timer J (64 * T1 over UDP): answer retransmissions of this request, then forget it.
        txn.expiry = asyncio.get_running_loop().call_later(64 * self.settings.timer_t1_s, self._server.pop, key, None)
        if self._transport:
            self._transport.sendto(data, addr)
