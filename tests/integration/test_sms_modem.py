"""ModemSmsChannel against a fake modem on a real pseudo-terminal, through the real python-gsmmodem-new."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from gsmmodem.pdu import Concatenation

from channels.base import InboundMessage, OutgoingMessage, PermanentError, TemporaryError
from channels.sms_modem import ModemSettings, ModemSmsChannel
from channels.sms_text import from_wire
from models.store import Store
from tests.support.fake_modem import FakeModem

NUMBER = "+31612345678"
WAIT_S = 10.0


class Harness:
    def __init__(self, port: Path, store: Store, **overrides: object) -> None:
        self.settings = ModemSettings(port=str(port), reconnect_s=0.2, network_timeout_s=0.5, **overrides)
        self.channel = ModemSmsChannel(self.settings, store)
        self.inbound: asyncio.Queue[InboundMessage] = asyncio.Queue()
        self.reports: asyncio.Queue[tuple[str, str, bool]] = asyncio.Queue()
        self.fail_inbound = 0  # the next N inbound handler calls raise
        self.refs: list[str | None] = []  # provider_ref of every handler call, failed ones included

    async def on_inbound(self, message: InboundMessage) -> None:
        self.refs.append(message.provider_ref)
        if self.fail_inbound:
            self.fail_inbound -= 1
            raise RuntimeError("store unavailable")
        await self.inbound.put(message)

    async def on_delivery(self, channel: str, ref: str, ok: bool) -> None:
        await self.reports.put((channel, ref, ok))

    async def start(self) -> "Harness":
        await self.channel.start(self.on_inbound, self.on_delivery)
        return self

    async def send(self, body: str, to: str = NUMBER, id: int = 1):  # type: ignore[no-untyped-def]
        return await self.channel.send(OutgoingMessage(id=id, channel="sms", to=to, body=body))


@pytest.fixture
def port(tmp_path: Path) -> Path:
    return tmp_path / "ttyGSM0"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "sb.db")
    yield s
    await s.close()


@pytest.fixture
async def harness_factory(port: Path, store: Store) -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**overrides: object) -> Harness:
        made.append(Harness(port, store, **overrides))
        return made[-1]

    yield make
    for h in made:
        await h.channel.stop()


@pytest.fixture
def fake(port: Path):  # type: ignore[no-untyped-def]
    modem = FakeModem(port).start()
    yield modem
    if port.exists():
        modem.close()


async def ready(harness_factory: Callable[..., Harness], **overrides: object) -> Harness:
    h = await harness_factory(**overrides).start()
    await h.channel.wait_ready(WAIT_S)
    return h


async def until(check: Callable[[], bool]) -> None:
    for _ in range(int(WAIT_S / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def joined(parts: list) -> str:  # type: ignore[type-arg]
    return from_wire("".join(p.text for p in parts))


async def test_send_gsm7_single_part(fake: FakeModem, harness_factory) -> None:  # type: ignore[no-untyped-def]
    h = await ready(harness_factory)
    text = "Your appointment is at 10:00 {room 3} - fee €5, café ok"
    result = await h.send(text)
    assert len(fake.sent) == 1 and fake.sent[0].number == NUMBER and fake.sent[0].text == text
    assert fake.sent[0].udh == []
    assert result.provider_ref == str(fake.sent[0].reference) and not result.delivered
    assert 'AT+CSCS="GSM"' in fake.commands


async def test_send_unicode_with_emoji(fake: FakeModem, harness_factory) -> None:  # type: ignore[no-untyped-def]
    h = await ready(harness_factory)
    text = "Grüße aus Zürich ✓ Привет 😀"
    await h.send(text)
    assert 'AT+CSCS="UCS2"' in fake.commands
    assert len(fake.sent) == 1 and from_wire(fake.sent[0].text) == text


async def test_long_message_is_concatenated_and_reports_map_to_last_part(fake: FakeModem, harness_factory) -> None:  # type: ignore[no-untyped-def]
    h = await ready(harness_factory)
    text = " ".join(f"word{i}" for i in range(80))  # ~470 GSM-7 characters: 4 parts
    result = await h.send(text)
    assert len(fake.sent) == 4 and joined(fake.sent) == text
    concat = [next(ie for ie in p.udh if isinstance(ie, Concatenation)) for p in fake.sent]
    assert [c.number for c in concat] == [1, 2, 3, 4] and {c.parts for c in concat} == {4}
    assert len({c.reference for c in concat}) == 1
    last_ref = fake.sent[-1].reference
    assert result.provider_ref == str(last_ref)
    # An earlier part delivered: nothing to tell. The last part delivered: the message is.
    fake.status_report(fake.sent[0].reference, NUMBER, status=0)
    fake.status_report(last_ref, NUMBER, status=0)
    assert await asyncio.wait_for(h.reports.get(), WAIT_S) == ("sms", str(last_ref), True)
    assert h.reports.empty()
    assert fake.stored == 0  # the stored reports were read and deleted


async def test_failed_part_and_direct_cds_reports(fake: FakeModem, harness_factory) -> None:  # type: ignore[no-untyped-def]
    h = await ready(harness_factory)
    await h.send("x" * 200)  # 2 parts
    first, last = fake.sent[0].reference, fake.sent[1].reference
    fake.status_report(first, NUMBER, status=0x41)  # an earlier part failed: the message failed
    assert await asyncio.wait_for(h.reports.get(), WAIT_S) == ("sms", str(last), False)
    result = await h.send("short one", id=2)
    fake.status_report(99, NUMBER, status=0x20)  # still trying: not final, not reported
    fake.status_report(int(result.provider_ref), NUMBER, status=0, direct=True)  # +CDS with the PDU inline
    assert await asyncio.wait_for(h.reports.get(), WAIT_S) == ("sms", result.provider_ref, True)


async def test_a_failed_delete_after_reading_is_logged_not_raised_in_the_library_thread(
    fake: FakeModem, harness_factory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """python-gsmmodem handles each notification in a thread of its own; an error there (here the modem
    refuses to delete the SMS just read) used to end that thread with an unhandled exception."""
    unhandled: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: unhandled.append(args.exc_value))
    h = await ready(harness_factory)
    fake.cmgd_error = 321
    with caplog.at_level(logging.WARNING, logger="channels.sms_modem"):
        fake.receive_sms("+31687654321", "Are you open today?")
        msg = await asyncio.wait_for(h.inbound.get(), WAIT_S)
        assert msg.body == "Are you open today?"
        await until(lambda: "modem notification failed kind=+CMTI error=CmsError" in caplog.text)
    assert unhandled == []


async def test_receive_single_and_multipart_out_of_order(fake: FakeModem, harness_factory) -> None:  # type: ignore[no-untyped-def]
    h = await ready(harness_factory)
    fake.receive_sms("+31687654321", "Can I move my appointment?")
    msg = await asyncio.wait_for(h.inbound.get(), WAIT_S)
    assert (msg.channel, msg.sender, msg.body) == ("sms", "+31687654321", "Can I move my appointment?")
    long_text = "Ünïcode parts 😀 " + "ab" * 80  # UCS-2, 3 parts, an emoji as a surrogate pair
    fake.receive_sms("+31687654321", long_text, concat_ref=42, order=[2, 0, 1])
    msg = await asyncio.wait_for(h.inbound.get(), WAIT_S)
    assert msg.body == long_text and msg.sender == "+31687654321"
    assert h.inbound.empty()
    await asyncio.sleep(0.2)
    assert fake.stored == 0


async def test_concurrent_sends_and_inbound_share_the_port(fake: FakeModem, harness_factory) -> None:  # type: ignore[no-untyped-def]
    h = await ready(harness_factory)
    fake.receive_sms("+31600000003", "arriving while we send")
    results = await asyncio.gather(*(h.send(f"message {i}", id=i) for i in range(4)))
    msg = await asyncio.wait_for(h.inbound.get(), WAIT_S)
    assert msg.body == "arriving while we send"
    assert sorted(p.text for p in fake.sent) == [f"message {i}" for i in range(4)]
    assert len({r.provider_ref for r in results}) == 4


async def test_unhandled_sms_stays_on_sim_and_is_read_at_reconnect(fake: FakeModem, port: Path, harness_factory) -> None:  # type: ignore[no-untyped-def]
    h = await ready(harness_factory)
    h.fail_inbound = 1
    fake.receive_sms("+31600000001", "Please call me back")
    for _ in range(100):
        if 'AT+CMGR=1' in fake.commands:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert h.inbound.empty() and fake.stored == 1  # not deleted: the handler did not take it
    fake.unplug()
    fake.start()  # replugged: the same SIM storage, a new tty behind the same link
    msg = await asyncio.wait_for(h.inbound.get(), WAIT_S)
    assert msg.body == "Please call me back" and fake.stored == 0
    # Read twice, the same reference both times: the store answers it once.
    assert len(h.refs) == 2 and h.refs[0] == h.refs[1] and h.refs[0] and h.refs[0].startswith("+31600000001 ")


async def test_incomplete_multipart_is_delivered_after_timeout(fake: FakeModem, harness_factory) -> None:  # type: ignore[no-untyped-def]
    h = await ready(harness_factory, multipart_timeout_s=0.5)
    fake.receive_sms("+31600000002", "y" * 300, concat_ref=7, order=[0])
    msg = await asyncio.wait_for(h.inbound.get(), WAIT_S)
    assert msg.body == "y" * 153 + "[...]"


async def test_a_part_deleted_from_the_sim_survives_a_restart(fake: FakeModem, harness_factory) -> None:  # type: ignore[no-untyped-def]
    h = await ready(harness_factory)
    long_text = "Part one and part two of a long question about my bill. " * 4  # 2 parts
    fake.receive_sms("+31600000004", long_text, concat_ref=9, order=[0])
    await until(lambda: fake.stored == 0)  # the first part is off the SIM
    await h.channel.stop()  # the daemon restarts between the parts
    h = await ready(harness_factory)
    fake.receive_sms("+31600000004", long_text, concat_ref=9, order=[1])
    msg = await asyncio.wait_for(h.inbound.get(), WAIT_S)
    assert msg.body == long_text
    assert msg.provider_ref and msg.provider_ref.startswith("+31600000004 ")
    await until(lambda: fake.stored == 0)
    assert h.inbound.empty()


async def test_send_errors_map_to_permanent_and_temporary(fake: FakeModem, harness_factory) -> None:  # type: ignore[no-untyped-def]
    h = await ready(harness_factory, max_parts=2)
    with pytest.raises(PermanentError, match="not a phone number"):
        await h.send("hi", to="bob")
    with pytest.raises(PermanentError, match="max_parts=2"):
        await h.send("z" * 400)
    fake.cmgs_error = 1  # unassigned number
    with pytest.raises(PermanentError, match="CMS ERROR: 1"):
        await h.send("hi")
    fake.cmgs_error = 331  # no network service
    with pytest.raises(TemporaryError, match="CMS ERROR: 331"):
        await h.send("hi")
    assert fake.sent == []


def _down_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "sms modem down" in r.getMessage()]


@pytest.mark.parametrize(("sim", "creg", "reason"), [
    ("absent", 1, "no SIM card in the modem"),
    ("pin", 1, "SIM needs a PIN"),
    ("ready", 3, "no mobile network: registration denied"),
    ("ready", 2, "no mobile network: searching for an operator"),
])
async def test_modem_problem_gives_one_clear_error_and_temporary_send(  # type: ignore[no-untyped-def]
        port: Path, harness_factory, caplog, sim: str, creg: int, reason: str) -> None:
    modem = FakeModem(port, sim=sim, creg=creg).start()
    try:
        caplog.set_level(logging.INFO, logger="channels.sms_modem")
        h = await harness_factory().start()
        await until(lambda: modem.commands.count("ATZ") >= 2)  # it keeps trying, every 0.2 s
        assert reason in (h.channel.down_reason or "")
        with pytest.raises(TemporaryError, match=reason):
            await h.send("hello")
        assert len(_down_logs(caplog)) == 1 and reason in _down_logs(caplog)[0]
    finally:
        modem.close()


async def test_pin_from_environment_unlocks_and_wrong_pin_is_not_retried(  # type: ignore[no-untyped-def]
        port: Path, harness_factory, monkeypatch, caplog) -> None:
    modem = FakeModem(port, sim="pin", pin="4321").start()
    try:
        monkeypatch.setenv("TEST_SIM_PIN", "1111")
        h = await harness_factory(pin_env="TEST_SIM_PIN").start()
        await until(lambda: "SIM rejected the PIN from $TEST_SIM_PIN" in (h.channel.down_reason or ""))
        await asyncio.sleep(0.6)  # three reconnect intervals
        assert modem.commands.count('AT+CPIN="1111"') == 1
        await h.channel.stop()
        monkeypatch.setenv("TEST_SIM_PIN", "4321")
        h = await ready(harness_factory, pin_env="TEST_SIM_PIN")
        await h.send("unlocked")
        assert modem.sent[-1].text == "unlocked"
        assert not any("4321" in r.getMessage() for r in caplog.records)
    finally:
        modem.close()


async def test_missing_port_then_plugged_in_then_unplugged(port: Path, harness_factory, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="channels.sms_modem")
    h = await harness_factory().start()
    await until(lambda: "does not exist" in (h.channel.down_reason or ""))
    with pytest.raises(TemporaryError, match="does not exist"):
        await h.send("queued meanwhile")
    modem = FakeModem(port).start()
    await h.channel.wait_ready(WAIT_S)
    await h.send("now it works")
    assert modem.sent[-1].text == "now it works"
    modem.unplug()
    await until(lambda: h.channel.down_reason is not None)
    with pytest.raises(TemporaryError):
        await h.send("after unplug")
    await asyncio.sleep(0.6)  # a few reconnect attempts against the missing port
    downs = _down_logs(caplog)
    assert len(downs) == 3, downs  # missing, lost, missing again: one line each, not one per attempt
    assert "does not exist" in downs[0] and "connection lost" in downs[1] and "does not exist" in downs[2]
