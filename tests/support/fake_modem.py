"""A GSM modem on a pseudo-terminal, answering the AT commands python-gsmmodem-new sends (PROTOCOLS §5).

The modem side runs in one thread on the pty master; the code under test opens the slave through a
symlink (`port`), like a udev /dev/serial/by-id/ link, so "unplugging" (closing the pty and removing
the link) and "plugging back" (a new pty behind the same link) behave like real hardware.

Unsolicited notifications (+CMTI, +CDSI, +CDS) are emitted one at a time and only while the line is
quiet: the library treats a batch of notification lines as one event and would drop the rest.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from gsmmodem.pdu import _encodeAddressField, _encodeTimestamp, decodeSmsPdu, encodeSmsSubmitPdu

CTRL_Z = b"\x1a"
QUIET_S = 0.05  # line idle this long before a notification is written
ACK_TIMEOUT_S = 5.0  # give up waiting for the AT+CMGD that acknowledges a notification


def deliver_pdus(sender: str, text: str, *, concat_ref: int = 0) -> list[str]:
    """SMS-DELIVER PDUs (hex) for `text` from `sender`, split with a concatenation UDH if long.

    Built from the library's own SMS-SUBMIT encoder: same address, PID, DCS and user data
    (with UDH), minus the message reference, plus a service-centre timestamp.
    """
    stamp = _encodeTimestamp(datetime.now(timezone.utc))
    raw = text.encode("utf-16-be")  # UTF-16 code units, as a phone puts emoji on the air
    units = "".join(chr(int.from_bytes(raw[i : i + 2], "big")) for i in range(0, len(raw), 2))
    pdus = []
    for submit in encodeSmsSubmitPdu(sender, units, reference=concat_ref, requestStatusReport=False):
        data = submit.data  # [SMSC=00][first octet][MR][DA len][TOA][DA...][PID][DCS][UDL][UD]
        first_octet, address_len = data[1], data[3]
        address_end = 5 + (address_len + 1) // 2
        pid, dcs = data[address_end], data[address_end + 1]
        deliver = bytearray([0x00, 0x04 | (first_octet & 0x40)])  # SMS-DELIVER, no more msgs, UDHI
        deliver += data[3:address_end] + bytes([pid, dcs]) + stamp + data[address_end + 2 :]
        pdus.append(deliver.hex().upper())
    return pdus


def status_report_pdu(reference: int, recipient: str, status: int) -> str:
    """An SMS-STATUS-REPORT PDU (hex): TP-ST 0 = received by the handset, 0x40+ = failed."""
    now = _encodeTimestamp(datetime.now(timezone.utc))
    pdu = bytearray([0x00, 0x06, reference]) + _encodeAddressField(recipient) + now + now + bytes([status])
    return pdu.hex().upper()


@dataclass
class SentPart:
    reference: int  # what +CMGS answered
    number: str
    text: str
    udh: list = field(default_factory=list)
    tpdu_length: int = 0


class FakeModem:
    """sim: "ready" | "absent" (+CME ERROR: 10) | "pin" (needs AT+CPIN="<pin>"); creg: +CREG stat."""

    def __init__(self, port: Path, *, sim: str = "ready", pin: str = "1234", creg: int = 1) -> None:
        self.port = port
        self.sim, self.pin, self.creg = sim, pin, creg
        self.cmgs_error: int | None = None  # answer AT+CMGS PDUs with +CMS ERROR: n
        self.cmgd_error: int | None = None  # answer AT+CMGD (delete a read SMS) with +CMS ERROR: n
        self.silent = False  # swallow commands (a hung modem)
        self.commands: list[str] = []
        self.sent: list[SentPart] = []
        self._next_ref = 7
        self._store: dict[int, str] = {}
        self._next_index = 1
        self._pending: deque[tuple[bytes, int | None]] = deque()  # (notification, index to be deleted)
        self._awaiting: tuple[int | None, float] | None = None
        self._lock = threading.Lock()
        self._master = self._slave = -1
        self._thread: threading.Thread | None = None
        self._running = False

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "FakeModem":
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port.unlink(missing_ok=True)
        self.port.symlink_to(os.ttyname(self._slave))
        self._running = True
        self._thread = threading.Thread(target=self._run, name="fake-modem", daemon=True)
        self._thread.start()
        return self

    def unplug(self) -> None:
        """The USB modem is pulled: the device and its by-id link disappear."""
        self._running = False
        if self._thread:
            self._thread.join(timeout=2)
        os.close(self._master)
        os.close(self._slave)
        self.port.unlink(missing_ok=True)

    close = unplug

    # -- what the network does -----------------------------------------------------------------
    def receive_sms(self, sender: str, text: str, *, concat_ref: int = 0, order: list[int] | None = None) -> None:
        """An SMS arrives: each part is stored and announced by +CMTI (parts in `order`, 0-based)."""
        pdus = deliver_pdus(sender, text, concat_ref=concat_ref)
        for i in order if order is not None else range(len(pdus)):
            self._announce(pdus[i], '+CMTI: "SM",{}')

    def store_sms(self, sender: str, text: str) -> None:
        """An SMS that arrived while nobody listened: stored, never announced."""
        for pdu in deliver_pdus(sender, text):
            with self._lock:
                self._store[self._next_index] = pdu
                self._next_index += 1

    def status_report(self, reference: int, recipient: str, *, status: int = 0, direct: bool = False) -> None:
        pdu = status_report_pdu(reference, recipient, status)
        if direct:  # +CDS: the PDU itself follows on the next line, nothing is stored
            with self._lock:
                self._pending.append((f"\r\n+CDS: {len(pdu) // 2 - 1}\r\n{pdu}\r\n".encode(), None))
        else:
            self._announce(pdu, '+CDSI: "SR",{}')

    def _announce(self, pdu: str, notification: str) -> None:
        with self._lock:
            index = self._next_index
            self._next_index += 1
            self._store[index] = pdu
            self._pending.append((f"\r\n{notification.format(index)}\r\n".encode(), index))

    @property
    def stored(self) -> int:
        with self._lock:
            return len(self._store)

    # -- the serial line -----------------------------------------------------------------------
    def _run(self) -> None:
        buffer = b""
        last_activity = time.monotonic()
        while self._running:
            readable, _, _ = select.select([self._master], [], [], 0.02)
            if readable:
                try:
                    chunk = os.read(self._master, 4096)
                except OSError:
                    chunk = b""
                buffer += chunk
                last_activity = time.monotonic()
                buffer = self._consume(buffer)
            elif not buffer and time.monotonic() - last_activity > QUIET_S:
                self._notify()

    def _consume(self, buffer: bytes) -> bytes:
        while True:
            if buffer.startswith(b"PDU:"):  # waiting for the PDU after the "> " prompt
                end = buffer.find(CTRL_Z)
                if end < 0:
                    return buffer
                self._on_pdu(buffer[4:end].decode().strip())
                buffer = buffer[end + 1 :]
                continue
            end = buffer.find(b"\r")
            if end < 0:
                return buffer
            line, buffer = buffer[:end].decode(errors="replace").strip(), buffer[end + 1 :]
            if line and not self.silent:
                self.commands.append(line)
                if self._command(line):
                    buffer = b"PDU:" + buffer

    def _write(self, *lines: str, prompt: bool = False) -> None:
        data = "".join(f"\r\n{line}\r\n" for line in lines).encode()
        os.write(self._master, data + (b"\r\n> " if prompt else b""))

    def _notify(self) -> None:
        with self._lock:
            if self._awaiting is not None:
                index, since = self._awaiting
                if index in self._store and time.monotonic() - since < ACK_TIMEOUT_S:
                    return
                self._awaiting = None
            if not self._pending:
                return
            data, index = self._pending.popleft()
            self._awaiting = (index, time.monotonic()) if index is not None else None
        os.write(self._master, data)

    def _command(self, cmd: str) -> bool:
        """Answer one AT command; True when a PDU follows (AT+CMGS)."""
        upper = cmd.upper()
        if upper.startswith("AT+CPIN?"):
            if self.sim == "absent":
                self._write("+CME ERROR: 10")
            else:
                self._write(f"+CPIN: {'SIM PIN' if self.sim == 'pin' else 'READY'}", "OK")
        elif upper.startswith("AT+CPIN="):
            if cmd.split("=", 1)[1].strip('"') == self.pin:
                self.sim = "ready"
                self._write("OK")
            else:
                self._write("+CME ERROR: 16")
        elif self.sim != "ready" and upper.startswith(("AT+CMG", "AT+CPMS", "AT+CSCA", "AT+CREG", "AT+CNMI")):
            self._write("+CME ERROR: 10" if self.sim == "absent" else "+CME ERROR: 11")
        elif upper == "AT+CFUN?":
            self._write("+CFUN: 1", "OK")
        elif upper == "AT+CLAC":
            self._write("+CLAC: +CMGF,+CMGS,+CMGR,+CMGD,+CMGL,+CNMI,+CPMS,+CSCA,+CSCS,+CREG,+CSQ", "OK")
        elif upper == "AT+CGMI":
            self._write("FAKE", "OK")
        elif upper == "AT+CSCA?":
            self._write('+CSCA: "+3161234",145', "OK")
        elif upper == "AT+CPMS=?":
            self._write('+CPMS: ("ME","SM","SR"),("ME","SM"),("ME","SM")', "OK")
        elif upper.startswith("AT+CPMS="):
            self._write("+CPMS: 0,50,0,50,0,50", "OK")
        elif upper == "AT+CSCS=?":
            self._write('+CSCS: ("GSM","UCS2")', "OK")
        elif upper == "AT+CSCS?":
            self._write('+CSCS: "GSM"', "OK")
        elif upper == "AT+CREG?":
            self._write(f"+CREG: 0,{self.creg}", "OK")
        elif upper == "AT+CSQ":
            self._write("+CSQ: 20,99", "OK")
        elif upper.startswith("AT+CMGS="):
            self._write(prompt=True)
            return True
        elif upper.startswith("AT+CMGR="):
            index = int(cmd.split("=", 1)[1])
            with self._lock:
                pdu = self._store.get(index)
            if pdu is None:
                self._write("+CMS ERROR: 321")  # invalid memory index
            else:
                self._write(f"+CMGR: 0,,{len(pdu) // 2 - 1}\r\n{pdu}", "OK")
        elif upper.startswith("AT+CMGD=") and self.cmgd_error is not None:
            self._write(f"+CMS ERROR: {self.cmgd_error}")
        elif upper.startswith("AT+CMGD="):
            index = int(cmd.split("=", 1)[1].split(",")[0])
            with self._lock:
                self._store.pop(index, None)
            self._write("OK")
        elif upper.startswith("AT+CMGL="):
            with self._lock:
                listing = [f"+CMGL: {i},1,,{len(p) // 2 - 1}\r\n{p}" for i, p in self._store.items()]
            self._write(*listing, "OK")
        elif upper in ("AT+ZPAS?",) or upper.startswith("AT+WIND"):
            self._write("ERROR")
        elif upper.startswith("AT"):
            self._write("OK")  # ATZ, ATE0, AT+CMEE, AT+COPS, AT+CMGF, AT+CSMP, AT+CNMI, AT+CLIP, ...
        else:
            self._write("ERROR")
        return False

    def _on_pdu(self, pdu_hex: str) -> None:
        if self.cmgs_error is not None:
            self._write(f"+CMS ERROR: {self.cmgs_error}")
            return
        sms = decodeSmsPdu(pdu_hex)
        reference = self._next_ref
        self._next_ref = (self._next_ref + 1) % 256
        self.sent.append(SentPart(reference, sms["number"], sms["text"], sms.get("udh", []), sms["tpdu_length"]))
        self._write(f"+CMGS: {reference}", "OK")
