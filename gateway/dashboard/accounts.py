"""Staff accounts: argon2 password hashes, sign-in sessions and the throttle on failed sign-ins.

A session is a 256-bit random cookie of which the store keeps only the SHA-256 (like an API key),
so sessions can be revoked, survive restarts, and a copy of the database signs nobody in.
Passwords are low-entropy secrets: they get argon2id (argon2-cffi's defaults, RFC 9106's second
recommended profile), verified in a worker thread so a sign-in never holds the event loop.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gateway.http.keys import hash_key
from models.records import STAFF_ROLES, StaffSession, StaffUser
from models.store import Store

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD = 10
_hasher = PasswordHasher()
# Verified when the user name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def new_user(name: str, role: str, password: str) -> StaffUser:
    """Raises ValueError for a bad name, role or a short password."""
    if not _NAME.match(name):
        raise ValueError("a user name is 1-64 letters, digits and . _ @ -")
    if role not in STAFF_ROLES:
        raise ValueError(f"role must be one of {', '.join(STAFF_ROLES)}")
    return StaffUser(name=name, role=role, password_hash=password_hash(password), created_at=time.time())


def password_hash(password: str) -> str:
    """The argon2id hash of a new password (~130 ms of CPU); raises ValueError when it is too short."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def check_password(store: Store, name: str, password: str) -> StaffUser | None:
    """The user if the password is theirs."""
    user = await store.staff_user(name)
    ok = await asyncio.to_thread(_verify, user.password_hash if user else _DUMMY_HASH, password)
    return user if ok and user is not None else None


async def open_session(store: Store, user: StaffUser, hours: float) -> str:
    """A new session for `user`; the cookie value (shown to the browser only)."""
    token = secrets.token_urlsafe(32)
    await store.staff_session_create(hash_key(token), user.name, secrets.token_urlsafe(32),
                                     time.time() + hours * 3600)
    return token


async def session_for(store: Store, token: str | None) -> StaffSession | None:
    return await store.staff_session(hash_key(token), time.time()) if token else None


async def close_session(store: Store, token: str) -> None:
    await store.staff_session_end(hash_key(token))


@dataclass
class Throttle:
    """Failed sign-ins per user name and per client address within a sliding window. Past the limit a
    sign-in is refused before its password is checked, right or wrong (so guessing learns nothing)."""

    limit: int
    window_s: float
    max_keys: int = 10_000  # a flood of new names or addresses must not grow memory without bound

    def __post_init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, *keys: str) -> float:
        """0 if a sign-in may be tried now, else the seconds until one may."""
        now, wait = time.monotonic(), 0.0
        for key in keys:
            times = self._recent(key, now) if key in self._failures else ()
            if len(times) >= self.limit:
                wait = max(wait, times[0] + self.window_s - now)
        return wait

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            if key not in self._failures and len(self._failures) >= self.max_keys:
                self._failures.pop(next(iter(self._failures)))  # the oldest-inserted key
            self._recent(key, now).append(now)

    def succeeded(self, user_key: str) -> None:
        self._failures.pop(user_key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times
