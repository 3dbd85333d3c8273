"""Text conversations on the dashboard: the threads (SMS, SIP MESSAGE, email), one thread's messages,
and an operator taking a thread over from the assistant, replying in it, and handing it back.

The hold lives in the store (threads.held_by), so it survives a restart; Conversations reads it before
answering. An operator's reply goes out through Conversations (the outbox, the thread's own channel).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.dashboard import pages
from gateway.dashboard.pages import PREFIX
from gateway.dashboard.responses import FORM, SESSION, html, see_other
from gateway.sessions.conversations import Conversations
from models.store import Store

Audit = Callable[..., Awaitable[None]]
REFRESH_S = 10  # the list reloads itself (no scripts): new texts on a held thread show as a count
MAX_REPLY = 1000


class Takeover:
    def __init__(self, store: Store, conversations: Conversations | None, audit: Audit) -> None:
        self.store, self.conversations, self._audit = store, conversations, audit

    def _channels(self) -> list[str]:
        return sorted(self.conversations.outbox.channels) if self.conversations is not None else []

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
                                      await self.store.thread_holder(thread_id)))

    async def act(self, request: web.Request) -> web.StreamResponse:
        session, thread_id, action = request[SESSION], int(request.match_info["id"]), request.match_info["action"]
        me, target = session.user.name, f"conversation {thread_id}"
        if self.conversations is None or not await self.store.thread_view(thread_id, limit=1):
            return html(pages.message_page("Not found", f"No conversation {thread_id}.", session), 404)
        holder = await self.store.thread_holder(thread_id)
        if action == "take":
            holder_name = await self.store.thread_hold(thread_id, me)
            if holder_name != me:
                await self._audit(request, "take over", f"refused: held by {holder_name}", target=target)
                return html(pages.message_page("Taken", f"{holder_name} holds this conversation.", session), 409)
            await self._audit(request, "take over", "ok", target=target)
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
                outbox_id = await self.conversations.staff_reply(thread_id, text, me)
            except ValueError as exc:
                await self._audit(request, "reply", f"not sent: {exc}", target=target)
                return html(pages.message_page("Not sent", str(exc), session), 409)
            await self._audit(request, "reply", f"queued message #{outbox_id}", target=target)
        return see_other(f"{PREFIX}/conversations/{thread_id}")
