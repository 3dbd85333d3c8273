"""ARI mode against a protocol-faithful ARI server (real Asterisk 22 JSON) over loopback HTTP/WebSocket."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

from gateway.asterisk.ari import AriCall, AriController
from gateway.config import AriSettings
from tests.support.ari_server import FIXTURES, AriTestServer

ETC_ASTERISK = Path(__file__).resolve().parents[2] / "etc" / "asterisk"
APP = "gateway-app"  # the lab's app name, as in the captures
CAPTURED_EXTERNAL_MEDIA = next(
    e for e in map(json.loads, (FIXTURES / "ari_http.jsonl").read_text().splitlines()) if e["label"] == "externalMedia")


def settings(server: AriTestServer, **overrides: object) -> AriSettings:
    values: dict[str, object] = dict(url=server.url, username="gateway", password="secret", app=APP,
                                     external_host="127.0.0.1:9092", transfer_context="from-caller",
                                     request_timeout_s=3.0, heartbeat_s=2.0, reconnect_max_s=1.0)
    return AriSettings(**{**values, **overrides})


async def eventually(predicate: Callable[[], object], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def server() -> AsyncIterator[AriTestServer]:
    srv = await AriTestServer(app=APP).start()
    yield srv
    await srv.stop()


class Harness:
    def __init__(self, server: AriTestServer, **overrides: object) -> None:
        self.server = server
        self.started: list[AriCall] = []
        self.ctl = AriController(settings(server, **overrides), on_call_started=self.started.append)

    async def __aenter__(self) -> Harness:
        await self.ctl.start()
        await asyncio.wait_for(self.ctl.connected.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ctl.stop()

    async def live_call(self, **caller: str) -> AriCall:
        before = len(self.started)
        await self.server.caller_enters(**caller)
        await eventually(lambda: len(self.started) > before, "the call to be bridged")
        return self.started[-1]

    def empty(self) -> bool:
        return self.server.stasis_state() == (set(), {}) and not self.ctl.calls


@pytest.mark.parametrize("fmt", ["slin", "slin16"])
async def test_caller_is_answered_then_bridged_with_an_audiosocket_media_channel(server: AriTestServer, fmt: str) -> None:
    async with Harness(server, format=fmt) as h:
        call = await h.live_call(exten="101", number="5551234", name="Ann")
        assert h.ctl.call(call.call_id) is call
        assert str(uuid.UUID(call.call_id)) == call.call_id
        assert (call.caller_number, call.caller_name, call.dialled, call.context) == ("5551234", "Ann", "101", "from-caller")
        assert call.channel_name.startswith("PJSIP/5551234-")

        steps = [(r.method, r.path) for r in server.requests]
        media, bridge = call.media_channel_id, call.bridge_id
        assert steps == [("GET", "/bridges"), ("GET", "/channels"),  # leftovers check before connecting
                         ("POST", f"/channels/{call.channel_id}/answer"), ("POST", "/channels/externalMedia"),
                         ("POST", "/bridges"), ("POST", f"/bridges/{bridge}/addChannel")]
        params = server.calls_to("/channels/externalMedia")[0].params
        assert params == {"app": APP, "external_host": "127.0.0.1:9092", "encapsulation": "audiosocket",
                          "transport": "tcp", "format": fmt, "data": call.call_id}
        assert params.keys() == CAPTURED_EXTERNAL_MEDIA["params"].keys()  # the call that worked on Asterisk 22
        assert server.calls_to("/bridges")[0].params == {"type": "mixing", "name": f"{APP}-{call.call_id}"}
        assert server.channels[media]["name"] == f"AudioSocket/127.0.0.1:9092-{call.call_id}"
        assert server.bridges[bridge]["channels"] == [call.channel_id, media]
        assert server.channels[call.channel_id]["state"] == "Up"
        assert len(h.ctl.calls) == 1  # the media channel's own StasisStart is not a second caller


async def test_caller_hang_up_deletes_media_channel_and_bridge(server: AriTestServer) -> None:
    async with Harness(server) as h:
        call = await h.live_call()
        await server.hang_up(call.channel_id)
        await eventually(h.empty, "media channel and bridge deleted")
        assert server.calls_to(f"/channels/{call.media_channel_id}", "DELETE")
        assert server.calls_to(f"/bridges/{call.bridge_id}", "DELETE")
        assert not server.continued and h.ctl.call(call.call_id) is None
        assert not server.channels  # nothing of the call is left on the PBX


async def test_gateway_ending_the_call_hands_the_caller_back_to_the_dialplan(server: AriTestServer) -> None:
    async with Harness(server) as h:
        call = await h.live_call()
        assert call.media_channel_id is not None
        await server.hang_up(call.media_channel_id)  # the gateway closed the AudioSocket
        await eventually(h.empty, "bridge deleted and caller continued")
        assert server.continued[call.channel_id] == {}  # next priority after Stasis()
        assert server.variables[call.channel_id] == {"SWITCHBOARD_END": "ended"}
        assert call.channel_id in server.channels  # the caller is still up, now in the dialplan


@pytest.mark.parametrize("step, status, message", [
    ("answer", 500, "Internal Server Error"),
    ("externalMedia", 400, "data can not be empty"),
    ("bridge-create", 500, "Internal Server Error"),
    ("addChannel", 422, "Channel not in Stasis application"),
])
async def test_failure_mid_setup_deletes_what_was_created(server: AriTestServer, caplog: pytest.LogCaptureFixture,
                                                          step: str, status: int, message: str) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.asterisk.ari")
    async with Harness(server) as h:
        server.fail_next(step, status, message)
        caller = await server.caller_enters()
        await eventually(lambda: caller in server.continued, "caller handed back to the dialplan")
        await eventually(h.empty, "everything created so far deleted")
        assert not h.started
        assert server.variables[caller] == {"SWITCHBOARD_END": "failed"}
        assert [c for c in server.channels if c != caller] == []  # no media channel left behind
        assert f"{status} {message}" in caplog.text  # Asterisk's own status and message are reported


async def test_hang_up_during_setup_is_cleaned_up_when_setup_notices(server: AriTestServer) -> None:
    async with Harness(server) as h:
        release = server.hold("externalMedia")
        caller = await server.caller_enters()
        await eventually(lambda: server.calls_to("/channels/externalMedia"), "externalMedia requested")
        await server.hang_up(caller)
        release.set()
        await eventually(lambda: any(r.method == "DELETE" for r in server.requests), "media channel deleted")
        await eventually(h.empty, "nothing left")
        assert not server.calls_to("/bridges") and not h.started and not server.continued


async def test_transfer_continues_the_caller_to_the_staff_extension(server: AriTestServer) -> None:
    async with Harness(server) as h:
        call = await h.live_call()
        assert await h.ctl.transfer(call.call_id, "200") is True
        assert server.continued[call.channel_id] == {"context": "from-caller", "extension": "200", "priority": "1"}
        assert server.channels[call.channel_id]["dialplan"]["exten"] == "200"
        steps = [(r.method, r.path) for r in server.requests[-4:]]
        assert steps == [("POST", f"/bridges/{call.bridge_id}/removeChannel"),
                         ("POST", f"/channels/{call.channel_id}/continue"),
                         ("DELETE", f"/channels/{call.media_channel_id}"), ("DELETE", f"/bridges/{call.bridge_id}")]
        assert h.empty() and call.channel_id not in server.variables
        assert await h.ctl.transfer(call.call_id, "200") is False  # no longer ours


async def test_transfer_by_redirect(server: AriTestServer) -> None:
    async with Harness(server, transfer_method="redirect", redirect_endpoint="PJSIP/{extension}") as h:
        call = await h.live_call()
        assert await h.ctl.transfer(call.call_id, "200") is True
        assert server.redirected == {call.channel_id: "PJSIP/200"}
        await eventually(h.empty, "media channel and bridge deleted")


async def test_transfer_of_a_caller_that_left_the_app_reports_failure_and_still_cleans_up(server: AriTestServer) -> None:
    async with Harness(server) as h:
        call = await h.live_call()
        server.fail_next("continue", 409, "Channel not in Stasis application")
        assert await h.ctl.transfer(call.call_id, "200") is False
        assert call.media_channel_id not in server.channels and not server.bridges and not h.ctl.calls


async def test_websocket_drop_reconnects_and_catches_up_on_missed_hang_ups(server: AriTestServer) -> None:
    async with Harness(server) as h:
        call = await h.live_call()
        server.accept_websockets = False
        await server.drop_websockets()
        await eventually(lambda: not h.ctl.connected.is_set(), "disconnect noticed")
        await server.hang_up(call.channel_id, notify=False)  # its events are lost with the websocket
        server.accept_websockets = True
        await eventually(lambda: server.ws_connections == 2 and h.ctl.connected.is_set(), "reconnected")
        await eventually(h.empty, "the missed hang-up cleaned up after reconnecting")
        assert (await h.live_call()).media_channel_id in server.channels  # and new calls work


async def test_half_open_websocket_is_noticed_by_heartbeat_and_replaced(server: AriTestServer) -> None:
    server.answer_pings = False
    async with Harness(server, heartbeat_s=0.2) as h:
        await eventually(lambda: not h.ctl.connected.is_set(), "missing pong noticed")
        server.answer_pings = True
        await eventually(lambda: h.ctl.connected.is_set() and server.ws_connections >= 2, "reconnected")
        await h.live_call()


async def test_stop_tears_down_live_calls_and_hands_callers_to_the_dialplan(server: AriTestServer) -> None:
    h = Harness(server)
    await h.__aenter__()
    call = await h.live_call()
    await h.__aexit__()
    assert h.empty()
    assert server.continued[call.channel_id] == {}
    assert server.variables[call.channel_id] == {"SWITCHBOARD_END": "stopped"}
    await eventually(lambda: not server.websockets_open, "websocket closed")
    with pytest.raises(RuntimeError, match="not registered"):
        await server.caller_enters()  # Stasis() now fails: the dialplan's fallback takes the call


async def test_start_removes_what_a_previous_run_left_behind(server: AriTestServer) -> None:
    auth = aiohttp.BasicAuth("gateway", "secret")
    base = server.url + "/ari"
    async with aiohttp.ClientSession(auth=auth) as http:
        # A previous run that died mid-call: caller, media channel and bridge all still in Asterisk.
        ws = await http.ws_connect(base + "/events", params={"app": APP, "subscribeAll": "false"})
        caller = await server.caller_enters()
        old_id = str(uuid.uuid4())
        async with http.post(base + "/channels/externalMedia", params={
                "app": APP, "external_host": "127.0.0.1:9092", "encapsulation": "audiosocket",
                "transport": "tcp", "format": "slin", "data": old_id}) as resp:
            media = (await resp.json())["id"]
        for name in (f"{APP}-{old_id}", "someone-elses-bridge"):
            async with http.post(base + "/bridges", params={"type": "mixing", "name": name}):
                pass
        await ws.close()
        async with Harness(server) as h:
            assert [b["name"] for b in server.bridges.values()] == ["someone-elses-bridge"]
            assert media not in server.channels
            assert server.continued[caller] == {} and server.in_stasis == set()
            assert not h.ctl.calls


async def test_wrong_password_is_reported_and_retried(server: AriTestServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.asterisk.ari")
    ctl = AriController(settings(server, password="wrong"))
    await ctl.start()
    try:
        await eventually(lambda: caplog.text.count("401 Authentication required") >= 2, "two failed attempts")
        assert not ctl.connected.is_set() and server.ws_connections == 0
    finally:
        await ctl.stop()


@pytest.mark.models
async def test_end_to_end_caller_hears_the_greeting_through_the_bridge(gateway) -> None:  # type: ignore[no-untyped-def]
    server = await AriTestServer(app=APP, audiosocket=True).start()
    try:
        async with Harness(server, external_host=f"127.0.0.1:{gateway.port}") as h:
            call = await h.live_call()
            media = server.media[call.media_channel_id]
            assert media.call_id == call.call_id  # the UUID the gateway's AudioSocket server sees
            await eventually(lambda: any(f.voiced for f in media.received), "greeting audio", timeout_s=30)
            assert any(s.call.call_id == call.call_id for s in gateway.sessions)
            await server.hang_up(call.channel_id)
            await eventually(h.empty, "media channel and bridge deleted")
            await eventually(lambda: all(s.call.call_id != call.call_id for s in gateway.sessions),
                             "the gateway's session ended", timeout_s=10)
    finally:
        await server.stop()


def test_settings_reject_unknown_keys_and_need_exactly_one_password(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="extra"):
        AriSettings(password="x", pasword="y")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="exactly one of password and password_env"):
        AriSettings()
    with pytest.raises(ValidationError, match="SB_ARI_SECRET is not set"):
        AriSettings(password_env="SB_ARI_SECRET")
    monkeypatch.setenv("SB_ARI_SECRET", "s3cret")
    assert AriSettings(password_env="SB_ARI_SECRET").secret() == "s3cret"
    with pytest.raises(ValidationError, match="format"):
        AriSettings(password="x", format="ulaw")  # type: ignore[arg-type]


def test_example_asterisk_config_matches_the_default_settings() -> None:
    defaults = AriSettings(password="x")
    http = (ETC_ASTERISK / "http.conf").read_text()
    assert re.search(r"^enabled\s*=\s*yes", http, re.M)
    host, port = re.search(r"^bindaddr\s*=\s*(\S+)", http, re.M), re.search(r"^bindport\s*=\s*(\d+)", http, re.M)
    assert host and port and defaults.url == f"http://{host[1]}:{port[1]}"
    ari = (ETC_ASTERISK / "ari.conf").read_text()
    assert re.search(rf"^\[{defaults.username}\]\s*\ntype\s*=\s*user", ari, re.M)
    dialplan = (ETC_ASTERISK / "extensions-ari.conf").read_text()
    assert f"Stasis({defaults.app})" in dialplan
    assert '"${SWITCHBOARD_END}" = "ended"' in dialplan  # the value the controller sets on a normal end
