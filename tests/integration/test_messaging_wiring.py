"""The daemon's Messaging as built from config: a message taken during a real call reaches the staff
member by email through the outbox, and a mail acknowledged just before a stop is answered after it."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from email import message_from_bytes

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller
from test_email_peer import SmtpPeer

from gateway.daemon.app import Gateway
from gateway.media.caller import CallerClient
from gateway.config import MessagingSettings
from gateway.daemon.messaging import Messaging
from tests.support.net import free_port

pytestmark = pytest.mark.models


class Inbox:
    def __init__(self) -> None:
        self.mails: list = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]  # aiosmtpd hook
        self.mails.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


async def test_message_for_staff_is_emailed(services, config, speak) -> None:  # type: ignore[no-untyped-def]
    inbox = Inbox()
    port = free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        site = config.site
        tom = next(m for m in site.directory.staff if m.name == "Tom Becker")
        staff = tuple(m.model_copy(update={"message_via": "email", "email": "tom@clinic.test"}) if m is tom else m
                      for m in site.directory.staff)
        site = site.model_copy(update={"directory": site.directory.model_copy(update={"staff": staff})})
        messaging_cfg = MessagingSettings.model_validate(
            {"email": {"smtp": {"host": "127.0.0.1", "port": port, "security": "none",
                                "from_address": "assistant@clinic.test"}}})
        cfg = dataclasses.replace(config, site=site, messaging=messaging_cfg)
        svc = dataclasses.replace(services, config=cfg)
        messaging = Messaging(cfg.messaging, svc, None)
        await messaging.start()
        gateway = Gateway(svc, host="127.0.0.1", port=0, messaging=messaging)
        await gateway.start()
        client = await CallerClient("127.0.0.1", gateway.port).connect()
        try:
            await client.wait_reply(time.monotonic() - 1)
            sent = await client.say(await speak("Can I leave a message for Tom, please?"))
            await client.wait_reply(sent)
            # One sentence: the pause after a full stop may end the turn (the dialog keeps both parts, but
            # then a caller's second part races the assistant's question for the number).
            sent = await client.say(await speak("This is Ann, please call me back about my crown appointment "
                                                "on 555 0142."))
            await client.wait_reply(sent)  # "I have 5 5 5, 0 1 4 2. Is that the right number ...?"
            sent = await client.say(await speak("Yes, that's right."))
            await client.wait_reply(sent)
            for _ in range(100):  # the outbox sends in the background
                if inbox.mails:
                    break
                await asyncio.sleep(0.1)
        finally:
            await client.close()
            await gateway.stop(grace_s=1.0)
            await messaging.stop()
    finally:
        smtp.stop()
    assert len(inbox.mails) == 1
    recipients, mail = inbox.mails[0]
    assert recipients == ["tom@clinic.test"]
    body = next(part.get_payload(decode=True).decode() for part in mail.walk()
                if part.get_content_type() == "text/plain")
    assert "crown" in body.lower() and "call me back" in body.lower()
    assert "Ann" in body  # who it is from
    # The number is the one read back and confirmed (tiny.en may hear "555 0142" otherwise, e.g.
    # "550-50142": the caller confirmed what they heard read back, and that is what staff get).
    read_back = next(t.text for t in await services.store.turns(client.call_id)
                     if t.speaker == "assistant" and t.text.startswith("I have "))
    confirmed = re.sub(r"\D", "", read_back.split(".")[0])
    callback = re.search(r"Call back: (\S+)", body)
    assert callback is not None and len(confirmed) >= 7 and callback.group(1) == confirmed, (read_back, body)


async def test_a_mail_acknowledged_before_a_stop_is_answered_after_the_restart(services, config) -> None:  # type: ignore[no-untyped-def]
    relay = SmtpPeer()
    await relay.start()
    listen = free_port()

    def settings(buffer_s: float) -> MessagingSettings:
        return MessagingSettings.model_validate({
            "email": {"smtp": {"host": "127.0.0.1", "port": relay.port, "security": "none",
                               "from_address": "assistant@clinic.test"},
                      "listener": {"enabled": True, "port": listen, "recipients": ["assistant@clinic.test"]}},
            "conversations": {"buffer_s": buffer_s}})

    mail = (b"From: Ann <ann@example.test>\r\nTo: assistant@clinic.test\r\nSubject: Hours\r\n"
            b"Message-ID: <hours-1@example.test>\r\n\r\nAre you open on Saturday?\r\n")
    try:
        first = Messaging(settings(60), services, None)  # still waiting for more mail when it stops
        await first.start()
        try:
            await aiosmtplib.send(mail, sender="ann@example.test", recipients=["assistant@clinic.test"],
                                  hostname="127.0.0.1", port=listen, start_tls=False, timeout=10)
        finally:
            await first.stop()
        assert relay.messages == []
        second = Messaging(settings(0.1), services, None)
        await second.start()
        try:
            [answer] = await relay.wait_for(1, timeout=60)
            await asyncio.sleep(0.5)
        finally:
            await second.stop()
    finally:
        await relay.stop()
    assert len(relay.messages) == 1 and answer["To"] == "ann@example.test" and answer["Subject"] == "Re: Hours"
