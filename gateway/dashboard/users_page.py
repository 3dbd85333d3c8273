"""Users on the dashboard (admin only): add, change a role, reset a password, remove; every change
and refusal audited. The same account rules as `switchboard users` (accounts.new_user and
password_hash: name, role, minimum length, argon2id); the store refuses to remove or demote the last
admin, whoever asks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.dashboard import pages
from gateway.dashboard.accounts import new_user, password_hash
from gateway.dashboard.pages import PREFIX
from gateway.dashboard.responses import FORM, SESSION, html, see_other
from models.records import STAFF_ROLES
from models.store import Store

Audit = Callable[..., Awaitable[None]]


class UsersPage:
    def __init__(self, store: Store, audit: Audit, hashing: asyncio.Semaphore) -> None:
        # hashing: shared with sign-in checks, so the argon2 work of both stays bounded together
        self.store, self._audit, self._hashing = store, audit, hashing

    async def show(self, request: web.Request) -> web.Response:
        return html(pages.users_page(request[SESSION], await self.store.staff_users(), await self.store.staff_audit()))

    async def add(self, request: web.Request) -> web.StreamResponse:
        form = request[FORM]
        name, role = str(form.get("name", "")).strip(), str(form.get("role", ""))
        try:
            password = _typed_twice(form)
            async with self._hashing:
                user = await asyncio.to_thread(new_user, name, role, password)
            await self.store.staff_add(user)
        except ValueError as exc:  # a bad name, role or password, or the name is taken
            return await self._refused(request, "add user", name, exc, 422)
        await self._audit(request, "add user", f"ok, role {role}", target=name)
        return see_other(f"{PREFIX}/users#user-{name}")

    async def act(self, request: web.Request) -> web.StreamResponse:
        name, action, form = request.match_info["name"], request.match_info["action"], request[FORM]
        what, outcome = {"role": ("change role", f"ok, now {form.get('role')}"),
                         "password": ("reset password", "ok, signed out"), "remove": ("remove user", "ok")}[action]
        try:
            if action == "role":
                if form.get("role") not in STAFF_ROLES:
                    raise ValueError(f"role must be one of {', '.join(STAFF_ROLES)}")
                change = self.store.staff_set_role(name, str(form["role"]))
            elif action == "password":
                password = _typed_twice(form)
                async with self._hashing:
                    hashed = await asyncio.to_thread(password_hash, password)
                change = self.store.staff_set_password(name, hashed)
            else:
                change = self.store.staff_remove(name)
        except ValueError as exc:
            return await self._refused(request, what, name, exc, 422)
        try:
            done = await change
        except ValueError as exc:  # the last admin
            return await self._refused(request, what, name, exc, 409)
        if not done:
            return html(pages.message_page("Not found", f"There is no user {name}.", request[SESSION]), 404)
        await self._audit(request, what, outcome, target=name)
        return see_other(f"{PREFIX}/users#user-{name}")

    async def _refused(self, request: web.Request, what: str, name: str, exc: ValueError, status: int) -> web.Response:
        await self._audit(request, what, f"refused: {exc}", target=name[:64])
        return html(pages.message_page("Not done", f"{str(exc)[:1].upper()}{str(exc)[1:]}.", request[SESSION]), status)


def _typed_twice(form: dict[str, object]) -> str:
    """The new password, when both fields agree (its length is new_user's / password_hash's to check)."""
    password = str(form.get("password", ""))
    if password != str(form.get("again", "")):
        raise ValueError("the two passwords differ")
    return password
