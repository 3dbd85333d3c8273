"""Outbound message calls and MessageSend through the AMI test server; the spoken part over real AudioSocket."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway.daemon.app import Gateway
from gateway.asterisk.ami import MAX_MESSAGE_BYTES, AmiClient, AmiError, message_send_action
from gateway.asterisk.originate import OutboundCalls, mask_code
from gateway.media.caller import CallerClient
from gateway.config import AmiSettings
from llm.site import Wording
from support.ami_server import Action, AmiTestServer


@dataclass
class Rig:
    server: AmiTestServer
    ami: AmiClient
    outbound: OutboundCalls
    gateway: Gateway


def variables(action: Action) -> dict[str, str]:
    values = action["Variable"]
    return dict(v.split("=", 1) for v in (values if isinstance(values, list) else [values]))


@pytest.fixture
async def rig(services) -> AsyncIterator[Rig]:  # type: ignore[no-untyped-def]
    server = await AmiTestServer().start()
    settings = AmiSettings(enabled=True, port=server.port, username="gateway", secret="secret",
                           outbound_retries=1, outbound_retry_delay_s=0, outbound_ring_s=5)
    ami = AmiClient(settings)
    gateway = Gateway(services, host="127.0.0.1", port=0)
    await ami.start()
    await ami.wait_connected(5)
    await gateway.start()
    # Short wording keeps the spoken part (said twice) brief.
    site = services.config.site.model_copy(update={"wording": Wording(code_message="Code {digits}.",
                                                                      press_to_repeat="Press 1.")})
    gateway.outbound = OutboundCalls(ami, services.store, settings, site=site, repeat_wait_s=0.5,
                                     audiosocket=f"127.0.0.1:{gateway.port}")
    yield Rig(server, ami, gateway.outbound, gateway)
    await gateway.stop(grace_s=0.5)
    await ami.close()
    await server.stop()


@pytest.mark.models
async def test_answered_code_call_is_spoken_repeated_on_1_and_stored_masked(
        rig: Rig, services, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    callees: list[CallerClient] = []

    async def dialplan(action: Action, reason: int) -> None:
        """The switchboard-outbound context: AudioSocket(${SB_UUID},${SB_AUDIOSOCKET}) once answered."""
        var = variables(action)
        host, port = var["SB_AUDIOSOCKET"].rsplit(":", 1)
        callee = await CallerClient(host, int(port), call_id=var["SB_UUID"]).connect()
        callees.append(callee)
        callee.dtmf("1")  # while the message plays: hear it again

    rig.server.on_originate = dialplan
    with caplog.at_level(logging.INFO):
        result = await rig.outbound.call("0612345678", code="4711")
    try:
        assert (result.result, result.attempts, result.repeats) == ("answered", 1, 1)
        (originate,) = rig.server.sent("Originate")
        assert originate["Async"] == "true" and originate["Channel"] == "PJSIP/0612345678"
        assert (originate["Context"], originate["Exten"], originate["Priority"]) == ("switchboard-outbound", "s", "1")
        assert originate["ChannelId"] == variables(originate)["SB_UUID"] == result.call_ids[0]
        callee = callees[0]
        await asyncio.wait_for(callee.hung_up.wait(), 10)
        assert sum(f.voiced for f in callee.received) > 50  # spoken (twice), not silence
        (event,) = [e for e in await services.store.events(result.call_ids[0]) if e.kind == "outbound_result"]
        assert event.data["result"] == "answered" and event.data["code"] == "**11" and event.data["repeats"] == 1
        assert "4711" not in caplog.text and "**11" in caplog.text
        record = await services.store.call(result.call_ids[0])
        assert record["dialled"] == "0612345678" and record["transport"] == "ami-outbound"
    finally:
        for callee in callees:
            await callee.close()


async def test_busy_then_no_answer_is_retried_then_reported(rig: Rig, services) -> None:  # type: ignore[no-untyped-def]
    rig.server.originate_reasons = [5, 3]
    result = await rig.outbound.call("201", "The practice is closed tomorrow.")
    assert (result.result, result.attempts) == ("no answer", 2)
    assert len(rig.server.sent("Originate")) == 2
    outcomes = []
    for call_id in result.call_ids:
        outcomes += [e.data["result"] for e in await services.store.events(call_id) if e.kind == "outbound_result"]
    assert outcomes == ["busy", "no answer"]


async def test_originate_without_ami_fails_and_bad_numbers_are_refused(rig: Rig) -> None:
    with pytest.raises(ValueError, match="not a dialable"):
        await rig.outbound.call("201,Hangup", "x")
    await rig.ami.close()
    result = await rig.outbound.call("201", "hello")
    assert result.result == "failed" and "not connected" in (result.error or "")
    assert rig.server.sent("Originate") == []


def test_mask_code() -> None:
    assert mask_code("123456") == "****56" and mask_code("7") == "7"


async def test_message_send_replies_as_captured(rig: Rig) -> None:
    reply = await rig.ami.message_send("pjsip:200", "Hello 200 from AMI MessageSend", sender="sip:voicelab@127.0.0.1")
    assert reply.message == "Message successfully sent"
    sent = rig.server.sent("MessageSend")[-1]
    assert (sent["To"], sent["From"], sent["Body"]) == ("pjsip:200", "sip:voicelab@127.0.0.1",
                                                        "Hello 200 from AMI MessageSend")
    with pytest.raises(AmiError, match="Message failed to send"):
        await rig.ami.message_send("pjsip:nosuchendpoint", "should fail")
    with pytest.raises(ValueError, match="line break"):
        await rig.ami.message_send("pjsip:200\r\nAction: Originate", "injected")


def test_message_send_action_multiline_and_size() -> None:
    fields = message_send_action("pjsip:200", "line one\nline two", content_type="text/plain;charset=UTF-8")
    assert "Body" not in fields and base64.b64decode(fields["Base64Body"]).decode() == "line one\nline two"
    assert fields["Variable"] == "Content-Type=text/plain;charset=UTF-8"
    assert message_send_action("pjsip:200", "é" * (MAX_MESSAGE_BYTES // 2))["Body"]
    with pytest.raises(ValueError, match="1300"):
        message_send_action("pjsip:200", "é" * (MAX_MESSAGE_BYTES // 2 + 1))
