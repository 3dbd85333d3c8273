"""The outbox on the dashboard (supervisor and above): what is queued, what failed and why, what went
out; a failed message can be sent again or dismissed (taken off the list), a queued one (e.g. waiting
to retry) cancelled."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from channels.outbox import Outbox
from gateway.dashboard import pages
from gateway.dashboard.pages import PREFIX
from gateway.dashboard.responses import SESSION, html, see_other
from models.store import NotFoundError, Store

Audit = Callable[..., Awaitable[None]]
SHOWN = 100  # rows per state group


class OutboxPage:
    def __init__(self, store: Store, outbox: Outbox | None, audit: Audit) -> None:
        self.store, self.outbox, self._audit = store, outbox, audit

    async def show(self, request: web.Request) -> web.Response:
        groups = [(title, await self.store.outbox_latest(states, SHOWN)) for title, states in (
            ("Queued", ["queued", "sending"]), ("Failed", ["failed"]), ("Sent", ["sent", "delivered"]))]
        return html(pages.outbox_page(request[SESSION], groups, SHOWN))

    async def act(self, request: web.Request) -> web.StreamResponse:
        session, row_id, action = request[SESSION], int(request.match_info["id"]), request.match_info["action"]
        target = f"outbox message {row_id}"
        try:
            if action == "retry":
                if self.outbox is None:
                    raise NotFoundError("no outbox is running")
                await self.outbox.send_again(row_id)
            elif action == "dismiss":
                await self.store.outbox_dismiss(row_id, session.user.name)
            else:
                await self.store.outbox_cancel(row_id, f"cancelled by {session.user.name}")
        except NotFoundError:
            await self._audit(request, action, "refused: not in a state for that", target=target)
            wanted = "queued" if action == "cancel" else "failed (and on the list)"
            return html(pages.message_page("Not done", f"Message #{row_id} is not {wanted} (any more).", session), 409)
        await self._audit(request, action, "ok", target=target)
        return see_other(f"{PREFIX}/outbox#out-{row_id}")
