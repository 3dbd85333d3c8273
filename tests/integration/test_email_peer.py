"""A real SMTP peer for the email tests: aiosmtpd in this process on 127.0.0.1, plus a self-signed
certificate made with the openssl CLI. Imported by the other email/outbox test files; the test here
checks the peer itself."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

USER, PASSWORD = "switchboard", "s3cret-pass"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """(cert, key) for 127.0.0.1/localhost, valid one day."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30)
    return cert, key


class SmtpPeer:
    """Receives mail; `mode` is "plain", "starttls" (required) or "tls" (implicit); `auth` requires a login."""

    def __init__(self, mode: str = "plain", *, cert: tuple[Path, Path] | None = None, auth: bool = False) -> None:
        self.mode, self.auth = mode, auth
        self.messages: list[EmailMessage] = []
        self.logins: list[str] = []
        # Runs after a mail is stored and before the 250 reply: "received but not yet confirmed".
        self.on_message: Callable[[EmailMessage], Awaitable[None]] | None = None
        self.arrived = asyncio.Condition()
        self._ctx: ssl.SSLContext | None = None
        if mode != "plain":
            assert cert is not None
            self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        async with self.arrived:
            self.messages.append(BytesParser(policy=policy.default).parsebytes(envelope.content))  # type: ignore[arg-type]
            self.arrived.notify_all()
        if self.on_message is not None:
            await self.on_message(self.messages[-1])
        return "250 OK"

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      data: LoginPassword) -> AuthResult:
        ok = data.login.decode() == USER and data.password.decode() == PASSWORD
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535 itself

    def _protocol(self) -> SMTP:
        return SMTP(self, hostname="peer.test",
                    tls_context=self._ctx if self.mode == "starttls" else None,
                    require_starttls=self.mode == "starttls",
                    authenticator=self._authenticate if self.auth else None, auth_required=self.auth,
                    # implicit TLS: the connection is already encrypted, aiosmtpd cannot tell
                    auth_require_tls=self.mode == "starttls")

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol, "127.0.0.1", self.port, ssl=self._ctx if self.mode == "tls" else None)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[EmailMessage]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.messages) >= count), timeout)
        return self.messages


async def test_peer_receives_plain_mail() -> None:
    import aiosmtplib

    peer = SmtpPeer()
    await peer.start()
    try:
        await aiosmtplib.send("Subject: hi\r\n\r\nbody\r\n", sender="a@x.test", recipients=["b@y.test"],
                              hostname="127.0.0.1", port=peer.port, start_tls=False, timeout=10)
        [mail] = await peer.wait_for(1)
        assert mail["Subject"] == "hi"
    finally:
        await peer.stop()
