"""Two-way text conversations: an inbound SMS, SIP MESSAGE or email is answered by the same
knowledge-grounded Dialog as a call, in the sender's thread, through the outbox, on the channel it
came in on. Also: delivering a message taken during a call to the staff member it is for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from pydantic import Field, model_validator

from channels.base import InboundMessage
from channels.outbox import Outbox
from channels.templates import render
from llm.dialog import Action, Dialog, Reply
from llm.engine import LlmEngine
from llm.knowledge import Retriever
from llm.site import Site, StaffMember, Strict
from models.records import TakenMessage
from models.store import Store, normalize_address, normalize_number

log = logging.getLogger(__name__)

# Not CANCEL or END: patients text "cancel" about appointments.
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "QUIT", "OPTOUT"})
START_WORDS = frozenset({"START", "UNSTOP", "SUBSCRIBE"})
_MAX_DIALOGS = 500  # live dialog states kept; an evicted thread starts a fresh dialog


class ConversationSettings(Strict):
    """The `conversations:` section of etc/switchboard.yaml."""

    buffer_s: float = Field(3.0, ge=0)  # messages closer together than this are answered once
    max_buffer_s: float = Field(15.0, gt=0)  # ... but a steady stream is answered after this at the latest
    operator_channel: str | None = None  # where escalations go, e.g. "email"
    operator_to: str | None = None
    staff_sms_channel: str = "sms"  # the channel for staff whose message_via is sms ("sip" for a SIP gateway)
    opted_out_reply: str = "You will get no more messages from us. Reply START to resume."
    opted_in_reply: str = "You will get our messages again. Reply STOP to opt out."
    transfer_reply: str = "I've asked {name} to get back to you as soon as possible."
    emergency_reply: str = ("If this is a life-threatening emergency, call 911 now. "
                            "I've alerted our staff.")

    @model_validator(mode="after")
    def _operator(self) -> "ConversationSettings":
        if (self.operator_channel is None) != (self.operator_to is None):
            raise ValueError("give both operator_channel and operator_to, or neither")
        return self


@dataclass
class _Pending:
    messages: list[tuple[int, InboundMessage]] = field(default_factory=list)
    first_at: float = 0.0
    timer: asyncio.Task[None] | None = None


class Conversations:
    def __init__(self, site: Site, retriever: Retriever, store: Store, outbox: Outbox,
                 settings: ConversationSettings | None = None, engine: LlmEngine | None = None) -> None:
        self.site, self.retriever, self.store, self.outbox = site, retriever, store, outbox
        self.settings, self.engine = settings or ConversationSettings(), engine
        if self.settings.operator_channel and self.settings.operator_channel not in outbox.channels:
            raise ValueError(f"conversations.operator_channel: no channel {self.settings.operator_channel!r}")
        self._dialogs: OrderedDict[int, Dialog] = OrderedDict()
        self._message_for: dict[int, StaffMember] = {}
        self._pending: dict[int, _Pending] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def on_inbound(self, message: InboundMessage) -> None:
        """The InboundHandler for every channel: store the text, then answer it (debounced)."""
        if normalize_address(message.sender) is None:
            log.info("inbound ignored channel=%s reason=no reply address", message.channel)
            return
        thread_id = await self.store.thread_for_address(message.sender)
        row_id = await self.store.add_thread_message(thread_id, message.channel, "in", message.body, "received")
        word = message.body.strip().strip(".!").upper()
        if word in STOP_WORDS | START_WORDS:
            opted_out = word in STOP_WORDS
            self._drop_pending(thread_id)
            await self.store.set_opted_out(message.sender, opted_out)
            log.info("opt %s thread=%d channel=%s", "out" if opted_out else "in", thread_id, message.channel)
            text = self.settings.opted_out_reply if opted_out else self.settings.opted_in_reply
            await self._reply(thread_id, message, text, key=f"opt-{row_id}")
            return
        if await self.store.is_opted_out(message.sender):
            log.info("inbound not answered thread=%d reason=opted out", thread_id)
            return
        loop = asyncio.get_running_loop()
        pending = self._pending.setdefault(thread_id, _Pending(first_at=loop.time()))
        pending.messages.append((row_id, message))
        if pending.timer is not None:
            pending.timer.cancel()
        wait = min(self.settings.buffer_s, pending.first_at + self.settings.max_buffer_s - loop.time())
        pending.timer = asyncio.create_task(self._answer_after(thread_id, max(0.0, wait)))

    async def close(self) -> None:
        """Answer whatever is still buffered now, rather than dropping it."""
        for thread_id in list(self._pending):
            pending = self._pending[thread_id]
            if pending.timer is not None:
                pending.timer.cancel()
            await self._answer(thread_id)

    def _drop_pending(self, thread_id: int) -> None:
        pending = self._pending.pop(thread_id, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()

    async def _answer_after(self, thread_id: int, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self._answer(thread_id)
        except Exception:
            log.exception("answering failed thread=%d", thread_id)

    async def _answer(self, thread_id: int) -> None:
        async with self._locks.setdefault(thread_id, asyncio.Lock()):
            pending = self._pending.pop(thread_id, None)
            if pending is None or not pending.messages:
                return
            last_row, last = pending.messages[-1]
            text = "\n".join(m.body for _, m in pending.messages)
            dialog = self._dialog(thread_id, last)
            reply = await dialog.respond(text)
            log.info("text answered thread=%d channel=%s parts=%d action=%s source=%s", thread_id, last.channel,
                     len(pending.messages), reply.action.value, reply.source)
            answer = await self._act(thread_id, last, last_row, text, reply)
            if answer:
                await self._reply(thread_id, last, answer, key=f"reply-{last_row}")

    def _dialog(self, thread_id: int, message: InboundMessage) -> Dialog:
        dialog = self._dialogs.pop(thread_id, None) or Dialog(
            self.site, self.retriever, self.store, call_id=f"{message.channel}-thread-{thread_id}",
            caller=message.sender, engine=self.engine)
        self._dialogs[thread_id] = dialog
        while len(self._dialogs) > _MAX_DIALOGS:
            self._dialogs.popitem(last=False)
        return dialog

    async def _act(self, thread_id: int, message: InboundMessage, row_id: int, text: str, reply: Reply) -> str | None:
        """What to text back for the dialog's decision; a call's actions become notifications."""
        wording = self.settings
        if reply.action is Action.TAKE_MESSAGE and reply.target is not None:
            self._message_for[thread_id] = reply.target
        elif reply.source == "rule:message_taken" and thread_id in self._message_for:
            member = self._message_for.pop(thread_id)
            await deliver_taken_message(self.outbox, self.site, TakenMessage(
                call_id=None, contact_number=message.sender, for_staff=member.name, caller_name=None,
                text=text, at=message.at), sms_channel=self.settings.staff_sms_channel)
        if reply.action is Action.TRANSFER and reply.target is not None:
            emergency = reply.source == "rule:emergency"
            await self._notify_operator(message, row_id, text, "emergency" if emergency else
                                        f"asked for {reply.target.name}")
            return wording.emergency_reply if emergency else wording.transfer_reply.format(name=reply.target.name)
        if reply.action is Action.ESCALATE:
            await self._notify_operator(message, row_id, text, "no answer in the knowledge")
        if reply.action is Action.END_CALL:
            self._dialogs.pop(thread_id, None)  # a goodbye by text needs no answer; start afresh next time
            return None
        return reply.text

    async def _notify_operator(self, message: InboundMessage, row_id: int, question: str, reason: str) -> None:
        channel, to = self.settings.operator_channel, self.settings.operator_to
        if channel is None or to is None:
            return
        note = render("escalation", site=self.site.name, contact=message.sender, channel=message.channel,
                      when=_when(self.site, message.at), question=question, reason=reason)
        await self.outbox.enqueue(channel, to, note.text if channel == "email" else f"{note.subject}: {question}",
                                  subject=note.subject, html=note.html if channel == "email" else None,
                                  idempotency_key=f"escalate-{row_id}")

    async def _reply(self, thread_id: int, message: InboundMessage, text: str, key: str) -> None:
        subject = html = None
        if message.channel == "email":
            original = message.subject or ""
            subject = original if original.lower().startswith("re:") else f"Re: {original or self.site.name}"
            mail = render("customer_reply", site=self.site.name, text=text, subject=subject)
            text, html = mail.text, mail.html
        outbox_id = await self.outbox.enqueue(message.channel, message.sender, text, subject=subject, html=html,
                                              idempotency_key=key)
        await self.store.add_thread_message(thread_id, message.channel, "out", text, "queued", outbox_id=outbox_id)


def _when(site: Site, at: float) -> str:
    return dt.datetime.fromtimestamp(at, site.tz).strftime("%a %d %b %Y %H:%M")


def _staff(site: Site, name: str | None) -> StaffMember:
    wanted = (name or "").casefold()
    return next((m for m in site.directory.everyone() if m.name.casefold() == wanted), site.directory.front_desk)


def _message_key(message: TakenMessage, purpose: str) -> str:
    # Delivering the same taken message twice (a retried call hook) enqueues it once.
    digest = hashlib.sha256(
        f"{message.call_id}|{message.for_staff}|{message.at!r}|{message.text}".encode()).hexdigest()[:24]
    return f"{purpose}-{digest}"


async def deliver_taken_message(outbox: Outbox, site: Site, message: TakenMessage,
                                sms_channel: str = "sms") -> int | None:
    """Queue a taken message to its staff member by their `message_via` (`sms` goes out on
    `sms_channel`, e.g. "sip" for a SIP SMS gateway); the outbox row id, or None when it stays in
    the store only (message_via: store, or no address/channel for it)."""
    member = _staff(site, message.for_staff)
    caller = message.caller_name or message.contact_number or "A caller with a withheld number"
    if member.message_via == "store":
        return None
    channel, to = ("email", member.email) if member.message_via == "email" else (sms_channel, member.mobile)
    if not to or channel not in outbox.channels:
        log.error("taken message not forwarded staff=%s via=%s reason=%s", member.name, member.message_via,
                  "no address in directory" if not to else f"channel {channel} not configured")
        return None
    callback = message.contact_number or "(number withheld)"
    mail = render("taken_message", site=site.name, staff=member.name, caller=caller, when=_when(site, message.at),
                  text=message.text, callback=callback)
    body = mail.text if channel == "email" else f"{mail.subject} ({callback}): {message.text}"
    return await outbox.enqueue(channel, to, body, subject=mail.subject, html=mail.html if channel == "email" else None,
                                idempotency_key=_message_key(message, "taken"))


async def confirm_taken_message(outbox: Outbox, site: Site, message: TakenMessage, channel: str = "sms") -> int | None:
    """Text the caller that their message was passed on; None if there is no number to text."""
    number = normalize_number(message.contact_number or "")
    if number is None or channel not in outbox.channels:
        return None
    member = _staff(site, message.for_staff)
    return await outbox.enqueue(channel, number, f"{site.name}: your message for {member.name} has been passed on.",
                                idempotency_key=_message_key(message, "confirm"))
