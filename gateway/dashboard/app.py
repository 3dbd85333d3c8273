"""The staff dashboard: an aiohttp application mounted by the daemon at /dashboard on its HTTP server.

Every page but sign-in needs a session (cookie: HttpOnly, SameSite=Strict, Secure over TLS or when
configured) and a role, checked here on the server for each route where it is registered. Every
POST carries the session's CSRF token (sign-in: a double-submit cookie) or is refused with 403.
Staff actions (sign-ins, refusals, answers) go to the audit log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from urllib.parse import quote
from zoneinfo import ZoneInfo

from aiohttp import web

from gateway.config import DashboardSettings
from gateway.dashboard import clock, pages
from gateway.dashboard.accounts import Throttle, check_password, close_session, open_session, session_for
from gateway.dashboard.helpdesk import HelpDesk
from gateway.dashboard.live_stream import LiveStream
from gateway.dashboard.outbox_page import OutboxPage
from gateway.dashboard.overview import overview_page, windows
from gateway.dashboard.pages import PREFIX
from gateway.dashboard.responses import FORM, SESSION, html, see_other
from gateway.dashboard.takeover import Takeover
from gateway.dashboard.users_page import UsersPage
from gateway.http.chats import Chats
from gateway.sessions.conversations import Conversations
from llm.knowledge import dump_knowledge_yaml
from llm.site import StaffMember, server_zone
from models.records import KnowledgeEntry
from models.store import CALL_OUTCOMES, NotFoundError, Store

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COOKIE = "sb_session"
LOGIN_COOKIE = "sb_login"  # the sign-in form's CSRF token, double-submitted
_HEADERS = {
    # No scripts at all, styles from our own stylesheet, forms only to us, never framed.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
SCRIPTS = web.RequestKey("scripts", bool)  # this page runs our own script file (live calls) and its event stream
_SCRIPT_CSP = "; script-src 'self'; connect-src 'self'"
LIVE_JS = files("gateway.dashboard").joinpath("live.js").read_text()


class Forbidden(Exception):
    """403, audited."""


Calls = Callable[[], "list[tuple[str, str | None, str | None, str]]"]  # in progress: (id, caller, dialled, state)
Capacity = Callable[[], "tuple[int, int]"]  # AI admission slots (in use, of)
TransferNow = Callable[[str, StaffMember], Awaitable[bool]]  # a live call to someone; False: no such call
CALLS_REFRESH_S = 5
VERIFY_AT_ONCE = 2


class Dashboard:
    def __init__(self, settings: DashboardSettings, store: Store, helpdesk: HelpDesk, *,
                 live_calls: Calls = list, conversations: Conversations | None = None, chats: Chats | None = None,
                 capacity: Capacity | None = None, transfer: TransferNow | None = None,
                 directory: tuple[StaffMember, ...] = (), zone: ZoneInfo | None = None) -> None:
        self.settings, self.store, self.helpdesk = settings, store, helpdesk
        self.directory = directory  # "Transfer now" targets: the front desk first, then the staff
        self.zone = zone or server_zone()  # site.timezone: what every page shows, filters and groups by
        self._live_calls, self._capacity, self._transfer = live_calls, capacity, transfer
        self.live = LiveStream(store, live_calls)
        self.texts = Takeover(store, conversations, self._audit, chats=chats, settings=settings)
        self.outbox = OutboxPage(store, conversations.outbox if conversations else None, self._audit)
        self.throttle = Throttle(settings.login_failures, settings.login_window_s)
        # An argon2 check takes ~130 ms of CPU and 64 MiB: a flood of sign-ins queues here rather than
        # taking every core and a gigabyte from the calls.
        self._checking = asyncio.Semaphore(VERIFY_AT_ONCE)
        self.users = UsersPage(store, self._audit, self._checking)
        self.app = web.Application(middlewares=[self._pages])
        self.app.add_routes([
            web.get("/style.css", self.style),
            web.get("/live.js", self.script),
            web.get("/login", self.login_form),
            web.post("/login", self.login),
            web.post("/logout", self._staff("operator", self.logout)),
            web.get("/", self._staff("operator", self.home)),
            web.get("/calls", self._staff("operator", self.calls)),
            web.post("/calls/{id}/transfer", self._staff("operator", self.transfer_now)),
            web.get("/calls/events", self._staff("operator", self.call_events)),
            web.get("/history", self._staff("operator", self.history)),
            web.get("/history/calls/{id}", self._staff("operator", self.history_call)),
            web.get("/overview", self._staff("supervisor", self.overview)),
            web.get("/help", self._staff("supervisor", self.help_requests)),
            web.post("/help/{id:[0-9]{1,18}}/{action:answer|phrasing}", self._staff("supervisor", self.answer)),
            web.get("/knowledge/export.yaml", self._staff("supervisor", self.export_knowledge)),
            web.get("/knowledge", self._staff("supervisor", self.knowledge)),
            web.post("/knowledge/{id}/edit", self._staff("supervisor", self.edit_entry)),
            web.post("/knowledge/{id}/{action:disable|enable}", self._staff("supervisor", self.toggle_entry)),
            web.get("/users", self._staff("admin", self.users.show)),
            web.post("/users/add", self._staff("admin", self.users.add)),
            web.post("/users/{name:[A-Za-z0-9._@-]{1,64}}/{action:role|password|remove}",
                     self._staff("admin", self.users.act)),
            web.get("/conversations", self._staff("operator", self.texts.threads)),
            web.get("/conversations/{id:[0-9]{1,18}}", self._staff("operator", self.texts.thread)),
            web.post("/conversations/{id:[0-9]{1,18}}/{action:take|reply|release}",
                     self._staff("operator", self.texts.act)),
            web.get("/outbox", self._staff("supervisor", self.outbox.show)),
            web.post("/outbox/{id:[0-9]{1,18}}/{action:retry|cancel|dismiss}",
                     self._staff("supervisor", self.outbox.act)),
        ])
        self.app.on_shutdown.append(lambda app: self.live.stop())  # before the server waits for handlers

    async def start(self) -> None:
        """The hold timeout's sweep (the help desk is started by its owner, the daemon, pages or not)."""
        await self.texts.start()

    async def stop(self) -> None:
        await self.texts.stop()

    # ---- middleware and guards ------------------------------------------------------------------
    @web.middleware
    async def _pages(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """HTML errors (never the API's problem documents) and the security headers on every page."""
        clock.ZONE.set(self.zone)  # this request's task only
        try:
            response = await handler(request)
        except Forbidden as exc:
            await self._audit(request, "refused", str(exc))
            response = html(pages.message_page("Not allowed", str(exc), request.get(SESSION)), 403)
        except web.HTTPException as exc:  # aiohttp's own 404, 405, 413
            response = html(pages.message_page(exc.reason, exc.text or exc.reason, request.get(SESSION)), exc.status)
        except Exception:
            log.exception("dashboard handler failed path=%s", request.path)
            response = html(pages.message_page("Error", "Something went wrong; see the daemon's log.",
                                               request.get(SESSION)), 500)
        if not response.prepared:  # an event stream sent its headers itself
            response.headers.update(_HEADERS)
            if request.get(SCRIPTS):
                response.headers["Content-Security-Policy"] += _SCRIPT_CSP
        return response

    def _staff(self, role: str, handler: Handler) -> Handler:
        """`handler` behind a session of at least `role` and, for a POST, the session's CSRF token."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            session = await session_for(self.store, request.cookies.get(COOKIE))
            if session is None:
                if request.method == "GET":
                    return see_other(f"{PREFIX}/login?next={quote(request.path)}")
                return html(pages.message_page("Signed out", "Sign in again, then repeat what you did."), 401)
            request[SESSION] = session
            if request.method == "POST":
                form = dict(await request.post())
                if not hmac.compare_digest(str(form.get("csrf", "")), session.csrf):
                    raise Forbidden("This form is not from this session (missing or wrong CSRF token).")
                request[FORM] = form
            if not session.user.may(role):
                raise Forbidden(f"This page needs the {role} role; you are {session.user.role}.")
            return await handler(request)
        return guarded

    async def _audit(self, request: web.Request, action: str, outcome: str, *, user: str | None = None,
                     target: str | None = None) -> None:
        session = request.get(SESSION)
        name = user if user is not None else session.user.name if session is not None else "-"
        try:
            await self.store.staff_audit_write(name[:64], action, target or f"{request.method} {request.path}",
                                               outcome, self._client(request))
        except Exception as exc:  # an audit problem must not fail the action; say it is missing
            log.error("staff audit not written action=%s error=%s", action, exc)

    def _cookie(self, request: web.Request, response: web.Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path=PREFIX, httponly=True, samesite="Strict",
                            secure=self.settings.secure_cookie or request.secure or (
                                self.settings.behind_proxy and request.headers.get("X-Forwarded-Proto") == "https"))

    def _client(self, request: web.Request) -> str | None:
        """The browser's address: behind a reverse proxy every request comes from the proxy, which appends
        the address it saw to X-Forwarded-For (earlier entries are the client's to forge)."""
        if self.settings.behind_proxy:
            forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
            if forwarded:
                return forwarded
        return request.remote

    # ---- sign-in ----------------------------------------------------------------------------------
    async def style(self, request: web.Request) -> web.Response:
        return web.Response(text=pages.STYLE, content_type="text/css")

    async def script(self, request: web.Request) -> web.Response:
        return web.Response(text=LIVE_JS, content_type="text/javascript")

    async def login_form(self, request: web.Request) -> web.Response:
        return self._login_page(request, request.query.get("next", ""))

    def _login_page(self, request: web.Request, next_path: str, *, name: str = "", error: str | None = None,
                    status: int = 200, retry_after: int | None = None) -> web.Response:
        token = secrets.token_urlsafe(32)
        response = html(pages.login_page(token, next_path, name=name, error=error), status,
                        {"Retry-After": str(retry_after)} if retry_after else None)
        self._cookie(request, response, LOGIN_COOKIE, token, 3600)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(str(form.get("csrf", "")), expected):
            raise Forbidden("This sign-in form is not from this browser (missing or wrong CSRF token).")
        name, password = str(form.get("name", "")).strip(), str(form.get("password", ""))
        next_path = str(form.get("next", ""))
        keys = (f"user:{name.casefold()}", f"address:{self._client(request)}")
        wait = self.throttle.retry_after(*keys)
        if wait:
            await self._audit(request, "sign-in", "throttled", user=name)
            minutes = math.ceil(wait / 60)
            return self._login_page(request, next_path, name=name, status=429, retry_after=math.ceil(wait),
                                    error=f"Too many failed sign-ins. Try again in {minutes} minute(s).")
        async with self._checking:
            user = await check_password(self.store, name, password)
        if user is None:
            self.throttle.failed(*keys)
            await self._audit(request, "sign-in", "failed", user=name)
            return self._login_page(request, next_path, name=name, status=401, error="Wrong user name or password.")
        self.throttle.succeeded(keys[0])
        token = await open_session(self.store, user, self.settings.session_hours)
        await self._audit(request, "sign-in", "ok", user=user.name)
        log.info("dashboard sign-in user=%s role=%s", user.name, user.role)
        # Only back into the dashboard: an open redirect would make our sign-in page a phishing tool.
        target = next_path if next_path.startswith(f"{PREFIX}/") and "//" not in next_path else f"{PREFIX}/"
        response = see_other(target)
        self._cookie(request, response, COOKIE, token, int(self.settings.session_hours * 3600))
        response.del_cookie(LOGIN_COOKIE, path=PREFIX)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        await close_session(self.store, request.cookies[COOKIE])
        self.live.signed_out(request.cookies[COOKIE])
        await self._audit(request, "sign-out", "ok")
        response = see_other(f"{PREFIX}/login")
        response.del_cookie(COOKIE, path=PREFIX)
        return response

    # ---- pages ------------------------------------------------------------------------------------
    async def home(self, request: web.Request) -> web.Response:
        session = request[SESSION]
        waiting = len(await self.store.help_requests("open")) if session.user.may("supervisor") else None
        return html(pages.home_page(session, waiting))

    async def calls(self, request: web.Request) -> web.Response:
        live = []
        for call_id, caller, dialled, state in self._live_calls():
            record = await self.store.call(call_id)
            live.append(pages.LiveCall(call_id, caller, dialled, record["started_at"] if record else None,
                                       await self.store.turns(call_id), state))
        request[SCRIPTS] = True
        return html(pages.calls_page(request[SESSION], live, CALLS_REFRESH_S,
                                     self._capacity() if self._capacity else None,
                                     transfer_to=self.directory if self._transfer else ()))

    async def call_events(self, request: web.Request) -> web.StreamResponse:
        return await self.live.serve(request, request.cookies[COOKIE], _HEADERS)

    async def transfer_now(self, request: web.Request) -> web.StreamResponse:
        call_id, session = request.match_info["id"], request[SESSION]
        if self._transfer is None:
            return html(pages.message_page("No transfers", "Transfers need AMI (the [ami] section).", session), 409)
        to = str(request[FORM].get("to", ""))
        member = next((m for m in self.directory if m.name == to), None)
        if member is None:  # only the directory's people: never an extension typed into a forged form
            await self._audit(request, "transfer call", f"refused: {to[:64]!r} is not in the directory", target=call_id)
            return html(pages.message_page("Not transferred", f"{to!r} is not in the directory.", session), 422)
        if not await self._transfer(call_id, member):
            return html(pages.message_page("Not found", f"Call {call_id} is not in progress.", session), 404)
        await self._audit(request, "transfer call", f"to {member.name} ({member.extension})", target=call_id)
        return see_other(f"{PREFIX}/calls")

    async def history(self, request: web.Request) -> web.Response:
        q = request.query
        page = int(q["page"]) if q.get("page", "").isdigit() and 0 < int(q["page"]) < 100_000 else 1
        query = pages.HistoryQuery("threads" if q.get("kind") == "threads" else "calls", q.get("number", "")[:40],
                                   q.get("from", ""), q.get("to", ""),
                                   q.get("outcome", "") if q.get("outcome") in CALL_OUTCOMES else "", page)
        try:
            since = _local_day(query.date_from)
            until = _local_day(query.date_to, days_after=1)
        except ValueError:
            return html(pages.message_page("Bad date", "Dates are YYYY-MM-DD.", request[SESSION]), 400)
        search = {"number": query.number, "since": since, "until": until, "limit": HISTORY_PAGE,
                  "offset": (page - 1) * HISTORY_PAGE}
        found, total = await (self.store.thread_history(**search) if query.kind == "threads" else
                              self.store.call_history(**search, outcome=query.outcome or None))
        return html(pages.history_page(request[SESSION], query, found, total, HISTORY_PAGE))

    async def history_call(self, request: web.Request) -> web.Response:
        call_id = request.match_info["id"]
        found, _ = await self.store.call_history(call_id=call_id, limit=1)
        if not found:
            return html(pages.message_page("Not found", f"There is no call {call_id}.", request[SESSION]), 404)
        messages, helps = await self.store.call_notes(call_id)
        return html(pages.call_page(request[SESSION], found[0], await self.store.turns(call_id),
                                    await self.store.events(call_id), messages, helps))

    async def overview(self, request: web.Request) -> web.Response:
        now = time.time()
        return html(overview_page(request[SESSION], await self.store.overview(*windows(now)), now))

    async def help_requests(self, request: web.Request) -> web.Response:
        status = request.query.get("status", "open")
        if status not in dict(pages.HELP_TABS):
            status = "open"
        requests = await self.store.help_requests(status)
        outbox = {r.followup_outbox_id: row for r in requests if r.followup_outbox_id is not None
                  and (row := await self.store.outbox_get(r.followup_outbox_id)) is not None}
        return html(pages.help_page(request[SESSION], status, requests, outbox, await self.store.knowledge()))

    async def answer(self, request: web.Request) -> web.StreamResponse:
        request_id = int(request.match_info["id"])
        form, session = request[FORM], request[SESSION]
        phrasing = request.match_info["action"] == "phrasing"  # the question joins an existing entry
        try:
            if phrasing:
                entry, followup = await self.helpdesk.add_phrasing(request_id, str(form.get("entry", "")),
                                                                   session.user.name)
            else:
                entry, followup = await self.helpdesk.answer(request_id, str(form.get("answer", "")),
                                                             session.user.name)
        except NotFoundError as exc:
            return html(pages.message_page("Not found", str(exc), session), 404)
        except ValueError as exc:
            return html(pages.message_page("Not answered", str(exc), session), 422)
        await self._audit(request, "answer help request", f"{'phrasing of' if phrasing else 'learned'} {entry.id};"
                          f" follow-up "
                          f"{followup.channel or 'none'} {followup.outbox_id or followup.note or ''}".strip(),
                          target=f"help request {request_id}")
        return see_other(f"{PREFIX}/help?status=answered#req-{request_id}")

    async def knowledge(self, request: web.Request) -> web.Response:
        return html(pages.knowledge_page(request[SESSION], await self.store.knowledge(),
                                         await self.store.knowledge_disabled()))

    async def export_knowledge(self, request: web.Request) -> web.Response:
        """Learned entries, and the knowledge.yaml entries staff added phrasings to, as knowledge.yaml."""
        added = await self.store.added_phrasings()
        entries = [k for k in await self.store.knowledge() if k.source == "learned" or k.id in added]
        await self._audit(request, "export knowledge", f"{len(entries)} entries")
        return web.Response(text=dump_knowledge_yaml(entries), content_type="application/yaml",
                            headers={"Content-Disposition": 'attachment; filename="knowledge-export.yaml"'})

    async def edit_entry(self, request: web.Request) -> web.StreamResponse:
        entry_id, form = request.match_info["id"], request[FORM]
        try:
            entry = edited_entry(entry_id, str(form.get("question", "")), str(form.get("answer", "")),
                                 str(form.get("phrasings", "")))
        except ValueError as exc:
            return html(pages.message_page("Not saved", str(exc), request[SESSION]), 422)
        if not await self.store.edit_learned(entry):
            return html(pages.message_page("Not found", f"No learned entry {entry_id}.", request[SESSION]), 404)
        await self._audit(request, "edit knowledge", "ok", target=entry_id)
        return see_other(f"{PREFIX}/knowledge#{quote(entry_id)}")

    async def toggle_entry(self, request: web.Request) -> web.StreamResponse:
        entry_id, action = request.match_info["id"], request.match_info["action"]
        try:
            moved = await self.store.set_learned_enabled(entry_id, action == "enable")
        except ValueError as exc:
            return html(pages.message_page("Not re-enabled", str(exc), request[SESSION]), 409)
        if not moved:
            return html(pages.message_page("Not found", f"No learned entry {entry_id} to {action}.",
                                           request[SESSION]), 404)
        await self._audit(request, f"{action} knowledge", "ok", target=entry_id)
        return see_other(f"{PREFIX}/knowledge")



_MAX_QUESTION, _MAX_ANSWER, _MAX_PHRASINGS = 300, 1000, 20
HISTORY_PAGE = 25


def _local_day(day: str, days_after: int = 0) -> float | None:
    """The start of a YYYY-MM-DD day (plus some days) in the site's zone; None for no date."""
    return clock.day_start(dt.date.fromisoformat(day) + dt.timedelta(days=days_after)) if day else None


def edited_entry(entry_id: str, question: str, answer: str, phrasings: str) -> KnowledgeEntry:
    """A learned entry as staff edited it; raises ValueError naming what is wrong."""
    question, answer = question.strip(), answer.strip()
    lines = [line.strip() for line in phrasings.splitlines() if line.strip()]
    if not question or len(question) > _MAX_QUESTION:
        raise ValueError(f"The question must have 1 to {_MAX_QUESTION} characters.")
    if not answer or len(answer) > _MAX_ANSWER:
        raise ValueError(f"The answer must have 1 to {_MAX_ANSWER} characters.")
    if len(lines) > _MAX_PHRASINGS or any(len(line) > _MAX_QUESTION for line in lines):
        raise ValueError(f"At most {_MAX_PHRASINGS} phrasings of up to {_MAX_QUESTION} characters each.")
    return KnowledgeEntry(id=entry_id, question=question, answer=answer, phrasings=lines, source="learned")
