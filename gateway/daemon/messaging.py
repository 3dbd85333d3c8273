"""The text side of the daemon: channels from `messaging:` config, the durable outbox, conversations.

Built only when at least one channel is configured; a call that takes a message hands it here to
reach the staff member (by their `message_via`) and, optionally, to confirm to the caller by SMS.
"""

from __future__ import annotations

import logging

from channels.base import Channel
from channels.outbox import Outbox
from gateway.asterisk.ami import AmiClient
from gateway.config import MessagingSettings
from gateway.sessions.conversations import Conversations, confirm_taken_message, deliver_taken_message
from gateway.services import Services
from models.records import TakenMessage

log = logging.getLogger(__name__)


def build_channels(settings: MessagingSettings, services: Services, ami: AmiClient | None) -> dict[str, Channel]:
    """The configured channels. Each transport module is imported only when its section is there:
    a daemon without a modem never loads python-gsmmodem, one without email never loads aiosmtpd."""
    channels: dict[str, Channel] = {}
    if settings.email:
        from channels.email import EmailChannel
        channels["email"] = EmailChannel(settings.email)
    if settings.sms_modem:
        from channels.sms_modem import ModemSmsChannel
        channels[settings.sms_modem.name] = ModemSmsChannel(settings.sms_modem, services.store)
    if settings.sip_message or settings.sip_via_ami:
        from channels.sip_message import AmiMessageChannel, SipMessageChannel
        if settings.sip_message:
            channels[settings.sip_message.name] = SipMessageChannel(settings.sip_message)
        if settings.sip_via_ami:
            if ami is None:
                raise ValueError("messaging.sip_via_ami needs ami.enabled: true")
            channels[settings.sip_via_ami.name] = AmiMessageChannel(
                settings.sip_via_ami, lambda to, from_, body: ami.message_send(to, body, sender=from_))
    return channels


class Messaging:
    def __init__(self, settings: MessagingSettings, services: Services, ami: AmiClient | None) -> None:
        channels = build_channels(settings, services, ami)
        self.settings, self.site = settings, services.config.site
        self.outbox = Outbox.from_settings(services.store, channels, settings.outbox)
        self.conversations = Conversations(self.site, services.retriever, services.store, self.outbox,
                                           settings.conversations, engine=services.dialog_engine,
                                           max_reply_tokens=services.config.models.llm.max_reply_tokens)

    async def start(self) -> None:
        await self.outbox.start(self.conversations.on_inbound)
        await self.conversations.start()
        log.info("messaging started channels=%s", ",".join(self.outbox.channels) or "-")

    async def stop(self) -> None:
        await self.conversations.close()
        await self.outbox.stop()

    async def deliver_to_staff(self, message: TakenMessage) -> None:
        """A taken message (or a request for a person) to the staff member it is for."""
        await deliver_taken_message(self.outbox, self.site, message,
                                    sms_channel=self.settings.conversations.staff_sms_channel)

    async def message_taken(self, message: TakenMessage) -> None:
        """A message taken during a call: to its staff member, and optionally a confirmation to the caller."""
        channel = self.settings.conversations.staff_sms_channel
        await self.deliver_to_staff(message)
        if self.settings.confirm_to_caller:
            await confirm_taken_message(self.outbox, self.site, message, channel=channel)
