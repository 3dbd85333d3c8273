"""Email: send through an SMTP relay (aiosmtplib), receive with an optional SMTP listener (aiosmtpd).

The Message-ID is derived from the outbox idempotency key, so a message re-sent after a crash is
recognisably the same message to the recipient's mail system.

Loop protection (RFC 3834): the listener accepts mail only for the configured recipients, and mail
that is itself automatic (Auto-Submitted other than "no", Precedence bulk/list/junk, a mailing list,
a null envelope sender or empty Return-Path, or from one of our own addresses) is accepted and never
handed on to be answered. Everything we send says `Auto-Submitted: auto-generated`, so well-behaved
responders do not answer us either.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
import re
import socket
import ssl
import time
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formataddr, formatdate, parseaddr
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from channels.base import (
    DeliveryHandler, InboundHandler, InboundMessage, OutgoingMessage, PermanentError, SendResult, TemporaryError,
)
from channels.settings import EmailSettings, SmtpListenerSettings
from models.privacy import masked

log = logging.getLogger(__name__)

_SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Where a reply's own text ends and the quoted original begins (the common clients' markers).
_QUOTE_START = re.compile(r"^(On .{5,200} wrote:|-{2,} ?Original Message ?-{2,}|_{10,})\s*$", re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")

def message_id(idempotency_key: str, domain: str) -> str:
    token = idempotency_key if _SAFE_KEY.match(idempotency_key) else \
        hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return f"<outbox.{token}@{domain}>"


def strip_quoted(text: str) -> str:
    """The new part of a reply: drop '>' lines, and everything from an 'On ... wrote:' marker or a
    signature separator on."""
    kept: list[str] = []
    for line in text.splitlines():
        if _QUOTE_START.match(line.strip()) or line == "-- ":
            break
        if not line.lstrip().startswith(">"):
            kept.append(line)
    return "\n".join(kept).strip()


def automatic(msg: EmailMessage, envelope_from: str | None, own: set[str]) -> str | None:
    """Why `msg` must not get an automatic reply (RFC 3834 §2), or None if it may."""
    auto = str(msg.get("Auto-Submitted") or "").split(";", 1)[0].strip().lower()
    if auto and auto != "no":
        return f"auto-submitted {auto}"
    precedence = str(msg.get("Precedence") or "").strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return f"precedence {precedence}"
    if msg.get("List-Id") is not None:
        return "mailing list"
    return_path = msg.get("Return-Path")
    if envelope_from in ("", "<>") or (return_path is not None and parseaddr(str(return_path))[1] == ""):
        return "null sender"
    senders = {parseaddr(str(msg.get(h) or ""))[1].lower() for h in ("From", "Reply-To", "Sender")}
    if senders & own or (envelope_from or "").lower() in own:
        return "our own address"
    return None


def parse_inbound(raw: bytes | EmailMessage, envelope_from: str | None = None) -> InboundMessage:
    msg = raw if isinstance(raw, EmailMessage) else _parse(raw)
    sender = parseaddr(str(msg.get("Reply-To") or msg.get("From") or ""))[1] or (envelope_from or "")
    part = msg.get_body(preferencelist=("plain", "html"))
    body = ""
    if part is not None:
        body = part.get_content()
        if part.get_content_subtype() == "html":
            body = html.unescape(_TAG.sub("", re.sub(r"(?i)<br\s*/?>|</p>", "\n", body)))
    return InboundMessage(channel="email", sender=sender.lower(), body=strip_quoted(body), at=time.time(),
                          subject=str(msg.get("Subject") or "") or None,
                          provider_ref=str(msg.get("Message-ID") or "") or None)


def _parse(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)  # policy.default
    return msg


class _Receiver:
    """aiosmtpd handler: one accepted mail becomes one InboundMessage."""

    def __init__(self, settings: SmtpListenerSettings, own: set[str], on_inbound: InboundHandler) -> None:
        self.recipients = {r.lower() for r in settings.recipients}
        self.own = own | self.recipients
        self.on_inbound = on_inbound

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.lower() not in self.recipients:
            return "550 5.1.1 no such recipient here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)  # decode_data=False
        msg = _parse(raw)
        reason = automatic(msg, envelope.mail_from, self.own)
        if reason is not None:
            log.info("email inbound not answered reason=%s ref=%s", reason, msg.get("Message-ID"))
            return "250 OK"
        message = parse_inbound(msg, envelope.mail_from)
        if not message.sender or not message.body:
            log.info("email inbound ignored from=%s reason=%s", masked(message.sender),
                     "no sender" if not message.sender else "empty body")
            return "250 OK"
        try:
            await self.on_inbound(message)
        except Exception:
            # The sender's relay keeps the mail and tries again: nothing is lost.
            log.exception("email inbound handler failed from=%s", masked(message.sender))
            return "451 4.3.0 temporary failure, try again later"
        log.info("email inbound from=%s ref=%s", masked(message.sender), message.provider_ref)
        return "250 OK"


class EmailChannel:
    def __init__(self, settings: EmailSettings, name: str = "email") -> None:
        self.name, self.settings = name, settings
        smtp = settings.smtp
        self._domain = smtp.from_address.rsplit("@", 1)[1]
        self._tls_context: ssl.SSLContext | None = None
        if smtp.security != "none":
            self._tls_context = ssl.create_default_context(cafile=str(smtp.ca_file) if smtp.ca_file else None)
            if not smtp.verify_tls:
                self._tls_context.check_hostname = False
                self._tls_context.verify_mode = ssl.CERT_NONE
        self._password: str | None = None
        self._server: asyncio.AbstractServer | None = None
        self._local_hostname: str | None = None  # our EHLO name, looked up once (else once per message)

    @property
    def listener_port(self) -> int | None:
        return self._server.sockets[0].getsockname()[1] if self._server else None

    async def start(self, on_inbound: InboundHandler, on_delivery: DeliveryHandler) -> None:
        # SMTP offers no delivery reports we could read here, so on_delivery goes unused.
        self._password = self.settings.smtp.password()
        self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        listener = self.settings.listener
        if listener.enabled:
            receiver = _Receiver(listener, {self.settings.smtp.from_address.lower()}, on_inbound)
            self._server = await asyncio.get_running_loop().create_server(
                lambda: SMTP(receiver, data_size_limit=listener.max_message_bytes, hostname=self._domain),
                listener.host, listener.port)
            log.info("email listener host=%s port=%d", listener.host, self.listener_port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def build(self, message: OutgoingMessage) -> EmailMessage:
        smtp = self.settings.smtp
        mail = EmailMessage()
        mail["From"] = formataddr((smtp.from_name, smtp.from_address))
        mail["To"] = message.to
        mail["Subject"] = message.subject or f"Message from {smtp.from_name}"
        mail["Date"] = formatdate(localtime=True)
        mail["Message-ID"] = message_id(message.idempotency_key or str(message.id), self._domain)
        mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: responders must not answer it
        mail.set_content(message.body)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        return mail

    async def send(self, message: OutgoingMessage) -> SendResult:
        smtp = self.settings.smtp
        mail = self.build(message)
        options: dict[str, Any] = {
            "hostname": smtp.host, "port": smtp.port, "timeout": smtp.timeout_s,
            "use_tls": smtp.security == "tls", "start_tls": smtp.security == "starttls",
            "tls_context": self._tls_context,
        }
        if self._local_hostname:
            options["local_hostname"] = self._local_hostname
        if smtp.username:
            options.update(username=smtp.username, password=self._password or smtp.password())
        try:
            await aiosmtplib.send(mail, **options)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise (PermanentError if all(c >= 500 for c in codes) else TemporaryError)(
                f"{smtp.host}:{smtp.port} refused {message.to}: {exc}") from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            # A login problem is the admin's to fix; the message waits for them.
            raise TemporaryError(f"{smtp.host}:{smtp.port} rejected the login for {smtp.username}: {exc.code}")
        except aiosmtplib.SMTPResponseException as exc:
            raise (PermanentError if exc.code >= 500 else TemporaryError)(
                f"{smtp.host}:{smtp.port}: {exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise TemporaryError(f"{smtp.host}:{smtp.port}: {type(exc).__name__}: {exc}") from exc
        return SendResult(provider_ref=str(mail["Message-ID"]))
