"""One-time codes: drawn with a CSPRNG, kept only as an HMAC under a key file in data_dir, never logged.

The HMAC key (32 random bytes, file mode 0600) is made at first start: a copy of the database alone
does not let anyone test codes offline, and 10^6 codes make an unkeyed hash trivial to reverse.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from gateway.config import OtpSettings
from models.records import OtpCode
from models.store import Store

log = logging.getLogger(__name__)

KEY_FILE = "otp-hmac.key"
HOUR_S = 3600.0


def load_hmac_key(data_dir: Path) -> bytes:
    """The key in data_dir, made (0600, exclusively) if there is none."""
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) < 32:
            raise ValueError(f"{path}: shorter than 32 bytes; delete it to make a new one (open codes then fail)")
        return key
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    log.info("otp key created path=%s", path)
    return path.read_bytes()


class Refused(Exception):
    """Too many codes for one destination: wait `retry_after_s`."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class NewCode:
    record: OtpCode
    code: str  # only to be put in the message; never logged, stored or returned


@dataclass(frozen=True)
class Verdict:
    outcome: str  # valid | invalid | expired | used | exhausted | unknown
    attempts_left: int


class OneTimeCodes:
    def __init__(self, store: Store, settings: OtpSettings, hmac_key: bytes) -> None:
        self.store, self.settings, self._key = store, settings, hmac_key

    def _mac(self, otp_id: str, code: str) -> str:
        # The id is in the MAC: a code's hash cannot be moved onto another row.
        return hmac.new(self._key, f"{otp_id}:{code}".encode(), hashlib.sha256).hexdigest()

    async def create(self, key_name: str, channel: str, destination: str, purpose: str | None) -> NewCode:
        """A new code for `destination`; raises Refused within the cooldown or over the hourly limit."""
        s, now = self.settings, time.time()
        recent = await self.store.otp_created_since(destination, now - HOUR_S)
        if recent and now - recent[0] < s.resend_cooldown_s:
            raise Refused("a code was sent to this destination moments ago", s.resend_cooldown_s - (now - recent[0]))
        if len(recent) >= s.per_destination_hourly:
            raise Refused("too many codes to this destination this hour", recent[-1] + HOUR_S - now)
        otp_id = uuid.uuid4().hex
        code = f"{secrets.randbelow(10 ** s.digits):0{s.digits}d}"
        record = OtpCode(id=otp_id, key_name=key_name, channel=channel, destination=destination, purpose=purpose,
                         code_hmac=self._mac(otp_id, code), created_at=now, expires_at=now + s.ttl_s)
        await self.store.otp_create(record)
        return NewCode(record, code)

    def message(self, code: str) -> str:
        return self.settings.message.format(code=code, minutes=max(1, round(self.settings.ttl_s / 60)))

    async def verify(self, otp_id: str, code: str) -> Verdict:
        expected = self._mac(otp_id, code)
        outcome, left = await self.store.otp_attempt(
            otp_id, lambda stored: hmac.compare_digest(stored, expected), self.settings.max_attempts, time.time())
        return Verdict(outcome, left)
