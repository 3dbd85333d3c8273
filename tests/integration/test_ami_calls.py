"""Whole calls with the AMI control plane: real Gateway, real models, AudioSocket and AMI over loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from gateway.daemon.app import Daemon, Gateway
from gateway.asterisk.ami import AmiClient
from gateway.asterisk.correlation import CallDirectory
from gateway.media.caller import KIND_HANGUP, CallerClient
from gateway.config import AmiSettings
from support.ami_server import Action, AmiTestServer

pytestmark = pytest.mark.models

CHANNEL, UNIQUEID = "PJSIP/caller-00000022", "1795252835.44"


@dataclass
class Rig:
    server: AmiTestServer
    ami: AmiClient
    calls: CallDirectory
    gateway: Gateway


@asynccontextmanager
async def running(services, **settings_kw) -> AsyncIterator[Rig]:  # type: ignore[no-untyped-def]
    """The daemon as `switchboard run` wires it from an `ami:` config, pointed at the AMI test server."""
    server = await AmiTestServer().start()
    settings = AmiSettings(enabled=True, port=server.port, username="gateway", secret="secret", transfer_ring_s=15,
                           **settings_kw)
    config = dataclasses.replace(services.config, ami=settings,
                                 audiosocket=services.config.audiosocket.model_copy(update={"port": 0}))
    daemon = Daemon(dataclasses.replace(services, config=config))
    await daemon.start()
    assert daemon.ami is not None and daemon.gateway.calls is not None
    await daemon.ami.wait_connected(5)
    try:
        yield Rig(server, daemon.ami, daemon.gateway.calls, daemon.gateway)
    finally:
        await daemon.stop(grace_s=0.5)
        await server.stop()


@pytest.fixture
async def rig(services) -> AsyncIterator[Rig]:  # type: ignore[no-untyped-def]
    async with running(services) as r:
        yield r


@pytest.fixture
async def warm_rig(services) -> AsyncIterator[Rig]:  # type: ignore[no-untyped-def]
    async with running(services, warm_transfer=True) as r:
        yield r


async def voiced(client: CallerClient) -> None:
    """Until the gateway's first voiced frame (its session is running and speaking)."""
    for _ in range(200):
        if any(f.voiced for f in client.received):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway never spoke")


async def only_session(rig: Rig):  # type: ignore[no-untyped-def]
    for _ in range(200):
        if rig.gateway.sessions:
            (session,) = rig.gateway.sessions
            return session
        await asyncio.sleep(0.05)
    raise AssertionError("no call session started")


async def events(services, call_id: str, wait_for: str) -> list:  # type: ignore[no-untyped-def]
    for _ in range(300):
        found = await services.store.events(call_id)
        if any(e.kind == wait_for for e in found):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {wait_for!r} event for call {call_id}: {found}")


async def test_caller_asks_for_doctor_chen_and_is_redirected(rig: Rig, services, speak) -> None:  # type: ignore[no-untyped-def]
    client = CallerClient("127.0.0.1", rig.gateway.port)
    # What Asterisk does before AudioSocket(): Set(AS_UUID=...) on the caller's channel -> VarSet.
    await rig.server.call_events(channel=CHANNEL, uniqueid=UNIQUEID, caller="0612345678", exten="100",
                                 variables={"AS_UUID": client.call_id})
    await client.connect()
    try:
        client.say(await speak("Hi, could I speak to Doctor Chen please?"))  # over the greeting: barge-in
        session = await only_session(rig)  # what the dashboard's live calls page reads
        (redirect,) = await rig.server.wait_for("Redirect", timeout=20)
        assert {k: redirect[k] for k in ("Channel", "Context", "Exten", "Priority")} == {
            "Channel": CHANNEL, "Context": "switchboard-transfer", "Exten": "202", "Priority": "1"}
        assert session.state == "transferring"  # from the Redirect until the leg ends
        (setvar,) = rig.server.sent("Setvar")
        assert (setvar["Channel"], setvar["Variable"], setvar["Value"]) == (CHANNEL, "SB_TRANSFER_RING", "15")
        assert setvar.at <= redirect.at
        await asyncio.wait_for(client.hung_up.wait(), 10)
        found = await events(services, client.call_id, "transfer_done")
        sent_event = next(e for e in found if e.kind == "ami_transfer")
        assert sent_event.data["action"] == "Redirect" and sent_event.data["extension"] == "202"
        record = await services.store.call(client.call_id)
        assert (record["caller"], record["dialled"]) == ("0612345678", "100")
        # The staff phone answers: DialEnd on the transferred channel records the outcome.
        await rig.server.dial_end(CHANNEL, UNIQUEID, "ANSWER")
        outcome = next(e for e in await events(services, client.call_id, "transfer_outcome")
                       if e.kind == "transfer_outcome")
        assert outcome.data["dial_status"] == "ANSWER" and outcome.data["returned"] is False
    finally:
        await client.close()


async def placed(rig: Rig, channel: str, uniqueid: str) -> CallerClient:
    """A correlated caller, as the shipped switchboard-incoming context sets it up."""
    client = CallerClient("127.0.0.1", rig.gateway.port)
    await rig.server.call_events(channel=channel, uniqueid=uniqueid, caller="0612345678", exten="100",
                                 variables={"AS_UUID": client.call_id})
    return await client.connect()


@pytest.mark.parametrize("how, extension, source", [
    ("dtmf 0", "200", "rule:dtmf0"),
    ("Can I talk to a person please?", "200", "rule:transfer"),
    ("It's an emergency, my son's tooth got knocked out!", "200", "rule:emergency"),
    ("Could I speak to Tom Becker please?", "204", "rule:transfer"),
])
async def test_every_transfer_kind_is_redirected_through_the_daemon_wiring(
        rig: Rig, services, speak, how: str, extension: str, source: str) -> None:  # type: ignore[no-untyped-def]
    channel, uniqueid = f"PJSIP/caller-{extension}{len(how):04d}", f"1795253000.{len(how)}"
    client = await placed(rig, channel, uniqueid)
    try:
        await voiced(client)
        if how == "dtmf 0":
            client.dtmf("0")
        else:
            client.say(await speak(how))
        (redirect,) = await rig.server.wait_for("Redirect", timeout=20)
        assert (redirect["Channel"], redirect["Context"], redirect["Exten"]) == (
            channel, "switchboard-transfer", extension)
        found = await events(services, client.call_id, "transfer_done")
        assert next(e for e in found if e.kind == "transfer").data["source"] == source
    finally:
        await client.close()


async def test_unavailable_staff_channel_still_records_the_outcome(rig: Rig, services) -> None:  # type: ignore[no-untyped-def]
    """CHANUNAVAIL: Dial() creates no staff channel, so no DialEnd; the context's Set() tells the outcome."""
    channel, uniqueid = "PJSIP/caller-00000040", "1795253100.40"
    client = await placed(rig, channel, uniqueid)
    try:
        client.dtmf("0")
        await rig.server.wait_for("Redirect", timeout=20)
        await events(services, client.call_id, "ami_transfer")
        await rig.server.call_events(channel=channel, uniqueid=uniqueid, caller="0612345678", exten="200",
                                     variables={"SB_TRANSFER_RESULT": "CHANUNAVAIL"})
        outcome = next(e for e in await events(services, client.call_id, "transfer_outcome")
                       if e.kind == "transfer_outcome")
        assert outcome.data["dial_status"] == "CHANUNAVAIL" and outcome.data["returned"] is True
    finally:
        await client.close()


async def assistant_said(services, call_id: str, wanted: str) -> list[str]:  # type: ignore[no-untyped-def]
    """What the assistant has said so far, once its last finished reply contains `wanted`."""
    for _ in range(300):
        said = [t.text for t in await services.store.turns(call_id) if t.speaker == "assistant"]
        if said and wanted in said[-1]:
            return said
        await asyncio.sleep(0.1)
    raise AssertionError(f"the assistant never said {wanted!r}: {said}")


def gaps(client: CallerClient, after: float) -> float:
    """The longest run of silence, in seconds, between voiced frames the caller heard after `after`."""
    voiced = [f.at for f in client.received if f.voiced and f.at > after]
    return max((b - a for a, b in zip(voiced, voiced[1:])), default=0.0)


async def test_refused_redirect_offers_a_message_at_once(rig: Rig, services, speak) -> None:  # type: ignore[no-untyped-def]
    channel, uniqueid = "PJSIP/caller-00000041", "1795253100.41"
    client = await placed(rig, channel, uniqueid)
    rig.server.channels_hanging.add(channel)  # Asterisk answers the Redirect with an error
    try:
        await voiced(client)
        asked = await client.say(await speak("Could I speak to Doctor Chen please?"))
        await rig.server.wait_for("Redirect", timeout=20)
        offer = next(e for e in await events(services, client.call_id, "take_message") if e.kind == "take_message")
        assert offer.data["source"] == "rule:transfer_failed" and offer.data["extension"] == "202"
        said = await assistant_said(services, client.call_id, "can't take your call right now")
        assert said[-2].startswith("One moment please")
        # "Putting you through" then the offer, with no dead air between (before: silence until the
        # no-speech prompt).
        assert gaps(client, asked) < 1.5
        sent = await client.say(await speak("This is Pat. Please tell him my crown came loose."))
        await client.wait_reply(sent)
        await assistant_said(services, client.call_id, "I have 0 6 1, 2 3 4, 5 6 7 8.")  # the caller ID, read back
        sent = await client.say(await speak("Yes, that's right."))
        await client.wait_reply(sent)
        said = await assistant_said(services, client.call_id, "taken your message for Dr. James Chen")
    finally:
        await client.close()


async def test_emergency_without_a_transfer_repeats_911_and_goes_to_the_dialplan(rig: Rig, services, speak) -> None:  # type: ignore[no-untyped-def]
    channel, uniqueid = "PJSIP/caller-00000042", "1795253100.42"
    client = await placed(rig, channel, uniqueid)
    rig.server.channels_hanging.add(channel)
    try:
        await voiced(client)
        client.say(await speak("This is an emergency, my husband can't breathe!"))
        await asyncio.wait_for(client.hung_up.wait(), 30)
        said = [t.text for t in await services.store.turns(client.call_id) if t.speaker == "assistant"]
        assert sum("dial 9 1 1" in t for t in said) == 2, said
        assert client.received[-1].kind == KIND_HANGUP
        # Not marked as a normal end: the dialplan after AudioSocket() puts the caller through to a person.
        assert not [a for a in rig.server.sent("Setvar") if a["Variable"] == "SWITCHBOARD_END"]
        for _ in range(100):  # stored when the session has cleaned up, just after the hang-up
            record = await services.store.call(client.call_id)
            if record["end_reason"] is not None:
                break
            await asyncio.sleep(0.05)
        assert record["end_reason"] == "handed to dialplan"
    finally:
        await client.close()


async def test_transfer_without_ami_offers_a_message(rig: Rig, services) -> None:  # type: ignore[no-untyped-def]
    client = await placed(rig, "PJSIP/caller-00000043", "1795253100.43")
    await rig.server.stop()  # Asterisk's manager interface goes away mid-call
    try:
        await voiced(client)
        client.dtmf("0")
        offer = next(e for e in await events(services, client.call_id, "take_message") if e.kind == "take_message")
        assert offer.data["source"] == "rule:transfer_failed" and offer.data["extension"] == "200"
    finally:
        await client.close()


async def test_goodbye_marks_the_call_ended_for_the_dialplan(rig: Rig, services, speak) -> None:  # type: ignore[no-untyped-def]
    channel, uniqueid = "PJSIP/caller-00000044", "1795253100.44"
    client = await placed(rig, channel, uniqueid)
    try:
        await voiced(client)
        client.say(await speak("No, that's all. Thank you, goodbye!"))
        await asyncio.wait_for(client.hung_up.wait(), 30)
        (mark,) = [a for a in rig.server.sent("Setvar") if a["Variable"] == "SWITCHBOARD_END"]
        assert (mark["Channel"], mark["Value"]) == (channel, "ended")
        assert mark.at <= client.received[-1].at  # marked before the leg ended
    finally:
        await client.close()


async def test_busy_staff_returns_caller_who_is_offered_a_message(rig: Rig, services, speak) -> None:  # type: ignore[no-untyped-def]
    # The transfer context's Dial() ended BUSY: it set the result and target, then a new AS_UUID.
    client = CallerClient("127.0.0.1", rig.gateway.port)
    await rig.server.call_events(channel="PJSIP/caller-00000030", uniqueid="1795252900.50", caller="0612345678",
                                 exten="100", variables={"SB_TRANSFER_RESULT": "BUSY", "SB_TRANSFER_TARGET": "202",
                                                         "AS_UUID": client.call_id})
    await client.connect()
    try:
        await voiced(client)  # the offer has started; the caller answers over it
        sent = await client.say(await speak("This is Pat. Please ask him to call me back about my crown."))
        await client.wait_reply(sent)
        sent = await client.say(await speak("Yes, that's right."))  # to "I have 0 6 1, ... Is that the right number"
        await client.wait_reply(sent)
        turns = await services.store.turns(client.call_id)
        assistant = [t.text for t in turns if t.speaker == "assistant"]
        assert assistant[0].startswith("I'm sorry, Dr. James Chen can't take your call right now")
        assert "taken your message for Dr. James Chen" in assistant[-1]
        found = await services.store.events(client.call_id)
        offer_event = next(e for e in found if e.kind == "take_message")
        assert offer_event.data["source"] == "rule:transfer_returned" and offer_event.data["extension"] == "202"
    finally:
        await client.close()


async def test_hangup_event_ends_the_session_and_stale_entries_are_reaped(rig: Rig) -> None:
    client = CallerClient("127.0.0.1", rig.gateway.port)
    await rig.server.call_events(channel="PJSIP/caller-00000031", uniqueid="1795252999.60", caller="caller",
                                 exten="100", variables={"AS_UUID": client.call_id})
    await client.connect()
    try:
        await voiced(client)
        await rig.server.hangup_event("PJSIP/caller-00000031", "1795252999.60")
        await asyncio.wait_for(client.hung_up.wait(), 10)  # the gateway ended its side on the AMI Hangup
        assert rig.calls.get(client.call_id) is not None
        rig.calls.hung_up_ttl_s = 0
        rig.calls.reap()
        assert rig.calls.get(client.call_id) is None
    finally:
        await client.close()


async def test_uncorrelated_call_still_served_and_transfer_fails_cleanly(rig: Rig, services) -> None:  # type: ignore[no-untyped-def]
    client = await CallerClient("127.0.0.1", rig.gateway.port, call_id=str(uuid.uuid4())).connect()
    try:
        client.dtmf("0")  # to the front desk, no speech needed
        found = await events(services, client.call_id, "transfer_failed")
        assert any(e.kind == "transfer_error" and e.data["error"] == "call not correlated" for e in found)
        assert rig.server.sent("Redirect") == []
    finally:
        await client.close()


def variables(action: Action) -> dict[str, str]:
    values = action["Variable"]
    return dict(v.split("=", 1) for v in (values if isinstance(values, list) else [values]))


async def test_warm_transfer_staff_hears_summary_then_is_bridged(warm_rig: Rig, services, speak) -> None:  # type: ignore[no-untyped-def]
    client = CallerClient("127.0.0.1", warm_rig.gateway.port)
    staff: list[CallerClient] = []

    async def warm_context(action: Action, reason: int) -> None:
        """AudioSocket(${SB_UUID},${SB_AUDIOSOCKET}), then Bridge(${SB_CALLER}) yanks the caller from its app."""
        var = variables(action)
        host, port = var["SB_AUDIOSOCKET"].rsplit(":", 1)
        leg = await CallerClient(host, int(port), call_id=var["SB_UUID"]).connect()
        staff.append(leg)
        await asyncio.wait_for(leg.hung_up.wait(), 20)
        assert var["SB_CALLER"] == CHANNEL
        await client.close()

    warm_rig.server.on_originate = warm_context
    await warm_rig.server.call_events(channel=CHANNEL, uniqueid=UNIQUEID, caller="0612345678", exten="100",
                                      variables={"AS_UUID": client.call_id})
    await client.connect()
    try:
        client.say(await speak("Could I speak to Doctor Chen about my broken crown?"))
        found = await events(services, client.call_id, "warm_transfer")
        warm = next(e for e in found if e.kind == "warm_transfer")
        assert warm.data["result"] == "answered" and warm.data["bridged"] is True
        (originate,) = warm_rig.server.sent("Originate")
        assert (originate["Channel"], originate["Context"], originate["Async"]) == (
            "PJSIP/202", "switchboard-warm", "true")
        assert warm_rig.server.sent("Redirect") == []
        # The staff leg heard the summary: caller name from the AMI snapshot, the person, the caller's words.
        said = [t.text for t in await services.store.turns(client.call_id) if t.speaker == "caller"][-1]
        expected = services.config.site.wording.warm_summary.format(
            caller="Test Caller", name="Dr. James Chen", reason=said.rstrip(".?! "))
        reference = await asyncio.to_thread(services.synthesizer.synthesize, expected)
        voiced = [f for f in staff[0].received if f.voiced]
        heard_s = (voiced[-1].at - voiced[0].at)
        assert 0.8 < heard_s / (len(reference) / 16000) < 1.2
        summary = staff[0].audio_between(voiced[0].at - 0.1, voiced[-1].at + 0.1) + bytes(8000)
        heard = (await services.transcriber.transcribe_async(summary)).text.lower()
        # tiny.en hears the synthetic name variously ("test caller", "test call her"); the duration
        # check above shows the whole summary played, the words show it is the summary.
        # (Greedy tiny.en sometimes ends this 8 s summary early, after "for doctor.")
        assert "call from" in heard or "they said" in heard, heard
    finally:
        for leg in staff:
            await leg.close()
        await client.close()


async def test_warm_transfer_to_busy_staff_returns_caller_to_the_assistant(warm_rig: Rig, services, speak) -> None:  # type: ignore[no-untyped-def]
    warm_rig.server.originate_reasons = [5]
    client = CallerClient("127.0.0.1", warm_rig.gateway.port)
    await warm_rig.server.call_events(channel=CHANNEL, uniqueid=UNIQUEID, caller="0612345678", exten="100",
                                      variables={"AS_UUID": client.call_id})
    await client.connect()
    try:
        client.say(await speak("Could I speak to Doctor Chen please?"))
        (redirect,) = await warm_rig.server.wait_for("Redirect", timeout=20)
        assert {k: redirect[k] for k in ("Channel", "Context", "Exten", "Priority")} == {
            "Channel": CHANNEL, "Context": "switchboard-return", "Exten": "s", "Priority": "1"}
        setvars = {a["Variable"]: a["Value"] for a in warm_rig.server.sent("Setvar")}
        assert setvars == {"SB_TRANSFER_TARGET": "202", "SB_TRANSFER_RESULT": "BUSY"}
        warm = next(e for e in await events(services, client.call_id, "warm_transfer") if e.kind == "warm_transfer")
        assert warm.data["returned"] == "BUSY" and warm.data["bridged"] is False
    finally:
        await client.close()
