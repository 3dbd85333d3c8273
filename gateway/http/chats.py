"""Chats over the HTTP API: a thread per (API key, external id), answered at once by the same written
Dialog as SMS and email (llm/written.py's `answer`).

The history is in the store (messages of channel "api", both sides, kept across restarts). The
dialog's own context (a message offered and not yet written, the topic a follow-up refers to) lives
in memory: it starts afresh after a restart, or when the thread's dialog was evicted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.http.limits import KeyedLocks
from llm.dialog import Action, Dialog, Reply
from llm.engine import LlmEngine
from llm.knowledge import Retriever
from llm.site import Site
from llm.written import Dialogs, answer
from models.records import TakenMessage, ThreadMessage
from models.store import Store

log = logging.getLogger(__name__)

CHANNEL = "api"


class Escalate(Protocol):
    """Tells the operator what in a turn's replies needs a person (the daemon's Conversations.escalate)."""

    def __call__(self, contact: str, channel: str, at: float, question: str, replies: tuple[Reply, ...],
                 *, key: str) -> Awaitable[None]: ...


@dataclass(frozen=True)
class ChatAction:
    kind: str  # transfer | message_offered | message_taken | escalation | emergency
    person: str | None = None


@dataclass(frozen=True)
class ChatTurn:
    text: str | None  # None: nothing to say (thanks, a goodbye), or held
    actions: tuple[ChatAction, ...]
    at: float  # when the reply was made
    held: bool = False  # a staff member holds the thread: the assistant did not answer
    by_staff: bool = False  # `text` is a staff member's reply (pushed to open chats)


Push = Callable[[ChatTurn], Awaitable[None]]  # a staff reply to an open chat (WebSocket)


def actions(replies: tuple[Reply, ...]) -> tuple[ChatAction, ...]:
    """What each reply did besides answering. A transfer by text is a message with the sender's words
    passed to that person (see `answer`); an offer is a message still to be written."""
    found: list[ChatAction] = []
    for reply in replies:
        person = reply.target.name if reply.target is not None else None
        if reply.source == "rule:emergency":
            found.append(ChatAction("emergency", person))
        elif reply.action is Action.TRANSFER:
            found.append(ChatAction("transfer", person))
        elif reply.action is Action.TAKE_MESSAGE:
            found.append(ChatAction("message_offered", person))
        elif reply.source == "rule:message_taken":
            found.append(ChatAction("message_taken", person))
        elif reply.action is Action.ESCALATE:  # a help request is stored for staff
            found.append(ChatAction("escalation"))
    return tuple(dict.fromkeys(found))


class Chats:
    def __init__(self, site: Site, retriever: Retriever, store: Store, *, engine: LlmEngine | None,
                 max_reply_tokens: int,
                 on_message_taken: Callable[[TakenMessage], Awaitable[None]] | None = None,
                 on_escalation: Escalate | None = None) -> None:
        self.site, self.retriever, self.store, self.engine = site, retriever, store, engine
        self.max_reply_tokens, self.on_message_taken = max_reply_tokens, on_message_taken
        self.on_escalation = on_escalation
        self._dialogs = Dialogs()
        self._threads = KeyedLocks()  # one turn at a time per thread: a Dialog is sequential
        self._open: dict[str, set[Push]] = {}  # thread key -> its open WebSocket chats

    @staticmethod
    def key(owner: str, external_id: str) -> str:
        """The thread's contact key: per API key, so one integrator never reads another's chats
        (key names have no ':')."""
        return f"{CHANNEL}:{owner}:{external_id}"

    async def say(self, owner: str, external_id: str, text: str,
                  on_delta: Callable[[str], Awaitable[None]] | None = None) -> ChatTurn:
        """The reply to `text` in this thread. `on_delta` gets the reply as it is produced, a question
        at a time: each call the next piece of it (see `_Stream`)."""
        key, received = self.key(owner, external_id), time.time()
        async with self._threads.hold(key):
            thread_id = await self.store.chat_thread(key, create=True)
            assert thread_id is not None
            if await self.store.thread_holder(thread_id) is not None:  # taken over (the dashboard): staff answer
                await self.store.add_thread_message(thread_id, CHANNEL, "in", text, "held", at=received)
                log.info("chat not answered thread=%d reason=taken over", thread_id)
                return ChatTurn(None, (), time.time(), held=True)
            dialog = self._dialogs.get(thread_id, lambda: Dialog(
                self.site, self.retriever, self.store, call_id=f"{CHANNEL}-thread-{thread_id}", caller=None,
                engine=self.engine, max_reply_tokens=self.max_reply_tokens, written=True,
                on_message_taken=self.on_message_taken))
            written = await answer(dialog, text, at=received,
                                   progress=_Stream(on_delta).draft if on_delta is not None else None)
            if written.text is None:
                self._dialogs.drop(thread_id)  # a goodbye: the next message starts afresh, as by SMS
            row_id = await self.store.add_thread_message(thread_id, CHANNEL, "in", text, "answered", at=received)
            await self._escalate(key, received, text, written.replies, row_id)
            turn = ChatTurn(written.text, actions(written.replies), time.time())
            if turn.text is not None:
                await self.store.add_thread_message(thread_id, CHANNEL, "out", turn.text, "sent", at=turn.at)
        log.info("chat answered thread=%d actions=%s sources=%s", thread_id,
                 ",".join(a.kind for a in turn.actions), ",".join(r.source for r in written.replies))
        return turn

    async def _escalate(self, contact: str, at: float, text: str, replies: tuple[Reply, ...], row_id: int) -> None:
        if self.on_escalation is None:
            return
        try:  # the help request is stored already: a note that cannot be queued must not cost the reply
            await self.on_escalation(contact, CHANNEL, at, text, replies, key=f"escalate-{CHANNEL}-{row_id}")
        except Exception:
            log.exception("operator note failed contact=%s", contact)

    def opened(self, owner: str, external_id: str, push: Push) -> Callable[[], None]:
        """An open chat on this thread gets staff replies through `push`; call the result when it closes."""
        key = self.key(owner, external_id)
        self._open.setdefault(key, set()).add(push)

        def closed() -> None:
            pushes = self._open.get(key, set())
            pushes.discard(push)
            if not pushes:
                self._open.pop(key, None)
        return closed

    async def staff_reply(self, thread_id: int, text: str, user_name: str) -> int:
        """A staff member's reply in an API chat: stored in the thread (GET /v1/threads/{id} shows it) and
        pushed to its open WebSocket chats; how many it reached. ValueError if the thread is not a chat."""
        key = await self.store.thread_contact(thread_id)
        if key is None or not key.startswith(f"{CHANNEL}:"):
            raise ValueError("this conversation is not an API chat")
        async with self._threads.hold(key):
            at = await self.store.staff_reply(thread_id, CHANNEL, text, None, user_name)
        pushes = list(self._open.get(key, ()))
        for push in pushes:
            await push(ChatTurn(text, (), at, held=True, by_staff=True))
        log.info("chat answered by staff thread=%d user=%s open_chats=%d", thread_id, user_name, len(pushes))
        return len(pushes)

    async def history(self, owner: str, external_id: str, limit: int,
                      before: int | None = None) -> tuple[list[ThreadMessage], bool] | None:
        """A page of both sides, oldest first, and whether older messages remain (see Store.thread_page);
        None if this key has no such thread."""
        thread_id = await self.store.chat_thread(self.key(owner, external_id), create=False)
        return None if thread_id is None else await self.store.thread_page(thread_id, limit, before)


class _Stream:
    """Drafts of a reply (after each question answered) as deltas: what a draft adds to the one before.
    Joined, the deltas are the reply, except when a later question reorders what was sent (an emergency
    goes first; an unanswered question is quoted once others are answered): then the stream stops and
    the final reply is the text to show."""

    def __init__(self, send: Callable[[str], Awaitable[None]]) -> None:
        self._send, self._sent, self._stopped = send, "", False

    async def draft(self, text: str | None) -> None:
        if self._stopped or not text or text == self._sent:
            return
        if not text.startswith(self._sent):
            self._stopped = True
            return
        delta, self._sent = text[len(self._sent):], text
        await self._send(delta)
