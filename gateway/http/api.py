"""The integrators' HTTP API inside the daemon: health, readiness, metrics, messages, one-time codes, chats.

One event loop with the calls: handlers only await the store (its own thread) and the outbox, so
a busy API never holds the media clock. Errors are RFC 9457 problem documents; bad input is a 4xx.
"""

from __future__ import annotations

import logging
import math
import re
import string
import time
import uuid
from collections.abc import Awaitable, Callable
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
    Health, MessageAccepted, MessageIn, MessageStatus, OtpAccepted, OtpIn, OtpVerdict, OtpVerifyIn, ProblemDocument,
    Ready, Step, ThreadAction, ThreadEntry, ThreadHistory, ThreadMessageIn, ThreadReply, destination,
)
from gateway.http.metrics import CONTENT_TYPE, Metrics
from gateway.http.limits import KeyedLocks
from gateway.http.openapi import Operation, document
from gateway.http.otp import HOUR_S, OneTimeCodes, Refused, load_hmac_key
from gateway.services import Services
from gateway.http.chats import Chats, ChatTurn
from models.records import ApiKey

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
B = TypeVar("B", bound=BaseModel)
KEY = web.RequestKey("api_key", ApiKey)  # the request's key, once authenticated
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
            (Operation("POST", "/v1/otp", "send a one-time code", "otp:send", OtpIn, {202: OtpAccepted},
                       {429: "over the key's rate, the resend cooldown or the destination's hourly limit "
                             "(Retry-After)"}), self.send_code),
            (Operation("POST", "/v1/otp/verify", "check a one-time code (it is used up when valid)", "otp:verify",
                       OtpVerifyIn, {200: OtpVerdict}, {404: "no such code", 429: "no attempts left"}),
             self.verify_code),
            (Operation("POST", "/v1/threads/{external_id}/messages", "a message in a chat; the assistant's reply",
                       "threads:write", ThreadMessageIn, {200: ThreadReply},
                       {422: "bad body or external_id (1-128 of A-Z a-z 0-9 . _ @ : -)"}), self.thread_message),
            (Operation("GET", "/v1/threads/{external_id}", "a chat's history, both sides", "threads:read",
                       answers={200: ThreadHistory}, problems={404: "no such thread of this key"}),
             self.thread_history),
            (Operation("GET", "/v1/chat", "a live chat over a WebSocket (?external_id=, else a new thread): each text "
                       "frame is a message, each answer a JSON frame (this reply, or a problem document)",
                       "threads:write", answers={101: ThreadReply}), self.chat),
        ]
        self._openapi = document([op for op, _ in routes], version="1")
        self.app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[self._middleware])
        self.app.add_routes([web.route(op.method, op.path, self._keyed(op.scope, handler)) for op, handler in routes])
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

    def _keyed(self, needed: str | None, handler: Handler) -> Handler:
        """The handler behind the key check its route's scope asks for (wrapped where it is registered,
        so a route cannot lose its check on the way)."""
        if needed is None:
            return handler

        async def checked(request: web.Request) -> web.StreamResponse:
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
        key: ApiKey = request[KEY]
        (outbox, channel), to = self._channel(body.channel), self._destination(body.channel, body.to)
        text = body.text if body.text is not None else self._render(body.template or "", body.vars)
        subject = (body.subject or self.services.config.site.name) if body.channel == "email" else None
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
        key: ApiKey = request[KEY]
        raw = request.match_info["id"]
        row = await self.store.outbox_get(int(raw)) if re.fullmatch(r"[0-9]{1,18}", raw) else None
        # Only the key that queued a message (or an admin key) sees it; others learn nothing, not even that it exists.
        if row is None or row.owner is None or (row.owner != key.name and "admin" not in key.scopes):
            raise Problem(404, "no such message")
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
        return ThreadReply(external_id=external_id, reply=turn.text, at=_iso(turn.at), actions=[
            ThreadAction(type=a.kind, person=a.person) for a in turn.actions])  # type: ignore[arg-type]

    async def thread_history(self, request: web.Request) -> web.Response:
        external_id = self._external_id(request)
        messages = await self.chats.history(request[KEY].name, external_id)
        if messages is None:
            raise Problem(404, "no such thread")
        return answer(ThreadHistory(external_id=external_id, messages=[
            ThreadEntry(role="user" if m.direction == "in" else "assistant", text=m.body, at=_iso(m.at))
            for m in messages]))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """One thread per connection, its messages answered in order (the dialog is sequential)."""
        key: ApiKey = request[KEY]
        given = request.query.get("external_id")
        external_id = self._checked_id(given) if given is not None else f"ws-{uuid.uuid4().hex}"
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_body_bytes, heartbeat=30.0)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            async for frame in ws:
                if frame.type is WSMsgType.ERROR:
                    break
                await ws.send_str(await self._chat_turn(key, external_id, frame.data) if frame.type is WSMsgType.TEXT
                                  else problem_document(422, "send text frames").model_dump_json(exclude_none=True))
        finally:
            self._sockets.discard(ws)
        return ws

    async def _chat_turn(self, key: ApiKey, external_id: str, text: str) -> str:
        """A frame's answer: the reply, or a problem document (the connection stays open)."""
        try:
            self.auth.take(key)  # each message counts against the key's rate, like a request
            body = ThreadMessageIn.model_validate({"text": text})
            turn = await self.chats.say(key.name, external_id, body.text)
        except RateLimited as exc:
            return problem_document(429, str(exc), retry_after=exc.retry_after).model_dump_json(exclude_none=True)
        except ValidationError as exc:
            invalid = _invalid(exc)
            return problem_document(422, invalid.detail, **invalid.extra).model_dump_json(exclude_none=True)
        except Exception:
            log.exception("chat turn failed")
            return problem_document(500, "internal error; see the daemon's log").model_dump_json(exclude_none=True)
        return self._reply(external_id, turn).model_dump_json()
