"""Text conversations on the dashboard: the threads (SMS, SIP MESSAGE, email, HTTP API chats), one thread's
messages, and an operator taking a thread over from the assistant, replying in it, and handing it back.

The hold lives in the store (threads.held_by), so it survives a restart; Conversations and Chats read it
before answering. An operator's reply to a text goes out through Conversations (the outbox, the thread's
own channel); to an API chat through Chats (stored in the thread, pushed to its open WebSockets). A
supervisor or admin may release anyone's hold; a hold idle for `dashboard.hold_timeout` is released by
a periodic sweep this room owns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.config import DashboardSettings
from gateway.dashboard import pages
from gateway.dashboard.pages import PREFIX
from gateway.dashboard.responses import FORM, SESSION, html, see_other
from gateway.http.chats import CHANNEL as CHAT_CHANNEL
from gateway.http.chats import Chats
from gateway.sessions.conversations import Conversations
from gateway.tasks import TaskSet, every
from models.store import Store

log = logging.getLogger(__name__)

Audit = Callable[..., Awaitable[None]]
REFRESH_S = 10  # the list reloads itself (no scripts): new texts on a held thread show as a count
MAX_REPLY = 1000


class Takeover:
    def __init__(self, store: Store, conversations: Conversations | None, audit: Audit, *,
                 chats: Chats | None = None, settings: DashboardSettings | None = None) -> None:
        self.store, self.conversations, self.chats, self._audit = store, conversations, chats, audit
        self.settings = settings or DashboardSettings()
        self._sweeper = TaskSet("hold timeout")

    async def start(self) -> None:
        self._sweeper.spawn(every(self.settings.hold_sweep_interval_s, self.release_idle, "hold timeout sweep"))

    async def stop(self) -> None:
        await self._sweeper.finish()

    async def release_idle(self) -> list[tuple[int, str]]:
        """Hand back the holds with no activity from their holder for dashboard.hold_timeout (logged, audited)."""
        timeout = self.settings.hold_timeout
        released = await self.store.release_idle_holds(time.time() - self.settings.hold_timeout_s)
        for thread_id, holder in released:
            log.info("hold released thread=%d holder=%s reason=timeout timeout=%s", thread_id, holder, timeout)
            await self.store.staff_audit_write("system", "hand back", f"conversation {thread_id}",
                                               f"automatic: no activity from {holder} for {timeout}", None)
        return released

    def _channels(self) -> list[str]:
        texts = sorted(self.conversations.outbox.channels) if self.conversations is not None else []
        return texts + [CHAT_CHANNEL] if self.chats is not None else texts

    async def threads(self, request: web.Request) -> web.Response:
        channels = self._channels()
        rows = await self.store.text_threads(channels) if channels else []
        return html(pages.threads_page(request[SESSION], rows, REFRESH_S))

    async def thread(self, request: web.Request) -> web.Response:
        thread_id = int(request.match_info["id"])
        messages = await self.store.thread_view(thread_id)
        if not messages:
            return html(pages.message_page("Not found", f"No conversation {thread_id}.", request[SESSION]), 404)
        return html(pages.thread_page(request[SESSION], thread_id, messages,
                                      await self.store.thread_holder(thread_id),
                                      await self.store.thread_contact(thread_id)))

    async def act(self, request: web.Request) -> web.StreamResponse:
        session, thread_id, action = request[SESSION], int(request.match_info["id"]), request.match_info["action"]
        me, target = session.user.name, f"conversation {thread_id}"
        latest = await self.store.thread_view(thread_id, limit=1)
        if not latest or not self._channels():
            return html(pages.message_page("Not found", f"No conversation {thread_id}.", session), 404)
        holder = await self.store.thread_holder(thread_id)
        if action == "take":
            holder_name = await self.store.thread_hold(thread_id, me)
            if holder_name != me:
                await self._audit(request, "take over", f"refused: held by {holder_name}", target=target)
                return html(pages.message_page("Taken", f"{holder_name} holds this conversation.", session), 409)
            await self._audit(request, "take over", "ok", target=target)
        elif action == "release" and holder is not None and holder[0] != me and session.user.may("supervisor"):
            await self.store.thread_release(thread_id)  # a supervisor or admin overrides another's hold
            await self._audit(request, "hand back", f"ok: released {holder[0]}'s hold", target=target)
        elif holder is None or holder[0] != me:
            await self._audit(request, action, "refused: not held by you", target=target)
            return html(pages.message_page("Not yours", "Take this conversation over first.", session), 409)
        elif action == "release":
            await self.store.thread_release(thread_id)
            await self._audit(request, "hand back", "ok", target=target)
        else:
            text = str(request[FORM].get("text", "")).strip()
            if not text or len(text) > MAX_REPLY:
                return html(pages.message_page("Not sent", f"A reply has 1 to {MAX_REPLY} characters.", session), 422)
            try:
                outcome = await self._reply(thread_id, latest[0]["channel"], text, me)
            except ValueError as exc:
                await self._audit(request, "reply", f"not sent: {exc}", target=target)
                return html(pages.message_page("Not sent", str(exc), session), 409)
            await self._audit(request, "reply", outcome, target=target)
        return see_other(f"{PREFIX}/conversations/{thread_id}")

    async def _reply(self, thread_id: int, channel: str, text: str, me: str) -> str:
        """Send a holder's reply on the thread's own way; what happened, for the audit. ValueError: not sent."""
        if channel == CHAT_CHANNEL and self.chats is not None:
            reached = await self.chats.staff_reply(thread_id, text, me)
            return f"stored in the API chat, pushed to {reached} open chat(s)"
        if self.conversations is None:
            raise ValueError(f"channel {channel} is not configured")
        return f"queued message #{await self.conversations.staff_reply(thread_id, text, me)}"
