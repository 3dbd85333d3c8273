"""The learning loop: staff answer a help request, the assistant learns it, the customer is told.

Answering (1) stores the answer as a learned knowledge entry: the Retriever re-reads the entries at
every question (llm/knowledge.py, only new texts are embedded), so the next caller is answered with
no restart; (2) queues the answer to the customer through the outbox, on the channel they asked on
(a text thread's own channel) or, for a call, by SMS, else email, else an outbound voice call; the
outbox row is recorded on the request, so its delivery status can be shown. Requests left open
past `help_requests.timeout` become unresolved (a periodic sweep owned by this desk).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from channels.outbox import Outbox
from gateway.config import HelpRequestSettings
from gateway.tasks import TaskSet, every
from models.records import HelpRequest, KnowledgeEntry
from models.store import NotFoundError, Store, normalize_address

log = logging.getLogger(__name__)

Route = Callable[[str], "tuple[Outbox, str] | None"]  # an API channel kind -> (outbox, its channel name)
_THREAD = re.compile(r"^(?P<channel>[a-z0-9_-]+)-thread-\d+$")  # a text conversation's call_id
_CALL_ORDER = ("sms", "sip", "voice")  # how a caller's number is reached


@dataclass(frozen=True)
class Followup:
    channel: str | None
    outbox_id: int | None
    note: str | None  # why nothing was sent


class HelpDesk:
    def __init__(self, store: Store, site_name: str, settings: HelpRequestSettings, *, route: Route,
                 outbox_of: Callable[[str], Outbox | None],
                 prepare_speech: Callable[[list[str]], Awaitable[object]] | None = None) -> None:
        self.store, self.site_name, self.settings = store, site_name, settings
        self._route = route
        self._outbox_of = outbox_of  # the outbox serving a channel name (a text thread's own channel)
        self._prepare_speech = prepare_speech  # synthesise a learned answer ahead of its first caller
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks = TaskSet("helpdesk")

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(every(self.settings.sweep_interval_s, self.sweep, "help request sweep"),
                                            name="help-request-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self._tasks.finish()

    async def sweep(self) -> int:
        """Open requests past the timeout become unresolved; how many did."""
        expired = await self.store.expire_help_requests(time.time() - self.settings.timeout_s)
        if expired:
            log.info("help requests unresolved count=%d timeout=%s", expired, self.settings.timeout)
        return expired

    async def answer(self, request_id: int, text: str, by: str) -> tuple[KnowledgeEntry, Followup]:
        """Learn the answer and tell the customer; raises NotFoundError, ValueError (empty answer)."""
        entry = await self.store.answer_help_request(request_id, text, by=by)
        followup = await self._tell_customer(request_id)
        if self._prepare_speech is not None:  # in the background: the page need not wait for the voice
            self._tasks.spawn(self._prepare_speech([entry.answer]))
        return entry, followup

    async def add_phrasing(self, request_id: int, entry_id: str, by: str) -> tuple[KnowledgeEntry, Followup]:
        """Close the request with an existing entry (its question becomes a phrasing of it) and send the
        customer that entry's answer, as for a new answer; raises NotFoundError, ValueError."""
        entry = await self.store.add_phrasing(request_id, entry_id, by=by)
        return entry, await self._tell_customer(request_id)

    async def _tell_customer(self, request_id: int) -> Followup:
        request = await self.store.help_request(request_id)
        if request is None:  # deleted meanwhile (retention)
            raise NotFoundError(f"no help request {request_id}")
        followup = await self._follow_up(request)
        await self.store.help_request_followup(request_id, followup.channel, followup.outbox_id, followup.note)
        log.info("help request followed up id=%d channel=%s outbox=%s note=%s", request_id,
                 followup.channel or "-", followup.outbox_id or "-", followup.note or "-")
        return followup

    async def _follow_up(self, request: HelpRequest) -> Followup:
        contact = (request.contact_number or "").strip()
        if not contact:
            return Followup(None, None, "no number or address to reply to")
        found = self._channel_for(request.call_id or "", contact)
        if found is None:
            return Followup(None, None, "no channel configured that reaches this contact")
        outbox, channel = found
        site = self.site_name
        body = f"{site}: you asked \"{request.question}\". {request.answer}"
        subject = f"{site}: the answer to your question" if channel == "email" else None
        # A corrected answer is sent again; the same answer twice is queued once.
        digest = hashlib.sha256((request.answer or "").encode()).hexdigest()[:16]
        try:
            outbox_id = await outbox.enqueue(channel, contact, body, subject=subject,
                                             idempotency_key=f"help-{request.id}-{digest}")
        except ValueError as exc:
            return Followup(channel, None, str(exc))
        return Followup(channel, outbox_id, None)

    def _channel_for(self, call_id: str, contact: str) -> tuple[Outbox, str] | None:
        """A text thread is answered on its own channel; a caller by the first of _CALL_ORDER configured
        (an email address by email)."""
        thread = _THREAD.match(call_id)
        if thread is not None:
            outbox = self._outbox_of(thread["channel"])
            if outbox is not None:
                return outbox, thread["channel"]
        kinds = ("email",) if "@" in (normalize_address(contact) or "") else _CALL_ORDER
        return next((found for kind in kinds if (found := self._route(kind)) is not None), None)
