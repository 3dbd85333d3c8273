"""The AMI client against the protocol-faithful test server (real TCP on loopback)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from gateway.asterisk.ami import AmiClient, AmiError, AmiNotConnected
from gateway.config import AmiSettings
from support.ami_server import CAPTURE, AmiTestServer, with_fields


def settings(port: int, **kw) -> AmiSettings:
    base = dict(enabled=True, port=port, username="gateway", secret="secret", ping_interval_s=0.2,
                ping_timeout_s=0.5, action_timeout_s=1.0, reconnect_min_s=0.05, reconnect_max_s=0.4)
    return AmiSettings(**{**base, **kw})


@pytest.fixture
async def server() -> AsyncIterator[AmiTestServer]:
    srv = await AmiTestServer().start()
    yield srv
    await srv.stop()


@pytest.fixture
async def client(server: AmiTestServer) -> AsyncIterator[AmiClient]:
    ami = AmiClient(settings(server.port))
    await ami.start()
    await ami.wait_connected(5)
    yield ami
    await ami.close()


async def test_login_ping_and_events_through_tiny_chunks_garbage_and_interleaving() -> None:
    srv = await AmiTestServer(chunk=3, garbage=True, interleave=3).start()
    ami = AmiClient(settings(srv.port, ping_interval_s=30))
    seen: list[tuple[str, str]] = []
    ami.on_event("Newexten", lambda m: seen.append(("Newexten", m.get("Application"))))
    ami.on_event("VarSet", lambda m: seen.append(("VarSet", m.get("CallerIDName"))))
    try:
        await ami.start()
        await ami.wait_connected(5)
        login = srv.sent("Login")[0]
        assert (login["Username"], login["Secret"]) == ("gateway", "secret")
        pong = await ami.action({"Action": "Ping"})
        assert pong.response == "Success" and pong.ping == "Pong"
        # Responses came after captured events: those reached the callbacks, not the action future.
        assert ("Newexten", "NoOp") in seen
        # A UTF-8 name split across 3-byte writes survives the library's per-chunk decoding.
        await srv.event(with_fields(CAPTURE.find(Event="VarSet", Variable="AS_UUID"), CallerIDName="José Müller"))
        await asyncio.wait_for(_until(lambda: ("VarSet", "José Müller") in seen), 5)
    finally:
        await ami.close()
        await srv.stop()


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await asyncio.sleep(0.01)


async def test_bad_login_is_reported_and_retried_slowly(caplog: pytest.LogCaptureFixture) -> None:
    srv = await AmiTestServer(bad_login_delay_s=0.2).start()
    ami = AmiClient(settings(srv.port, secret="wrong-secret", connect_timeout_s=2))
    try:
        await ami.start()
        with pytest.raises(AmiNotConnected, match="Authentication failed"):
            await ami.wait_connected(1.0)
        # reconnect_max_s=0.4 after a refusal: a handful of tries in a second, not a storm.
        assert 1 <= len(srv.sent("Login")) <= 4
        assert srv.connections == 0
        assert "wrong-secret" not in caplog.text
    finally:
        await ami.close()
        await srv.stop()


async def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch, server: AmiTestServer) -> None:
    with pytest.raises(ValueError, match="SB_TEST_AMI_SECRET"):
        AmiClient(settings(server.port, secret=None, secret_env="SB_TEST_AMI_SECRET"))
    monkeypatch.setenv("SB_TEST_AMI_SECRET", "secret")
    ami = AmiClient(settings(server.port, secret=None, secret_env="SB_TEST_AMI_SECRET"))
    await ami.start()
    try:
        await ami.wait_connected(5)
    finally:
        await ami.close()


async def test_reconnects_after_asterisk_restart(server: AmiTestServer, client: AmiClient) -> None:
    await server.restart(down_s=0.3)
    await server.wait_logins(2, timeout=5)
    await client.wait_connected(5)
    assert client.connects == 2
    assert (await client.action({"Action": "Ping"})).ping == "Pong"


async def test_half_open_connection_is_aborted_by_ping_timeout(server: AmiTestServer, client: AmiClient,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    server.silent.add("ping")  # the peer stops answering but the TCP connection stays open
    pings = len(server.sent("Ping"))
    await server.wait_logins(2, timeout=5)
    assert len(server.sent("Ping")) > pings
    assert "ping timeout" in caplog.text
    server.silent.clear()
    await client.wait_connected(5)
    assert (await client.action({"Action": "Ping"})).ping == "Pong"


async def test_action_without_response_times_out_and_connection_survives(server: AmiTestServer,
                                                                         client: AmiClient) -> None:
    server.silent.add("redirect")
    server.channels_up.add("PJSIP/caller-00000022")
    with pytest.raises(TimeoutError):
        await client.action({"Action": "Redirect", "Channel": "PJSIP/caller-00000022", "Context": "c",
                             "Exten": "200", "Priority": "1"}, timeout=0.3)
    assert client.connected
    assert (await client.action({"Action": "Ping"})).ping == "Pong"


async def test_dropped_connection_fails_pending_action_at_once_and_never_resends(server: AmiTestServer,
                                                                                 client: AmiClient) -> None:
    server.silent.add("redirect")
    pending = asyncio.ensure_future(client.action(
        {"Action": "Redirect", "Channel": "PJSIP/x", "Context": "c", "Exten": "1", "Priority": "1"}, timeout=30))
    await server.wait_for("Redirect")
    server.drop()
    with pytest.raises(AmiNotConnected):
        await asyncio.wait_for(pending, 5)
    await server.wait_logins(2, timeout=5)
    await asyncio.sleep(0.3)
    assert len(server.sent("Redirect")) == 1  # panoramisk would re-send it after FullyBooted


async def test_actions_refused_while_disconnected(server: AmiTestServer, client: AmiClient) -> None:
    await server.stop()
    await _until(lambda: not client.connected)
    with pytest.raises(AmiNotConnected):
        await client.action({"Action": "Ping"})


async def test_successfully_queued_reply_does_not_break_the_connection(server: AmiTestServer,
                                                                       client: AmiClient) -> None:
    """panoramisk bug #90/#97: 'Originate successfully queued' without Async raised KeyError: 'async'."""
    reply = await client.checked({"Action": "Originate", "Channel": "PJSIP/200", "Context": "c", "Exten": "s",
                                  "Priority": "1"})
    assert reply.message == "Originate successfully queued"
    assert client.connected and client.connects == 1
    with pytest.raises(AmiError, match="Redirect failed, channel not up"):
        server.channels_hanging.add("PJSIP/gone-1")
        await client.checked({"Action": "Redirect", "Channel": "PJSIP/gone-1", "Context": "c", "Exten": "1",
                              "Priority": "1"})


async def test_event_callback_errors_are_logged_not_lost(server: AmiTestServer, client: AmiClient,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    async def broken(message) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("coroutine callback broke")

    def broken_sync(message) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("plain callback broke")

    got: list[str] = []
    client.on_event("Hangup", broken)
    client.on_event("Hangup", broken_sync)
    client.on_event("Hangup", lambda m: got.append(m.channel))
    with caplog.at_level(logging.ERROR):
        await server.hangup_event("PJSIP/caller-00000022", "1.1")
        await asyncio.wait_for(_until(lambda: "coroutine callback broke" in caplog.text), 5)
    assert "plain callback broke" in caplog.text
    assert got == ["PJSIP/caller-00000022"]
    assert client.connected and client.connects == 1
