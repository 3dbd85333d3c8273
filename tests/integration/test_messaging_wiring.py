"""A message taken during a real call reaches the staff member by email through the outbox."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller

from gateway.app import Gateway
from gateway.caller import CallerClient
from gateway.config import MessagingSettings
from gateway.messaging import Messaging
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
            sent = await client.say(await speak("Please call me back about my crown appointment."))
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
