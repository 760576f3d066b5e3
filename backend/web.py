"""HTTP plumbing shared by every view: who is asking, role checks, input fields, errors.

* ``auth_middleware`` finds the principal from the session cookie or a bearer token.
  State-changing requests authenticated by the cookie must echo the session's CSRF
  token (header ``X-CSRF-Token`` or form field ``csrf``).
* ``error_middleware`` turns every error into JSON ``{"error": code, "message": ...,
  "field": ...}`` with its status code (an HTML page for browsers on page routes);
  an unexpected exception is logged and answered 500 without a stack trace.
* ``Fields`` reads a JSON object or a form and validates each field, naming it.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from backend.accounts import Principal, principal_by_session, principal_by_token
from backend.errors import BackendError, Forbidden, InputError, Unauthorized
from backend.services import BACKEND, Backend

__all__ = [
    "COOKIE",
    "Fields",
    "auth_middleware",
    "error_middleware",
    "fields",
    "json_response",
    "principal",
    "require",
]

log = logging.getLogger("freshbox.backend.http")

COOKIE = "fb_session"
PRINCIPAL: web.RequestKey[Principal | None] = web.RequestKey("principal", Principal)
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def backend(request: web.Request) -> Backend:
    return request.app[BACKEND]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, default=str))


def wants_html(request: web.Request) -> bool:
    return not request.path.startswith("/api/") and "text/html" in request.headers.get(
        "Accept", ""
    )


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    be = backend(request)
    who = request.get(PRINCIPAL)
    body = be.render("error.html", request=request, status=status, message=message, me=who)
    return web.Response(text=body, status=status, content_type="text/html")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BackendError as exc:
        if isinstance(exc, Unauthorized) and wants_html(request):
            raise web.HTTPSeeOther(f"/login?next={request.path_qs}") from None
        if wants_html(request):
            return _error_page(request, exc.status, str(exc))
        body: dict[str, Any] = {"error": exc.code, "message": str(exc)}
        if isinstance(exc, InputError):
            body["field"] = exc.field
            body["message"] = exc.message
        return json_response(body, status=exc.status)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            if wants_html(request):
                return _error_page(request, exc.status, exc.reason)
            return json_response(
                {"error": exc.reason.lower().replace(" ", "_"), "message": exc.reason},
                status=exc.status,
            )
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if wants_html(request):
            return _error_page(request, 500, "Internal error")
        return json_response({"error": "internal", "message": "internal error"}, status=500)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    be = backend(request)
    who: Principal | None = None
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        token = auth[7:].strip()
        who = await be.db.run(principal_by_token, token, be.clock.now())
        if who is None:
            raise Unauthorized("the API token is not valid")
    else:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            who = await be.db.query(principal_by_session, cookie, be.clock.now())
    request[PRINCIPAL] = who
    if who is not None and not who.via_token and request.method not in _SAFE:
        sent = request.headers.get("X-CSRF-Token")
        if sent is None and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            form = await request.post()
            value = form.get("csrf")
            sent = value if isinstance(value, str) else None
        if not sent or not who.csrf_token or not hmac.compare_digest(sent, who.csrf_token):
            raise Forbidden("missing or wrong CSRF token (reload the page)")
    return await handler(request)


def principal(request: web.Request) -> Principal | None:
    return request.get(PRINCIPAL)


def require(request: web.Request, *roles: str) -> Principal:
    """The principal, who must have one of ``roles`` (any role when none are given)."""
    who = principal(request)
    if who is None:
        raise Unauthorized("log in first")
    if roles and who.role not in roles:
        raise Forbidden(f"this needs the role {' or '.join(roles)}")
    return who


# ------------------------------------------------------------------ input


class Fields:
    """Validated access to a request's fields; every error names the field."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def _get(self, name: str, required: bool) -> Any:
        v = self.data.get(name)
        if v is None or (isinstance(v, str) and not v.strip()):
            if required:
                raise InputError(name, "is required")
            return None
        return v

    def str_(self, name: str, *, max_len: int = 200, required: bool = True) -> str:
        v = self._get(name, required)
        if v is None:
            return ""
        if not isinstance(v, str):
            raise InputError(name, "must be a string")
        v = v.strip()
        if len(v) > max_len:
            raise InputError(name, f"must be at most {max_len} characters")
        return v

    def int_(
        self,
        name: str,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        required: bool = True,
        default: int | None = None,
    ) -> int:
        v = self._get(name, required and default is None)
        if v is None:
            assert default is not None
            return default
        if isinstance(v, str):
            try:
                v = int(v.strip())
            except ValueError:
                raise InputError(name, "must be a whole number") from None
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(name, "must be a whole number")
        if minimum is not None and v < minimum:
            raise InputError(name, f"must be at least {minimum}")
        if maximum is not None and v > maximum:
            raise InputError(name, f"must be at most {maximum}")
        return v

    def choice(self, name: str, options: tuple[str, ...], *, required: bool = True) -> str:
        v = self.str_(name, required=required)
        if v and v not in options:
            raise InputError(name, f"must be one of {', '.join(options)}")
        return v


async def fields(request: web.Request) -> Fields:
    """The body as ``Fields``: a JSON object or a form."""
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError("body", "is not valid JSON") from None
        if not isinstance(data, dict):
            raise InputError("body", "must be a JSON object")
        return Fields(data)
    form = await request.post()
    return Fields({k: v for k, v in form.items() if isinstance(v, str)})
