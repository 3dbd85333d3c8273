"""The integrators' HTTP API inside the daemon: health, readiness, metrics, messages, one-time codes, chats.

One event loop with the calls: handlers only await the store (its own thread) and the outbox, so
a busy API never holds the media clock. Errors are RFC 9457 problem documents; bad input is a 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import string
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any, TypeVar

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel, ValidationError

from channels.outbox import Outbox
from gateway.asterisk.voice import CODE_SUBJECT
from gateway.config import HttpSettings
from gateway.http.auth import Authenticator, RateLimited, Unauthorized
from gateway.http.bodies import (
    CallIn, ChatDelta, ChatReply, Health, MessageAccepted, MessageIn, MessageStatus, OtpAccepted, OtpIn, OtpVerdict,
    OtpVerifyIn, Outgoing, ProblemDocument, Ready, Step, ThreadAction, ThreadEntry, ThreadHistory, ThreadMessageIn,
    ThreadReply, destination,
)
from gateway.http.metrics import CONTENT_TYPE, Metrics
from gateway.http.limits import KeyedLocks
from gateway.http.openapi import Operation, document
from gateway.http.public import Visitors
from gateway.http.otp import HOUR_S, OneTimeCodes, Refused, load_hmac_key
from gateway.services import Services
from gateway.http.chats import Chats, ChatTurn
from models.records import ApiKey

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
B = TypeVar("B", bound=BaseModel)
KEY = web.RequestKey("api_key", ApiKey)  # the request's key, once authenticated
PUBLIC_OWNER = "*public"  # the threads of keyless chats: not a key name (see keys.new_key), so no key reads them
PUBLIC_RETRY_S = 30  # Retry-After of a refused public chat: until one of the address's chats ends
HISTORY_LIMIT, HISTORY_MAX = 50, 200  # messages in a page of a thread's history: by default, at most
_EXTERNAL_ID = re.compile(r"[A-Za-z0-9._@:-]{1,128}")  # an integrator's chat id: no spaces, slashes or controls


class Problem(Exception):
    """An RFC 9457 answer: raised anywhere in a handler, rendered by the middleware."""

    def __init__(self, status: int, detail: str, *, retry_after: int | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.retry_after, self.extra = status, detail, retry_after, extra


def answer(model: BaseModel, status: int = 200, *, content_type: str = "application/json",
           headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=model.model_dump_json(exclude_none=content_type == PROBLEM), status=status,
                        content_type=content_type, headers=headers)


def problem_document(status: int, detail: str, **extra: Any) -> ProblemDocument:
    return ProblemDocument(title=HTTPStatus(status).phrase, status=status, detail=detail, **extra)


def problem(status: int, detail: str, retry_after: int | None = None, **extra: Any) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return answer(problem_document(status, detail, **extra), status, content_type=PROBLEM, headers=headers)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds")


def _invalid(exc: ValidationError) -> Problem:
    errors = [{"loc": ".".join(str(p) for p in e["loc"]) or "(body)", "msg": e["msg"]}
              for e in exc.errors(include_url=False, include_input=False)[:20]]
    return Problem(422, "invalid body", errors=errors)


async def _body(request: web.Request, model: type[B]) -> B:
    raw = await request.read()  # 413 past client_max_size
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None


class HttpApi:
    def __init__(self, settings: HttpSettings, services: Services, *,
                 route: Callable[[str], tuple[Outbox, str] | None], planes: Callable[[], dict[str, bool]],
                 emit: Callable[[str, dict[str, Any]], Awaitable[None]],
                 calls_active: Callable[[], int], ami_connected: Callable[[], bool] | None, chats: Chats) -> None:
        self.settings, self.services, self.store, self.chats = settings, services, services.store, chats
        self._route, self._planes = route, planes  # route: API channel kind -> (outbox, its channel name)
        self._emit = emit  # a webhook event
        self.metrics = Metrics(calls_active=calls_active, ai_turns=lambda: services.turns_in_use,
                               ami_connected=ami_connected)
        self.auth = Authenticator(self.store)
        self._destinations = KeyedLocks()  # limits per destination hold under concurrent requests
        self.codes = OneTimeCodes(self.store, settings.otp, load_hmac_key(services.config.data_dir))
        routes: list[tuple[Operation, Handler]] = [
            (Operation("GET", "/health", "liveness", answers={200: Health}), self.health),
            (Operation("GET", "/ready", "models, store, AMI, ARI and channels up", answers={200: Ready},
                       problems={503: "something is down: `checks` says what"}), self.ready),
            (Operation("GET", "/metrics", "Prometheus text exposition", answers={200: "text/plain"}), self.metrics_page),
            (Operation("GET", "/v1/openapi.json", "this document", answers={200: "application/json"}), self.openapi),
            (Operation("POST", "/v1/messages", "queue a message (sms, sip, email, voice)", "messages:send",
                       MessageIn, {202: MessageAccepted}, {429: "over the key's rate or the destination's hourly "
                                                                "limit (Retry-After)"}), self.send_message),
            (Operation("GET", "/v1/messages/{id}", "a message's status and timeline", "messages:read",
                       answers={200: MessageStatus}, problems={404: "no such message of this key"}),
             self.message_status),
            (Operation("POST", "/v1/calls", "place an outbound call that speaks a text, by AMI Originate",
                       "calls:create", CallIn, {202: MessageAccepted},
                       {422: "bad body, or no AMI on this daemon", 429: "over the key's rate or the destination's "
                                                                         "hourly limit (Retry-After)"}),
             self.place_call),
            (Operation("GET", "/v1/calls/{id}", "a call's status and timeline (ringing is `sending`, answered "
                       "is `delivered`)", "calls:create", answers={200: MessageStatus},
                       problems={404: "no such call of this key"}), self.call_status),
            (Operation("POST", "/v1/otp", "send a one-time code", "otp:send", OtpIn, {202: OtpAccepted},
                       {429: "over the key's rate, the resend cooldown or the destination's hourly limit "
                             "(Retry-After)"}), self.send_code),
            (Operation("POST", "/v1/otp/verify", "check a one-time code (it is used up when valid)", "otp:verify",
                       OtpVerifyIn, {200: OtpVerdict}, {404: "no such code", 429: "no attempts left"}),
             self.verify_code),
            (Operation("POST", "/v1/threads/{external_id}/messages", "a message in a chat; the assistant's reply",
                       "threads:write", ThreadMessageIn, {200: ThreadReply},
                       {422: "bad body or external_id (1-128 of A-Z a-z 0-9 . _ @ : -)"}), self.thread_message),
            (Operation("GET", "/v1/threads/{external_id}", "a chat's history, both sides, a page at a time",
                       "threads:read", answers={200: ThreadHistory},
                       problems={404: "no such thread of this key", 422: "bad external_id, limit or before"},
                       query={"limit": f"messages in the page, newest (default {HISTORY_LIMIT}, at most "
                                       f"{HISTORY_MAX})", "before": "the `next` of the previous page: older messages"}),
             self.thread_history),
            (Operation("GET", "/v1/chat", "a live chat over a WebSocket (?external_id=, else a new thread): each text "
                       "frame is a message, answered by `delta` frames as the reply is produced, then a `reply` "
                       "frame (or a problem document). While staff hold the chat (the dashboard's take-over) a message "
                       "is answered by a `reply` frame with `held: true` and no reply, and staff replies are pushed "
                       "as `reply` frames `from: staff`. Without a key when http.public_chat is enabled: then "
                       "each connection is a new thread", "threads:write", answers={101: ChatReply}), self.chat),
        ]
        self._openapi = document([op for op, _ in routes], version="1")
        self.app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[self._middleware])
        public = self.public_chat if settings.public_chat.enabled else None
        self.app.add_routes([web.route(op.method, op.path, self._keyed(
            op.scope, handler, keyless=public if handler == self.chat else None)) for op, handler in routes])
        self._visitors = Visitors(settings.public_chat)
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()  # open chats, closed at stop
        self.port = 0

    async def start(self) -> None:
        """Raises OSError if the port is taken."""
        # A stop waits for requests in hand, briefly: each is a few store round trips.
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("http listening host=%s port=%d", self.settings.host, self.port)

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.auth.close()

    # ---- middleware: problems, keys, scopes, rates, audit, metrics --------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            response = await handler(request)
        except Problem as exc:
            response = problem(exc.status, exc.detail, exc.retry_after, **exc.extra)
        except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413 ...
            response = problem(exc.status, exc.reason)
        except Exception:
            log.exception("http handler failed route=%s", route)
            response = problem(500, "internal error; see the daemon's log")
        self.metrics.http_requests.labels(route, str(response.status)).inc()
        key = request.get(KEY)
        if key is not None:
            self.auth.audit(key.name, request.method, route, response.status)
        return response

    def _keyed(self, needed: str | None, handler: Handler, keyless: Handler | None = None) -> Handler:
        """The handler behind the key check its route's scope asks for (wrapped where it is registered,
        so a route cannot lose its check on the way); a request without a key goes to `keyless` if given."""
        if needed is None:
            return handler

        async def checked(request: web.Request) -> web.StreamResponse:
            if keyless is not None and "Authorization" not in request.headers:
                return await keyless(request)
            try:
                key = request[KEY] = await self.auth.authenticate(request.headers.get("Authorization"))
            except Unauthorized as exc:
                raise Problem(401, str(exc)) from None
            if needed not in key.scopes and "admin" not in key.scopes:
                raise Problem(403, f"this key lacks the scope {needed}")
            try:
                self.auth.take(key)
            except RateLimited as exc:
                raise Problem(429, str(exc), retry_after=exc.retry_after) from None
            return await handler(request)
        return checked

    # ---- operations -------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return answer(Health())

    async def ready(self, request: web.Request) -> web.Response:
        """Models are loaded before the daemon exists; the store is asked; the rest is the daemon's."""
        checks = {"models": "up", "store": "up"}
        try:
            await self.store.knowledge_count()
        except Exception as exc:
            log.warning("ready: store check failed error=%s", exc)
            checks["store"] = "down"
        checks.update({name: "up" if up else "down" for name, up in self._planes().items()})
        down = sorted(name for name, state in checks.items() if state == "down")
        if down:
            return problem(503, f"not up: {', '.join(down)}", checks=checks)
        return answer(Ready(checks=checks))  # type: ignore[arg-type]

    async def metrics_page(self, request: web.Request) -> web.Response:
        body = await self.metrics.exposition(self.store)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self._openapi)

    # ---- messages -----------------------------------------------------------------------------------
    def _channel(self, kind: str) -> tuple[Outbox, str]:
        """The outbox and channel for an API channel kind; 422 if this daemon has none."""
        found = self._route(kind)
        if found is None:
            raise Problem(422, f"channel {kind!r} is not configured on this daemon")
        return found

    @staticmethod
    def _destination(kind: str, to: str) -> str:
        try:
            return destination(kind, to)
        except ValueError as exc:
            raise Problem(422, str(exc)) from None

    async def send_message(self, request: web.Request) -> web.Response:
        body = await _body(request, MessageIn)
        subject = (body.subject or self.services.config.site.name) if body.channel == "email" else None
        return await self._queue(request[KEY], body.channel, body, subject)

    async def place_call(self, request: web.Request) -> web.Response:
        """A call is a voice message: the same outbox and AMI Originate as `channel: voice`."""
        return await self._queue(request[KEY], "voice", await _body(request, CallIn), None)

    async def _queue(self, key: ApiKey, kind: str, body: Outgoing, subject: str | None) -> web.Response:
        (outbox, channel), to = self._channel(kind), self._destination(kind, body.to)
        text = body.text if body.text is not None else self._render(body.template or "", body.vars)
        # Scoped by key: two integrators' keys never collide, and "otp:" rows cannot be forged.
        idempotency = f"api:{key.name}:{body.idempotency_key}" if body.idempotency_key else None
        async with self._destinations.hold(to):
            limit, now = self.settings.messages_per_destination_hourly, time.time()
            count, oldest = await self.store.outbox_count_to(to, now - HOUR_S)
            if count >= limit:
                raise Problem(429, f"over {limit} messages to this destination per hour",
                              retry_after=max(1, math.ceil(oldest + HOUR_S - now)))
            row_id = await outbox.enqueue(channel, to, text, subject=subject, idempotency_key=idempotency,
                                          send_at=body.send_at.timestamp() if body.send_at else None, owner=key.name)
        # Only a repeated idempotency key can name a message that is already further along.
        row = await self.store.outbox_get(row_id) if idempotency else None
        return answer(MessageAccepted(id=row_id, status=row.state if row is not None else "queued"), 202)

    def _render(self, name: str, variables: dict[str, str]) -> str:
        template = self.settings.templates.get(name)
        if template is None:
            raise Problem(422, f"no template {name!r} (http.templates in the config)")
        try:
            text = string.Template(template).substitute(variables)
        except (KeyError, ValueError) as exc:
            raise Problem(422, f"template {name!r}: missing or bad variable {exc}") from None
        if len(text) > 4000:
            raise Problem(422, "the rendered text is longer than 4000 characters")
        return text

    async def message_status(self, request: web.Request) -> web.Response:
        return await self._status(request, "message", lambda channel: True)

    async def call_status(self, request: web.Request) -> web.Response:
        return await self._status(request, "call", lambda channel: channel == "voice")

    async def _status(self, request: web.Request, what: str, kind: Callable[[str], bool]) -> web.Response:
        key: ApiKey = request[KEY]
        raw = request.match_info["id"]
        row = await self.store.outbox_get(int(raw)) if re.fullmatch(r"[0-9]{1,18}", raw) else None
        # Only the key that queued a message (or an admin key) sees it; others learn nothing, not even that it exists.
        if (row is None or row.owner is None or not kind(row.channel)
                or (row.owner != key.name and "admin" not in key.scopes)):
            raise Problem(404, f"no such {what}")
        events = await self.store.outbox_events(row.id)
        return answer(MessageStatus(
            id=row.id, channel=row.channel, status=row.state, attempts=row.attempts, last_error=row.last_error,
            created_at=_iso(row.created_at), send_at=_iso(row.next_attempt_at) if row.state == "queued" else None,
            sent_at=_iso(row.sent_at) if row.sent_at is not None else None,
            timeline=[Step(status=e["state"], at=_iso(e["at"]), attempts=e["attempts"], error=e["error"])
                      for e in events]))

    # ---- one-time codes -----------------------------------------------------------------------------
    async def send_code(self, request: web.Request) -> web.Response:
        body = await _body(request, OtpIn)
        key: ApiKey = request[KEY]
        (outbox, channel), to = self._channel(body.channel), self._destination(body.channel, body.to)
        try:
            async with self._destinations.hold(f"otp:{to}"):
                new = await self.codes.create(key.name, body.channel, to, body.purpose)
        except Refused as exc:
            raise Problem(429, str(exc), retry_after=max(1, math.ceil(exc.retry_after_s))) from None
        if body.channel == "voice":  # the call reads the code digit by digit, twice
            text, subject = new.code, CODE_SUBJECT
        else:
            text = self.codes.message(new.code)
            subject = f"{self.services.config.site.name}: your code" if body.channel == "email" else None
        # "otp:" rows have their text erased once settled (a trigger of migration 4).
        outbox_id = await outbox.enqueue(channel, to, text, subject=subject, idempotency_key=f"otp:{new.record.id}",
                                         owner=key.name)
        await self.store.otp_sent_via(new.record.id, outbox_id)
        self.metrics.otp.labels("sent").inc()
        log.info("otp queued id=%s channel=%s outbox=%d", new.record.id, body.channel, outbox_id)
        return answer(OtpAccepted(id=new.record.id, expires_at=_iso(new.record.expires_at)), 202)

    async def verify_code(self, request: web.Request) -> web.Response:
        body = await _body(request, OtpVerifyIn)
        verdict = await self.codes.verify(body.id, body.code)
        self.metrics.otp.labels(f"verify_{verdict.outcome}").inc()
        if verdict.outcome == "valid":
            await self._emit("otp.verified", {"id": body.id})
        if verdict.outcome == "unknown":
            raise Problem(404, "no such code")
        if verdict.outcome == "exhausted":
            raise Problem(429, "no attempts left for this code: request a new one",
                          retry_after=max(1, math.ceil(self.settings.otp.resend_cooldown_s)))
        return answer(OtpVerdict(valid=verdict.outcome == "valid", attempts_left=verdict.attempts_left))

    # ---- threads ------------------------------------------------------------------------------------
    @staticmethod
    def _external_id(request: web.Request) -> str:
        return HttpApi._checked_id(request.match_info["external_id"])

    @staticmethod
    def _checked_id(external_id: str) -> str:
        if not _EXTERNAL_ID.fullmatch(external_id):
            raise Problem(422, "external_id: 1 to 128 letters, digits and . _ @ : -")
        return external_id

    async def thread_message(self, request: web.Request) -> web.Response:
        external_id = self._external_id(request)
        body = await _body(request, ThreadMessageIn)
        return answer(self._reply(external_id, await self.chats.say(request[KEY].name, external_id, body.text)))

    @staticmethod
    def _reply(external_id: str, turn: ChatTurn) -> ThreadReply:
        return ThreadReply(external_id=external_id, reply=turn.text, at=_iso(turn.at), held=turn.held, actions=[
            ThreadAction(type=a.kind, person=a.person) for a in turn.actions])  # type: ignore[arg-type]

    @staticmethod
    def _chat_reply(external_id: str, turn: ChatTurn) -> str:
        """A WebSocket `reply` frame: the assistant's answer, the note that staff hold the chat, or their reply."""
        reply = HttpApi._reply(external_id, turn)
        return ChatReply(**reply.model_dump(), sender="staff" if turn.by_staff else "assistant").model_dump_json()

    async def thread_history(self, request: web.Request) -> web.Response:
        external_id = self._external_id(request)
        limit, before = self._page(request.query)
        page = await self.chats.history(request[KEY].name, external_id, limit, before)
        if page is None:
            raise Problem(404, "no such thread")
        messages, more = page
        return answer(ThreadHistory(external_id=external_id, next=str(messages[0].id) if more else None, messages=[
            ThreadEntry(role="user" if m.direction == "in" else "staff" if m.sent_by else "assistant", text=m.body,
                        at=_iso(m.at))
            for m in messages]))

    @staticmethod
    def _page(query: Mapping[str, str]) -> tuple[int, int | None]:
        """?limit= (1 to HISTORY_MAX, default HISTORY_LIMIT) and ?before= (a `next` cursor), or 422."""
        limit, before = query.get("limit", str(HISTORY_LIMIT)), query.get("before")
        if not re.fullmatch(r"[0-9]{1,4}", limit) or not 1 <= int(limit) <= HISTORY_MAX:
            raise Problem(422, f"limit: a number from 1 to {HISTORY_MAX}")
        if before is not None and not re.fullmatch(r"[0-9]{1,18}", before):
            raise Problem(422, "before: the `next` of a previous page")
        return int(limit), int(before) if before is not None else None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """One thread per connection (?external_id=, else a new one), its messages answered in order."""
        key: ApiKey = request[KEY]
        given = request.query.get("external_id")
        external_id = self._checked_id(given) if given is not None else f"ws-{uuid.uuid4().hex}"
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_body_bytes, heartbeat=30.0)
        await ws.prepare(request)
        return await self._converse(ws, key.name, external_id, lambda: self.auth.take(key), idle_s=None)

    async def public_chat(self, request: web.Request) -> web.StreamResponse:
        """WS /v1/chat without a key (http.public_chat): only from the allowed Origins, a few chats and
        messages a minute per address, and each connection its own new thread (no ?external_id=: a
        visitor reads and continues nobody else's chat)."""
        public = self.settings.public_chat
        if request.headers.get("Origin") not in public.origins:
            raise Problem(403, "this Origin may not open the public chat (http.public_chat.origins)")
        address = request.remote or "unknown"
        if not self._visitors.admit(address):
            raise Problem(429, f"over {public.max_connections_per_ip} open chats from this address",
                          retry_after=PUBLIC_RETRY_S)
        try:
            ws = web.WebSocketResponse(max_msg_size=public.max_message_bytes, heartbeat=30.0)
            await ws.prepare(request)
            log.info("public chat opened")
            return await self._converse(ws, PUBLIC_OWNER, f"public-{uuid.uuid4().hex}",
                                        lambda: self._visitors.take(address), idle_s=public.idle_timeout_s)
        finally:
            self._visitors.leave(address)

    async def _converse(self, ws: web.WebSocketResponse, owner: str, external_id: str, take: Callable[[], None],
                        idle_s: float | None) -> web.WebSocketResponse:
        """Answer each text frame in turn; `take` counts a message against its limit (raises RateLimited).
        A frame over the socket's max_msg_size ends the chat (aiohttp closes with 1009); so does silence
        for `idle_s` (1000)."""
        async def push(turn: ChatTurn) -> None:  # a staff reply, sent between this chat's own frames
            await _send(ws, self._chat_reply(external_id, turn))

        self._sockets.add(ws)
        closed = self.chats.opened(owner, external_id, push)
        try:
            while not ws.closed:
                try:
                    frame = await ws.receive(timeout=idle_s)
                except asyncio.TimeoutError:
                    await ws.close(code=WSCloseCode.OK, message=b"idle")
                    break
                if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                answer = (await self._chat_turn(ws, owner, external_id, take, frame.data)
                          if frame.type is WSMsgType.TEXT else _frame(problem_document(422, "send text frames")))
                await _send(ws, answer)  # gone meanwhile: the turn is stored all the same
        finally:
            closed()
            self._sockets.discard(ws)
        return ws

    async def _chat_turn(self, ws: web.WebSocketResponse, owner: str, external_id: str, take: Callable[[], None],
                         text: str) -> str:
        """A frame's answer: the reply (after its deltas), or a problem document (the connection stays open)."""
        async def delta(piece: str) -> None:
            # A client gone mid-reply costs it the rest of the stream, not the turn: that is still stored.
            await _send(ws, ChatDelta(external_id=external_id, text=piece).model_dump_json())

        try:
            take()  # each message counts against the key's (or the address's) rate, like a request
            body = ThreadMessageIn.model_validate({"text": text})
            turn = await self.chats.say(owner, external_id, body.text, on_delta=delta)
        except RateLimited as exc:
            return _frame(problem_document(429, str(exc), retry_after=exc.retry_after))
        except ValidationError as exc:
            invalid = _invalid(exc)
            return _frame(problem_document(422, invalid.detail, **invalid.extra))
        except Exception:
            log.exception("chat turn failed")
            return _frame(problem_document(500, "internal error; see the daemon's log"))
        return self._chat_reply(external_id, turn)


async def _send(ws: web.WebSocketResponse, text: str) -> None:
    """A frame to a chat, unless it is gone (closed, or the connection dropped)."""
    with contextlib.suppress(ConnectionError):
        if not ws.closed:
            await ws.send_str(text)


def _frame(document: ProblemDocument) -> str:
    return document.model_dump_json(exclude_none=True)
