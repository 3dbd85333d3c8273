"""What a log line may say about people: numbers and addresses masked, and what a caller said only
when the admin turned on `log_transcripts` (a debugging aid, off by default).

In models/ so that every package that logs can use it without breaking the import layering.
"""

from __future__ import annotations

import re

_KEEP_DIGITS = 3
# A phone number as written anywhere: at least 6 digits, with the usual separators ("+1 (555) 010-2030").
# Shorter runs (extensions such as 202, SMS references) stay as they are.
_NUMBER = re.compile(r"\+?\d(?:[\s\-().]{0,2}\d){5,}")
# The user part of an email address (it has a letter: a numeric SIP user is a number, masked above).
_EMAIL_USER = re.compile(r"[^\s:<>@/*]*[A-Za-z][^\s:<>@/]*(?=@)")

_log_transcripts = False


def set_log_transcripts(enabled: bool) -> None:
    """From the config's `log_transcripts`, once at start (the CLI does it)."""
    global _log_transcripts
    _log_transcripts = enabled


def masked(text: str | None) -> str:
    """`text` (a number, SIP URI, dial string or email address) with each phone number cut to its last
    3 digits and each email user to its first letter: '+15550102030' -> '***030', 'ann@x.org' -> 'a***@x.org'."""
    if not text:
        return "-"
    text = _NUMBER.sub(lambda m: "***" + re.sub(r"\D", "", m.group())[-_KEEP_DIGITS:], text)
    return _EMAIL_USER.sub(lambda m: m.group()[0] + "***", text)


def said(text: str) -> str:
    """What a person said, for a log line: quoted with `log_transcripts`, else '<hidden>'."""
    return repr(text) if _log_transcripts else "<hidden>"
