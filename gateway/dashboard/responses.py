"""What every dashboard handler uses: the request's session and form (set by the role guard) and the
responses it returns."""

from __future__ import annotations

from aiohttp import web

from models.records import StaffSession

SESSION = web.RequestKey("staff_session", StaffSession)
FORM = web.RequestKey("form", dict)


def html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", headers=headers)


def see_other(path: str) -> web.Response:
    return web.Response(status=303, headers={"Location": path})
