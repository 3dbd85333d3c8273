"""Live calls pushed to the browser: a Server-Sent Events stream of each call's state and last turns.

The stream looks at the calls in progress every `interval_s` and sends a call when its state or its turns
changed (each event carries the call's last turns whole, so a page never shows one twice), and `gone`
when a call ended. Each stream is a task owned here: at most `per_session` per staff session, ended at
sign-out (checked each tick) and when the dashboard stops.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from aiohttp import web

from gateway.dashboard.accounts import session_for
from gateway.tasks import TaskSet
from models.store import Store

LiveCalls = Callable[[], "list[tuple[str, str | None, str | None, str]]"]  # (id, caller, dialled, state)
TURNS_SENT = 6  # as many as the page shows


class LiveStream:
    def __init__(self, store: Store, live_calls: LiveCalls, *, per_session: int = 3, interval_s: float = 0.5) -> None:
        self.store, self._live_calls = store, live_calls
        self.per_session, self.interval_s = per_session, interval_s
        self._open: dict[str, int] = {}  # session token -> streams open
        self._tasks = TaskSet("dashboard live streams")

    async def serve(self, request: web.Request, token: str, headers: dict[str, str]) -> web.StreamResponse:
        if self._open.get(token, 0) >= self.per_session:
            raise web.HTTPTooManyRequests(text=f"At most {self.per_session} live streams per session.")
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        self._open[token] = self._open.get(token, 0) + 1
        try:
            await response.prepare(request)
            await self._tasks.spawn(self._pump(response, token))
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the browser went away, or the dashboard stops: the stream just ends
        finally:
            self._open[token] -= 1
            if not self._open[token]:
                del self._open[token]
        return response

    async def stop(self) -> None:
        await self._tasks.finish()

    async def _pump(self, response: web.StreamResponse, token: str) -> None:
        sent: dict[str, tuple[str, int]] = {}  # call -> (state, turns) last sent
        while await session_for(self.store, token) is not None:
            now = {call_id: state for call_id, _, _, state in self._live_calls()}
            for call_id, state in now.items():
                turns = await self.store.turns(call_id)
                if sent.get(call_id) != (state, len(turns)):
                    sent[call_id] = (state, len(turns))
                    await response.write(_event("call", {"id": call_id, "state": state, "turns": [
                        {"speaker": t.speaker, "text": t.text} for t in turns[-TURNS_SENT:]]}))
            for call_id in sent.keys() - now.keys():
                del sent[call_id]
                await response.write(_event("gone", {"id": call_id}))
            await response.write(b": tick\n\n")  # a closed connection shows up here, not after an hour
            await asyncio.sleep(self.interval_s)


def _event(name: str, data: object) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
