"""The vegetable base's side: its restock feed, delivery confirmations and API tokens.

Pages (role ``supplier``; an admin adds ``?supplier=ID``):

* ``GET /supplier``: the feed, the CSV link, the delivery form, recent deliveries,
  the API tokens;
* ``POST /supplier/deliveries``, ``POST /supplier/tokens``,
  ``POST /supplier/tokens/{id}/revoke``: the page's forms (CSRF form field).

JSON API (a session cookie with ``X-CSRF-Token``, or ``Authorization: Bearer fbt_...``):

* ``GET /api/supplier/feed``, ``GET /api/supplier/feed.csv``;
* ``GET /api/supplier/deliveries``, ``POST /api/supplier/deliveries``;
* ``POST /api/supplier/tokens`` (a logged-in supplier only, never with a token).

A supplier sees only its own feed and deliveries: asking for another supplier's is 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from backend import restock
from backend import schema as t
from backend.accounts import Principal, create_token
from backend.errors import Forbidden, InputError, NotFound
from backend.services import BACKEND, Backend
from backend.web import Fields, fields, json_response, require

__all__ = ["setup"]

DELIVERY_STATUSES = ("confirmed", "placed")


@dataclass(frozen=True, slots=True)
class _Target:
    """Whose data a request is about."""

    supplier_id: str
    who: Principal

    @property
    def query(self) -> str:
        """The ``?supplier=`` an admin's links and forms carry."""
        return "" if self.who.role == "supplier" else f"?supplier={self.supplier_id}"


def _supplier_name(conn: Connection, supplier_id: str) -> str | None:
    row = conn.execute(select(t.suppliers.c.name).where(t.suppliers.c.id == supplier_id)).first()
    return None if row is None else str(row.name)


async def _target(request: web.Request) -> _Target:
    """The supplier whose data is asked for: a supplier's own; an admin's ``?supplier=``."""
    who = require(request, "supplier", "admin")
    asked = request.query.get("supplier", "").strip()
    if who.role == "supplier":
        if who.supplier_id is None:
            raise Forbidden("this account belongs to no vegetable base")
        if asked and asked != who.supplier_id:
            raise Forbidden("a supplier sees only its own feed")
        return _Target(who.supplier_id, who)
    if not asked:
        raise InputError("supplier", "is required: an admin names the supplier (?supplier=ID)")
    if len(asked) > 64:
        raise InputError("supplier", "must be at most 64 characters")
    be = request.app[BACKEND]
    if await be.db.query(_supplier_name, asked) is None:
        raise InputError("supplier", f"no supplier {asked!r}")
    return _Target(asked, who)


def _feed(be: Backend, conn: Connection, supplier_id: str) -> dict[str, Any]:
    s = be.settings
    return restock.feed(
        conn,
        be.clock.now(),
        supplier_id,
        velocity_days=s.velocity_days,
        horizon_days=s.horizon_days,
    )


# ------------------------------------------------------------------ JSON API


async def api_feed(request: web.Request) -> web.Response:
    be = request.app[BACKEND]
    target = await _target(request)
    doc = await be.db.query(lambda c: _feed(be, c, target.supplier_id))
    return json_response(doc)


async def api_feed_csv(request: web.Request) -> web.Response:
    be = request.app[BACKEND]
    target = await _target(request)
    doc = await be.db.query(lambda c: _feed(be, c, target.supplier_id))
    day = str(doc["generated_at"])[:10]
    return web.Response(
        text=restock.feed_csv(doc["lines"]),
        content_type="text/csv",
        charset="utf-8",
        headers={
            "Content-Disposition": (
                f'attachment; filename="restock-{target.supplier_id}-{day}.csv"'
            ),
            "Cache-Control": "no-store",
        },
    )


async def api_deliveries(request: web.Request) -> web.Response:
    be = request.app[BACKEND]
    target = await _target(request)
    q = Fields(dict(request.query))
    limit = q.int_("limit", minimum=1, maximum=500, default=50)
    status = q.choice("status", DELIVERY_STATUSES, required=False) or None
    rows = await be.db.query(restock.deliveries, target.supplier_id, limit=limit, status=status)
    return json_response({"supplier": target.supplier_id, "deliveries": rows})


async def _confirm(request: web.Request, target: _Target, f: Fields) -> dict[str, Any]:
    be = request.app[BACKEND]
    cabinet_id = f.str_("cabinet_id", max_len=64)
    sku = f.str_("sku", max_len=64)
    qty = f.int_("qty", minimum=1, maximum=restock.MAX_DELIVERY_QTY)
    note = f.str_("note", max_len=300, required=False)
    row = await be.db.run(
        restock.confirm_delivery,
        target.supplier_id,
        cabinet_id=cabinet_id,
        sku=sku,
        qty=qty,
        note=note,
        user_id=target.who.user_id,
        now=be.clock.now(),
    )
    try:  # the retained topic follows at once (the publisher would in a minute anyway)
        await restock.publish_supplier(be, target.supplier_id)
    except Exception:  # pragma: no cover - the broker is best effort here
        restock.log.exception("publishing %s's feed failed", target.supplier_id)
    return row


async def api_confirm_delivery(request: web.Request) -> web.Response:
    target = await _target(request)
    row = await _confirm(request, target, await fields(request))
    return json_response({"delivery": row}, status=201)


def _may_make_tokens(request: web.Request) -> Principal:
    who = require(request, "supplier")
    if who.via_token:
        raise Forbidden("API tokens are made from a logged-in session, not with a token")
    return who


async def api_create_token(request: web.Request) -> web.Response:
    be = request.app[BACKEND]
    who = _may_make_tokens(request)
    label = (await fields(request)).str_("label", max_len=100)
    token = await be.db.run(create_token, who.user_id, label, be.clock.now())
    return json_response({"token": token, "label": label}, status=201)


# ------------------------------------------------------------------ page


def _tokens(conn: Connection, user_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(
            t.api_tokens.c.id,
            t.api_tokens.c.label,
            t.api_tokens.c.created_at,
            t.api_tokens.c.last_used_at,
        )
        .where(t.api_tokens.c.user_id == user_id)
        .order_by(t.api_tokens.c.id.desc())
    )
    return [dict(r._mapping) for r in rows]


def _revoke_token(conn: Connection, user_id: int, token_id: int) -> bool:
    res = conn.execute(
        delete(t.api_tokens).where(t.api_tokens.c.id == token_id, t.api_tokens.c.user_id == user_id)
    )
    return bool(res.rowcount)


def _suppliers(conn: Connection) -> list[dict[str, str]]:
    rows = conn.execute(select(t.suppliers.c.id, t.suppliers.c.name).order_by(t.suppliers.c.id))
    return [{"id": r.id, "name": r.name} for r in rows]


def _page_data(be: Backend, conn: Connection, target: _Target) -> dict[str, Any]:
    doc = _feed(be, conn, target.supplier_id)
    lines = doc["lines"]
    cabinets = sorted({(ln["cabinet_id"], ln["cabinet_name"]) for ln in lines})
    skus = sorted({(ln["sku"], ln["name"], ln["unit"]) for ln in lines})
    return {
        "supplier_id": target.supplier_id,
        "supplier_name": _supplier_name(conn, target.supplier_id) or target.supplier_id,
        "feed": doc,
        "cabinets": cabinets,
        "skus": skus,
        "deliveries": restock.deliveries(conn, target.supplier_id, limit=30),
        "tokens": _tokens(conn, target.who.user_id) if target.who.role == "supplier" else None,
    }


async def _render(
    request: web.Request,
    target: _Target,
    *,
    status: int = 200,
    error: InputError | None = None,
    form: dict[str, str] | None = None,
    new_token: str | None = None,
    notice: str | None = None,
) -> web.Response:
    be = request.app[BACKEND]
    data = await be.db.query(lambda c: _page_data(be, c, target))
    body = be.render(
        "supplier.html",
        request=request,
        me=target.who,
        q=target.query,
        error=error,
        form=form or {},
        new_token=new_token,
        notice=notice,
        pick=None,
        **data,
    )
    resp = web.Response(text=body, status=status, content_type="text/html")
    if new_token is not None:
        resp.headers["Cache-Control"] = "no-store"
    return resp


async def page(request: web.Request) -> web.Response:
    be = request.app[BACKEND]
    who = require(request, "supplier", "admin")
    if who.role == "admin" and not request.query.get("supplier"):
        suppliers = await be.db.query(_suppliers)
        body = be.render("supplier.html", request=request, me=who, pick=suppliers)
        return web.Response(text=body, content_type="text/html")
    target = await _target(request)
    notice = None
    delivered = request.query.get("delivered", "")
    if delivered.isdigit():
        notice = f"Delivery #{int(delivered)} confirmed."
    elif request.query.get("revoked") == "1":
        notice = "Token revoked."
    return await _render(request, target, notice=notice)


async def form_confirm_delivery(request: web.Request) -> web.Response:
    target = await _target(request)
    f = await fields(request)
    try:
        row = await _confirm(request, target, f)
    except InputError as exc:
        form = {k: str(v) for k, v in f.data.items() if k != "csrf"}
        return await _render(request, target, status=400, error=exc, form=form)
    sep = "&" if target.query else "?"
    raise web.HTTPSeeOther(f"/supplier{target.query}{sep}delivered={row['id']}")


async def form_create_token(request: web.Request) -> web.Response:
    be = request.app[BACKEND]
    who = _may_make_tokens(request)
    target = await _target(request)
    f = await fields(request)
    try:
        label = f.str_("label", max_len=100)
    except InputError as exc:
        return await _render(request, target, status=400, error=exc)
    token = await be.db.run(create_token, who.user_id, label, be.clock.now())
    return await _render(request, target, new_token=token, notice=f"Token {label!r} created.")


async def form_revoke_token(request: web.Request) -> web.Response:
    be = request.app[BACKEND]
    who = _may_make_tokens(request)
    try:
        token_id = int(request.match_info["token_id"])
    except ValueError:
        raise NotFound("no such token") from None
    if not await be.db.run(_revoke_token, who.user_id, token_id):
        raise NotFound("no such token")
    raise web.HTTPSeeOther("/supplier?revoked=1")


def setup(app: web.Application) -> None:
    app.router.add_get("/supplier", page)
    app.router.add_post("/supplier/deliveries", form_confirm_delivery)
    app.router.add_post("/supplier/tokens", form_create_token)
    app.router.add_post(r"/supplier/tokens/{token_id:\d+}/revoke", form_revoke_token)
    app.router.add_get("/api/supplier/feed", api_feed)
    app.router.add_get("/api/supplier/feed.csv", api_feed_csv)
    app.router.add_get("/api/supplier/deliveries", api_deliveries)
    app.router.add_post("/api/supplier/deliveries", api_confirm_delivery)
    app.router.add_post("/api/supplier/tokens", api_create_token)
