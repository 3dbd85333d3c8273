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


@dataclass(frozen=True)
class ChatAction:
    kind: str  # transfer | message_offered | message_taken | escalation | emergency
    person: str | None = None


@dataclass(frozen=True)
class ChatTurn:
    text: str | None  # None: nothing to say (thanks, a goodbye)
    actions: tuple[ChatAction, ...]
    at: float  # when the reply was made


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
                 on_message_taken: Callable[[TakenMessage], Awaitable[None]] | None = None) -> None:
        self.site, self.retriever, self.store, self.engine = site, retriever, store, engine
        self.max_reply_tokens, self.on_message_taken = max_reply_tokens, on_message_taken
        self._dialogs = Dialogs()
        self._threads = KeyedLocks()  # one turn at a time per thread: a Dialog is sequential

    @staticmethod
    def key(owner: str, external_id: str) -> str:
        """The thread's contact key: per API key, so one integrator never reads another's chats
        (key names have no ':')."""
        return f"{CHANNEL}:{owner}:{external_id}"

    async def say(self, owner: str, external_id: str, text: str) -> ChatTurn:
        key, received = self.key(owner, external_id), time.time()
        async with self._threads.hold(key):
            thread_id = await self.store.chat_thread(key, create=True)
            assert thread_id is not None
            dialog = self._dialogs.get(thread_id, lambda: Dialog(
                self.site, self.retriever, self.store, call_id=f"{CHANNEL}-thread-{thread_id}", caller=None,
                engine=self.engine, max_reply_tokens=self.max_reply_tokens, written=True,
                on_message_taken=self.on_message_taken))
            written = await answer(dialog, text, at=received)
            if written.text is None:
                self._dialogs.drop(thread_id)  # a goodbye: the next message starts afresh, as by SMS
            await self.store.add_thread_message(thread_id, CHANNEL, "in", text, "answered", at=received)
            turn = ChatTurn(written.text, actions(written.replies), time.time())
            if turn.text is not None:
                await self.store.add_thread_message(thread_id, CHANNEL, "out", turn.text, "sent", at=turn.at)
        log.info("chat answered thread=%d actions=%s sources=%s", thread_id,
                 ",".join(a.kind for a in turn.actions), ",".join(r.source for r in written.replies))
        return turn

    async def history(self, owner: str, external_id: str) -> list[ThreadMessage] | None:
        """Both sides, oldest first; None if this key has no such thread."""
        thread_id = await self.store.chat_thread(self.key(owner, external_id), create=False)
        return None if thread_id is None else await self.store.thread_messages(thread_id)
