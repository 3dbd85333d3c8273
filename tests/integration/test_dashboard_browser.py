"""The staff dashboard in real headless Chromium (Selenium + Debian's chromedriver), served by the daemon
as `switchboard run` wires it: a supervisor answers the help request a real call left, the caller gets the
answer by SMS at the pty fake modem, and the next caller hears it with no restart; an operator is refused;
a forged form post is refused; failed sign-ins are throttled; sign-out ends the session.

Selenium blocks, and the daemon runs in this test's event loop: every browser step runs in a thread.
Each test saves screenshots of its pages to its pytest tmp folder (printed on failure by pytest's report).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from test_call_e2e import ask

from channels.settings import ModemSettings
from channels.sms_text import from_wire
from gateway.config import AmiSettings, MessagingSettings
from gateway.daemon.app import Daemon
from gateway.dashboard.accounts import new_user
from gateway.http.chats import Chats
from gateway.http.keys import new_key
from gateway.media.caller import CallerClient
from models.records import HelpRequest, Turn
from support.ami_server import AmiTestServer
from tests.support.fake_modem import FakeModem
from tests.support.gateway import own_store

pytestmark = [pytest.mark.models, pytest.mark.skipif(
    shutil.which("chromedriver") is None and os.environ.get("CI") != "true",
    reason="chromium-driver not installed (./switchboard test installs it)")]

PASSWORD = "a long enough passphrase"
CALLER = "0612345678"
T = TypeVar("T")


def submit(d: Any, button: Any) -> None:
    """Click a form's button and wait for the page it leads to (a click does not wait for navigation)."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    button.click()
    WebDriverWait(d, 60).until(expected_conditions.staleness_of(button))  # as the page load timeout: CI is loaded


class Browser:
    """Headless Chromium at tablet width; `do` runs a step on the driver in a thread."""

    def __init__(self, profile: Path, shots: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=820,1180"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
        self.driver.set_page_load_timeout(60)
        self.shots, self._n = shots, 0

    async def do(self, step: Callable[[Any], T]) -> T:
        return await asyncio.to_thread(step, self.driver)

    async def shot(self, name: str) -> Path:
        self._n += 1
        path = self.shots / f"{self._n:02d}-{name}.png"
        await self.do(lambda d: d.save_screenshot(str(path)))
        return path

    async def text(self) -> str:
        return await self.do(lambda d: d.find_element("tag name", "body").text)

    async def sign_in(self, url: str, name: str, password: str = PASSWORD) -> str:
        """Open `url`, sign in on the page it sends us to; the page's text afterwards."""
        def step(d: Any) -> None:
            d.get(url)
            d.find_element("id", "name").clear()
            d.find_element("id", "name").send_keys(name)
            d.find_element("id", "password").send_keys(password)
            submit(d, d.find_element("id", "sign-in"))
        await self.do(step)
        return await self.text()

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    b = await asyncio.to_thread(Browser, tmp_path / "chromium-profile", shots)
    yield b
    await asyncio.to_thread(b.close)
    print(f"screenshots: {shots}")


@dataclasses.dataclass
class Site:
    daemon: Daemon
    url: str


@pytest.fixture
async def run_daemon(services, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:  # type: ignore[no-untyped-def]
    """Start the daemon from the session's config with changes, on a database of its own (what staff
    teach it must not reach other tests); stopped at the end of the test."""
    started: list[Daemon] = []

    async def start(**changes: Any) -> Site:
        directory = tmp_path / f"daemon-{len(started)}"
        directory.mkdir()
        daemon = Daemon(await own_store(services, directory, **changes))
        try:
            await daemon.start()
        except BaseException:
            await daemon.services.store.close()
            raise
        started.append(daemon)
        assert daemon.http is not None
        return Site(daemon, f"http://127.0.0.1:{daemon.http.port}/dashboard")

    yield start
    for daemon in started:
        await daemon.stop(grace_s=0.5)
        await daemon.services.store.close()


async def staff(store, name: str, role: str) -> None:  # type: ignore[no-untyped-def]
    """A user of the session's shared store (several tests add theirs)."""
    if await store.staff_user(name) is None:
        await store.staff_add(new_user(name, role, PASSWORD))


async def until(check: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached in {timeout_s:.0f} s: {what}")


STATES = ("greeting", "listening", "thinking", "speaking", "transferring")


async def call_and_ask(site: Site, ami: AmiTestServer, speak, question: str, n: int,  # type: ignore[no-untyped-def]
                       confirm: str) -> CallerClient:
    """A caller (number CALLER, correlated over AMI like the shipped dialplan) asks `question`, and says
    `confirm` if the assistant asks whether that is their question."""
    client = CallerClient("127.0.0.1", site.daemon.gateway.port)
    await ami.call_events(channel=f"PJSIP/caller-0000{n}", uniqueid=f"1795259000.{n}", caller=CALLER, exten="100",
                          variables={"AS_UUID": client.call_id})
    await client.connect()
    await client.wait_reply(time.monotonic() - 1)  # the greeting
    await ask(client, speak, question)
    said = [t.text for t in await site.daemon.services.store.turns(client.call_id) if t.speaker == "assistant"]
    if "are you asking" in said[-1]:  # the confirmation band
        await ask(client, speak, confirm)
    return client


async def test_supervisor_answers_a_callers_question_which_reaches_them_by_sms_and_the_next_caller(
        browser: Browser, run_daemon, services, speak, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ami = await AmiTestServer().start()
    modem = FakeModem(tmp_path / "ttyGSM0").start()
    try:
        site = await run_daemon(
            ami=AmiSettings(enabled=True, port=ami.port, username="gateway", secret="secret"),
            messaging=MessagingSettings(sms_modem=ModemSettings(port=str(modem.port), reconnect_s=0.2,
                                                                network_timeout_s=2.0)))
        await site.daemon.ami.wait_connected(5)
        store = site.daemon.services.store
        await staff(store, "sam", "supervisor")
        question = "Do you sell gift cards for the holidays?"
        client = await call_and_ask(site, ami, speak, question, 1, "No.")
        await client.close()
        request: HelpRequest = await until(lambda: _request_of(store, client.call_id), "a help request")
        assert request.contact_number == CALLER

        page = await browser.sign_in(f"{site.url}/", "sam")  # -> sign-in page -> back to the dashboard
        await browser.shot("home")
        assert "sam (supervisor)" in page and "help request(s) waiting" in page
        await browser.do(lambda d: submit(d, d.find_element("link text", "Overview")))  # the call counted, drawn
        await browser.shot("overview")
        bars = await browser.do(lambda d: [t.get_attribute("textContent")
                                           for t in d.find_elements("css selector", "svg[role=img] rect title")])
        assert sum(bar.endswith(": 1") for bar in bars) >= 3, bars  # this hour, today, its outcome
        assert "1 call(s)" in await browser.text() and "1 help request(s)" in await browser.text()
        answer = "Yes, gift cards are sold at the front desk, in any amount."

        def answer_it(d: Any) -> None:
            submit(d, d.find_element("link text", "Help requests"))
            card = d.find_element("id", f"req-{request.id}")
            card.find_element("tag name", "textarea").send_keys(answer)
            submit(d, card.find_element("tag name", "button"))
        await browser.do(answer_it)
        await browser.shot("answered")
        answered = await browser.do(lambda d: d.find_element("id", f"req-{request.id}").text)
        assert answer in answered and "sent by sms, message #" in answered

        # The follow-up reaches the caller's phone through the outbox and the modem.
        texts = await until(lambda: _texts_to(modem, CALLER), "an SMS to the caller")
        assert answer in texts and "gift cards" in texts
        done = await store.help_request(request.id)
        assert done is not None and done.followup_channel == "sms" and done.answered_by == "sam"
        row = await until(lambda: _settled(store, done.followup_outbox_id), "the follow-up marked sent")
        await browser.do(lambda d: d.refresh())
        await browser.shot("follow-up-status")
        assert f"message #{row.id}: {row.state}" in await browser.text()

        await browser.do(lambda d: submit(d, d.find_element("link text", "Knowledge")))
        await browser.shot("knowledge")
        shown = await browser.do(lambda d: d.find_element("id", f"a-learned-{request.id}").get_property("value"))
        assert shown == answer

        # The next caller asking the same question hears the learned answer: no restart.
        again = await call_and_ask(site, ami, speak, question, 2, "Yes.")
        try:
            # While it is connected, the call and its transcript are on the live calls page.
            await browser.do(lambda d: submit(d, d.find_element("link text", "Live calls")))
            await browser.shot("live-calls")
            live = await browser.do(lambda d: d.find_element("id", f"call-{again.call_id}").text)
            assert f"{CALLER} → 100" in live and answer in live
            said = [t.text for t in await store.turns(again.call_id) if t.speaker == "assistant"]
            assert any(answer in t for t in said), said
            assert any(f"Now: {state}" in live for state in STATES), live
            # The page's script applies the event stream: a turn stored now shows without a reload.
            await store.add_turn(Turn(again.call_id, 99, "caller", "pushed to the page", time.time()))
            await until(lambda: _shown(browser, again.call_id, "pushed to the page"), "the pushed turn on the page")
            # "Transfer now" to a staff member chosen in the list moves the caller over AMI, as a dialog
            # transfer does: the Redirect names that member's extension, not the front desk's.
            chosen = site.daemon.config.site.directory.staff[2]

            def transfer(d: Any) -> None:
                from selenium.webdriver.support.select import Select

                card = d.find_element("id", f"call-{again.call_id}")
                Select(card.find_element("tag name", "select")).select_by_value(chosen.name)
                submit(d, card.find_element("tag name", "button"))
            await browser.do(transfer)
            (redirect,) = await ami.wait_for("Redirect", timeout=20)
            assert chosen.extension != site.daemon.config.site.directory.front_desk.extension
            assert (redirect["Channel"], redirect["Exten"]) == ("PJSIP/caller-00002", chosen.extension)
            await asyncio.wait_for(again.hung_up.wait(), 10)
            assert any(a["action"] == "transfer call" and chosen.extension in a["outcome"]
                       for a in await store.staff_audit())
        finally:
            await again.close()
    finally:
        modem.close()
        await ami.stop()


async def _shown(browser: Browser, call_id: str, text: str) -> bool:
    return text in await browser.do(lambda d: d.find_element("id", f"call-{call_id}").text)


async def _request_of(store, call_id: str) -> HelpRequest | None:  # type: ignore[no-untyped-def]
    return next((r for r in await store.help_requests() if r.call_id == call_id), None)


async def _texts_to(modem: FakeModem, number: str) -> str:
    parts = [p for p in modem.sent if p.number.endswith(number.lstrip("0"))]
    return from_wire("".join(p.text for p in parts)) if parts else ""


async def _settled(store, outbox_id: int):  # type: ignore[no-untyped-def]
    row = await store.outbox_get(outbox_id)
    return row if row is not None and row.state in ("sent", "delivered") else None


async def test_an_operator_is_refused_and_a_forged_post_is_refused(
        browser: Browser, run_daemon, services) -> None:  # type: ignore[no-untyped-def]
    site = await run_daemon()
    store = site.daemon.services.store
    await staff(store, "oli", "operator")
    await staff(store, "sue", "supervisor")
    request_id = await store.create_help_request(HelpRequest(None, "call-x", "+15550107777", "Is there a ramp?",
                                                             created_at=time.time()))
    page = await browser.sign_in(f"{site.url}/", "oli")
    assert "oli (operator)" in page and "Help requests" not in page  # no link to what they may not open
    for path in ("/knowledge", "/help"):
        await browser.do(lambda d: d.get(f"{site.url}{path}"))
        await browser.shot(f"operator{path.replace('/', '-')}")
        assert "Not allowed" in await browser.text() and "needs the supervisor role" in await browser.text()
    # The same browser session from a script: statuses, and the answer action with a valid token.
    cookies = {c["name"]: c["value"] for c in await browser.do(lambda d: d.get_cookies())}
    async with aiohttp.ClientSession(cookies=cookies) as http:
        async with http.get(f"{site.url}/knowledge") as knowledge:
            assert knowledge.status == 403
        async with http.get(f"{site.url}/") as home:
            token = (await home.text()).split('name="csrf" value="')[1].split('"')[0]
        async with http.post(f"{site.url}/help/{request_id}/answer", data={"csrf": token, "answer": "Yes."}) as post:
            assert post.status == 403

    # A supervisor's browser posts a form that lacks the CSRF token (as a forged page would).
    await browser.do(lambda d: d.delete_all_cookies())
    page = await browser.sign_in(f"{site.url}/help", "sue")
    assert "Is there a ramp?" in page

    def forge(d: Any) -> None:
        d.execute_script(
            "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];"
            "const a = document.createElement('input'); a.name = 'answer'; a.value = 'forged'; f.appendChild(a);"
            "document.body.appendChild(f); f.submit();", f"{site.url}/help/{request_id}/answer")
    await browser.do(forge)
    await until(lambda: _page_says(browser, "Not allowed"), "the refusal page", 20)
    await browser.shot("forged-post")
    assert "CSRF" in await browser.text()
    request = await store.help_request(request_id)
    assert request is not None and request.status == "open" and request.answer is None


async def _page_says(browser: Browser, text: str) -> bool:
    return text in await browser.text()


async def test_sign_out_and_login_throttling(browser: Browser, run_daemon, services) -> None:  # type: ignore[no-untyped-def]
    site = await run_daemon(dashboard=services.config.dashboard.model_copy(update={"login_failures": 3}))
    await staff(site.daemon.services.store, "tia", "supervisor")
    page = await browser.sign_in(f"{site.url}/", "tia")
    assert "tia (supervisor)" in page
    await browser.do(lambda d: submit(d, d.find_element("xpath", "//button[text()='Sign out']")))
    await browser.shot("signed-out")
    assert (await browser.do(lambda d: d.current_url)).endswith("/dashboard/login")
    await browser.do(lambda d: d.get(f"{site.url}/help"))  # the session is over: back to sign-in
    assert "/dashboard/login" in await browser.do(lambda d: d.current_url)

    for _ in range(3):
        assert "Wrong user name or password" in await browser.sign_in(f"{site.url}/login", "tia", "not the password")
    page = await browser.sign_in(f"{site.url}/login", "tia")  # the right password, too late
    await browser.shot("throttled")
    assert "Too many failed sign-ins" in page
    assert "sb_session" not in {c["name"] for c in await browser.do(lambda d: d.get_cookies())}
    outcomes = [a["outcome"] for a in await site.daemon.services.store.staff_audit(20) if a["user_name"] == "tia"]
    assert outcomes[:4] == ["throttled", "failed", "failed", "failed"] and "ok" in outcomes


async def test_an_admin_adds_a_user_from_the_web_who_then_signs_in(
        browser: Browser, run_daemon) -> None:  # type: ignore[no-untyped-def]
    site = await run_daemon()
    store = site.daemon.services.store
    await staff(store, "adam", "admin")
    await browser.sign_in(f"{site.url}/users", "adam")

    def add(d: Any) -> str:
        from selenium.webdriver.support.select import Select

        d.find_element("id", "new-name").send_keys("rosa")
        Select(d.find_element("id", "new-role")).select_by_value("supervisor")
        d.find_element("id", "password-new").send_keys(PASSWORD)  # the labelled fields, typed twice
        d.find_element("id", "again-new").send_keys(PASSWORD)
        submit(d, d.find_element("id", "add-user"))
        return str(d.find_element("id", "user-rosa").text)
    card = await browser.do(add)
    await browser.shot("user-added")
    assert "supervisor" in card and "Reset password" in card
    await browser.do(lambda d: submit(d, d.find_element("xpath", "//button[text()='Sign out']")))
    assert "rosa (supervisor)" in await browser.sign_in(f"{site.url}/", "rosa")
    assert ("adam", "add user", "rosa") in [(a["user_name"], a["action"], a["target"]) for a in await store.staff_audit()]


async def test_a_supervisor_dismisses_a_failed_message_from_the_outbox(
        browser: Browser, run_daemon) -> None:  # type: ignore[no-untyped-def]
    site = await run_daemon()
    store = site.daemon.services.store
    await staff(store, "sue", "supervisor")
    # A channel no worker serves, so the row stays as this test leaves it.
    row_id, _ = await store.outbox_enqueue("fax", "+15550102030", "Your appointment", None, None, "fax-1")
    assert (await store.outbox_claim("fax")).id == row_id  # type: ignore[union-attr]
    await store.outbox_failed(row_id, "PermanentError: no carrier")
    await browser.sign_in(f"{site.url}/outbox", "sue")
    await browser.shot("outbox-failed")
    assert "no carrier" in await browser.do(lambda d: d.find_element("id", f"out-{row_id}").text)
    await browser.do(lambda d: submit(d, d.find_element("id", f"out-{row_id}").find_element(
        "xpath", ".//button[text()='Dismiss']")))
    await browser.shot("outbox-dismissed")
    assert not await browser.do(lambda d: d.find_elements("id", f"out-{row_id}"))
    row = await store.outbox_get(row_id)
    assert row is not None and (row.state, row.dismissed_by) == ("failed", "sue")


TEXTER = "+31611223344"


async def _new_texts(modem: FakeModem, before: int) -> str:
    """The text of the SMS parts sent to TEXTER after the first `before` of them."""
    parts = [p for p in modem.sent if p.number.endswith(TEXTER.lstrip("+"))][before:]
    return from_wire("".join(p.text for p in parts)) if parts else ""


def _parts_to_texter(modem: FakeModem) -> int:
    return sum(1 for p in modem.sent if p.number.endswith(TEXTER.lstrip("+")))


async def _inbound(store, thread: int, body: str, status: str):  # type: ignore[no-untyped-def]
    return next((m for m in await store.thread_view(thread) if m["direction"] == "in" and m["body"] == body
                 and m["status"] == status), None)


async def test_an_operator_takes_over_an_api_websocket_chat(browser: Browser, run_daemon) -> None:  # type: ignore[no-untyped-def]
    """A daemon with no text channel: its HTTP API chats are still listed, taken over, answered and handed back."""
    site = await run_daemon()
    store = site.daemon.services.store
    await staff(store, "ora", "operator")
    key, record = new_key("web", ["threads:write"], "100/s", None)
    await store.api_key_create(record)
    base = site.url.removesuffix("/dashboard")
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"{base}/v1/chat?external_id=visitor-7", headers={"Authorization": f"Bearer {key}"}) as ws:
        async def answer() -> dict:
            while (frame := await ws.receive_json(timeout=60))["type"] == "delta":
                pass
            return frame

        await ws.send_str("What time do you open on Tuesday?")
        assert "8 a.m." in (await answer())["reply"]
        thread = await store.chat_thread(Chats.key("web", "visitor-7"), create=False)
        page = await browser.sign_in(f"{site.url}/conversations", "ora")
        assert "api:web:visitor-7" in page

        def open_and_take(d: Any) -> None:
            submit(d, d.find_element("css selector", f"#thread-{thread} a"))
            submit(d, d.find_element("id", "take"))
        await browser.do(open_and_take)
        assert "You took this conversation over" in await browser.text()
        await ws.send_str("Can I bring my dog?")
        assert (await answer())["held"] is True  # acknowledged, not answered by the assistant

        def reply(d: Any) -> None:
            d.get(f"{site.url}/conversations/{thread}")
            assert "Can I bring my dog?" in d.find_element("id", "messages").text
            d.find_element("id", "reply").send_keys("Yes, on a lead. Ora")
            submit(d, d.find_element("id", "send"))
        await browser.do(reply)
        pushed = await ws.receive_json(timeout=60)
        assert (pushed["from"], pushed["reply"]) == ("staff", "Yes, on a lead. Ora")
        await browser.shot("taken-over-api-chat")
        await browser.do(lambda d: submit(d, d.find_element("id", "release")))
        assert "The assistant answers this conversation" in await browser.text()
        await ws.send_str("What time do you open on Tuesday?")
        assert "8 a.m." in (await answer())["reply"]


async def test_an_operator_takes_over_an_sms_thread_replies_and_hands_it_back(
        browser: Browser, run_daemon, services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    modem = FakeModem(tmp_path / "ttyGSM1").start()
    try:
        site = await run_daemon(messaging=MessagingSettings(sms_modem=ModemSettings(
            port=str(modem.port), reconnect_s=0.2, network_timeout_s=2.0)))
        store = site.daemon.services.store
        await staff(store, "ora", "operator")
        # The assistant answers the first text: the thread exists and the path works.
        modem.receive_sms(TEXTER, "Do you take Cigna insurance?")
        first = await until(lambda: _new_texts(modem, 0), "the assistant's first answer at the modem")
        assert "Cigna" in first
        thread = await store.thread_for(TEXTER)

        page = await browser.sign_in(f"{site.url}/conversations", "ora")
        await browser.shot("conversations")
        assert "***344" in page and TEXTER not in page  # the operator sees the last digits only

        def open_and_take(d: Any) -> None:
            submit(d, d.find_element("css selector", f"#thread-{thread} a"))
            submit(d, d.find_element("id", "take"))
        await browser.do(open_and_take)
        assert "You took this conversation over" in await browser.text()
        sent = _parts_to_texter(modem)

        # A text while held: stored (settled `held` before the modem's copy is deleted), shown, counted.
        modem.receive_sms(TEXTER, "Can I bring my dog to the appointment?")
        await until(lambda: _inbound(store, thread, "Can I bring my dog to the appointment?", "held"), "held text")
        await browser.do(lambda d: d.get(f"{site.url}/conversations"))
        assert "1 new" in await browser.do(lambda d: d.find_element("id", f"thread-{thread}").text)
        # No reply is coming: held texts start no debounce. Wait longer than the debounce would, bounded.
        wait_s = site.daemon.config.messaging.conversations.buffer_s + 3.0
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            assert _parts_to_texter(modem) == sent, await _new_texts(modem, sent)
            await asyncio.sleep(0.2)
        assert await store.pending_inbound(thread) == []

        reply = "Yes, dogs are welcome in the waiting room. Ora"

        def answer(d: Any) -> None:
            d.get(f"{site.url}/conversations/{thread}")
            assert "Can I bring my dog" in d.find_element("id", "messages").text
            d.find_element("id", "reply").send_keys(reply)
            submit(d, d.find_element("id", "send"))
        await browser.do(answer)
        delivered = await until(lambda: _new_texts(modem, sent), "the operator's reply at the modem")
        assert delivered == reply
        await browser.do(lambda d: d.refresh())
        await browser.shot("taken-over-thread")
        shown = await browser.do(lambda d: d.find_element("id", "messages").text)
        assert "ora" in shown and reply in shown
        view = await store.thread_view(thread)
        assert [(m["sent_by"], m["body"]) for m in view if m["direction"] == "out"][-1] == ("ora", reply)

        await browser.do(lambda d: submit(d, d.find_element("id", "release")))
        assert "The assistant answers this conversation" in await browser.text()
        sent = _parts_to_texter(modem)
        modem.receive_sms(TEXTER, "Is there parking?")
        again = await until(lambda: _new_texts(modem, sent), "the assistant's answer after hand-back")
        assert "parking" in again.lower() and again != reply
        await browser.do(lambda d: d.refresh())
        await browser.shot("handed-back")
        actions = [(a["user_name"], a["action"], a["outcome"].split(" #")[0]) for a in await store.staff_audit(50)]
        assert {("ora", "take over", "ok"), ("ora", "reply", "queued message"),
                ("ora", "hand back", "ok")} <= set(actions)
    finally:
        modem.close()
async def test_an_operator_finds_a_call_by_part_of_its_number_and_reads_its_transcript(
        browser: Browser, run_daemon, services, speak) -> None:  # type: ignore[no-untyped-def]
    ami = await AmiTestServer().start()
    try:
        site = await run_daemon(ami=AmiSettings(enabled=True, port=ami.port, username="gateway", secret="secret"))
        await site.daemon.ami.wait_connected(5)
        store = site.daemon.services.store
        await staff(store, "opal", "operator")
        client = await call_and_ask(site, ami, speak, "What are your opening hours?", 3, "Yes.")
        await client.close()
        await until(lambda: _ended(store, client.call_id), "the call recorded as ended")
        turns = await store.turns(client.call_id)

        await browser.sign_in(f"{site.url}/history", "opal")

        def search(d: Any) -> str:
            d.find_element("id", "number").send_keys(CALLER[3:8])  # a part of the number
            submit(d, d.find_element("id", "search"))
            return str(d.find_element("id", "found").text)
        found = await browser.do(search)
        await browser.shot("history-search")
        assert " found" in found and CALLER not in await browser.text()  # operators see ***678
        await browser.do(lambda d: submit(d, d.find_element("id", f"open-{client.call_id}")))
        await browser.shot("history-call")
        page = await browser.text()
        transcript = await browser.do(lambda d: d.find_element("id", "turns").text)
        assert client.call_id in page and "***678" in page and CALLER not in page
        assert all(t.text in transcript for t in turns) and any(t.speaker == "caller" for t in turns)
        assert " ms" in transcript  # per-turn timings
        started = (await store.call(client.call_id))["started_at"]  # shown in site.timezone (New York)
        assert f"started {dt.datetime.fromtimestamp(started, site.daemon.config.site.tz):%Y-%m-%d %H:%M}" in page
    finally:
        await ami.stop()


async def _ended(store, call_id: str) -> bool:  # type: ignore[no-untyped-def]
    call = await store.call(call_id)
    return call is not None and call["ended_at"] is not None
