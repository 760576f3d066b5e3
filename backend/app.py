"""The aiohttp application: middlewares, the login pages and every view module's routes.

``create_app(backend)`` wires an already-built :class:`~backend.services.Backend`
(tests build one on a SQLite file or a PostgreSQL schema, with a fixed clock and no
broker); ``serve`` in ``backend.server`` builds the real one from configuration.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

import backend.views_operator as views_operator
import backend.views_resident as views_resident
import backend.views_supplier as views_supplier
from backend.accounts import authenticate, end_session, start_session
from backend.services import BACKEND, Backend
from backend.web import (
    COOKIE,
    Handler,
    auth_middleware,
    error_middleware,
    fields,
    json_response,
    principal,
    require,
)

__all__ = ["create_app", "home_for"]

STATIC = Path(__file__).with_name("static")

HOMES = {"resident": "/me", "operator": "/ops", "supplier": "/supplier", "admin": "/ops"}


def home_for(role: str) -> str:
    return HOMES.get(role, "/")


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    resp = await handler(request)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    return resp


def _safe_next(value: str | None, fallback: str) -> str:
    """Only a local path (``/c/cab-1``), never another site."""
    if value and value.startswith("/") and not value.startswith("//"):
        return value
    return fallback


async def login_page(request: web.Request) -> web.Response:
    be = request.app[BACKEND]
    body = be.render(
        "login.html",
        request=request,
        me=principal(request),
        next=_safe_next(request.query.get("next"), ""),
        error=None,
        username="",
    )
    return web.Response(text=body, content_type="text/html")


async def login_submit(request: web.Request) -> web.StreamResponse:
    """Form login (pages) and JSON login (``POST /api/login``): sets the session cookie."""
    be = request.app[BACKEND]
    f = await fields(request)
    username = f.str_("username", max_len=64).lower()
    password = f.str_("password", max_len=200)
    who = await be.db.run(authenticate, username, password)
    is_json = request.path.startswith("/api/")
    if who is None:
        if is_json:
            return json_response(
                {"error": "unauthorized", "message": "wrong username or password"}, status=401
            )
        body = be.render(
            "login.html",
            request=request,
            me=None,
            next=_safe_next(f.str_("next", required=False), ""),
            error="Wrong username or password.",
            username=username,
        )
        return web.Response(text=body, status=401, content_type="text/html")
    token, csrf = await be.db.run(
        start_session, who.user_id, be.clock.now(), be.settings.session_hours
    )
    target = _safe_next(f.str_("next", required=False, max_len=500), home_for(who.role))
    if is_json:
        resp = json_response({"user": who.to_json(), "csrf": csrf, "home": target})
    else:
        resp = web.Response(status=303, headers={"Location": target})
    resp.set_cookie(
        COOKIE,
        token,
        httponly=True,
        secure=be.settings.cookie_secure,
        samesite="Lax",
        max_age=int(be.settings.session_hours * 3600),
        path="/",
    )
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    be = request.app[BACKEND]
    token = request.cookies.get(COOKIE)
    if token:
        await be.db.run(end_session, token)
    resp = web.Response(status=303, headers={"Location": "/login"})
    resp.del_cookie(COOKIE, path="/")
    return resp


async def me(request: web.Request) -> web.Response:
    who = require(request)
    return json_response({"user": who.to_json(), "csrf": who.csrf_token})


async def index(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    raise web.HTTPSeeOther("/login" if who is None else home_for(who.role))


async def health(request: web.Request) -> web.Response:
    be = request.app[BACKEND]
    fleet = be.fleet
    return json_response(
        {
            "ok": True,
            "database": be.db.url.get_backend_name(),
            "mqtt": None if fleet is None else fleet.connected(),
        }
    )


def create_app(be: Backend) -> web.Application:
    app = web.Application(middlewares=[security_headers, error_middleware, auth_middleware])
    app[BACKEND] = be
    app.router.add_get("/", index)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login_submit)
    app.router.add_post("/api/login", login_submit)
    app.router.add_post("/logout", logout)
    app.router.add_get("/api/me", me)
    app.router.add_get("/healthz", health)
    app.router.add_static("/static", STATIC)
    views_resident.setup(app)
    views_operator.setup(app)
    views_supplier.setup(app)
    return app
