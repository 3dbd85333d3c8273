"""Two-way text conversations: an inbound SMS, SIP MESSAGE or email is answered by the same
knowledge-grounded Dialog as a call, in the sender's thread, through the outbox, on the channel it
came in on. Also: delivering a message taken during a call to the staff member it is for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass

from channels.base import InboundMessage
from channels.outbox import Outbox
from channels.templates import render
from gateway.config import ConversationSettings
from llm.dialog import Action, Dialog, Reply
from llm.engine import LlmEngine
from llm.knowledge import Retriever
from llm.site import Site, StaffMember
from llm.written import Dialogs, WrittenAnswer, answer
from models.records import TakenMessage
from models.store import Store, normalize_address, normalize_number

log = logging.getLogger(__name__)

# Not CANCEL or END: patients text "cancel" about appointments.
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "QUIT", "OPTOUT"})
START_WORDS = frozenset({"START", "UNSTOP", "SUBSCRIBE"})


@dataclass
class _Pending:
    first_at: float
    timer: asyncio.Task[None] | None = None


class Conversations:
    """Inbound texts are durable: `on_inbound` commits each one (deduplicated by the channel's
    reference) before it returns, i.e. before the channel acknowledges it, and the store keeps it
    `pending` until answered. Only the debounce timers live in memory; `start` answers what a
    previous run left pending."""

    def __init__(self, site: Site, retriever: Retriever, store: Store, outbox: Outbox,
                 settings: ConversationSettings | None = None, engine: LlmEngine | None = None,
                 max_reply_tokens: int = 256) -> None:
        self.site, self.retriever, self.store, self.outbox = site, retriever, store, outbox
        self.settings, self.engine = settings or ConversationSettings(), engine
        self.max_reply_tokens = max_reply_tokens  # models.llm.max_reply_tokens, as for calls
        if self.settings.operator_channel and self.settings.operator_channel not in outbox.channels:
            raise ValueError(f"conversations.operator_channel: no channel {self.settings.operator_channel!r}")
        self._dialogs = Dialogs()
        self._pending: dict[int, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[int, asyncio.Lock] = {}

    async def start(self) -> None:
        """Answer the texts a previous run recorded but did not answer (it was killed or stopped)."""
        pending = await self.store.pending_inbound()
        if pending:
            log.warning("inbound recovered messages=%d threads=%d", len(pending), len({m.thread_id for m in pending}))
        for row in pending:
            assert row.thread_id is not None and row.sender is not None
            if row.channel not in self.outbox.channels:  # kept for when that channel is configured again
                log.warning("inbound not answered id=%d channel=%s reason=channel not configured", row.id, row.channel)
                continue
            await self._take(row.thread_id, row.id, InboundMessage(
                channel=row.channel, sender=row.sender, body=row.body, at=row.at, subject=row.subject))

    async def on_inbound(self, message: InboundMessage) -> None:
        """The InboundHandler for every channel: commit the text, then answer it (debounced)."""
        if normalize_address(message.sender) is None:
            log.info("inbound ignored channel=%s reason=no reply address", message.channel)
            return
        recorded = await self.store.record_inbound(message.channel, message.sender, message.body, message.at,
                                                   message.subject, message.provider_ref)
        if recorded is None:
            log.info("inbound duplicate channel=%s ref=%s", message.channel, message.provider_ref)
            return
        row_id, thread_id = recorded
        await self._take(thread_id, row_id, message)

    async def close(self) -> None:
        """Stop waiting and answering; what is still pending is answered by the next `start`."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pending.clear()

    async def _take(self, thread_id: int, row_id: int, message: InboundMessage) -> None:
        word = message.body.strip().strip(".!").upper()
        if word in STOP_WORDS | START_WORDS:
            opted_out = word in STOP_WORDS
            pending = self._pending.pop(thread_id, None)
            if pending is not None and pending.timer is not None:
                pending.timer.cancel()
            dropped = [m.id for m in await self.store.pending_inbound(thread_id) if m.id < row_id]
            if dropped:
                await self.store.settle_inbound(dropped, "dropped")
            await self.store.set_opted_out(message.sender, opted_out)
            log.info("opt %s thread=%d channel=%s", "out" if opted_out else "in", thread_id, message.channel)
            text = self.settings.opted_out_reply if opted_out else self.settings.opted_in_reply
            await self._reply([row_id], message, text, key=f"opt-{row_id}", opt_notice=opted_out)
            return
        if await self.store.is_opted_out(message.sender):
            await self.store.settle_inbound([row_id], "opted_out")
            log.info("inbound not answered thread=%d reason=opted out", thread_id)
            return
        if await self._held(thread_id, [row_id]):
            return
        loop = asyncio.get_running_loop()
        pending = self._pending.setdefault(thread_id, _Pending(first_at=loop.time()))
        if pending.timer is not None:
            pending.timer.cancel()
        wait = min(self.settings.buffer_s, pending.first_at + self.settings.max_buffer_s - loop.time())
        pending.timer = asyncio.create_task(self._answer_after(thread_id, max(0.0, wait)))
        self._tasks.add(pending.timer)
        pending.timer.add_done_callback(self._tasks.discard)

    async def _answer_after(self, thread_id: int, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self._answer(thread_id)
        except Exception:  # the texts stay pending: the next start answers them
            log.exception("answering failed thread=%d", thread_id)

    async def _answer(self, thread_id: int) -> None:
        async with self._locks.setdefault(thread_id, asyncio.Lock()):
            self._pending.pop(thread_id, None)
            rows = await self.store.pending_inbound(thread_id)
            if not rows:
                return
            ids = [m.id for m in rows]
            if await self._held(thread_id, ids):  # taken over while these waited for the debounce
                return
            last_row = rows[-1]
            assert last_row.sender is not None
            last = InboundMessage(channel=last_row.channel, sender=last_row.sender, body=last_row.body,
                                  at=last_row.at, subject=last_row.subject)
            limit, window = self.settings.reply_limit, self.settings.reply_window_s
            if await self.store.replies_since(thread_id, time.time() - window) >= limit:
                await self.store.settle_inbound(ids, "rate_limited")
                log.warning("inbound not answered thread=%d channel=%s reason=reply limit limit=%d window_s=%.0f",
                            thread_id, last.channel, limit, window)
                return
            text = "\n".join(m.body for m in rows)
            written = await answer(self._dialog(thread_id, last), text, at=last.at, subject=last.subject)
            log.info("text answered thread=%d channel=%s parts=%d actions=%s sources=%s", thread_id, last.channel,
                     len(rows), ",".join(r.action.value for r in written.replies),
                     ",".join(r.source for r in written.replies))
            if await self._held(thread_id, ids):  # taken over while the answer was being written
                return
            reply = await self._act(thread_id, last, last_row.id, text, written)
            if reply:
                await self._reply(ids, last, reply, key=f"reply-{last_row.id}")
            else:
                await self.store.settle_inbound(ids, "answered")

    async def _held(self, thread_id: int, row_ids: list[int]) -> bool:
        """A thread an operator took over: its texts are settled `held` (shown to them, never answered by
        the assistant, also not after a restart or at hand-back)."""
        holder = await self.store.thread_holder(thread_id)
        if holder is None:
            return False
        await self.store.settle_inbound(row_ids, "held")
        log.info("inbound not answered thread=%d reason=taken over", thread_id)
        return True

    async def staff_reply(self, thread_id: int, text: str, user_name: str) -> int:
        """Send an operator's `text` in the thread, on the channel and to the address of its latest inbound
        text, through the outbox like the assistant's replies; the outbox row id. ValueError if the thread
        has no text to reply to or its channel is not configured."""
        last = await self.store.last_inbound(thread_id)
        if last is None or last.sender is None:
            raise ValueError("this thread has no text to reply to")
        if last.channel not in self.outbox.channels:
            raise ValueError(f"channel {last.channel} is not configured")
        message = InboundMessage(channel=last.channel, sender=last.sender, body=last.body, at=last.at,
                                 subject=last.subject)
        body, outbox_id = await self._enqueue(message, text, key=f"staff-{uuid.uuid4().hex}")
        await self.store.staff_reply(thread_id, message.channel, body, outbox_id, user_name)
        log.info("text answered by staff thread=%d channel=%s user=%s", thread_id, message.channel, user_name)
        return outbox_id

    def _dialog(self, thread_id: int, message: InboundMessage) -> Dialog:
        return self._dialogs.get(thread_id, lambda: Dialog(
            self.site, self.retriever, self.store, call_id=f"{message.channel}-thread-{thread_id}",
            caller=message.sender, engine=self.engine, max_reply_tokens=self.max_reply_tokens, written=True,
            on_message_taken=self._deliver))

    async def _deliver(self, message: TakenMessage) -> None:
        """A message (or a request for a person) by text goes to that person like one taken on a call."""
        await deliver_taken_message(self.outbox, self.site, message, sms_channel=self.settings.staff_sms_channel)

    async def _act(self, thread_id: int, message: InboundMessage, row_id: int, text: str,
                   written: WrittenAnswer) -> str | None:
        """Tell the operator what needs a person; the reply to send, None for a goodbye alone."""
        await self.escalate(message.sender, message.channel, message.at, text, written.replies,
                            key=f"escalate-{row_id}")
        if written.text is None:
            self._dialogs.drop(thread_id)  # a goodbye by text needs no answer; start afresh next time
        return written.text

    async def escalate(self, contact: str, channel: str, at: float, question: str, replies: tuple[Reply, ...],
                       *, key: str) -> None:
        """Tell `conversations.operator_to` what in these replies needs a person (a request for someone,
        an emergency, a question the knowledge does not answer): the same note for a text by SMS or email
        and for a chat over the HTTP API. `key` makes a repeat of the same turn one note."""
        reasons = [("emergency" if r.source == "rule:emergency" else f"asked for {r.target.name}")
                   if r.action is Action.TRANSFER and r.target is not None else "no answer in the knowledge"
                   for r in replies if r.action in (Action.TRANSFER, Action.ESCALATE)]
        operator, to = self.settings.operator_channel, self.settings.operator_to
        if not reasons or operator is None or to is None:
            return
        note = render("escalation", site=self.site.name, contact=contact, channel=channel,
                      when=_when(self.site, at), question=question, reason="; ".join(dict.fromkeys(reasons)))
        await self.outbox.enqueue(operator, to, note.text if operator == "email" else f"{note.subject}: {question}",
                                  subject=note.subject, html=note.html if operator == "email" else None,
                                  idempotency_key=key)

    async def _reply(self, row_ids: list[int], message: InboundMessage, text: str, key: str,
                     opt_notice: bool = False) -> None:
        """Queue the answer, then settle the texts it answers (a crash between the two queues nothing
        twice: the next start answers again under the same key)."""
        text, outbox_id = await self._enqueue(message, text, key, opt_notice)
        await self.store.settle_inbound(row_ids, "answered", reply=(message.channel, text, outbox_id))

    async def _enqueue(self, message: InboundMessage, text: str, key: str,
                       opt_notice: bool = False) -> tuple[str, int]:
        """Queue `text` as a reply to `message` on its channel (an email as a "Re:" mail); the text as
        queued and the outbox row id."""
        subject = html = None
        if message.channel == "email":
            original = message.subject or ""
            subject = original if original.lower().startswith("re:") else f"Re: {original or self.site.name}"
            mail = render("customer_reply", site=self.site.name, text=text, subject=subject)
            text, html = mail.text, mail.html
        outbox_id = await self.outbox.enqueue(message.channel, message.sender, text, subject=subject, html=html,
                                              idempotency_key=key, opt_notice=opt_notice)
        return text, outbox_id


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
