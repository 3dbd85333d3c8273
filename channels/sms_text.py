"""SMS text facts: which alphabet a text needs and how many parts it takes (3GPP TS 23.038 / 23.040).

The modem library encodes UCS-2 one Python character at a time, so a character outside the Basic
Multilingual Plane (most emoji) would crash it; `to_wire` turns such characters into UTF-16
surrogate pairs first (what phones send), and `from_wire` joins pairs back after reassembly.
"""

from __future__ import annotations

from dataclasses import dataclass

from gsmmodem.pdu import GSM7_BASIC, GSM7_EXTENDED, divideTextGsm7, divideTextUcs2

GSM7_SINGLE = 160  # septets in one message without a concatenation header
UCS2_SINGLE = 70  # UTF-16 code units


@dataclass(frozen=True)
class Segments:
    encoding: str  # "GSM-7" | "UCS-2"
    units: int  # septets (GSM-7, escapes count twice) or UTF-16 code units (UCS-2)
    parts: int


def gsm7_septets(text: str) -> int | None:
    """Septets `text` needs in the GSM-7 default alphabet, or None if it needs UCS-2."""
    septets = 0
    for char in text:
        if char in GSM7_BASIC:
            septets += 1
        elif char in GSM7_EXTENDED:
            septets += 2  # escape + extension-table character
        else:
            return None
    return septets


def to_wire(text: str) -> str:
    """Text as UTF-16 code units, one Python character each (surrogate pairs for non-BMP)."""
    if all(ord(char) <= 0xFFFF for char in text):
        return text
    raw = text.encode("utf-16-be")
    return "".join(chr(int.from_bytes(raw[i : i + 2], "big")) for i in range(0, len(raw), 2))


def from_wire(text: str) -> str:
    """Join the surrogate pairs of a decoded UCS-2 text back into characters."""
    return text.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "replace")


def segments(text: str) -> Segments:
    """How the modem library will send `text`: its alphabet and number of concatenated parts
    (counted with the library's own splitters, so the answer matches what goes on air)."""
    septets = gsm7_septets(text)
    if septets is not None:
        parts = 1 if septets <= GSM7_SINGLE else len(divideTextGsm7(text))
        return Segments("GSM-7", septets, parts)
    wire = to_wire(text)
    parts = 1 if len(wire) <= UCS2_SINGLE else len(divideTextUcs2(wire))
    return Segments("UCS-2", len(wire), parts)
