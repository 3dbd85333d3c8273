"""Two-way text conversations on the real dialog, store and knowledge: a recording SMS channel behind
the real outbox, and the email path end to end through the SMTP listener and a real aiosmtpd relay."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest
from test_email_peer import SmtpPeer

from channels.base import DeliveryHandler, InboundHandler, InboundMessage, OutgoingMessage, SendResult
from gateway.sessions.conversations import Conversations, confirm_taken_message, deliver_taken_message
from channels.email import EmailChannel, EmailSettings
from channels.outbox import Outbox
from gateway.config import ConversationSettings, load_config
from llm.knowledge import Retriever
from models.records import CallRecord, TakenMessage
from models.store import Store

CFG = load_config(Path(__file__).resolve().parents[2] / "etc" / "switchboard.yaml")
SITE = CFG.site
CIGNA = next(e for e in CFG.knowledge if "Cigna" in e.answer)


class RecordingChannel:
    """A real in-process channel that accepts every message and remembers it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[OutgoingMessage] = []
        self.arrived = asyncio.Condition()

    async def start(self, on_inbound: InboundHandler, on_delivery: DeliveryHandler) -> None:
        pass

    async def send(self, message: OutgoingMessage) -> SendResult:
        async with self.arrived:
            self.sent.append(message)
            self.arrived.notify_all()
        return SendResult(provider_ref=f"{self.name}-{message.id}")

    async def stop(self) -> None:
        pass

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[OutgoingMessage]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.sent) >= count), timeout)
        return self.sent


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "sb.db")
    await s.replace_admin_knowledge(CFG.knowledge)
    yield s
    await s.close()


@pytest.fixture
async def sms_world(store: Store) -> AsyncIterator[tuple[Conversations, RecordingChannel, RecordingChannel]]:
    sms, ops = RecordingChannel("sms"), RecordingChannel("ops")
    outbox = Outbox(store, {"sms": sms, "ops": ops})
    talk = Conversations(SITE, Retriever(store), store, outbox,
                         ConversationSettings(buffer_s=0.3, operator_channel="ops", operator_to="+15550009999"))
    await outbox.start(talk.on_inbound)
    yield talk, sms, ops
    await talk.close()
    await outbox.stop()


def text(body: str, sender: str = "+1 (555) 010-2030") -> InboundMessage:
    return InboundMessage(channel="sms", sender=sender, body=body, at=time.time())


async def test_rapid_texts_are_answered_once_from_the_knowledge_in_the_callers_thread(
        store: Store, sms_world: tuple[Conversations, RecordingChannel, RecordingChannel]) -> None:
    talk, sms, _ = sms_world
    # The same person called earlier: their texts join the caller's thread.
    await store.start_call(CallRecord("call-1", "+15550102030", "100", SITE.name, "audiosocket", time.time()))
    await talk.on_inbound(text("hi there"))
    await talk.on_inbound(text("do you take cigna?"))
    [reply] = await sms.wait_for(1)
    await asyncio.sleep(0.5)  # longer than the window: a second answer would have come by now
    assert len(sms.sent) == 1
    assert reply.to == "+1 (555) 010-2030" and reply.body.startswith(CIGNA.answer)
    thread = await store.thread_for("+15550102030")
    history = await store.thread_messages(thread)
    assert [(m.direction, m.body) for m in history] == [
        ("in", "hi there"), ("in", "do you take cigna?"), ("out", reply.body)]
    assert history[-1].outbox_id == reply.id


async def test_stop_and_start_are_respected_and_stored(
        store: Store, sms_world: tuple[Conversations, RecordingChannel, RecordingChannel]) -> None:
    talk, sms, _ = sms_world
    await talk.on_inbound(text("STOP"))
    [confirmation] = await sms.wait_for(1)
    assert "no more messages" in confirmation.body
    assert await store.is_opted_out("+15550102030")
    await talk.on_inbound(text("do you take cigna?"))
    await asyncio.sleep(0.5)
    assert len(sms.sent) == 1  # opted out: stored, not answered
    await talk.on_inbound(text("start"))
    await talk.on_inbound(text("do you take cigna?"))
    messages = await sms.wait_for(3)
    assert "messages again" in messages[1].body and messages[2].body.startswith(CIGNA.answer)
    assert not await store.is_opted_out("+15550102030")
    history = await store.thread_messages(await store.thread_for("+15550102030"))
    assert [m.body for m in history if m.direction == "in"] == ["STOP", "do you take cigna?", "start",
                                                                 "do you take cigna?"]


async def test_an_unanswerable_question_notifies_the_operator(
        store: Store, sms_world: tuple[Conversations, RecordingChannel, RecordingChannel]) -> None:
    talk, sms, ops = sms_world
    await talk.on_inbound(text("can my parrot get a root canal"))
    [reply] = await sms.wait_for(1)
    [note] = await ops.wait_for(1)
    assert reply.body.startswith(SITE.wording.unknown_answer)
    assert note.to == "+15550009999" and "parrot" in note.body and "+1 (555) 010-2030" in note.body
    [request] = await store.help_requests("open")
    assert request.question == "can my parrot get a root canal"


async def test_a_message_left_by_text_reaches_the_staff_member(
        store: Store, sms_world: tuple[Conversations, RecordingChannel, RecordingChannel]) -> None:
    talk, sms, _ = sms_world
    site = SITE.model_copy(update={"directory": SITE.directory.model_copy(update={"staff": tuple(
        m.model_copy(update={"message_via": "sms", "mobile": "+15550007777"}) if m.name == "Tom Becker" else m
        for m in SITE.directory.staff)})})
    talk.site = site
    await talk.on_inbound(text("I'd like to leave a message for Tom"))
    await sms.wait_for(1)
    await talk.on_inbound(text("please call me about my invoice"))
    messages = await sms.wait_for(3)
    to_tom = [m for m in messages if m.to == "+15550007777"]
    assert len(to_tom) == 1 and "please call me about my invoice" in to_tom[0].body
    assert "+1 (555) 010-2030" in to_tom[0].body  # Tom can call back


async def test_deliver_and_confirm_a_message_taken_during_a_call(store: Store) -> None:
    sms, email = RecordingChannel("sms"), RecordingChannel("email")
    outbox = Outbox(store, {"sms": sms, "email": email})
    staff = tuple(m.model_copy(update={"message_via": "email", "email": "lopez@clinic.test"})
                  if m.name == "Dr. Maria Lopez" else m for m in SITE.directory.staff)
    site = SITE.model_copy(update={"directory": SITE.directory.model_copy(update={"staff": staff})})
    taken = TakenMessage(call_id="c9", contact_number="+15550102030", for_staff="Dr. Maria Lopez",
                         caller_name="Jane Doe", text="My crown came off.", at=time.time())
    row_id = await deliver_taken_message(outbox, site, taken)
    assert row_id is not None and row_id == await deliver_taken_message(outbox, site, taken)  # once only
    row = await store.outbox_get(row_id)
    assert row is not None and row.recipient == "lopez@clinic.test" and row.subject == \
        "Message for Dr. Maria Lopez from Jane Doe"
    assert "My crown came off." in row.body and row.html and "+15550102030" in row.body
    front_desk = TakenMessage(call_id="c9", contact_number=None, for_staff="the front desk", caller_name=None,
                              text="x", at=time.time())
    assert await deliver_taken_message(outbox, site, front_desk) is None  # message_via: store
    confirm = await confirm_taken_message(outbox, site, taken)
    assert confirm is not None
    confirmation = await store.outbox_get(confirm)
    assert confirmation is not None and confirmation.channel == "sms" and "Dr. Maria Lopez" in confirmation.body
    assert await confirm_taken_message(outbox, site, front_desk) is None


@contextlib.asynccontextmanager
async def email_world(store: Store) -> AsyncIterator[tuple[EmailChannel, SmtpPeer]]:
    """Conversations behind a real SMTP listener, answering through the outbox to a local SMTP relay."""
    relay = SmtpPeer()
    await relay.start()
    channel = EmailChannel(EmailSettings.model_validate({
        "smtp": {"host": "127.0.0.1", "port": relay.port, "security": "none", "from_address": "desk@clinic.test"},
        "listener": {"enabled": True, "port": 0, "recipients": ["desk@clinic.test"]}}))
    outbox = Outbox(store, {"email": channel})
    talk = Conversations(SITE, Retriever(store), store, outbox, ConversationSettings(buffer_s=0.1))
    await outbox.start(talk.on_inbound)
    try:
        yield channel, relay
    finally:
        await talk.close()
        await outbox.stop()
        await relay.stop()


async def send_mail(channel: EmailChannel, sender: str, message: bytes) -> None:
    await aiosmtplib.send(message, sender=sender, recipients=["desk@clinic.test"], hostname="127.0.0.1",
                          port=channel.listener_port, start_tls=False, timeout=10)


async def test_email_in_through_the_listener_and_the_answer_out_through_smtp(store: Store) -> None:
    async with email_world(store) as (channel, relay):
        await send_mail(channel, "jane@example.test",
                        b"From: Jane <jane@example.test>\nTo: desk@clinic.test\nSubject: Insurance\n\n"
                        b"Hello, do you take Cigna?\n\n-- \nJane\n")
        [mail] = await relay.wait_for(1)
    assert mail["To"] == "jane@example.test" and mail["Subject"] == "Re: Insurance"
    assert mail.get_body(("plain",)).get_content().startswith(CIGNA.answer)
    history = await store.thread_messages(await store.thread_for_address("Jane@Example.test"))
    assert [m.direction for m in history] == ["in", "out"] and history[0].body == "Hello, do you take Cigna?"


async def test_a_retransmitted_or_redelivered_text_is_answered_once(
        store: Store, sms_world: tuple[Conversations, RecordingChannel, RecordingChannel]) -> None:
    talk, sms, _ = sms_world
    first = InboundMessage(channel="sms", sender="+15550102030", body="do you take cigna?", at=time.time(),
                           provider_ref="call-id-1;1")
    await talk.on_inbound(first)
    await sms.wait_for(1)
    await talk.on_inbound(first)  # e.g. a SIP MESSAGE retransmitted after our 200 was lost
    await asyncio.sleep(0.6)  # twice the debounce window
    assert len(sms.sent) == 1
    history = await store.thread_messages(await store.thread_for("+15550102030"))
    assert [m.direction for m in history] == ["in", "out"]


async def test_a_text_still_waiting_at_shutdown_is_answered_after_restart(store: Store) -> None:
    sms = RecordingChannel("sms")
    outbox = Outbox(store, {"sms": sms})
    talk = Conversations(SITE, Retriever(store), store, outbox, ConversationSettings(buffer_s=30))
    await outbox.start(talk.on_inbound)
    await talk.on_inbound(text("do you take cigna?"))  # acknowledged to the channel, not yet answered
    await talk.close()
    await outbox.stop()
    assert sms.sent == []
    talk = Conversations(SITE, Retriever(store), store, outbox, ConversationSettings(buffer_s=0.1))
    await outbox.start(talk.on_inbound)
    await talk.start()
    try:
        [reply] = await sms.wait_for(1)
        await talk.start()  # nothing is left pending: a second start answers nothing again
        await asyncio.sleep(0.3)
    finally:
        await talk.close()
        await outbox.stop()
    assert len(sms.sent) == 1 and reply.body.startswith(CIGNA.answer)


async def test_stop_blocks_a_call_confirmation_and_replies_are_rate_limited(store: Store) -> None:
    sms = RecordingChannel("sms")
    outbox = Outbox(store, {"sms": sms})
    talk = Conversations(SITE, Retriever(store), store, outbox,
                         ConversationSettings(buffer_s=0.05, reply_limit=2))
    await outbox.start(talk.on_inbound)
    try:
        for n in range(1, 3):
            await talk.on_inbound(text("do you take cigna?"))
            await sms.wait_for(n)
        await talk.on_inbound(text("do you take cigna?"))  # a third: another robot, perhaps
        await asyncio.sleep(0.3)
        assert len(sms.sent) == 2
        history = await store.thread_messages(await store.thread_for("+15550102030"))
        assert [m.status for m in history if m.direction == "in"] == ["answered", "answered", "rate_limited"]
        await talk.on_inbound(text("stop"))
        await sms.wait_for(3)
        taken = TakenMessage(call_id="c1", contact_number="+15550102030", for_staff="Dr. Maria Lopez",
                             caller_name=None, text="call me", at=time.time())
        confirm = await confirm_taken_message(outbox, SITE, taken)
        assert confirm is not None
        row = await asyncio.wait_for(_settled(store, confirm), 10)
    finally:
        await talk.close()
        await outbox.stop()
    assert row.state == "failed" and "opted out" in (row.last_error or "")
    assert len(sms.sent) == 3 and "no more messages" in sms.sent[2].body


async def _settled(store: Store, row_id: int):  # type: ignore[no-untyped-def]
    while (row := await store.outbox_get(row_id)) is None or row.state in ("queued", "sending"):
        await asyncio.sleep(0.02)
    return row


async def _statuses(store: Store, thread: int) -> list[tuple[str, str, str]]:
    return [(m["direction"], m["body"], m["status"]) for m in await store.thread_view(thread)]


async def test_a_taken_over_thread_gets_no_assistant_reply_even_after_restart_until_handed_back(
        store: Store) -> None:
    sms = RecordingChannel("sms")
    outbox = Outbox(store, {"sms": sms})
    talk = Conversations(SITE, Retriever(store), store, outbox, ConversationSettings(buffer_s=30))
    await outbox.start(talk.on_inbound)
    await talk.on_inbound(text("hello?"))  # pending (the debounce waits 30 s) when the operator takes over
    await talk.close()
    await outbox.stop()
    thread = await store.thread_for("+15550102030")
    assert await store.thread_hold(thread, "oli") == "oli"
    assert await store.thread_hold(thread, "sam") == "oli"  # one holder at a time
    talk = Conversations(SITE, Retriever(store), store, outbox, ConversationSettings(buffer_s=0.1))
    await outbox.start(talk.on_inbound)
    await talk.start()  # the text left pending is not answered: the thread is held
    try:
        await talk.on_inbound(text("do you take cigna?"))
        # Settled `held` when on_inbound returns (before the channel acks): no timer, no reply queued.
        assert await _statuses(store, thread) == [("in", "hello?", "held"), ("in", "do you take cigna?", "held")]
        assert await store.pending_inbound() == [] and await store.outbox_rows() == []
        assert [t["waiting"] for t in await store.text_threads(["sms"])] == [2]

        outbox_id = await talk.staff_reply(thread, "Yes we do, see you Monday. Oli", "oli")
        [mine] = await sms.wait_for(1)
        assert mine.id == outbox_id and mine.to == "+1 (555) 010-2030" and mine.body.startswith("Yes we do")
        view = await store.thread_view(thread)
        assert (view[-1]["direction"], view[-1]["sent_by"], view[-1]["outbox_id"]) == ("out", "oli", outbox_id)
        assert [t["waiting"] for t in await store.text_threads(["sms"])] == [0]  # the reply answered them

        await talk.on_inbound(text("thanks!"))  # held again until hand-back, which does not answer it
        assert await store.thread_release(thread) and not await store.thread_release(thread)
        assert (await store.thread_view(thread))[-1]["status"] == "staff"
        await talk.on_inbound(text("do you take cigna?"))
        messages = await sms.wait_for(2)
        assert messages[1].body.startswith(CIGNA.answer) and len(messages) == 2
        assert [m.body for m in await store.pending_inbound()] == []
    finally:
        await talk.close()
        await outbox.stop()


async def test_an_operator_reply_to_an_email_thread_is_a_reply_mail(store: Store) -> None:
    mail = RecordingChannel("email")
    outbox = Outbox(store, {"email": mail})
    talk = Conversations(SITE, Retriever(store), store, outbox, ConversationSettings(buffer_s=30))
    await outbox.start(talk.on_inbound)
    try:
        await talk.on_inbound(InboundMessage(channel="email", sender="pat@example.org", body="Parking?",
                                             at=time.time(), subject="Parking"))
        thread = await store.thread_for_address("pat@example.org")
        await store.thread_hold(thread, "oli")
        await talk.staff_reply(thread, "Free parking behind the building.", "oli")
        [sent] = await mail.wait_for(1)
        assert sent.to == "pat@example.org" and sent.subject == "Re: Parking" and "behind the building" in sent.body
    finally:
        await talk.close()
        await outbox.stop()
