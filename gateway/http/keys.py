"""API keys: how they are made, hashed and described. The key is shown once and stored only hashed.

A key is 32 random bytes (secrets.token_urlsafe), so SHA-256 is enough: a slow password hash
protects low-entropy secrets against guessing, and nobody can enumerate 2^256 keys; a fast hash
lets the daemon check every request against the store in microseconds.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time

from models.records import ApiKey

SCOPES = ("messages:send", "messages:read", "otp:send", "otp:verify", "calls:create", "threads:write",
          "threads:read", "admin")
KEY_PREFIX = "sb_"
_PREFIX_SHOWN = 10  # "sb_" and 7 random characters: enough to tell keys apart, useless to guess one
_RATE = re.compile(r"^(\d+(?:\.\d+)?)/([smh])$")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_rate(text: str) -> tuple[float, int]:
    """"20/s", "100/m", "1000/h" -> (tokens per second, burst); raises ValueError."""
    match = _RATE.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"rate {text!r}: expected N/s, N/m or N/h with N > 0")
    per_s = float(match.group(1)) / _SECONDS[match.group(2)]
    return per_s, max(1, math.ceil(per_s))


def parse_duration(text: str) -> float:
    """"90d", "12h", "30m", "45s" -> seconds; raises ValueError."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"duration {text!r}: expected N followed by s, m, h or d, N > 0")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def new_key(name: str, scopes: list[str], rate: str, expires: str | None,
            now: float | None = None) -> tuple[str, ApiKey]:
    """(the key, its stored record); raises ValueError for an unknown scope, rate or duration."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope {', '.join(unknown)} (known: {', '.join(SCOPES)})")
    if not scopes:
        raise ValueError("give at least one --scope")
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
        raise ValueError("the name may have 1 to 64 letters, digits and _ . @ -")
    per_s, burst = parse_rate(rate)
    now = time.time() if now is None else now
    expires_at = now + parse_duration(expires) if expires else None
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, ApiKey(name=name, key_hash=hash_key(key), prefix=key[:_PREFIX_SHOWN],
                       scopes=tuple(dict.fromkeys(scopes)), rate_per_s=per_s, burst=burst, created_at=now,
                       expires_at=expires_at)
