"""EmailChannel against a real aiosmtpd peer on loopback: plain, STARTTLS and implicit TLS with a
self-signed certificate made here, AUTH, error mapping, and the inbound SMTP listener."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiosmtplib
import pytest
from test_email_peer import PASSWORD, USER, SmtpPeer, make_certificate

from channels.base import InboundMessage, OutgoingMessage, PermanentError, TemporaryError
from channels.email import EmailChannel, EmailSettings, message_id, parse_inbound, strip_quoted
from channels.templates import NAMES, render


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def channel_for(port: int, **smtp: object) -> EmailChannel:
    return EmailChannel(EmailSettings.model_validate(
        {"smtp": {"host": "127.0.0.1", "port": port, "security": "none", "from_address": "desk@clinic.test",
                  "from_name": "Clinic Desk", "timeout_s": 10, **smtp}}))


async def nothing(*_: object) -> None:
    return None


def outgoing(key: str = "k1", **kw: object) -> OutgoingMessage:
    values: dict = {"id": 1, "channel": "email", "to": "dr.smith@clinic.test", "body": "Please call back.",
                    "subject": "A message", "idempotency_key": key}
    return OutgoingMessage(**{**values, **kw})


async def test_plain_send_is_multipart_with_a_message_id_from_the_key() -> None:
    peer = SmtpPeer()
    await peer.start()
    channel = channel_for(peer.port)
    await channel.start(nothing, nothing)
    try:
        result = await channel.send(outgoing("taken-42", html="<p>Please <b>call</b> back.</p>"))
        [mail] = await peer.wait_for(1)
    finally:
        await channel.stop()
        await peer.stop()
    assert result.provider_ref == "<outbox.taken-42@clinic.test>" == mail["Message-ID"]
    assert mail["To"] == "dr.smith@clinic.test" and mail["Subject"] == "A message"
    assert "Clinic Desk" in mail["From"] and mail["Auto-Submitted"] == "auto-generated"
    assert mail.get_body(("plain",)).get_content().strip() == "Please call back."
    assert "<b>call</b>" in mail.get_body(("html",)).get_content()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # the peer's implicit-TLS mode
@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_tls_with_a_self_signed_certificate_and_auth(mode: str, cert: tuple[Path, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_SMTP_PASSWORD", PASSWORD)
    peer = SmtpPeer(mode, cert=cert, auth=True)
    await peer.start()
    channel = channel_for(peer.port, security=mode, ca_file=str(cert[0]), username=USER,
                          password_env="SB_TEST_SMTP_PASSWORD")
    await channel.start(nothing, nothing)
    try:
        await channel.send(outgoing())
        [mail] = await peer.wait_for(1)
    finally:
        await channel.stop()
        await peer.stop()
    assert peer.logins == [USER]
    assert mail["Message-ID"] == message_id("k1", "clinic.test")


async def test_untrusted_certificate_and_bad_login_are_temporary(cert: tuple[Path, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    peer = SmtpPeer("starttls", cert=cert, auth=True)
    await peer.start()
    try:
        untrusted = channel_for(peer.port, security="starttls")  # system CAs do not know our certificate
        with pytest.raises(TemporaryError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusted.send(outgoing())
        monkeypatch.setenv("SB_TEST_SMTP_PASSWORD", "wrong")
        bad_login = channel_for(peer.port, security="starttls", ca_file=str(cert[0]), username=USER,
                                password_env="SB_TEST_SMTP_PASSWORD")
        with pytest.raises(TemporaryError, match="rejected the login"):
            await bad_login.send(outgoing())
    finally:
        await peer.stop()
    assert peer.messages == []


async def test_missing_password_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SB_TEST_NOT_SET", raising=False)
    channel = channel_for(25, username=USER, password_env="SB_TEST_NOT_SET")
    with pytest.raises(ValueError, match="SB_TEST_NOT_SET"):
        await channel.start(nothing, nothing)


async def test_no_server_is_temporary_and_refused_recipient_is_permanent() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(TemporaryError):
        await channel_for(free).send(outgoing())
    # Our own listener, accepting mail for one address only, is the peer that says 550.
    receiver = EmailChannel(EmailSettings.model_validate({
        "smtp": {"from_address": "x@clinic.test"},
        "listener": {"enabled": True, "port": 0, "recipients": ["desk@clinic.test"]}}))
    await receiver.start(nothing, nothing)
    try:
        with pytest.raises(PermanentError, match="refused"):
            await channel_for(receiver.listener_port or 0).send(outgoing(to="nobody@clinic.test"))
    finally:
        await receiver.stop()


REPLY = b"""From: Jane Doe <Jane@Example.test>
To: desk@clinic.test
Subject: Re: Your appointment
Message-ID: <abc@example.test>
Content-Type: text/plain; charset=utf-8

Can I come at 3 instead?

On Mon, 3 Mar 2025 at 10:00, Clinic Desk <desk@clinic.test> wrote:
> Your appointment is at 2.
> Thanks
"""


def listening_channel() -> EmailChannel:
    return EmailChannel(EmailSettings.model_validate({
        "smtp": {"from_address": "desk@clinic.test"},
        "listener": {"enabled": True, "port": 0, "recipients": ["desk@clinic.test"]}}))


def recorder(received: list[InboundMessage]):  # type: ignore[no-untyped-def]
    async def on_inbound(message: InboundMessage) -> None:
        received.append(message)
    return on_inbound


async def test_listener_turns_mail_into_an_inbound_message() -> None:
    received: list[InboundMessage] = []
    on_inbound = recorder(received)
    channel = listening_channel()
    await channel.start(on_inbound, nothing)
    try:
        await aiosmtplib.send(REPLY, sender="jane@example.test", recipients=["desk@clinic.test"],
                              hostname="127.0.0.1", port=channel.listener_port, start_tls=False, timeout=10)
    finally:
        await channel.stop()
    [message] = received
    assert (message.channel, message.sender, message.subject) == ("email", "jane@example.test", "Re: Your appointment")
    assert message.body == "Can I come at 3 instead?"
    assert message.provider_ref == "<abc@example.test>"


async def test_listener_asks_the_sender_to_retry_when_the_handler_fails() -> None:
    async def broken(message: InboundMessage) -> None:
        raise RuntimeError("database is down")

    channel = listening_channel()
    await channel.start(broken, nothing)
    try:
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await aiosmtplib.send(REPLY, sender="jane@example.test", recipients=["desk@clinic.test"],
                                  hostname="127.0.0.1", port=channel.listener_port, start_tls=False, timeout=10)
    finally:
        await channel.stop()
    assert info.value.code == 451


HUMAN = b"From: Jane <jane@example.test>\r\nTo: desk@clinic.test\r\nSubject: hi\r\n"


@pytest.mark.parametrize(("headers", "mail_from", "answered"), [
    (b"", "jane@example.test", True),
    (b"Auto-Submitted: no\r\n", "jane@example.test", True),
    (b"Auto-Submitted: auto-replied\r\n", "jane@example.test", False),  # an out-of-office notice
    (b"Auto-Submitted: Auto-Generated; owner-email=x@y\r\n", "jane@example.test", False),
    (b"Precedence: bulk\r\n", "jane@example.test", False),
    (b"Precedence: list\r\n", "jane@example.test", False),
    (b"Precedence: junk\r\n", "jane@example.test", False),
    (b"List-Id: <patients.clinic.test>\r\n", "jane@example.test", False),
    (b"", "", False),  # a bounce: null envelope sender
    (b"Return-Path: <>\r\n", "jane@example.test", False),
    (b"Reply-To: desk@clinic.test\r\n", "jane@example.test", False),  # our own mail, come back
    (b"", "DESK@clinic.test", False),
])
async def test_listener_never_hands_automatic_mail_on_to_be_answered(
        headers: bytes, mail_from: str, answered: bool) -> None:
    received: list[InboundMessage] = []
    on_inbound = recorder(received)
    channel = listening_channel()
    await channel.start(on_inbound, nothing)
    try:
        # Accepted either way (250): the sending MTA must not retry or bounce it.
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=channel.listener_port, start_tls=False,
                                   timeout=10) as smtp:  # the client API, which allows MAIL FROM:<>
            await smtp.sendmail(mail_from, ["desk@clinic.test"], HUMAN + headers + b"\r\nDo you take Cigna?\r\n")
    finally:
        await channel.stop()
    assert len(received) == (1 if answered else 0)


def test_the_listener_must_name_its_recipients() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="listener.recipients"):
        EmailSettings.model_validate({"smtp": {"from_address": "desk@clinic.test"}, "listener": {"enabled": True}})
    assert EmailSettings.model_validate({"smtp": {"from_address": "a@b.test"}}).listener.host == "127.0.0.1"


def test_html_only_mail_and_quote_stripping() -> None:
    raw = (b"From: bob@example.test\nSubject: hi\nContent-Type: text/html\n\n"
           b"<p>Do you take <b>Cigna</b> &amp; Aetna?</p><br>-----Original Message-----<br>old")
    message = parse_inbound(raw)
    assert message.body == "Do you take Cigna & Aetna?"
    assert strip_quoted("new\n> old\nmore\n-- \nsig") == "new\nmore"


def test_every_template_renders_text_and_escaped_html() -> None:
    values = {"site": "Clinic", "staff": "Dr. Smith", "caller": "Jane <Doe>", "when": "10:00", "text": "a & b",
              "callback": "+15550102030", "duration": "2 min", "outcome": "hangup", "transcript": "hi\nbye",
              "contact": "jane@example.test", "channel": "sms", "question": "Do you do x-rays?",
              "reason": "no answer", "subject": "Re: hi"}
    for name in NAMES:
        rendered = render(name, **values)
        assert rendered.subject and rendered.text.strip() and "<html>" in rendered.html
        assert "$" not in rendered.text + rendered.html
    taken = render("taken_message", **values)
    assert taken.subject == "Message for Dr. Smith from Jane <Doe>"
    assert "Jane &lt;Doe&gt;" in taken.html and "a &amp; b" in taken.html
    with pytest.raises(ValueError, match=r"\$callback"):
        render("taken_message", **{k: v for k, v in values.items() if k != "callback"})


async def test_settings_reject_half_auth() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="password_env"):
        EmailSettings.model_validate({"smtp": {"from_address": "a@b.test", "username": "u"}})
    await asyncio.sleep(0)
