"""The dashboard over real HTTP on loopback, on a real store and outbox: accounts, sessions, CSRF, roles,
throttling, the help-request answer with its follow-up, and the timeout sweep. (The browser tests in
tests/integration/test_dashboard_browser.py drive the same pages through the daemon in Chromium.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from channels.base import OutgoingMessage, SendResult
from channels.outbox import Outbox
from channels.base import InboundMessage
from gateway.config import ConversationSettings, DashboardSettings, HelpRequestSettings, load_config
from gateway.dashboard.accounts import new_user
from gateway.dashboard.app import Dashboard
from gateway.dashboard.helpdesk import HelpDesk
from gateway.dashboard.pages import PREFIX
from gateway.sessions.conversations import Conversations
from llm.knowledge import Retriever
from llm.site import StaffMember
from models.records import CallEvent, CallRecord, HelpRequest, KnowledgeEntry, TakenMessage, Turn
from models.store import Store

PASSWORD = "correct horse battery"
SITE = load_config(Path(__file__).resolve().parents[2] / "etc" / "switchboard.yaml").site


class Channel:
    """A channel that accepts everything (the outbox's worker delivers to it)."""

    def __init__(self, name: str) -> None:
        self.name, self.sent = name, []

    async def start(self, on_inbound, on_delivery) -> None:  # type: ignore[no-untyped-def]
        pass

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.sent.append(message)
        return SendResult(provider_ref=f"ref-{message.id}")

    async def stop(self) -> None:
        pass


@dataclass
class Site:
    store: Store
    url: str
    outbox: Outbox
    desk: HelpDesk
    live: list[tuple[str, str | None, str | None]]  # the calls in progress, as the daemon lists them
    talk: Conversations
    dashboard: Dashboard


@contextlib.asynccontextmanager
async def open_site(tmp_path: Path, zone: ZoneInfo | None = None, **options: Any) -> AsyncIterator[Site]:
    """The dashboard on a real store and outbox, served on loopback as the daemon mounts it."""
    store = await Store.open(tmp_path / "sb.db")
    for name, role in (("ada", "admin"), ("sam", "supervisor"), ("oli", "operator")):
        await store.staff_add(new_user(name, role, PASSWORD))
    outbox = Outbox(store, {"sms": Channel("sms"), "email": Channel("email")})
    kinds = {"sms": "sms", "email": "email"}
    desk = HelpDesk(store, "Bright Smile", HelpRequestSettings(timeout="1h"),
                    route=lambda kind: (outbox, kinds[kind]) if kind in kinds else None,
                    outbox_of=lambda name: outbox if name in outbox.channels else None)
    live: list[tuple[str, str | None, str | None, str]] = []
    # Long debounce: no test here waits for the assistant; the takeover tests hold their thread.
    talk = Conversations(SITE, Retriever(store), store, outbox, ConversationSettings(buffer_s=60))
    dashboard = Dashboard(DashboardSettings(login_failures=3), store, desk, live_calls=lambda: list(live),
                          conversations=talk, zone=zone, **options)
    root = web.Application()  # as the daemon mounts it on the HTTP API's application
    root.add_subapp(PREFIX, dashboard.app)
    runner = web.AppRunner(root)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    await desk.start()
    await dashboard.start()
    try:
        yield Site(store, f"http://127.0.0.1:{runner.addresses[0][1]}{PREFIX}", outbox, desk, live, talk, dashboard)
    finally:
        await talk.close()
        await dashboard.stop()
        await desk.stop()
        await runner.cleanup()
        await store.close()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with open_site(tmp_path) as opened:
        yield opened


def browser() -> aiohttp.ClientSession:
    # unsafe: keep cookies of an IP-address host (127.0.0.1), as a browser does
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


async def sign_in(http: aiohttp.ClientSession, url: str, name: str, password: str = PASSWORD) -> aiohttp.ClientResponse:
    async with http.get(f"{url}/login") as form:
        token = csrf(await form.text())
    async with http.post(f"{url}/login", data={"csrf": token, "name": name, "password": password,
                                               "next": f"{PREFIX}/help"}, allow_redirects=False) as response:
        await response.read()
        return response


async def ask(store: Store, question: str, contact: str | None = "+15550102030", call_id: str = "call-1",
              created_at: float | None = None) -> int:
    return await store.create_help_request(HelpRequest(None, call_id, contact, question,
                                                       created_at=created_at or time.time()))


async def test_sign_in_sets_a_strict_httponly_cookie_and_sign_out_revokes_it(site: Site) -> None:
    async with browser() as http:
        async with http.get(f"{site.url}/", allow_redirects=False) as anonymous:
            assert anonymous.status == 303 and anonymous.headers["Location"].startswith(f"{PREFIX}/login")
        response = await sign_in(http, site.url, "sam")
        assert response.status == 303 and response.headers["Location"] == f"{PREFIX}/help"
        cookie = next(v for v in response.headers.getall("Set-Cookie") if v.startswith("sb_session="))
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
        assert "Secure" not in cookie  # plain HTTP and secure_cookie off
        async with http.get(f"{site.url}/") as home:
            page = await home.text()
            assert home.status == 200 and "sam (supervisor)" in page
            assert home.headers["Content-Security-Policy"].startswith("default-src 'none'")
        token = http.cookie_jar.filter_cookies(site.url)["sb_session"].value
        async with http.post(f"{site.url}/logout", data={"csrf": csrf(page)}, allow_redirects=False) as out:
            assert out.status == 303
    # The old cookie, replayed, signs nobody in: the session is gone from the store.
    async with aiohttp.ClientSession(cookies={"sb_session": token}) as replay:
        async with replay.get(f"{site.url}/", allow_redirects=False) as again:
            assert again.status == 303
    actions = [(a["user_name"], a["action"], a["outcome"]) for a in await site.store.staff_audit()]
    assert ("sam", "sign-in", "ok") in actions and ("sam", "sign-out", "ok") in actions


async def test_secure_cookie_and_client_address_behind_a_proxy(site: Site) -> None:
    def cookie(settings: DashboardSettings, headers: dict[str, str]) -> str:
        response = web.Response()
        Dashboard(settings, site.store, site.desk)._cookie(make_mocked_request("GET", "/", headers=headers),
                                                           response, "sb_session", "x", 60)
        return response.cookies["sb_session"].output()

    https = {"X-Forwarded-Proto": "https"}
    assert "Secure" in cookie(DashboardSettings(secure_cookie=True), {})
    assert "Secure" in cookie(DashboardSettings(behind_proxy=True), https)
    assert "Secure" not in cookie(DashboardSettings(), https)  # a header anyone can send, unless told to trust it
    forwarded = make_mocked_request("GET", "/", headers={"X-Forwarded-For": "6.6.6.6, 192.0.2.7"})
    assert Dashboard(DashboardSettings(behind_proxy=True), site.store, site.desk)._client(forwarded) == "192.0.2.7"
    assert Dashboard(DashboardSettings(), site.store, site.desk)._client(forwarded) != "192.0.2.7"


async def test_failed_sign_ins_are_throttled_even_with_the_right_password(site: Site) -> None:
    async with browser() as http:
        for _ in range(3):
            assert (await sign_in(http, site.url, "sam", "wrong password!")).status == 401
        throttled = await sign_in(http, site.url, "sam")
        assert throttled.status == 429 and int(throttled.headers["Retry-After"]) > 0
        # Another user from the same address is throttled too (per address), and nobody signed in.
        assert (await sign_in(http, site.url, "ada")).status == 429
        assert "sb_session" not in http.cookie_jar.filter_cookies(site.url)
    outcomes = [a["outcome"] for a in await site.store.staff_audit() if a["action"] == "sign-in"]
    assert outcomes.count("failed") == 3 and outcomes.count("throttled") == 2


async def test_unknown_user_and_a_login_form_without_its_cookie_token(site: Site) -> None:
    async with browser() as http:
        assert (await sign_in(http, site.url, "nobody")).status == 401
    async with aiohttp.ClientSession() as forged:  # a post from another site: no sb_login cookie
        async with forged.post(f"{site.url}/login", data={"csrf": "x", "name": "sam", "password": PASSWORD},
                               allow_redirects=False) as response:
            assert response.status == 403


async def test_an_operator_may_not_see_help_requests_knowledge_or_answer(site: Site) -> None:
    request_id = await ask(site.store, "do you sell gift cards?")
    async with browser() as http:
        await sign_in(http, site.url, "oli")
        async with http.get(f"{site.url}/") as home:
            token = csrf(await home.text())
        for path in ("/help", "/knowledge", "/users"):
            async with http.get(f"{site.url}{path}") as page:
                assert page.status == 403, path
        async with http.post(f"{site.url}/help/{request_id}/answer", data={"csrf": token, "answer": "Yes."}) as post:
            assert post.status == 403
    assert (await site.store.help_request(request_id)).status == "open"  # type: ignore[union-attr]
    assert not [k for k in await site.store.knowledge() if k.source == "learned"]
    assert ("oli", "refused") in [(a["user_name"], a["action"]) for a in await site.store.staff_audit()]


async def test_a_post_without_the_csrf_token_is_refused(site: Site) -> None:
    request_id = await ask(site.store, "do you sell gift cards?")
    async with browser() as http:
        await sign_in(http, site.url, "sam")
        for data in ({"answer": "Yes."}, {"answer": "Yes.", "csrf": "guessed"}):
            async with http.post(f"{site.url}/help/{request_id}/answer", data=data) as post:
                assert post.status == 403
    assert (await site.store.help_request(request_id)).status == "open"  # type: ignore[union-attr]


async def test_answering_learns_and_texts_the_caller_and_the_page_shows_the_message(site: Site) -> None:
    request_id = await ask(site.store, "do you sell <b>gift cards</b>?")
    async with browser() as http:
        await sign_in(http, site.url, "sam")
        async with http.get(f"{site.url}/help") as page:
            text = await page.text()
            assert "&lt;b&gt;gift cards&lt;/b&gt;" in text and "<b>gift" not in text  # escaped
            assert "***030" in text and "+15550102030" not in text  # masked
        async with http.post(f"{site.url}/help/{request_id}/answer",
                             data={"csrf": csrf(text), "answer": "Yes, at the front desk."}) as done:
            answered = await done.text()
            assert done.status == 200 and done.url.query["status"] == "answered"
    request = await site.store.help_request(request_id)
    assert request is not None and (request.status, request.answered_by, request.followup_channel) == (
        "answered", "sam", "sms")
    row = await site.store.outbox_get(request.followup_outbox_id)  # type: ignore[arg-type]
    assert row is not None and row.recipient == "+15550102030" and "Yes, at the front desk." in row.body
    assert f"message #{row.id}" in answered
    learned = [k for k in await site.store.knowledge() if k.source == "learned"]
    assert [(k.id, k.answer) for k in learned] == [(f"learned-{request_id}", "Yes, at the front desk.")]
    assert ("sam", "answer help request") in [(a["user_name"], a["action"]) for a in await site.store.staff_audit()]


async def test_the_follow_up_goes_back_the_way_the_customer_came(site: Site) -> None:
    by_mail = await ask(site.store, "q1", contact="Ann@Example.org")
    by_thread = await ask(site.store, "q2", contact="+15550104040", call_id="email-thread-3")
    anonymous = await ask(site.store, "q3", contact=None, call_id="api-thread-4")
    _, mail = await site.desk.answer(by_mail, "a1", "sam")
    _, thread = await site.desk.answer(by_thread, "a2", "sam")
    _, nothing = await site.desk.answer(anonymous, "a3", "sam")
    assert mail.channel == "email" and thread.channel == "email" and nothing.outbox_id is None
    assert nothing.note == "no number or address to reply to"
    assert (await site.store.help_request(anonymous)).followup_note == nothing.note  # type: ignore[union-attr]
    # Answering again with the same text queues nothing new; a corrected answer is sent.
    _, same = await site.desk.answer(by_mail, "a1", "sam")
    _, corrected = await site.desk.answer(by_mail, "a1, corrected", "sam")
    assert same.outbox_id == mail.outbox_id != corrected.outbox_id


async def test_open_requests_past_the_timeout_become_unresolved(site: Site) -> None:
    old = await ask(site.store, "old one", created_at=time.time() - 2 * 3600)
    new = await ask(site.store, "new one")
    assert await site.desk.sweep() == 1
    assert [r.id for r in await site.store.help_requests("unresolved")] == [old]
    assert [r.id for r in await site.store.help_requests("open")] == [new]


async def test_removing_a_user_ends_their_sessions(site: Site) -> None:
    await site.store.staff_add(new_user("ida", "admin", PASSWORD))  # ada is not the last admin
    async with browser() as http:
        await sign_in(http, site.url, "ada")
        async with http.get(f"{site.url}/users") as users:
            assert users.status == 200 and "oli" in await users.text()
        assert await site.store.staff_remove("ada")
        async with http.get(f"{site.url}/users", allow_redirects=False) as after:
            assert after.status == 303


async def test_admins_manage_users_from_the_web_and_never_lose_the_last_admin(site: Site) -> None:
    users = f"{site.url}/users"
    async with browser() as http:
        await sign_in(http, site.url, "ada")
        async with http.get(users) as page:
            text = await page.text()
        token = csrf(text)
        assert 'id="user-oli"' in text and 'action="/dashboard/users/add"' in text
        new = {"name": "nia", "role": "supervisor", "password": "a fresh passphrase"}
        assert await _post(http, f"{users}/add", token, **{**new, "again": "a fresh passphrasE"}) == 422
        assert await _post(http, f"{users}/add", token, **{**new, "password": "short", "again": "short"}) == 422
        assert await _post(http, f"{users}/add", token, **{**new, "role": "root", "again": new["password"]}) == 422
        assert await site.store.staff_user("nia") is None
        assert await _post(http, f"{users}/add", token, **new, again=new["password"]) == 303
        nia = await site.store.staff_user("nia")
        assert nia is not None and nia.role == "supervisor" and nia.password_hash.startswith("$argon2id$")
        assert await _post(http, f"{users}/add", token, **new, again=new["password"]) == 422  # the name is taken

        async with browser() as hers:  # nia signs in; a reset of her password signs her out
            assert (await sign_in(hers, site.url, "nia", new["password"])).status == 303
            assert await _post(http, f"{users}/nia/password", token, password="another passphrase",
                               again="another passphrase") == 303
            async with hers.get(f"{site.url}/", allow_redirects=False) as out:
                assert out.status == 303
            assert (await sign_in(hers, site.url, "nia", "another passphrase")).status == 303
        assert await _post(http, f"{users}/nia/role", token, role="operator") == 303
        assert (await site.store.staff_user("nia")).role == "operator"  # type: ignore[union-attr]

        # The last admin: neither demoted nor removed (ada herself asks); with a second admin, yes.
        async with http.post(f"{users}/ada/role", data={"csrf": token, "role": "supervisor"}) as refused:
            assert refused.status == 409 and "last admin" in await refused.text()
        assert await _post(http, f"{users}/ada/remove", token) == 409
        assert (await site.store.staff_user("ada")).role == "admin"  # type: ignore[union-attr]
        assert await _post(http, f"{users}/nia/role", token, role="admin") == 303
        assert await _post(http, f"{users}/nia/remove", token) == 303
        assert await site.store.staff_user("nia") is None
        assert await _post(http, f"{users}/nia/remove", token) == 404
        assert await _post(http, f"{users}/oli/remove", "") == 403  # no CSRF token
    for who in ("oli", "sam"):  # operator and supervisor: 403, nothing changed
        async with browser() as http:
            await sign_in(http, site.url, who)
            async with http.get(f"{site.url}/") as home:
                token = csrf(await home.text())
            assert await _post(http, f"{users}/add", token, name="eve", role="admin", password=PASSWORD,
                               again=PASSWORD) == 403
            assert await _post(http, f"{users}/ada/remove", token) == 403
    assert await site.store.staff_user("eve") is None and await site.store.staff_user("oli") is not None
    audit = [(a["user_name"], a["action"], a["target"], a["outcome"]) for a in await site.store.staff_audit()]
    assert ("ada", "add user", "nia", "ok, role supervisor") in audit
    assert ("ada", "reset password", "nia", "ok, signed out") in audit
    assert ("ada", "change role", "nia", "ok, now operator") in audit and ("ada", "remove user", "nia", "ok") in audit
    assert ("ada", "change role", "ada", "refused: ada is the last admin: add another admin first") in audit
    assert not any(PASSWORD in str(row) or "passphrase" in str(row) for row in audit)


def test_new_user_validation() -> None:
    user = new_user("sam", "supervisor", PASSWORD)
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
    assert user.may("operator") and user.may("supervisor") and not user.may("admin")
    for name, role, password in (("a b", "admin", PASSWORD), ("sam", "root", PASSWORD), ("sam", "admin", "short")):
        with pytest.raises(ValueError):
            new_user(name, role, password)


async def test_learned_entries_are_edited_disabled_and_re_enabled_live(site: Site) -> None:
    from llm.knowledge import Retriever

    await site.store.replace_admin_knowledge([KnowledgeEntry("hours", "When are you open?", "9 to 5.")])
    request_id = await ask(site.store, "do you sell gift cards?")
    await site.desk.answer(request_id, "Yes, at the front desk.", "sam")
    entry_id, retriever = f"learned-{request_id}", Retriever(site.store)  # as the running daemon reads entries

    async def found(question: str) -> list[str]:
        return [m.entry.id for m in await retriever.search(question)]

    assert await found("gift cards") == [entry_id] and await found("vouchers") == []
    async with browser() as http:
        await sign_in(http, site.url, "sam")
        async with http.get(f"{site.url}/knowledge") as page:
            token = csrf(await page.text())
        edit = {"csrf": token, "question": "do you sell gift cards?", "answer": "Yes, from 10 dollars.",
                "phrasings": "can I buy a voucher\n\n"}
        async with http.post(f"{site.url}/knowledge/{entry_id}/edit", data=edit) as saved:
            assert saved.status == 200 and "Yes, from 10 dollars." in await saved.text()
        assert await found("vouchers") == [entry_id]
        async with http.post(f"{site.url}/knowledge/{entry_id}/edit", data={**edit, "answer": " "}) as empty:
            assert empty.status == 422
        async with http.post(f"{site.url}/knowledge/{entry_id}/disable", data={"csrf": token}) as off:
            assert off.status == 200 and "Re-enable" in await off.text()
        assert await found("gift cards") == [] and await found("vouchers") == []
        async with http.post(f"{site.url}/knowledge/{entry_id}/enable", data={"csrf": token}) as on:
            assert on.status == 200
        assert await found("vouchers") == [entry_id]
        [entry] = [k for k in await site.store.knowledge() if k.id == entry_id]
        assert (entry.answer, entry.phrasings) == ("Yes, from 10 dollars.", ["can I buy a voucher"])
        # Entries from etc/knowledge.yaml are not the dashboard's to change.
        async with http.post(f"{site.url}/knowledge/hours/disable", data={"csrf": token}) as admin_entry:
            assert admin_entry.status == 404
        async with http.post(f"{site.url}/knowledge/hours/edit", data={**edit, "answer": "Never."}) as admin_edit:
            assert admin_edit.status == 404
        assert await found("open") == ["hours"]
        # Disabled, then its id taken by knowledge.yaml (loaded at a restart): it cannot come back.
        async with http.post(f"{site.url}/knowledge/{entry_id}/disable", data={"csrf": token}) as off:
            assert off.status == 200
        await site.store.replace_admin_knowledge([KnowledgeEntry(entry_id, "Taken?", "Taken.")])
        async with http.post(f"{site.url}/knowledge/{entry_id}/enable", data={"csrf": token}) as clash:
            assert clash.status == 409 and "used by another entry" in await clash.text()
        assert [k.id for k in await site.store.knowledge_disabled()] == [entry_id]  # still kept aside
    actions = [a["action"] for a in await site.store.staff_audit()]
    assert {"edit knowledge", "disable knowledge", "enable knowledge"} <= set(actions)


async def test_live_calls_show_their_transcript_with_the_number_masked_for_operators(site: Site) -> None:
    await site.store.start_call(CallRecord("c-42", "+15550102030", "100", "Bright Smile", "audiosocket", time.time()))
    await site.store.add_turn(Turn("c-42", 1, "caller", "where are <you>?", time.time()))
    site.live.append(("c-42", "+15550102030", "100", "thinking"))
    for name, number in (("oli", "***030"), ("sam", "+15550102030")):
        async with browser() as http:
            await sign_in(http, site.url, name)
            async with http.get(f"{site.url}/calls") as page:
                text = await page.text()
        assert page.status == 200 and 'id="call-c-42"' in text and "where are &lt;you&gt;?" in text
        assert '<strong class="state">thinking</strong>' in text
        assert f"{number} → 100" in text and (name == "sam" or "+15550102030" not in text)
        assert '<meta http-equiv="refresh" content="5">' in text


async def test_the_desk_sweeps_by_itself_until_stopped(site: Site) -> None:
    desk = HelpDesk(site.store, "Bright Smile", HelpRequestSettings(timeout="1s", sweep_interval_s=0.05),
                    route=lambda kind: None, outbox_of=lambda name: None)
    old = await ask(site.store, "old one", created_at=time.time() - 10)
    await desk.start()
    try:
        for _ in range(200):  # bounded: 10 s
            if (await site.store.help_request(old)).status == "unresolved":  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.05)
    finally:
        await desk.stop()
    assert (await site.store.help_request(old)).status == "unresolved"  # type: ignore[union-attr]
    late = await ask(site.store, "after the stop", created_at=time.time() - 10)
    await asyncio.sleep(0.2)
    assert (await site.store.help_request(late)).status == "open"  # type: ignore[union-attr]


async def _page(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


async def _post(http: aiohttp.ClientSession, url: str, token: str, **form: str) -> int:
    async with http.post(url, data={"csrf": token, **form}, allow_redirects=False) as response:
        return response.status


async def test_an_operator_takes_over_a_text_thread_replies_and_hands_it_back(site: Site) -> None:
    await site.talk.on_inbound(InboundMessage(channel="sms", sender="+15550102030", body="Is <b>Dr Lee</b> in?",
                                              at=time.time(), provider_ref="r1"))
    thread = await site.store.thread_for("+15550102030")
    base = f"{site.url}/conversations/{thread}"
    async with browser() as oli, browser() as sam:
        await sign_in(oli, site.url, "oli")
        await sign_in(sam, site.url, "sam")
        status, listing = await _page(oli, f"{site.url}/conversations")
        assert status == 200 and f'href="{PREFIX}/conversations/{thread}"' in listing
        assert "***030" in listing and "+15550102030" not in listing  # masked for operators
        status, page = await _page(oli, base)
        assert "&lt;b&gt;Dr Lee&lt;/b&gt;" in page and 'id="take"' in page and 'id="send"' not in page
        token = csrf(page)
        assert await _post(oli, f"{base}/reply", token, text="hi") == 409  # not held yet
        assert await _post(oli, f"{base}/take", "forged") == 403
        assert await _post(oli, f"{base}/take", token) == 303
        assert (await site.store.thread_holder(thread) or ("",))[0] == "oli"
        # The text waiting for the assistant is the operator's now: counted on the list, never answered.
        assert [m.status for m in await site.store.thread_messages(thread)] == ["held"]
        _, listing = await _page(sam, f"{site.url}/conversations")
        assert "1 new" in listing and "<td>oli</td>" in listing
        _, other = await _page(sam, base)
        assert "Taken over by oli" in other and 'id="send"' not in other
        assert await _post(sam, f"{base}/take", csrf(other)) == 409
        assert await _post(sam, f"{base}/reply", csrf(other), text="me too") == 409

        assert await _post(oli, f"{base}/reply", token, text="Yes, until 5 pm.") == 303
        row = await site.store.outbox_get(await _outbox_of(site.store, thread))  # queued (no worker here)
        assert row is not None and row.channel == "sms" and row.recipient == "+15550102030" and row.body == "Yes, until 5 pm."
        _, page = await _page(oli, base)
        assert "<strong>oli</strong>" in page and "Yes, until 5 pm." in page and "· queued" in page
        assert await _post(oli, f"{base}/release", token) == 303
        _, page = await _page(oli, base)
        assert await site.store.thread_holder(thread) is None and 'id="take"' in page
        assert (await _page(oli, f"{site.url}/conversations/999999"))[0] == 404
    audit = [(a["user_name"], a["action"], a["outcome"]) for a in await site.store.staff_audit()]
    assert {("oli", "take over", "ok"), ("oli", "reply", f"queued message #{row.id}"), ("oli", "hand back", "ok"),
            ("sam", "take over", "refused: held by oli"), ("sam", "reply", "refused: not held by you")} <= set(audit)


async def _held_sms_thread(site: Site, holder: str = "oli") -> int:
    await site.talk.on_inbound(InboundMessage(channel="sms", sender="+15550102030", body="Are you open?",
                                              at=time.time(), provider_ref="r1"))
    thread = await site.store.thread_for("+15550102030")
    assert await site.store.thread_hold(thread, holder) == holder
    return thread


async def test_a_supervisor_or_admin_releases_anyones_hold_an_operator_does_not(site: Site) -> None:
    thread = await _held_sms_thread(site)
    base = f"{site.url}/conversations/{thread}"
    await site.store.staff_add(new_user("ivy", "operator", PASSWORD))
    async with browser() as ivy, browser() as sam, browser() as ada:
        for http, name in ((ivy, "ivy"), (sam, "sam"), (ada, "ada")):
            await sign_in(http, site.url, name)
        _, page = await _page(ivy, base)
        assert "Taken over by oli" in page and 'id="release"' not in page  # another operator: no override
        assert await _post(ivy, f"{base}/release", csrf(page)) == 409
        assert (await site.store.thread_holder(thread) or ("",))[0] == "oli"
        _, page = await _page(sam, base)
        assert "Release oli's hold" in page
        assert await _post(sam, f"{base}/release", "forged") == 403
        assert await _post(sam, f"{base}/release", csrf(page)) == 303
        assert await site.store.thread_holder(thread) is None
        # The text that waited for oli is settled, not answered late by the assistant.
        assert [m.status for m in await site.store.thread_messages(thread)] == ["staff"]
        assert await site.store.thread_hold(thread, "oli") == "oli"
        _, page = await _page(ada, base)
        assert await _post(ada, f"{base}/release", csrf(page)) == 303
        assert await site.store.thread_holder(thread) is None
    audit = [(a["user_name"], a["action"], a["target"], a["outcome"]) for a in await site.store.staff_audit()]
    target = f"conversation {thread}"
    assert {("ivy", "release", target, "refused: not held by you"), ("sam", "hand back", target, "ok: released oli's hold"),
            ("ada", "hand back", target, "ok: released oli's hold")} <= set(audit)


async def test_a_hold_idle_past_the_timeout_is_handed_back_and_a_reply_is_activity(site: Site) -> None:
    thread = await _held_sms_thread(site)
    before_reply = time.time()
    while time.time() == before_reply:  # the reply is strictly later than this mark, even on a coarse clock
        await asyncio.sleep(0.001)
    await site.talk.staff_reply(thread, "Yes, until 5 pm.", "oli")
    # Idle since before the reply? No: the reply is the holder's activity, so the hold stays.
    assert await site.store.release_idle_holds(before_reply) == []
    assert (await site.store.thread_holder(thread) or ("",))[0] == "oli"
    # Another user's reply in the thread is not the holder's activity (held_since alone counts then).
    assert await site.store.release_idle_holds(time.time() + 1) == [(thread, "oli")]
    assert await site.store.thread_holder(thread) is None

    # The owned periodic sweep: a hold of 0.2 s, checked every 0.05 s, is released with an audit row.
    await site.dashboard.stop()
    site.dashboard.texts.settings = DashboardSettings(hold_timeout="0.2s", hold_sweep_interval_s=0.05)
    await site.dashboard.start()
    assert await site.store.thread_hold(thread, "oli") == "oli"
    async with asyncio.timeout(20):
        while await site.store.thread_holder(thread) is not None:
            await asyncio.sleep(0.05)
    audit = [(a["user_name"], a["action"], a["target"], a["outcome"]) for a in await site.store.staff_audit()]
    assert ("system", "hand back", f"conversation {thread}", "automatic: no activity from oli for 0.2s") in audit


def test_hold_timeout_is_validated() -> None:
    assert DashboardSettings().hold_timeout_s == 1800
    assert DashboardSettings(hold_timeout="2h").hold_timeout_s == 7200
    for bad in ("0m", "0.0s", "30", "30x", "-5m"):
        with pytest.raises(ValueError):
            DashboardSettings(hold_timeout=bad)
    with pytest.raises(ValueError):
        DashboardSettings(hold_sweep_interval_s=0)


async def _outbox_of(store: Store, thread: int) -> int:
    return next(m.outbox_id for m in await store.thread_messages(thread) if m.outbox_id is not None)



async def test_the_outbox_page_shows_failures_and_retries_or_cancels(site: Site) -> None:
    failing = await site.outbox.enqueue("sms", "+15550102030", "Your <i>appointment</i> is at 9", idempotency_key="a")
    waiting = await site.outbox.enqueue("email", "pat@example.org", "Hello", idempotency_key="b")
    claimed = await site.store.outbox_claim("sms")
    assert claimed is not None and claimed.id == failing
    await site.store.outbox_failed(failing, "PermanentError: +CMS ERROR: 38")
    async with browser() as sam, browser() as oli:
        await sign_in(oli, site.url, "oli")
        assert (await _page(oli, f"{site.url}/outbox"))[0] == 403
        await sign_in(sam, site.url, "sam")
        status, page = await _page(sam, f"{site.url}/outbox")
        assert status == 200 and "+CMS ERROR: 38" in page and "&lt;i&gt;appointment" in page
        assert f'action="{PREFIX}/outbox/{failing}/retry"' in page and f'action="{PREFIX}/outbox/{waiting}/cancel"' in page
        token = csrf(page)
        assert await _post(sam, f"{site.url}/outbox/{waiting}/retry", token) == 409  # not failed
        assert await _post(sam, f"{site.url}/outbox/{failing}/retry", token) == 303
        row = await site.store.outbox_get(failing)
        assert row is not None and (row.state, row.attempts) == ("queued", 0)
        assert await _post(sam, f"{site.url}/outbox/{waiting}/cancel", "forged") == 403
        assert await _post(sam, f"{site.url}/outbox/{waiting}/cancel", token) == 303
        row = await site.store.outbox_get(waiting)
        assert row is not None and (row.state, row.last_error) == ("failed", "cancelled by sam")
        # The cancelled (now failed) message is dismissed: off the page, still failed for the API.
        assert f'action="{PREFIX}/outbox/{waiting}/dismiss"' in (await _page(sam, f"{site.url}/outbox"))[1]
        assert await _post(sam, f"{site.url}/outbox/{failing}/dismiss", token) == 409  # queued again: not failed
        assert await _post(sam, f"{site.url}/outbox/{waiting}/dismiss", "forged") == 403
        assert await _post(oli, f"{site.url}/outbox/{waiting}/dismiss", csrf((await _page(oli, f"{site.url}/"))[1])) \
            == 403  # an operator, with her own token
        assert await _post(sam, f"{site.url}/outbox/{waiting}/dismiss", token) == 303
        assert await _post(sam, f"{site.url}/outbox/{waiting}/dismiss", token) == 409  # once
        assert f'id="out-{waiting}"' not in (await _page(sam, f"{site.url}/outbox"))[1]
        row = await site.store.outbox_get(waiting)
        assert row is not None and (row.state, row.dismissed_by) == ("failed", "sam")
    audit = [(a["user_name"], a["action"], a["outcome"]) for a in await site.store.staff_audit()]
    assert {("sam", "retry", "ok"), ("sam", "cancel", "ok"), ("sam", "retry", "refused: not in a state for that"),
            ("sam", "dismiss", "ok"), ("sam", "dismiss", "refused: not in a state for that")} <= set(audit)
async def a_call(store: Store, call_id: str, caller: str | None, started_days_ago: float, *,
                 said: tuple[str, ...] = (), events: tuple[str, ...] = (), end_reason: str | None = "goodbye",
                 message: bool = False, help_request: bool = False) -> None:
    start = time.time() - started_days_ago * 86400
    await store.start_call(CallRecord(call_id, caller, "202", "clinic", "audiosocket", start))
    for seq, text in enumerate(said):
        await store.add_turn(Turn(call_id, seq, "caller" if seq % 2 else "assistant", text, start + seq,
                                  {"stt": 100.0 + seq, "llm": 250.0}))
    for kind in events:
        await store.add_event(CallEvent(call_id, kind, start + 1, {"extension": "201"}))
    if message:
        await store.take_message(TakenMessage(call_id=call_id, for_staff="Dr Lee", caller_name="Ann",
                                              contact_number=caller, text="please call back", at=start + 2))
    if help_request:
        await ask(store, "do you open on sundays?", caller, call_id, start + 2)
    if end_reason is not None:
        await store.end_call(call_id, end_reason, start + 75)


async def test_call_history_outcomes_search_and_paging(site: Site) -> None:
    """Each outcome derived from what the store records; number (any part), dates and outcome filter; newest
    first, paged."""
    store = site.store
    await a_call(store, "answered", "+15550102030", 1, said=("Hello", "when do you open?", "At nine."))
    await a_call(store, "transferred", "+15550102031", 2, said=("Hello", "Dr Lee please"),
                 events=("transfer", "transfer_done"), end_reason="transferred")
    await a_call(store, "message", "+15550109999", 3, said=("Hello", "a message"), events=("take_message",),
                 message=True)
    await a_call(store, "escalated", "+15550104444", 4, said=("Hello", "sundays?"), help_request=True)
    await a_call(store, "abandoned", None, 5, said=("Hello",), end_reason="hangup")
    await a_call(store, "overflow", "+15550105555", 6, events=("over_capacity",), end_reason="handed to dialplan")
    await a_call(store, "live", "+15550106666", 0, said=("Hello",), end_reason=None)
    rows, total = await store.call_history()
    assert total == 7 and [r["call_id"] for r in rows] == [
        "live", "answered", "transferred", "message", "escalated", "abandoned", "overflow"]  # newest first
    assert all(r["call_id"] == r["outcome"] for r in rows[1:]) and rows[0]["outcome"] == "in progress"
    assert [r["call_id"] for r in (await store.call_history(number="0102 03"))[0]] == ["answered", "transferred"]
    assert [r["call_id"] for r in (await store.call_history(outcome="message"))[0]] == ["message"]
    day = 86400
    since, until = time.time() - 4.5 * day, time.time() - 1.5 * day
    assert [r["call_id"] for r in (await store.call_history(since=since, until=until))[0]] == [
        "transferred", "message", "escalated"]
    page2, total = await store.call_history(limit=3, offset=3)
    assert total == 7 and [r["call_id"] for r in page2] == ["message", "escalated", "abandoned"]
    await site.store.sweep_contents(time.time(), time.time(), time.time())  # retention keeps the outcomes
    assert [r["outcome"] for r in (await store.call_history())[0]][1:] == [r["call_id"] for r in rows[1:]]


async def test_history_pages_mask_numbers_for_operators_and_show_turn_timings(site: Site) -> None:
    await a_call(site.store, "call-7", "+15550102030", 1, said=("Hello, <b>Bright Smile</b>.", "Dr Lee please"),
                 events=("transfer", "transfer_done"), end_reason="transferred", message=True)
    async with browser() as http:
        await sign_in(http, site.url, "oli")
        async with http.get(f"{site.url}/history", params={"number": "2030", "outcome": "transferred"}) as page:
            text = await page.text()
        assert page.status == 200 and "1 found" in text and "***030" in text and "5550102030" not in text
        async with http.get(f"{site.url}/history/calls/call-7") as page:
            text = await page.text()
        assert page.status == 200 and "***030" in text and "5550102030" not in text
        assert "Hello, &lt;b&gt;Bright Smile&lt;/b&gt;." in text and "stt 100 ms · llm 250 ms" in text
        assert "transfer_done" in text and "please call back" in text and ">transferred</strong>" in text
        async with http.get(f"{site.url}/history/calls/nope") as page:
            assert page.status == 404
        async with http.get(f"{site.url}/history", params={"from": "yesterday"}) as page:
            assert page.status == 400
    async with browser() as http:
        await sign_in(http, site.url, "sam")
        async with http.get(f"{site.url}/history/calls/call-7") as page:
            assert "+15550102030" in await page.text()  # a supervisor sees the number


async def test_text_thread_history_search_and_page(site: Site) -> None:
    """Threads by their last message, newest first, searchable by any part of a number or an address and
    by dates, linked to their conversation page; operators see masked numbers."""
    store, now = site.store, time.time()
    sms = await store.thread_for("+15550102030")
    mail = await store.thread_for_address("ann.lee@example.org")
    await store.add_thread_message(sms, "sms", "in", "Can I move my <b>cleaning</b>?", "answered", at=now - 3 * 86400)
    await store.add_thread_message(sms, "sms", "out", "Yes: call us.", "sent", at=now - 3 * 86400 + 5)
    await store.add_thread_message(mail, "email", "in", "Parking?", "answered", at=now - 86400)
    await store.thread_for("+15550109999")  # no messages: not listed
    rows, total = await store.thread_history()
    assert total == 2 and [(r["thread_id"], r["messages"]) for r in rows] == [(mail, 1), (sms, 2)]
    assert [r["thread_id"] for r in (await store.thread_history(number="0102"))[0]] == [sms]
    assert [r["thread_id"] for r in (await store.thread_history(number="Ann.Lee"))[0]] == [mail]
    assert (await store.thread_history(number="a%"))[1] == 0  # LIKE wildcards are literal
    assert [r["thread_id"] for r in (await store.thread_history(since=now - 2 * 86400))[0]] == [mail]
    async with browser() as http:
        await sign_in(http, site.url, "oli")
        async with http.get(f"{site.url}/history", params={"kind": "threads", "number": "2030"}) as page:
            text = await page.text()
        assert "1 found" in text and "***030" in text and "5550102030" not in text
        assert f'href="{PREFIX}/conversations/{sms}"' in text and 'id="outcome"' not in text  # the thread's page
        async with http.get(f"{site.url}/history", params={"kind": "threads", "from": "2020-01-01"}) as page:
            text = await page.text()
        assert "2 found" in text and "ann.lee@example.org" in text  # addresses as they are (Conversations)


async def test_an_unanswered_question_becomes_a_phrasing_of_a_yaml_entry_also_after_a_restart(
        site: Site, tmp_path: Path) -> None:
    yaml_entries = [KnowledgeEntry("hours", "When are you open?", "Monday to Friday, 9 to 5.")]
    await site.store.replace_admin_knowledge(yaml_entries)
    question = "is the surgery staffed on weekday afternoons"
    assert [m.entry.id for m in await Retriever(site.store).search(question)] == []
    request_id, other = await ask(site.store, question), await ask(site.store, "do you do implants?")
    async with browser() as http:
        await sign_in(http, site.url, "sam")
        async with http.get(f"{site.url}/help?status=open") as page:
            text = await page.text()
            assert f'action="{PREFIX}/help/{request_id}/phrasing"' in text and 'value="hours"' in text
        token = csrf(text)
        async with http.post(f"{site.url}/help/{request_id}/phrasing", data={"entry": "hours"}) as forged:
            assert forged.status == 403  # no CSRF token
        assert await _post(http, f"{site.url}/help/{request_id}/phrasing", token, entry="nope") == 404
        assert await _post(http, f"{site.url}/help/{request_id}/phrasing", token, entry="hours") == 303
        # Answered now: a second time is refused, as is the same question from another request.
        assert await _post(http, f"{site.url}/help/{request_id}/phrasing", token, entry="hours") == 422
        await site.store.create_help_request(HelpRequest(None, "call-9", None, f"  {question.upper()} "))
        dup = (await site.store.help_requests("open"))[-1].id
        assert await _post(http, f"{site.url}/help/{dup}/phrasing", token, entry="hours") == 422
        async with http.get(f"{site.url}/help?status=answered") as answered:
            assert "with entry hours" in await answered.text()
    request = await site.store.help_request(request_id)
    assert request is not None and (request.answered_entry, request.answer, request.answered_by) == (
        "hours", "Monday to Friday, 9 to 5.", "sam")
    # The customer is sent the entry's answer through the outbox, as for a typed answer.
    assert request.followup_channel == "sms" and request.followup_outbox_id is not None
    assert [m.entry.id for m in await Retriever(site.store).search(question)] == ["hours"]  # live at once
    assert (await site.store.help_request(other)).status == "open"  # type: ignore[union-attr]
    audit = [(a["action"], a["outcome"]) for a in await site.store.staff_audit()]
    assert any(action == "answer help request" and outcome.startswith("phrasing of hours")
               for action, outcome in audit)
    # A restart reopens the store and reloads knowledge.yaml: the added phrasing is merged in again.
    restarted = await Store.open(tmp_path / "sb.db")
    try:
        await restarted.replace_admin_knowledge(yaml_entries)
        [hours] = await restarted.knowledge()
        assert hours.phrasings == [question]
        assert [m.entry.id for m in await Retriever(restarted).search(question)] == ["hours"]
    finally:
        await restarted.close()
    await site.desk.answer(request_id, "Yes, until 5.", "sam")  # answered anew: a learned entry, no entry id
    assert (await site.store.help_request(request_id)).answered_entry is None  # type: ignore[union-attr]


async def test_export_loads_as_knowledge_yaml_and_round_trips(site: Site, tmp_path: Path) -> None:
    from llm.knowledge import load_knowledge_yaml

    await site.store.replace_admin_knowledge([KnowledgeEntry("hours", "When are you open?", "9 to 5.",
                                                             phrasings=["opening times"]),
                                              KnowledgeEntry("parking", "Can I park?", "Yes.")])
    learned_id = await ask(site.store, "do you sell gift cards: \"yes\" or no?")
    await site.desk.answer(learned_id, "Yes, from 10 dollars.\nAsk at the desk.", "sam")
    await site.desk.add_phrasing(await ask(site.store, "when do you open"), "hours", "sam")
    async with browser() as http:
        await sign_in(http, site.url, "oli")
        async with http.get(f"{site.url}/knowledge/export.yaml") as refused:
            assert refused.status == 403
        async with http.get(f"{site.url}/") as home:
            token = csrf(await home.text())
        parking = await ask(site.store, "can I park there?")
        assert await _post(http, f"{site.url}/help/{parking}/phrasing", token, entry="parking") == 403
    async with browser() as http:
        await sign_in(http, site.url, "sam")
        async with http.get(f"{site.url}/knowledge/export.yaml") as export:
            assert export.status == 200 and "attachment" in export.headers["Content-Disposition"]
            (tmp_path / "export.yaml").write_text(await export.text(), encoding="utf-8")
    loaded = {k.id: k for k in load_knowledge_yaml(tmp_path / "export.yaml")}
    assert sorted(loaded) == ["hours", f"learned_{learned_id}"]  # parking has nothing from the dashboard
    assert loaded["hours"].phrasings == ["opening times", "when do you open"]
    assert (loaded[f"learned_{learned_id}"].question, loaded[f"learned_{learned_id}"].answer) == (
        "do you sell gift cards: \"yes\" or no?", "Yes, from 10 dollars. Ask at the desk.")  # the loader's spacing
    assert ("export knowledge", "2 entries") in [(a["action"], a["outcome"]) for a in await site.store.staff_audit()]
    # Pasted into knowledge.yaml: the file's copy takes over, the learned original is set aside, and the
    # added phrasing is not doubled.
    await site.store.replace_admin_knowledge(list(loaded.values()))
    entries = {k.id: k for k in await site.store.knowledge()}
    assert sorted(entries) == ["hours", f"learned_{learned_id}"]
    assert entries["hours"].phrasings == ["opening times", "when do you open"]
    assert [k.id for k in await site.store.knowledge_disabled()] == [f"learned-{learned_id}"]


async def test_a_phrasing_added_to_a_learned_entry_is_kept_in_the_entry(site: Site) -> None:
    learned = await ask(site.store, "do you sell gift cards?")
    await site.desk.answer(learned, "Yes.", "sam")
    entry, followup = await site.desk.add_phrasing(await ask(site.store, "can I buy a voucher"),
                                                   f"learned-{learned}", "sam")
    assert entry.phrasings == ["can I buy a voucher"] and followup.outbox_id is not None
    assert await site.store.added_phrasings() == {}  # only knowledge.yaml entries need keeping apart
    with pytest.raises(ValueError, match="1 to 300"):
        await site.desk.add_phrasing(await ask(site.store, "x" * 301), f"learned-{learned}", "sam")


async def test_transfer_now_without_ami_has_no_button_and_is_refused(site: Site) -> None:
    site.live.append(("c-43", None, "100", "listening"))
    async with browser() as http:
        await sign_in(http, site.url, "oli")
        async with http.get(f"{site.url}/calls") as page:
            text = await page.text()
        assert 'id="call-c-43"' in text and "Transfer now" not in text
        token = csrf(text)  # the sign-out form's
        async with http.post(f"{site.url}/calls/c-43/transfer", data={}) as forged:
            assert forged.status == 403
        async with http.post(f"{site.url}/calls/c-43/transfer", data={"csrf": token}) as refused:
            assert refused.status == 409 and "need AMI" in await refused.text()


async def test_transfer_now_goes_to_the_chosen_directory_member_only(tmp_path: Path) -> None:
    moved: list[tuple[str, str]] = []

    async def transfer(call_id: str, member: StaffMember) -> bool:  # the daemon's: the call's AMI transferer
        moved.append((call_id, member.extension))
        return call_id == "c-44"

    people = SITE.directory.everyone()
    async with open_site(tmp_path, transfer=transfer, directory=people) as site:
        site.live.append(("c-44", "+15550102030", "100", "listening"))
        async with browser() as http:
            await sign_in(http, site.url, "oli")
            async with http.get(f"{site.url}/calls") as page:
                text = await page.text()
            assert '<label for="to-c-44">Transfer to</label>' in text
            assert all(f'<option value="{m.name}">' in text for m in people) and len(people) > 2
            chen = next(m for m in people if m.name == "Dr. James Chen")
            token = csrf(text)
            async with http.post(f"{site.url}/calls/c-44/transfer", data={"csrf": token, "to": chen.name},
                                 allow_redirects=False) as done:
                assert done.status == 303
            async with http.post(f"{site.url}/calls/c-44/transfer",
                                 data={"csrf": token, "to": "9999"}) as refused:  # an extension, not a member
                assert refused.status == 422
            async with http.post(f"{site.url}/calls/c-44/transfer", data={"to": chen.name}) as forged:
                assert forged.status == 403
            async with http.post(f"{site.url}/calls/c-45/transfer", data={"csrf": token, "to": chen.name}) as gone:
                assert gone.status == 404
        assert moved == [("c-44", "202"), ("c-45", "202")]
        audit = [(a["action"], a["target"], a["outcome"]) for a in await site.store.staff_audit()]
        assert ("transfer call", "c-44", "to Dr. James Chen (202)") in audit
        assert ("transfer call", "c-44", "refused: '9999' is not in the directory") in audit


async def _next_event(stream: aiohttp.StreamReader, name: str, wanted: str) -> dict:  # type: ignore[type-arg]
    """The next `name` event of the stream whose data holds `wanted`."""
    kind = ""
    async for line in stream:
        text = line.decode().rstrip("\n")
        if text.startswith("event: "):
            kind = text[7:]
        elif text.startswith("data: ") and kind == name and wanted in text:
            return json.loads(text[6:])  # type: ignore[no-any-return]
    raise AssertionError("the stream ended")


async def test_the_event_stream_pushes_a_live_calls_new_turn_and_state_and_its_end(site: Site) -> None:
    await site.store.start_call(CallRecord("c-44", None, "100", "Bright Smile", "audiosocket", time.time()))
    site.live.append(("c-44", None, "100", "greeting"))
    async with browser() as http:
        await sign_in(http, site.url, "oli")
        async with http.get(f"{site.url}/calls") as page:
            assert "script-src 'self'" in page.headers["Content-Security-Policy"]
            assert '<script src="/dashboard/live.js" defer></script>' in await page.text()
        async with http.get(f"{site.url}/live.js") as script:
            assert script.status == 200 and "EventSource" in await script.text()
        async with asyncio.timeout(20), http.get(f"{site.url}/calls/events") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            assert (await _next_event(stream.content, "call", "c-44"))["state"] == "greeting"
            await site.store.add_turn(Turn("c-44", 1, "caller", "is the dentist in today?", time.time()))
            site.live[-1] = ("c-44", None, "100", "thinking")
            pushed = await _next_event(stream.content, "call", "dentist")
            assert pushed["state"] == "thinking" and pushed["turns"] == [
                {"speaker": "caller", "text": "is the dentist in today?"}]
            site.live.clear()
            assert await _next_event(stream.content, "gone", "c-44") == {"id": "c-44"}


async def test_a_stored_turn_is_pushed_at_once_not_at_the_next_look(site: Site) -> None:
    """The stream looks at the calls' states every minute here: only the store's notification of the
    committed turn can bring it within the test's bounded wait; and the turn is read for that call only."""
    site.dashboard.live.interval_s = 60.0
    for call_id in ("c-46", "c-47"):
        await site.store.start_call(CallRecord(call_id, None, "100", "Bright Smile", "audiosocket", time.time()))
        site.live.append((call_id, None, "100", "listening"))
    async with browser() as http:
        await sign_in(http, site.url, "oli")
        async with asyncio.timeout(20), http.get(f"{site.url}/calls/events") as stream:
            assert (await _next_event(stream.content, "call", "c-47"))["turns"] == []
            read: list[str] = []
            turns = site.store.turns

            async def counted(call_id: str) -> list[Turn]:
                read.append(call_id)
                return await turns(call_id)
            site.store.turns = counted  # type: ignore[method-assign]
            await site.store.add_turn(Turn("c-47", 1, "caller", "pushed, not polled", time.time()))
            pushed = await asyncio.wait_for(_next_event(stream.content, "call", "pushed, not polled"), 10)
            assert pushed["id"] == "c-47" and read == ["c-47"]


async def test_a_stream_ends_when_its_user_is_removed(site: Site) -> None:
    site.dashboard.live.session_check_s = 0.2
    async with browser() as http:
        await sign_in(http, site.url, "oli")
        async with asyncio.timeout(20), http.get(f"{site.url}/calls/events") as stream:
            await stream.content.readline()
            assert await site.store.staff_remove("oli")
            await stream.content.read()
            assert stream.content.at_eof()


async def test_event_streams_are_bounded_per_session_and_end_at_sign_out(site: Site) -> None:
    site.dashboard.live.interval_s = 60.0  # the sign-out itself ends them, not a later look
    async with browser() as http:
        await sign_in(http, site.url, "oli")
        async with http.get(f"{site.url}/calls") as page:
            token = csrf(await page.text())
        async with asyncio.timeout(20), contextlib.AsyncExitStack() as streams:
            opened = [await streams.enter_async_context(http.get(f"{site.url}/calls/events")) for _ in range(3)]
            assert [s.status for s in opened] == [200, 200, 200]
            async with http.get(f"{site.url}/calls/events") as fourth:
                assert fourth.status == 429
            async with http.post(f"{site.url}/logout", data={"csrf": token}, allow_redirects=False) as out:
                assert out.status == 303
            for s in opened:  # each stream sees the session gone and ends
                await s.content.read()
                assert s.content.at_eof()
