"""The log of a real call and a real text conversation at INFO: no full number, nothing the person said;
with log_transcripts, what the caller said is there (numbers stay masked)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_ami_calls import running

from gateway.media.caller import CallerClient
from gateway.config import MessagingSettings
from gateway.daemon.messaging import Messaging
from models import privacy
from tests.support.fake_modem import FakeModem

pytestmark = pytest.mark.models

ROOT = Path(__file__).resolve().parents[2]
CALLER = "0612345678"


@pytest.fixture
def transcripts() -> Iterator[None]:
    yield
    privacy.set_log_transcripts(False)


@pytest.mark.parametrize("log_transcripts", [False, True])
async def test_call_log(services, speak, caplog: pytest.LogCaptureFixture, transcripts: None,  # type: ignore[no-untyped-def]
                        log_transcripts: bool) -> None:
    privacy.set_log_transcripts(log_transcripts)
    async with running(services) as rig:
        client = CallerClient("127.0.0.1", rig.gateway.port)
        await rig.server.call_events(channel=f"PJSIP/caller-0000004{int(log_transcripts)}",
                                     uniqueid=f"1795253000.{int(log_transcripts)}", caller=CALLER, exten="100",
                                     variables={"AS_UUID": client.call_id})
        with caplog.at_level(logging.INFO):
            await client.connect()
            try:
                await client.wait_reply(time.monotonic() - 1)  # the greeting
                sent = await client.say(await speak("Do you take Delta Dental?"))
                await client.wait_reply(sent)
            finally:
                await client.close()
    turns = await services.store.turns(client.call_id)
    heard = next(t.text for t in turns if t.speaker == "caller")
    assert (await services.store.call(client.call_id))["caller"] == CALLER  # the database keeps it whole
    assert CALLER not in caplog.text and "caller=***678" in caplog.text
    assert f"call={client.call_id} chars={len(heard)}" in caplog.text
    assert (repr(heard) in caplog.text) is log_transcripts


async def test_text_conversation_log(services, config, tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """An SMS answered through the daemon's messaging wiring, on a pseudo-terminal modem."""
    modem = FakeModem(tmp_path / "ttyGSM0").start()
    settings = MessagingSettings.model_validate({
        "sms_modem": {"port": str(tmp_path / "ttyGSM0"), "reconnect_s": 0.2},
        "conversations": {"buffer_s": 0}})
    messaging = Messaging(settings, dataclasses.replace(services, config=dataclasses.replace(
        config, messaging=settings)), None)
    with caplog.at_level(logging.INFO):
        await messaging.start()
        try:
            await messaging.outbox.channels["sms"].wait_ready(10)
            modem.receive_sms("+31687654321", "Hi, Margaret Thornbury here, do you take Delta Dental?")
            for _ in range(200):
                if modem.sent:
                    break
                await asyncio.sleep(0.05)
            modem.cmgs_error = 1  # the network rejects the next one: the failure is logged
            row = await messaging.outbox.enqueue("sms", "+31687654321", "Your appointment is confirmed.")
            for _ in range(200):
                if (await services.store.outbox_get(row)).state == "failed":
                    break
                await asyncio.sleep(0.05)
        finally:
            await messaging.stop()
            modem.close()
    assert modem.sent and modem.sent[0].number.endswith("31687654321")  # answered
    assert (await services.store.outbox_get(row)).state == "failed"
    assert "31687654321" not in caplog.text and "from=***321" in caplog.text and "SMS to ***321" in caplog.text
    assert "Thornbury" not in caplog.text


@pytest.mark.parametrize("log_transcripts", [False, True])
def test_the_setting_reaches_the_log_through_the_cli(tmp_path, log_transcripts: bool) -> None:  # type: ignore[no-untyped-def]
    for name in ("switchboard.yaml", "directory.yaml", "knowledge.yaml"):
        shutil.copy(ROOT / "etc" / name, tmp_path / name)
    config = tmp_path / "switchboard.yaml"
    config.write_text(config.read_text().replace("log_transcripts: false", f"log_transcripts: {log_transcripts}"))
    proc = subprocess.run([sys.executable, "-m", "gateway.cli.main", "-c", str(config), "--data-dir", str(tmp_path / "data"),
                           "demo", "--say", "Do you take Delta Dental?", "--out", str(tmp_path / "reply.wav"), "-v"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    said = next(line for line in proc.stderr.splitlines() if "caller said" in line)
    assert ("dental" in said.lower()) is log_transcripts, said
    assert ("text=<hidden>" in said) is not log_transcripts
