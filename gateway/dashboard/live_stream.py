"""Live calls pushed to the browser: a Server-Sent Events stream of each call's state and last turns.

A stream sends a call when its state or its turns changed (each event carries the call's last turns
whole, so a page never shows one twice), and `gone` when a call ended. New turns are pushed: the store
tells every watcher of each committed turn, and only then are that call's turns read again. A call's
state (greeting, listening ...) lives in its session, not in the store: it is compared in memory every
`interval_s`. Each stream is a task owned here: at most `per_session` per staff session, ended at once
at sign-out, within `session_check_s` when the session expires or its user is removed, and when the
dashboard stops.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from gateway.dashboard.accounts import session_for
from gateway.tasks import TaskSet
from models.records import CallEvent, HelpRequest, Turn
from models.store import Store

LiveCalls = Callable[[], "list[tuple[str, str | None, str | None, str]]"]  # (id, caller, dialled, state)
TURNS_SENT = 6  # as many as the page shows


@dataclass(eq=False)
class _Stream:
    token: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    changed: set[str] = field(default_factory=set)  # calls with turns stored since they were last sent
    ended: bool = False


class LiveStream:
    def __init__(self, store: Store, live_calls: LiveCalls, *, per_session: int = 3, interval_s: float = 0.5,
                 session_check_s: float = 5.0) -> None:
        self.store, self._live_calls = store, live_calls
        self.per_session, self.interval_s, self.session_check_s = per_session, interval_s, session_check_s
        self._streams: set[_Stream] = set()
        self._tasks = TaskSet("dashboard live streams")
        self._unwatch = store.watch(self._recorded)

    async def serve(self, request: web.Request, token: str, headers: dict[str, str]) -> web.StreamResponse:
        if sum(s.token == token for s in self._streams) >= self.per_session:
            raise web.HTTPTooManyRequests(text=f"At most {self.per_session} live streams per session.")
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        stream = _Stream(token)
        self._streams.add(stream)
        try:
            await response.prepare(request)
            await self._tasks.spawn(self._pump(response, stream))
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the browser went away, or the dashboard stops: the stream just ends
        finally:
            self._streams.discard(stream)
        return response

    def signed_out(self, token: str) -> None:
        """End the session's streams now."""
        for stream in self._streams:
            if stream.token == token:
                stream.ended = True
                stream.wake.set()

    async def stop(self) -> None:
        self._unwatch()
        await self._tasks.finish()

    def _recorded(self, record: Turn | CallEvent | HelpRequest) -> None:
        """The store committed a record (in the event loop): wake the streams for a turn."""
        if isinstance(record, Turn):
            for stream in self._streams:
                stream.changed.add(record.call_id)
                stream.wake.set()

    async def _pump(self, response: web.StreamResponse, stream: _Stream) -> None:
        loop = asyncio.get_running_loop()
        sent: dict[str, tuple[str, list[dict[str, str]]]] = {}  # call -> (state, last turns) last sent
        checked = loop.time()  # the session was checked when the stream opened (the role guard)
        while not stream.ended:
            if loop.time() - checked >= self.session_check_s:
                if await session_for(self.store, stream.token) is None:
                    return
                checked = loop.time()
            changed, stream.changed = stream.changed, set()
            now = {call_id: state for call_id, _, _, state in self._live_calls()}
            for call_id, state in now.items():
                last = sent.get(call_id)
                turns = last[1] if last is not None and call_id not in changed else [
                    {"speaker": t.speaker, "text": t.text} for t in (await self.store.turns(call_id))[-TURNS_SENT:]]
                if last != (state, turns):
                    sent[call_id] = (state, turns)
                    await response.write(_event("call", {"id": call_id, "state": state, "turns": turns}))
            for call_id in sent.keys() - now.keys():
                del sent[call_id]
                await response.write(_event("gone", {"id": call_id}))
            await response.write(b": tick\n\n")  # a closed connection shows up here, not after an hour
            try:
                await asyncio.wait_for(stream.wake.wait(), self.interval_s)
            except TimeoutError:
                pass
            stream.wake.clear()


def _event(name: str, data: object) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
