"""The HTTP API over real HTTP on loopback, in a daemon wired as `switchboard run` wires it, sending
email to a real aiosmtpd. One daemon for the module; each test makes its own keys."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from test_email_peer import SmtpPeer
from test_sip_message import Sipp, needs_sipp

from channels.settings import SipMessageSettings, WebhookSettings
from channels.webhook import signature
from gateway.config import AmiSettings, MessagingSettings, PublicChatSettings
from gateway.daemon.app import Daemon
from gateway.dashboard.accounts import new_user
from gateway.http.api import PUBLIC_OWNER
from gateway.http.keys import new_key
from gateway.http.chats import Chats
from gateway.media.caller import CallerClient
from models.records import CallRecord, Turn
from tests.support.ami_server import AmiTestServer
from tests.support.fake_modem import FakeModem
from tests.support.gateway import own_store
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
pytestmark = pytest.mark.models
PROBLEM = "application/problem+json"
HOOK_SECRET_ENV, HOOK_SECRET = "TEST_WEBHOOK_SECRET", "whsec-test-7f3a"
SITE = "https://www.clinic.test"  # http.public_chat.origins
OPERATOR = "ops@clinic.test"  # conversations.operator_to: where escalations go
ALL_SCOPES = ["messages:send", "messages:read", "otp:send", "otp:verify"]


@dataclass
class Rig:
    daemon: Daemon
    smtp: SmtpPeer
    http: aiohttp.ClientSession
    base: str
    modem: FakeModem | None = None
    hook_port: int = 0

    async def key(self, *scopes: str, rate: str = "1000/s", expires: str | None = None) -> str:
        key, record = new_key(f"t-{uuid.uuid4().hex[:8]}", list(scopes or ALL_SCOPES), rate, expires)
        await self.daemon.services.store.api_key_create(record)
        return key

    async def call(self, method: str, path: str, key: str | None = None, body: object = None,
                   data: bytes | None = None) -> tuple[int, dict, aiohttp.ClientResponse]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with self.http.request(method, self.base + path, headers=headers, data=data,
                                     json=body if data is None else None) as resp:
            raw = await resp.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"text": raw.decode(errors="replace")}
        return resp.status, parsed, resp

    async def mail_to(self, address: str, timeout: float = 20.0, containing: str = ""):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.smtp.messages
                     if m["To"] == address and (not containing or containing in m.get_body(("plain",)).get_content())]
            if found:
                return found[-1]
            assert time.monotonic() < deadline, f"no mail to {address}"
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def rig(services, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:  # type: ignore[no-untyped-def]
    smtp = SmtpPeer()
    await smtp.start()
    directory = tmp_path_factory.mktemp("http")
    modem = FakeModem(directory / "ttyGSM0").start()
    config = services.config
    messaging = MessagingSettings.model_validate({
        "email": {"smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none",
                           "from_address": "desk@clinic.test"}},
        "sms_modem": {"port": str(directory / "ttyGSM0"), "reconnect_s": 0.2, "network_timeout_s": 0.5},
        "outbox": {"retry": {"base_s": 0.05, "cap_s": 0.2}},
        "conversations": {"operator_channel": "email", "operator_to": OPERATOR}})
    os.environ[HOOK_SECRET_ENV] = HOOK_SECRET
    hook_port = free_port()  # the receiver comes up in test_webhooks_*
    http = config.http.model_copy(update={
        "port": 0, "messages_per_destination_hourly": 3, "max_body_bytes": 4096,
        "templates": {"reminder": "Your appointment is at $time."},
        "webhooks": (WebhookSettings(url=f"http://127.0.0.1:{hook_port}/hook", secret_env=HOOK_SECRET_ENV),),
        "public_chat": PublicChatSettings(enabled=True, origins=(SITE,), max_connections_per_ip=2,
                                          messages_per_minute_per_ip=3, max_message_bytes=300),
        "otp": config.http.otp.model_copy(update={"resend_cooldown_s": 30.0, "per_destination_hourly": 2})})
    daemon = Daemon(await own_store(services, directory, messaging=messaging, http=http))
    await daemon.start()
    assert daemon.http is not None
    session = aiohttp.ClientSession()
    try:
        yield Rig(daemon, smtp, session, f"http://127.0.0.1:{daemon.http.port}", modem, hook_port)
    finally:
        await session.close()
        await daemon.stop(grace_s=0.5)
        await daemon.services.store.close()
        await smtp.stop()
        modem.close()


async def test_health_ready_and_metrics(rig: Rig) -> None:
    assert (await rig.call("GET", "/health"))[:2] == (200, {"status": "ok"})
    status, body, _ = await rig.call("GET", "/ready")
    assert status == 200 and body["checks"] == {"models": "up", "store": "up", "channel:email": "up",
                                                "channel:sms": "up"}
    status, body, resp = await rig.call("GET", "/metrics")
    assert status == 200 and resp.content_type == "text/plain"
    text = body["text"]
    assert 'switchboard_http_requests_total{route="/ready",status="200"} 1.0' in text
    assert "switchboard_calls_active 0.0" in text and "switchboard_ai_turns_in_use 0.0" in text
    # The README's list is the exposition's: every family there, and nothing unlisted.
    listed = set(re.findall(r"^- `(switchboard_\w+)[`{]", README, re.M))
    exposed = set(re.findall(r"^# TYPE (switchboard_\w+) ", text, re.M))
    assert exposed <= listed and listed - exposed <= {"switchboard_ami_connected", "switchboard_outbox_messages"}


def sample(text: str, name: str) -> float:
    """One sample's value in a text exposition (0 when absent)."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_a_call_and_a_delivery_are_measured_and_reported(rig: Rig, speak) -> None:  # type: ignore[no-untyped-def]
    """A real call (a spoken turn, then a transfer by the dialplan) fills the latency histograms, counts the
    transfer and sends call.ended; an email delivered counts a delivery; a chat's unknown question sends
    help_request.created."""
    before = (await rig.call("GET", "/metrics"))[1]["text"]
    key = await rig.key("messages:send", "threads:write")
    status, _, _ = await rig.call("POST", "/v1/messages", key,
                                  {"channel": "email", "to": "counted@example.test", "text": "hi"})
    assert status == 202
    async with receiver(rig.hook_port) as event:
        client = await CallerClient("127.0.0.1", rig.daemon.gateway.port).connect()
        try:
            await client.wait_reply(time.monotonic() - 1)  # the greeting
            sent = await client.say(await speak("Hi, could I speak to Doctor Chen please? My number is 555 0102 030."))
            await client.wait_reply(sent)
            await asyncio.wait_for(client.hung_up.wait(), 15)
        finally:
            await client.close()
        _, ended = await event("call.ended", client.call_id, "call_id")
        summary = ended["data"]["summary"]
        assert summary.startswith("transferred: ") and "chen" in summary.lower(), summary
        assert "0102" not in summary and len(summary) <= 120
        reply = (await rig.call("POST", "/v1/threads/hooks-1/messages", key,
                                {"text": "Do you sell gift cards for the holidays?"}))[1]
        assert {"type": "escalation"} in [{"type": a["type"]} for a in reply["actions"]], reply
        request = next(r for r in await rig.daemon.services.store.help_requests() if "gift" in r.question)
        _, created = await event("help_request.created", request.id)
        assert "gift card" in created["data"]["question"].lower()
    await rig.mail_to("counted@example.test")
    text = (await rig.call("GET", "/metrics"))[1]["text"]  # call.ended came after the call's last event
    for name in ("switchboard_voice_to_voice_seconds_count", "switchboard_stt_seconds_count",
                 "switchboard_first_audio_seconds_count", 'switchboard_transfers_total{result="sent"}',
                 'switchboard_deliveries_total{outcome="sent"}'):
        assert sample(text, name) > sample(before, name), name


async def until_status(rig_call, path: str, key: str, wanted: str) -> dict:  # type: ignore[no-untyped-def]
    for _ in range(200):
        body = (await rig_call("GET", path, key))[1]
        if body.get("status") == wanted:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never {wanted}: {body}")


@needs_sipp
async def test_a_sip_message_through_the_api_reaches_sipp(services, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """channel sip: the daemon's SIP MESSAGE channel sends to a real SIPp gateway, which challenges with
    401 and takes the authenticated retry; the message's timeline ends delivered, its text in SIPp's log."""
    (tmp_path / "sipp").mkdir()
    sipp = await Sipp("uas_401.xml", tmp_path / "sipp", user="gw", password="s3cret", qop="").start()
    monkeypatch.setenv("TEST_SIP_PASSWORD", "s3cret")
    messaging = MessagingSettings(sip_message=SipMessageSettings(
        gateway_host="127.0.0.1", gateway_port=sipp.port, bind_port=0, username="gw", domain="sms.example",
        password_env="TEST_SIP_PASSWORD", timer_f_s=8.0))
    daemon = Daemon(await own_store(services, tmp_path, messaging=messaging))
    await daemon.start()
    assert daemon.http is not None
    try:
        async with aiohttp.ClientSession() as http:
            rig = Rig(daemon, SmtpPeer(), http, f"http://127.0.0.1:{daemon.http.port}")
            key = await rig.key()
            text = "Your crown is ready. Grüße from the clinic."
            status, sent, _ = await rig.call("POST", "/v1/messages", key,
                                             {"channel": "sip", "to": "+1 555 0102 030", "text": text})
            assert status == 202
            done = await until_status(rig.call, f"/v1/messages/{sent['id']}", key, "delivered")
            assert done["attempts"] == 1
        assert await sipp.wait() == 0, sipp.log("errors")  # SIPp's verifyauth accepted the digest
        assert text in sipp.log("messages") and "+15550102030" in sipp.log("messages")
    finally:
        await daemon.stop(grace_s=0.5)
        await daemon.services.store.close()


async def test_ready_and_voice_through_ami(services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """AMI configured: /ready is 503 naming it until it connects. A voice message and a voice code become
    Originates at the AMI test server (busy here: the row fails with the reason). A second daemon in the
    process has its own metrics."""
    port = free_port()
    own = await own_store(services, tmp_path, ami=AmiSettings(
        enabled=True, port=port, username="gateway", secret="secret", outbound_retries=0, outbound_ring_s=5))
    # The retention sweeper runs at start: the audit row of 100 days ago goes, today's stays; what was
    # said in a call that ended 40 days ago is blanked (its turn stays, with its timings), today's stays.
    await own.store.api_audit_write([("old", "GET", "/health", 200, time.time() - 100 * 86400),
                                     ("new", "GET", "/health", 200, time.time())])
    for call_id, days in (("call-old", 40), ("call-new", 0)):
        start = time.time() - days * 86400
        await own.store.start_call(CallRecord(call_id, "+15550102030", "202", "clinic", "audiosocket", start))
        await own.store.add_turn(Turn(call_id, 0, "caller", "my name is Ann", start, {"stt": 100.0}))
        await own.store.end_call(call_id, "hangup", start + 60)
    daemon = Daemon(own)
    await daemon.start()
    for _ in range(200):
        if [r["key_name"] for r in await own.store.api_audit()] == ["new"] and \
                [(t.text, t.timings_ms) for t in await own.store.turns("call-old")] == [("", {"stt": 100.0})]:
            assert [t.text for t in await own.store.turns("call-new")] == ["my name is Ann"]
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the daemon's retention sweeper did not run")
    server = AmiTestServer(port=port, originate_reasons=[5, 5, 5])
    assert daemon.http is not None
    try:
        async with aiohttp.ClientSession() as http:
            rig = Rig(daemon, SmtpPeer(), http, f"http://127.0.0.1:{daemon.http.port}")
            status, body, _ = await rig.call("GET", "/ready")
            assert status == 503 and body["checks"]["ami"] == "down" and "ami" in body["detail"]
            await server.start()
            await daemon.ami.wait_connected(10)  # type: ignore[union-attr]
            assert (await rig.call("GET", "/ready"))[1]["checks"] == {"models": "up", "store": "up", "ami": "up"}
            key = await rig.key()
            status, sent, _ = await rig.call("POST", "/v1/messages", key,
                                             {"channel": "voice", "to": "+1 555 0100", "text": "Your crown is ready."})
            assert status == 202
            (originate,) = await server.wait_for("Originate")
            assert originate["Channel"] == "PJSIP/+15550100"
            failed = await until_status(rig.call, f"/v1/messages/{sent['id']}", key, "failed")
            assert failed["last_error"].endswith("busy after 1 attempt(s)")
            status, code, _ = await rig.call("POST", "/v1/otp", key, {"channel": "voice", "to": "201"})
            assert status == 202
            originates = await server.wait_for("Originate", 2)
            assert originates[1]["Channel"] == "PJSIP/201"
            # POST /v1/calls: the same Originate path, under its own scope.
            call = {"to": "+1 555 0111", "text": "Your crown is ready.", "idempotency_key": "crown-1"}
            assert (await rig.call("POST", "/v1/calls", key, call))[0] == 403  # no calls:create
            caller = await rig.key("calls:create")
            status, placed, _ = await rig.call("POST", "/v1/calls", caller, call)
            assert status == 202 and placed["status"] == "queued"
            originates = await server.wait_for("Originate", 3)
            assert originates[2]["Channel"] == "PJSIP/+15550111"
            failed = await until_status(rig.call, f"/v1/calls/{placed['id']}", caller, "failed")
            assert failed["channel"] == "voice" and failed["last_error"].endswith("busy after 1 attempt(s)")
            assert [failed["timeline"][i]["status"] for i in (0, -1)] == ["queued", "failed"]
            assert (await rig.call("POST", "/v1/calls", caller, call))[1] == {"id": placed["id"], "status": "failed"}
            assert (await rig.call("GET", f"/v1/calls/{sent['id']}", caller))[0] == 404  # another key's
            assert (await rig.call("GET", f"/v1/calls/{placed['id']}", key))[0] == 403
            assert (await rig.call("POST", "/v1/calls", caller, {"to": "+1 555 0111"}))[0] == 422
            with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:  # no public chat here: a key, or 401
                await http.ws_connect(rig.base + "/v1/chat", origin="https://www.clinic.test")
            assert refusal.value.status == 401
            text = (await rig.call("GET", "/metrics"))[1]["text"]
        assert "switchboard_ami_connected 1.0" in text and "/health" not in text
    finally:
        await daemon.stop(grace_s=0.5)
        await daemon.services.store.close()
        await server.stop()


async def test_every_refusal_is_a_problem_document(rig: Rig) -> None:
    message = {"channel": "email", "to": "a@clinic.test", "text": "hi"}
    cases = [
        (await rig.call("POST", "/v1/messages", None, message), 401),
        (await rig.call("POST", "/v1/messages", "sb_not-a-key", message), 401),
        (await rig.call("POST", "/v1/messages", await rig.key("otp:send"), message), 403),
        (await rig.call("POST", "/v1/messages", await rig.key(), {"channel": "fax", "to": "x", "text": "hi"}), 422),
        (await rig.call("POST", "/v1/messages", await rig.key(), data=b"{not json"), 422),
        (await rig.call("POST", "/v1/messages", await rig.key(), {**message, "channel": "sip"}), 422),  # none here
        (await rig.call("POST", "/v1/messages", await rig.key(), data=b"[" + b"1," * 5000 + b"1]"), 413),
        (await rig.call("GET", "/v1/messages/999999999", await rig.key()), 404),
        (await rig.call("GET", "/v1/nothing-here"), 404),
        (await rig.call("DELETE", "/health"), 405),
    ]
    for (status, body, resp), expected in cases:
        assert (status, resp.content_type) == (expected, PROBLEM), body
        assert body["status"] == expected and body["title"] and body["detail"]
    errors = cases[3][0][1]["errors"]
    assert errors[0]["loc"] == "channel" and "input" not in errors[0]


async def test_expired_and_revoked_keys_are_refused_at_once(rig: Rig) -> None:
    store = rig.daemon.services.store
    key, record = new_key(f"t-{uuid.uuid4().hex[:8]}", ["messages:read"], "1000/s", None, now=time.time() - 100)
    await store.api_key_create(dataclasses.replace(record, expires_at=time.time() - 1))
    assert (await rig.call("GET", "/v1/messages/1", key))[0] == 401
    key, record = new_key(f"t-{uuid.uuid4().hex[:8]}", ["messages:read"], "1000/s", None)
    await store.api_key_create(record)
    assert (await rig.call("GET", "/v1/messages/1", key))[0] == 404
    assert await store.api_key_revoke(record.name)
    assert (await rig.call("GET", "/v1/messages/1", key))[0] == 401


async def test_rate_limit_answers_429_with_retry_after(rig: Rig) -> None:
    key = await rig.key(rate="1/h")  # a burst of one, then one an hour: no clock in this test
    assert (await rig.call("GET", "/v1/messages/1", key))[0] == 404
    status, body, resp = await rig.call("GET", "/v1/messages/1", key)
    assert status == 429 and 3000 < int(resp.headers["Retry-After"]) <= 3600


async def test_a_message_arrives_by_email_with_its_timeline(rig: Rig) -> None:
    key = await rig.key()
    status, body, _ = await rig.call("POST", "/v1/messages", key, {
        "channel": "email", "to": "Patient.One@Example.test", "template": "reminder", "vars": {"time": "9:30"},
        "subject": "Reminder", "idempotency_key": "reminder-1"})
    assert status == 202 and body["status"] == "queued"
    mail = await rig.mail_to("patient.one@example.test")
    assert mail["Subject"] == "Reminder" and "Your appointment is at 9:30." in mail.get_body().get_content()
    timeline = await until_status(rig.call, f"/v1/messages/{body['id']}", key, "sent")
    assert [step["status"] for step in timeline["timeline"]] == ["queued", "sending", "sent"]
    assert timeline["attempts"] == 1 and timeline["sent_at"]
    again = await rig.call("POST", "/v1/messages", key, {  # the same idempotency key: the same message
        "channel": "email", "to": "patient.one@example.test", "text": "other", "idempotency_key": "reminder-1"})
    assert again[:2] == (202, {"id": body["id"], "status": "sent"})
    other_key = await rig.key()
    assert (await rig.call("GET", f"/v1/messages/{body['id']}", other_key))[0] == 404  # not its message


async def test_scheduled_message_waits_and_destination_limit(rig: Rig) -> None:
    key = await rig.key()
    later = datetime.fromtimestamp(time.time() + 86400, timezone.utc).replace(microsecond=0).isoformat()
    status, body, _ = await rig.call("POST", "/v1/messages", key,
                                     {"channel": "email", "to": "later@example.test", "text": "x", "send_at": later})
    assert status == 202
    status, row, _ = await rig.call("GET", f"/v1/messages/{body['id']}", key)
    assert row["status"] == "queued" and row["send_at"].startswith(later[:19])
    for _ in range(2):  # 3 an hour to one destination (the fixture's limit)
        assert (await rig.call("POST", "/v1/messages", key,
                               {"channel": "email", "to": "later@example.test", "text": "x", "send_at": later}))[0] == 202
    status, _, resp = await rig.call("POST", "/v1/messages", key,
                                     {"channel": "email", "to": "LATER@example.test", "text": "x", "send_at": later})
    assert status == 429 and int(resp.headers["Retry-After"]) > 3000


async def test_destination_limits_hold_under_concurrent_requests(rig: Rig) -> None:
    """Parallel requests to one destination cannot all pass the check before any is written."""
    key = await rig.key()
    codes = await asyncio.gather(*(rig.call("POST", "/v1/otp", key, {"to": "pump@example.test", "channel": "email"})
                                   for _ in range(8)))
    assert sorted(status for status, _, _ in codes) == [202] + [429] * 7  # the resend cooldown
    later = datetime.fromtimestamp(time.time() + 86400, timezone.utc).isoformat()
    sent = await asyncio.gather(*(rig.call("POST", "/v1/messages", key, {
        "channel": "email", "to": "pump@example.test", "text": "x", "send_at": later}) for _ in range(8)))
    assert sorted(status for status, _, _ in sent) == [202] * 3 + [429] * 5  # 3 an hour (the fixture's limit)


def _code(mail) -> str:  # type: ignore[no-untyped-def]
    return re.search(r"\b(\d{6})\b", mail.get_body().get_content()).group(1)  # type: ignore[union-attr]


async def test_one_time_code_by_email(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = await rig.key("otp:send", "otp:verify")
    status, sent, _ = await rig.call("POST", "/v1/otp", key, {"to": "otp.user@example.test", "channel": "email",
                                                              "purpose": "login"})
    assert status == 202 and set(sent) == {"id", "expires_at"}
    code = _code(await rig.mail_to("otp.user@example.test"))
    wrong = f"{(int(code) + 1) % 10 ** 6:06d}"
    verify = "/v1/otp/verify"
    assert (await rig.call("POST", verify, key, {"id": sent["id"], "code": wrong}))[:2] == (
        200, {"valid": False, "attempts_left": 4})
    assert (await rig.call("POST", verify, key, {"id": sent["id"], "code": code}))[:2] == (
        200, {"valid": True, "attempts_left": 0})
    assert (await rig.call("POST", verify, key, {"id": sent["id"], "code": code}))[1]["valid"] is False  # reused
    # A second code at once: the resend cooldown.
    status, _, resp = await rig.call("POST", "/v1/otp", key, {"to": "otp.user@example.test", "channel": "email"})
    assert status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 30
    # Never logged, never kept: the outbox row's text is erased once sent.
    store = rig.daemon.services.store
    for _ in range(100):
        rows = [r for r in await store.outbox_rows() if r.recipient == "otp.user@example.test"]
        if rows[0].state == "sent":
            break
        await asyncio.sleep(0.05)
    ours = "\n".join(r.getMessage() for r in caplog.records  # not the test's SMTP server's debug log
                     if r.name.split(".")[0] in ("gateway", "channels", "models", "llm", "aiohttp"))
    assert code not in rows[0].body and code not in ours and "otp queued" in ours


async def test_one_time_code_by_sms_through_the_modem(rig: Rig) -> None:
    assert rig.modem is not None
    key = await rig.key("otp:send", "otp:verify", "messages:send")
    status, sent, _ = await rig.call("POST", "/v1/otp", key, {"to": "+31 6 1234 5678", "channel": "sms"})
    assert status == 202
    for _ in range(200):
        if rig.modem.sent:
            break
        await asyncio.sleep(0.05)
    (part,) = rig.modem.sent
    assert part.number == "+31612345678"
    code = re.search(r"\b(\d{6})\b", part.text).group(1)  # type: ignore[union-attr]
    assert (await rig.call("POST", "/v1/otp/verify", key, {"id": sent["id"], "code": code}))[1]["valid"] is True
    assert (await rig.call("POST", "/v1/otp/verify", key, {"id": sent["id"], "code": code}))[1] == {
        "valid": False, "attempts_left": 0}
    status, _, _ = await rig.call("POST", "/v1/messages", key, {"channel": "sms", "to": "+31612345678",
                                                                "text": "See you at 9:30."})
    assert status == 202
    for _ in range(200):
        if len(rig.modem.sent) == 2:
            break
        await asyncio.sleep(0.05)
    assert rig.modem.sent[1].text == "See you at 9:30."


async def test_brute_force_hits_the_attempt_limit(rig: Rig) -> None:
    key = await rig.key("otp:send", "otp:verify")
    status, sent, _ = await rig.call("POST", "/v1/otp", key, {"to": "brute@example.test", "channel": "email"})
    code = _code(await rig.mail_to("brute@example.test"))
    guesses = [f"{n:06d}" for n in range(10) if f"{n:06d}" != code][:5]
    left = [(await rig.call("POST", "/v1/otp/verify", key, {"id": sent["id"], "code": g}))[1]["attempts_left"]
            for g in guesses]
    assert left == [4, 3, 2, 1, 0]
    status, _, resp = await rig.call("POST", "/v1/otp/verify", key, {"id": sent["id"], "code": code})
    assert status == 429 and "Retry-After" in resp.headers  # even the right code, now


async def test_audit_has_names_routes_statuses_only(rig: Rig) -> None:
    key = await rig.key("messages:read")
    await rig.call("GET", "/v1/messages/424242", key)
    await rig.call("POST", "/v1/otp", key, {"to": "a@b.test", "channel": "email"})
    await rig.daemon.http.auth.flush()  # type: ignore[union-attr]
    rows = await rig.daemon.services.store.api_audit(50)
    keys = await rig.daemon.services.store.api_keys()
    name = next(k.name for k in keys if k.prefix == key[:10])
    mine = [(r["method"], r["route"], r["status"]) for r in rows if r["key_name"] == name]
    assert sorted(mine) == [("GET", r"/v1/messages/{id}", 404), ("POST", "/v1/otp", 403)]
    assert next(k for k in keys if k.name == name).last_used_at is not None


async def _key_name(rig: Rig, key: str) -> str:
    return next(k.name for k in await rig.daemon.services.store.api_keys() if k.prefix == key[:10])


async def test_a_thread_keeps_its_context_and_history(rig: Rig) -> None:
    key = await rig.key("threads:write", "threads:read")
    path = "/v1/threads/web-42/messages"
    status, first, _ = await rig.call("POST", path, key, {"text": "What time do you open on Tuesday?"})
    assert status == 200 and "8 a.m." in first["reply"] and first["actions"] == [] and first["external_id"] == "web-42"
    second = (await rig.call("POST", path, key, {"text": "And on Saturdays?"}))[1]  # read with the question before
    assert second["reply"].startswith("On Saturday we're open from 9 a.m. to 1 p.m.")
    offer = (await rig.call("POST", path, key, {"text": "Can I leave a message for Tom?"}))[1]
    assert offer["actions"] == [{"type": "message_offered", "person": "Tom Becker"}]
    taken = (await rig.call("POST", path, key, {"text": "Please call me about invoice 5521."}))[1]
    assert taken["actions"] == [{"type": "message_taken", "person": "Tom Becker"}] and "Tom Becker" in taken["reply"]
    status, history, _ = await rig.call("GET", "/v1/threads/web-42", key)
    assert status == 200 and [m["role"] for m in history["messages"]] == ["user", "assistant"] * 4
    assert [m["text"] for m in history["messages"]][::2] == [
        "What time do you open on Tuesday?", "And on Saturdays?", "Can I leave a message for Tom?",
        "Please call me about invoice 5521."]
    assert history["messages"][1]["text"] == first["reply"] and history["messages"][-1]["at"] == taken["at"]
    # Another key's thread of the same id is another thread; this key's is not visible to it.
    other = await rig.key("threads:write", "threads:read")
    assert (await rig.call("GET", "/v1/threads/web-42", other))[0] == 404
    # A restarted daemon reads the history from the store (its dialogs start afresh).
    chats = Chats(rig.daemon.config.site, rig.daemon.services.retriever, rig.daemon.services.store,
                  engine=None, max_reply_tokens=64)
    again = await chats.history(await _key_name(rig, key), "web-42", 50)
    assert again is not None and [m.body for m in again[0]] == [m["text"] for m in history["messages"]]
    assert history["next"] is None and not again[1]


async def test_thread_history_pages_back_with_a_cursor(rig: Rig) -> None:
    """limit= pages from the newest message back; `next` is the cursor of the older page, None at the start."""
    key = await rig.key("threads:write", "threads:read")
    questions = ["What time do you open on Tuesday?", "And on Saturdays?", "Where are you?"]
    for text in questions:
        assert (await rig.call("POST", "/v1/threads/paged/messages", key, {"text": text}))[0] == 200
    whole = (await rig.call("GET", "/v1/threads/paged", key))[1]
    assert len(whole["messages"]) == 6 and whole["next"] is None
    pages, cursor = [], ""
    while cursor is not None:
        status, page, _ = await rig.call("GET", f"/v1/threads/paged?limit=4{cursor and '&before=' + cursor}", key)
        assert status == 200 and len(page["messages"]) <= 4
        pages.insert(0, page["messages"])
        cursor = page["next"]
    assert [len(p) for p in pages] == [2, 4] and [m for p in pages for m in p] == whole["messages"]
    assert pages[1][-1]["role"] == "assistant" and pages[0][0]["text"] == questions[0]
    for query in ("limit=0", "limit=201", "limit=x", "before=-1", "before=" + "9" * 19, "limit="):
        status, body, resp = await rig.call("GET", f"/v1/threads/paged?{query}", key)
        assert (status, resp.content_type) == (422, PROBLEM), (query, body)
    assert (await rig.call("GET", "/v1/threads/paged?limit=200", key))[1] == whole
    assert (await rig.call("GET", "/v1/threads/paged?before=1", key))[1]["messages"] == []


async def test_a_thread_transfer_request_and_refusals(rig: Rig) -> None:
    key = await rig.key("threads:write")
    status, body, _ = await rig.call("POST", "/v1/threads/chat:7@shop/messages", key,
                                     {"text": "Can I speak to Dr. Lopez please?"})
    assert status == 200 and body["actions"] == [{"type": "transfer", "person": "Dr. Maria Lopez"}], body
    reader = await rig.key("threads:read")
    cases = [
        (await rig.call("POST", "/v1/threads/a/messages", None, {"text": "hi"}), 401),
        (await rig.call("POST", "/v1/threads/a/messages", reader, {"text": "hi"}), 403),
        (await rig.call("GET", "/v1/threads/chat:7@shop", key), 403),
        (await rig.call("GET", "/v1/threads/never-used", reader), 404),
        (await rig.call("POST", "/v1/threads/" + "a" * 129 + "/messages", key, {"text": "hi"}), 422),
        (await rig.call("POST", "/v1/threads/a%20b/messages", key, {"text": "hi"}), 422),
        (await rig.call("GET", "/v1/threads/a%00b", reader), 422),
        (await rig.call("POST", "/v1/threads/a/messages", key, {"text": "   "}), 422),
        (await rig.call("POST", "/v1/threads/a/messages", key, {"text": "x\x07"}), 422),
        (await rig.call("POST", "/v1/threads/a/messages", key, {"text": "hi", "more": 1}), 422),
        (await rig.call("POST", "/v1/threads/a/messages", key, {"text": "x" * 4001}), 422),
        (await rig.call("POST", "/v1/threads/a/messages", key, {"text": "x" * 5000}), 413),
    ]
    for (status, body, resp), expected in cases:
        assert (status, resp.content_type) == (expected, PROBLEM), (expected, body)


async def chat_answer(ws: aiohttp.ClientWebSocketResponse) -> tuple[dict, list[str]]:
    """The answer to a message in a WebSocket chat: its last frame (a reply or a problem document), and the
    deltas that came before it."""
    deltas: list[str] = []
    while True:
        frame = await ws.receive_json(timeout=30)
        if frame.get("type") != "delta":
            return frame, deltas
        deltas.append(frame["text"])


async def test_websocket_chat_keeps_context_over_three_turns(rig: Rig) -> None:
    key = await rig.key("threads:write", "threads:read")
    headers = {"Authorization": f"Bearer {key}"}
    async with rig.http.ws_connect(rig.base + "/v1/chat?external_id=site-visitor-1", headers=headers) as ws:
        replies = []
        for text in ("What time do you open on Tuesday?", "And on Saturdays?", "I'd like to leave a message for Tom"):
            await ws.send_str(text)
            replies.append((await chat_answer(ws))[0])
        assert "8 a.m." in replies[0]["reply"] and replies[0]["external_id"] == "site-visitor-1"
        assert replies[1]["reply"].startswith("On Saturday we're open from 9 a.m. to 1 p.m.")
        assert replies[2]["actions"] == [{"type": "message_offered", "person": "Tom Becker"}]
        await ws.send_str("Please send me the invoice again.")  # the offered message, written in the next frame
        assert (await chat_answer(ws))[0]["actions"] == [{"type": "message_taken", "person": "Tom Becker"}]
        await ws.send_str("   ")  # a bad frame is answered with a problem; the chat goes on
        assert (await chat_answer(ws))[0]["status"] == 422
        await ws.send_bytes(b"\x00")
        assert (await chat_answer(ws))[0]["status"] == 422
        rnd = random.Random(7)
        for junk in ["\x00", "\u202e" * 10, "x" * 4001] + [json.dumps(_junk(rnd)) for _ in range(20)]:
            await ws.send_str(junk)
            answer = (await chat_answer(ws))[0]
            assert "reply" in answer or 400 <= answer["status"] < 500, (junk[:100], answer)
    async with rig.http.ws_connect(rig.base + "/v1/chat", headers=headers) as ws:
        await ws.send_str("x" * 5000)  # over http.max_body_bytes: the connection is closed
        closing = await ws.receive(timeout=30)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1009
    history = (await rig.call("GET", "/v1/threads/site-visitor-1", key))[1]["messages"]
    assert [m["text"] for m in history[:8:2]] == ["What time do you open on Tuesday?", "And on Saturdays?",
                                                   "I'd like to leave a message for Tom",
                                                   "Please send me the invoice again."]
    # A key without threads:write is refused before the upgrade (no key: see the public chat's tests, and
    # test_ready_and_voice_through_ami for a daemon without one).
    reader = await rig.key("threads:read")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await rig.http.ws_connect(rig.base + "/v1/chat", headers={"Authorization": f"Bearer {reader}"})
    assert refused.value.status == 403


async def test_chat_escalations_reach_the_operator_like_texts(rig: Rig) -> None:
    """A question the knowledge does not answer, in a REST chat and in a WebSocket chat, is a help request
    and a note to conversations.operator_to (here by email to the aiosmtpd), as an SMS or email would be."""
    key = await rig.key("threads:write")
    question = "Do you repair bicycles on Sundays?"
    reply = (await rig.call("POST", "/v1/threads/escalate-rest/messages", key, {"text": question}))[1]
    assert reply["actions"] == [{"type": "escalation", "person": None}], reply
    note = await rig.mail_to(OPERATOR, containing=question)
    assert "escalate-rest" in note["Subject"]
    assert "no answer in the knowledge" in note.get_body(("plain",)).get_content()
    headers = {"Authorization": f"Bearer {key}"}
    question = "Can you fix the tiles on my roof?"
    async with rig.http.ws_connect(rig.base + "/v1/chat?external_id=escalate-ws", headers=headers) as ws:
        await ws.send_str(question)
        assert (await chat_answer(ws))[0]["actions"] == [{"type": "escalation", "person": None}]
    note = await rig.mail_to(OPERATOR, containing=question)
    assert "escalate-ws" in note["Subject"] and "by api" in note.get_body(("plain",)).get_content()
    assert any(question in r.question for r in await rig.daemon.services.store.help_requests())


async def test_websocket_replies_stream_a_question_at_a_time(rig: Rig) -> None:
    """A message asking two things: a delta as each is answered, then the whole reply (the deltas joined)."""
    key = await rig.key("threads:write")
    async with rig.http.ws_connect(rig.base + "/v1/chat", headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send_str("Is there parking? Do you see children?")
        final, deltas = await chat_answer(ws)
        assert final["type"] == "reply" and len(deltas) == 2 and "".join(deltas) == final["reply"], (deltas, final)
        assert "parking" in deltas[0] and "parking" not in deltas[1] and deltas[1].startswith("\n\n")
        await ws.send_str("Where are you?")  # one question: one delta, the reply
        final, deltas = await chat_answer(ws)
        assert deltas == [final["reply"]] and final["actions"] == []


def visitor(n: int) -> aiohttp.ClientSession:
    """A website visitor at 127.0.0.n: the public chat counts per address."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(f"127.0.0.{n}", 0)))


async def refused(session: aiohttp.ClientSession, url: str, **kwargs: object) -> aiohttp.WSServerHandshakeError:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
        await session.ws_connect(url, **kwargs)  # type: ignore[arg-type]
    return refusal.value


async def test_public_chat_needs_an_allowed_origin_and_is_a_thread_of_its_own(rig: Rig) -> None:
    url = rig.base + "/v1/chat"
    async with visitor(11) as http:
        assert (await refused(http, url)).status == 403  # no Origin
        assert (await refused(http, url, origin="https://evil.test")).status == 403
        assert (await refused(http, url, origin=SITE + "/")).status == 403
        key = await rig.key("threads:write", "threads:read")
        assert (await rig.call("POST", "/v1/threads/kept-private/messages", key, {"text": "Where are you?"}))[0] == 200
        ids = []
        for _ in range(2):  # an external id from a visitor is no way into a thread
            async with http.ws_connect(url + "?external_id=kept-private", origin=SITE) as ws:
                await ws.send_str("What time do you open on Tuesday?")
                final = (await chat_answer(ws))[0]
                assert "8 a.m." in final["reply"] and final["external_id"].startswith("public-")
                ids.append(final["external_id"])
        assert ids[0] != ids[1]
        assert len((await rig.call("GET", "/v1/threads/kept-private", key))[1]["messages"]) == 2
        assert (await rig.call("GET", f"/v1/threads/{ids[0]}", key))[0] == 404
        # A key still opens its own chat (the key path is unchanged by the public mode).
        assert (await refused(http, url, headers={"Authorization": "Bearer sb_wrong"})).status == 401


async def signed_in(rig: Rig, name: str, role: str) -> aiohttp.ClientSession:
    """A staff member's browser on the daemon's dashboard (a new account), signed in; the caller closes it."""
    password = "a long staff password"
    await rig.daemon.services.store.staff_add(new_user(name, role, password))
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # keeps 127.0.0.1's cookies
    async with http.get(f"{rig.base}/dashboard/login") as form:
        token = _csrf(await form.text())
    async with http.post(f"{rig.base}/dashboard/login", data={"csrf": token, "name": name, "password": password},
                         allow_redirects=False) as response:
        assert response.status == 303, await response.text()
    return http


def _csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


async def staff_act(http: aiohttp.ClientSession, url: str, action: str, **form: str) -> int:
    """A button on a conversation's page, with that page's CSRF token."""
    async with http.get(url) as page:
        token = _csrf(await page.text())
    async with http.post(f"{url}/{action}", data={"csrf": token, **form}, allow_redirects=False) as response:
        return response.status


async def test_an_operator_takes_over_a_websocket_chat_replies_and_hands_it_back(rig: Rig) -> None:
    """Through the daemon: a WebSocket chat is listed on the dashboard; taken over, the client's message gets
    no assistant reply but a `held` acknowledgement, the operator's reply is pushed to the socket and is in
    the REST history as `staff`; after hand-back the assistant answers again."""
    key = await rig.key("threads:write", "threads:read")
    store = rig.daemon.services.store
    thread = None
    async with rig.http.ws_connect(rig.base + "/v1/chat?external_id=held-chat",
                                   headers={"Authorization": f"Bearer {key}"}) as ws, \
            await signed_in(rig, f"op-{uuid.uuid4().hex[:6]}", "operator") as staff:
        await ws.send_str("What time do you open on Tuesday?")
        assert "8 a.m." in (await chat_answer(ws))[0]["reply"]
        thread = await store.chat_thread(Chats.key(await _key_name(rig, key), "held-chat"), create=False)
        page = f"{rig.base}/dashboard/conversations/{thread}"
        async with staff.get(f"{rig.base}/dashboard/conversations") as listing:
            assert f'href="/dashboard/conversations/{thread}"' in await listing.text()
        assert await staff_act(staff, page, "take") == 303

        await ws.send_str("And on Saturdays?")
        held, deltas = await chat_answer(ws)
        assert (held["type"], held["from"], held["held"], held["reply"], deltas) == ("reply", "assistant", True,
                                                                                      None, [])
        assert await staff_act(staff, page, "reply", text="Saturdays 9 to 1. Oli here.") == 303
        pushed = await ws.receive_json(timeout=30)  # nothing came between: the assistant said nothing
        assert (pushed["type"], pushed["from"], pushed["reply"], pushed["external_id"]) == (
            "reply", "staff", "Saturdays 9 to 1. Oli here.", "held-chat")
        # A REST message in the same thread meanwhile: held too.
        rest = (await rig.call("POST", "/v1/threads/held-chat/messages", key, {"text": "Thanks!"}))[1]
        assert (rest["held"], rest["reply"]) == (True, None)
        history = (await rig.call("GET", "/v1/threads/held-chat", key))[1]["messages"]
        assert [(m["role"], m["text"]) for m in history[-3:]] == [
            ("user", "And on Saturdays?"), ("staff", "Saturdays 9 to 1. Oli here."), ("user", "Thanks!")]
        async with staff.get(page) as shown:
            assert "Saturdays 9 to 1. Oli here." in await shown.text()

        assert await staff_act(staff, page, "release") == 303
        await ws.send_str("What time do you open on Tuesday?")
        after, _ = await chat_answer(ws)
        assert "8 a.m." in after["reply"] and (after["from"], after["held"]) == ("assistant", False)
    statuses = [m.status for m in await store.thread_messages(thread) if m.direction == "in"]
    assert statuses == ["answered", "staff", "staff", "answered"]  # the held ones are never answered late
    audit = [(a["action"], a["target"], a["outcome"]) for a in await store.staff_audit()]
    assert ("reply", f"conversation {thread}", "stored in the API chat, pushed to 1 open chat(s)") in audit


async def test_a_public_chat_is_listed_and_taken_over(rig: Rig) -> None:
    store = rig.daemon.services.store
    async with visitor(21) as http, http.ws_connect(rig.base + "/v1/chat", origin=SITE) as ws, \
            await signed_in(rig, f"sup-{uuid.uuid4().hex[:6]}", "supervisor") as staff:
        await ws.send_str("What time do you open on Tuesday?")
        external_id = (await chat_answer(ws))[0]["external_id"]
        thread = await store.chat_thread(Chats.key(PUBLIC_OWNER, external_id), create=False)
        async with staff.get(f"{rig.base}/dashboard/conversations") as listing:
            assert f"api:{PUBLIC_OWNER}:{external_id}" in await listing.text()
        page = f"{rig.base}/dashboard/conversations/{thread}"
        assert await staff_act(staff, page, "take") == 303
        await ws.send_str("Can I bring my dog?")
        assert (await chat_answer(ws))[0]["held"] is True
        assert await staff_act(staff, page, "reply", text="Yes, on a lead.") == 303
        assert (await ws.receive_json(timeout=30))["reply"] == "Yes, on a lead."


async def test_public_chat_limits_connections_per_address(rig: Rig) -> None:
    url = rig.base + "/v1/chat"
    async with visitor(12) as http, visitor(13) as other:
        first = await http.ws_connect(url, origin=SITE)
        second = await http.ws_connect(url, origin=SITE)
        refusal = await refused(http, url, origin=SITE)
        assert refusal.status == 429 and int(refusal.headers["Retry-After"]) > 0
        await (await other.ws_connect(url, origin=SITE)).close()  # another address is not held back
        await first.close()
        for _ in range(200):  # the server lets the address go once it has seen the close
            try:
                third = await http.ws_connect(url, origin=SITE)
                break
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 429
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("a closed public chat still counted")
        await third.close()
        await second.close()


async def test_public_chat_limits_messages_per_address_and_their_size(rig: Rig) -> None:
    url = rig.base + "/v1/chat"
    async with visitor(14) as http:
        async with http.ws_connect(url, origin=SITE) as ws:
            for _ in range(3):  # messages_per_minute_per_ip: 3
                await ws.send_str("Where are you?")
                assert (await chat_answer(ws))[0]["type"] == "reply"
            await ws.send_str("Where are you?")
            limited = (await chat_answer(ws))[0]
            assert limited["status"] == 429 and limited["retry_after"] >= 1 and "address" in limited["detail"]
        async with http.ws_connect(url, origin=SITE) as ws:  # the limit is the address's, not the connection's
            await ws.send_str("Where are you?")
            assert (await chat_answer(ws))[0]["status"] == 429
    async with visitor(15) as http, http.ws_connect(url, origin=SITE) as ws:
        await ws.send_str("x" * 301)  # over max_message_bytes: the chat is closed
        closing = await ws.receive(timeout=30)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1009


async def test_public_chat_closes_when_idle(rig: Rig) -> None:
    api = rig.daemon.http
    assert api is not None
    public = api.settings.public_chat
    api.settings = api.settings.model_copy(update={"public_chat": public.model_copy(update={"idle_timeout_s": 0.5})})
    try:
        async with visitor(16) as http, http.ws_connect(rig.base + "/v1/chat", origin=SITE) as ws:
            closing = await ws.receive(timeout=30)  # nothing from the visitor (no message: no race with 0.5 s)
            assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1000 and closing.extra == "idle"
    finally:
        api.settings = api.settings.model_copy(update={"public_chat": public})


def _switchboard(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", "-c", str(ROOT / "etc" / "switchboard.yaml"),
                           "--data-dir", str(data_dir), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


async def test_keys_cli_end_to_end(rig: Rig) -> None:
    """Another process makes and revokes the key the running daemon checks."""
    data_dir = rig.daemon.config.data_dir
    created = await asyncio.to_thread(_switchboard, data_dir, "keys", "create", "--name", "cli-e2e",
                                      "--scope", "messages:read", "--expires", "90d", "--rate", "20/s")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("sb_") and created.stdout.count(key) == 1 and key not in created.stderr
    assert (await rig.call("GET", "/v1/messages/1", key))[0] == 404  # accepted, no such message
    listing = await asyncio.to_thread(_switchboard, data_dir, "keys", "list")
    line = next(li for li in listing.stdout.splitlines() if li.startswith("cli-e2e"))
    assert key[:10] in line and "messages:read" in line and "active" in line and key not in listing.stdout
    duplicate = await asyncio.to_thread(_switchboard, data_dir, "keys", "create", "--name", "cli-e2e",
                                        "--scope", "admin")
    assert duplicate.returncode == 1 and "exists" in duplicate.stderr
    revoked = await asyncio.to_thread(_switchboard, data_dir, "keys", "revoke", "cli-e2e")
    assert revoked.returncode == 0
    assert (await rig.call("GET", "/v1/messages/1", key))[0] == 401
    assert (await asyncio.to_thread(_switchboard, data_dir, "keys", "create", "--name", "x",
                                    "--scope", "nope")).returncode == 2


def _junk(rnd: random.Random, depth: int = 0) -> object:
    choices = [lambda: rnd.randint(-2**70, 2**70), lambda: rnd.random() * 1e308, lambda: None, lambda: True,
               lambda: "".join(chr(rnd.choice([rnd.randint(32, 126), rnd.randint(0x80, 0x10FFFF)]))
                               for _ in range(rnd.randint(0, 40))),
               lambda: "9" * rnd.randint(1, 30)]
    if depth < 3:
        choices += [lambda: [_junk(rnd, depth + 1) for _ in range(rnd.randint(0, 4))],
                    lambda: {rnd.choice(["channel", "to", "text", "id", "code", "vars", "send_at", "template",
                                         "purpose", "x"]): _junk(rnd, depth + 1) for _ in range(rnd.randint(0, 6))}]
    return rnd.choice(choices)()


async def test_fuzz_never_answers_500(rig: Rig) -> None:
    rnd = random.Random(20261202)
    key = await rig.key(*ALL_SCOPES, "threads:write", "threads:read")
    routes = [("POST", "/v1/messages"), ("POST", "/v1/otp"), ("POST", "/v1/otp/verify"), ("GET", "/v1/messages/1"),
              ("POST", "/v1/threads/fuzz/messages"), ("GET", "/v1/threads/fuzz"),
              ("GET", "/v1/messages/\u0663"), ("GET", "/v1/messages/" + "9" * 30), ("GET", "/v1/openapi.json"),
              ("GET", "/health"), ("GET", "/ready")]
    bodies: list[bytes] = [b"", b"null", b"\xff\xfe", b"{" * 3000, b'{"channel": "email", "to": "' + b"a" * 5000 + b'"}',
                           json.dumps({"channel": "email", "to": "\u202e@x.test", "text": "\x00"}).encode(),
                           json.dumps({"channel": "sip", "to": "sip:<>", "text": "t"}).encode(),
                           json.dumps({"id": "0" * 64, "code": "1" * 12}).encode(),
                           json.dumps({"channel": "email", "to": "x@y.test", "text": "t", "send_at": "yesterday"}).encode(),
                           json.dumps({"channel": "email", "to": "x@y.test", "text": "t",
                                       "send_at": "9999-12-31T23:59:59-14:00"}).encode()]
    bodies += [json.dumps(_junk(rnd), ensure_ascii=rnd.random() < 0.5).encode("utf-8", "surrogatepass")
               for _ in range(60)]
    statuses = set()
    for method, path in routes:
        for body in bodies:
            status, _, _ = await rig.call(method, path, key, data=body)
            assert status < 500, (method, path, body[:200])
            statuses.add(status)
    assert {200, 413, 422} <= statuses


async def test_readme_curl_examples(rig: Rig) -> None:
    """The README's curl lines, run with the real curl against this daemon; statuses and fields as shown."""
    section = README[README.index("## HTTP API"):]
    block = section[section.index("export SWITCHBOARD_KEY"):]
    block = block[:block.index("```")].replace("\\\n", " ")
    examples = re.findall(r"^(curl .+)\n# -> (\d{3}) (.+)$", block, re.M)
    assert len(examples) == 8
    key = await rig.key("messages:send", "messages:read", "otp:send", "otp:verify", "threads:write", "threads:read")
    real: dict[str, str] = {}
    for command, expected, shown in examples:
        for placeholder, value in real.items():
            command = command.replace(placeholder, value)
        argv = [arg.replace("http://127.0.0.1:8080", rig.base) for arg in shlex.split(
            command.replace("$SWITCHBOARD_KEY", key))]
        done = await asyncio.to_thread(subprocess.run, [*argv, "-w", "\n%{http_code}"], capture_output=True,
                                       text=True, timeout=30)
        body, status = done.stdout.rsplit("\n", 1)
        assert status == expected, (command, body)
        answer = json.loads(body)
        try:
            assert set(json.loads(shown)) == set(answer), command
        except json.JSONDecodeError:  # an abridged example ("...")
            pass
        if expected == "202":  # the examples' ids stand for the ones this daemon gives
            shown_id = json.loads(shown)["id"]
            real[f"/v1/messages/{shown_id}" if isinstance(shown_id, int) else shown_id] = (
                f"/v1/messages/{answer['id']}" if isinstance(shown_id, int) else answer["id"])


async def test_openapi_document_describes_every_route(rig: Rig) -> None:
    status, doc, _ = await rig.call("GET", "/v1/openapi.json")
    assert status == 200 and doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {"/health", "/ready", "/metrics", "/v1/openapi.json", "/v1/messages",
                                 "/v1/messages/{id}", "/v1/otp", "/v1/otp/verify", "/v1/threads/{external_id}",
                                 "/v1/threads/{external_id}/messages", "/v1/chat", "/v1/calls", "/v1/calls/{id}"}
    send = doc["paths"]["/v1/messages"]["post"]
    assert send["security"] == [{"bearer": []}] and {"202", "401", "403", "413", "422", "429"} <= set(send["responses"])
    schemas = doc["components"]["schemas"]
    assert schemas["MessageIn"]["properties"]["channel"]["enum"] == ["sms", "sip", "email", "voice"]
    assert {"to", "text", "template", "vars", "send_at", "idempotency_key"} == set(schemas["CallIn"]["properties"])
    assert doc["paths"]["/v1/calls"]["post"]["description"].startswith("Needs a key with the scope `calls:create`")
    assert "additionalProperties" in schemas["MessageIn"] and "ProblemDocument" in schemas
    # Each $ref resolves.
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc))
    assert refs and set(refs) <= set(schemas)
    # Every route the document says needs a key refuses a request without one (a route never loses its check).
    keyed = [(method, path.replace("{id}", "1").replace("{external_id}", "x")) for path, item in doc["paths"].items()
             for method, op in item.items() if "security" in op]
    assert len(keyed) == 9
    for method, path in keyed:  # /v1/chat: this daemon has a public chat, which needs an allowed Origin
        assert (await rig.call(method.upper(), path, None, {}))[0] == (403 if path == "/v1/chat" else 401), path


@asynccontextmanager
async def receiver(port: int) -> AsyncIterator[Callable[..., Awaitable[tuple[dict, dict]]]]:
    """A webhook receiver on loopback, as a bounded wait for one event (its signature checked)."""
    received: list[tuple[dict, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    async def event(kind: str, match: object, field: str = "id") -> tuple[dict, dict]:
        for _ in range(300):
            for headers, body in received:
                doc = json.loads(body)
                if doc["type"] == kind and doc["data"].get(field) == match:
                    assert headers["Switchboard-Signature"] == signature(
                        HOOK_SECRET.encode(), headers["Switchboard-Timestamp"], body)
                    return headers, doc
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind} event for {match}")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield event
    finally:
        await runner.cleanup()


async def test_webhooks_are_signed_and_reach_a_receiver_that_was_down(rig: Rig) -> None:
    key = await rig.key()
    status, sent, _ = await rig.call("POST", "/v1/messages", key,
                                     {"channel": "email", "to": "hooked@example.test", "text": "hi"})
    assert status == 202
    store = rig.daemon.services.store
    for _ in range(200):  # the receiver is down: the event is being retried
        if any(r.channel == "webhook" and r.attempts >= 2 and f'"id": {sent["id"]},' in r.body
               for r in await store.outbox_rows()):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("no webhook retried")
    async with receiver(rig.hook_port) as event:
        headers, doc = await event("message.sent", sent["id"])
        assert abs(int(headers["Switchboard-Timestamp"]) - time.time()) < 60 and doc["data"]["channel"] == "email"
        _, code, _ = await rig.call("POST", "/v1/otp", key, {"to": "hooked.code@example.test", "channel": "email"})
        digits = _code(await rig.mail_to("hooked.code@example.test"))
        assert (await rig.call("POST", "/v1/otp/verify", key, {"id": code["id"], "code": digits}))[1]["valid"]
        _, verified = await event("otp.verified", code["id"])
        assert digits not in json.dumps(verified)

